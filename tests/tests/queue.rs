//! Conformance suite of the job-queue boundary: every test body runs against RabbitMQ (lapin) and against
//! the in-process broker of the local mode. What the worker and the hub rely on — routing, priorities,
//! prefetch, settling, redelivery of what a dropped subscription left unsettled, TTL dead-lettering,
//! exclusive queues, idempotent declarations — must hold on both.

use std::sync::Arc;
use std::time::Duration;

use ainern2d_queue::amqp::AmqpBroker;
use ainern2d_queue::embedded::EmbeddedBroker;
use ainern2d_queue::{
    Broker, Delivery, ExchangeKind, HeaderValue, Message, QueueError, QueueSpec, Session, Subscription,
};
use ainern2d_tests::{amqp_url, unique};

/// A broker under test, a session on it, and what the test declared (deleted at the end).
struct Bed {
    broker: Arc<dyn Broker>,
    session: Arc<dyn Session>,
    queues: Vec<String>,
    exchanges: Vec<String>,
}

impl Bed {
    async fn rabbitmq() -> Bed {
        let broker: Arc<dyn Broker> = Arc::new(AmqpBroker::new(amqp_url()));
        let session = broker.connect("conformance").await.unwrap_or_else(|e| {
            panic!("cannot reach RabbitMQ at {} ({e}): run scripts/test.sh, which starts it", amqp_url())
        });
        Bed { broker, session, queues: Vec::new(), exchanges: Vec::new() }
    }

    async fn embedded() -> Bed {
        let broker: Arc<dyn Broker> = Arc::new(EmbeddedBroker::new());
        let session = broker.connect("conformance").await.unwrap();
        Bed { broker, session, queues: Vec::new(), exchanges: Vec::new() }
    }

    async fn queue(&mut self, spec: QueueSpec) -> String {
        let name = self.session.declare_queue(&spec).await.unwrap();
        self.queues.push(name.clone());
        name
    }

    async fn exchange(&mut self, name: &str, kind: ExchangeKind) -> String {
        let name = unique(name);
        self.session.declare_exchange(&name, kind).await.unwrap();
        self.exchanges.push(name.clone());
        name
    }

    async fn publish(&self, exchange: &str, key: &str, body: &str) {
        self.session.publish(exchange, key, &Message::json(body.to_string())).await.unwrap();
    }

    async fn cleanup(self) {
        for q in &self.queues {
            let _ = self.session.delete_queue(q).await;
        }
        for e in &self.exchanges {
            let _ = self.session.delete_exchange(e).await;
        }
        self.session.close().await;
    }
}

async fn next(sub: &mut Box<dyn Subscription>) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a delivery within 10 s")
        .expect("the subscription is open")
        .expect("the delivery is readable")
}

/// Asserts that nothing is delivered for a while.
async fn nothing(sub: &mut Box<dyn Subscription>) {
    if let Ok(d) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
        panic!("expected no delivery, got {d:?}");
    }
}

fn body(d: &Delivery) -> String {
    String::from_utf8(d.message.body.to_vec()).unwrap()
}

async fn depth_eventually(session: &Arc<dyn Session>, queue: &str, n: u32) {
    let mut last = None;
    for _ in 0..100 {
        last = session.queue_depth(queue).await.unwrap();
        if last == Some(n) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("queue {queue}: expected {n} ready, found {last:?}");
}

async fn topic_and_default_routing(mut bed: Bed) {
    let events = bed.exchange("events", ExchangeKind::Topic).await;
    let jobs = bed.queue(QueueSpec::durable(unique("jobs"))).await;
    let workers = bed.queue(QueueSpec::durable(unique("workers"))).await;
    bed.session.bind(&jobs, &events, "job.#").await.unwrap();
    bed.session.bind(&workers, &events, "worker.*").await.unwrap();
    bed.publish(&events, "job.video.succeeded", "a").await;
    bed.publish(&events, "worker.w1", "b").await;
    bed.publish(&events, "worker.heartbeat.w1", "unrouted").await;
    bed.publish("", &workers, "c").await;
    depth_eventually(&bed.session, &jobs, 1).await;
    depth_eventually(&bed.session, &workers, 2).await;
    let mut sub = bed.session.subscribe(&workers, "t", 0).await.unwrap();
    let (b1, b2) = (next(&mut sub).await, next(&mut sub).await);
    assert_eq!((body(&b1), body(&b2)), ("b".into(), "c".into()));
    assert_eq!(b1.routing_key, "worker.w1");
    assert_eq!(b1.exchange, events);
    b1.acker.ack(false).await.unwrap();
    b2.acker.ack(false).await.unwrap();
    bed.cleanup().await;
}

async fn properties_round_trip(mut bed: Bed) {
    let q = bed.queue(QueueSpec { max_priority: Some(9), ..QueueSpec::durable(unique("props")) }).await;
    let sent = Message::json("{}")
        .with_header("x-attempt", HeaderValue::Int(3))
        .with_header("x-reason", HeaderValue::Text("why".into()))
        .with_priority(Some(4))
        .with_message_id("m-1");
    bed.session.publish("", &q, &sent).await.unwrap();
    let mut sub = bed.session.subscribe(&q, "t", 1).await.unwrap();
    let d = next(&mut sub).await;
    assert_eq!(d.message, sent);
    assert_eq!(d.message.header_u32("x-attempt"), Some(3));
    assert!(!d.redelivered);
    d.acker.ack(false).await.unwrap();
    bed.cleanup().await;
}

async fn priorities_first(mut bed: Bed) {
    let q = bed.queue(QueueSpec { max_priority: Some(9), ..QueueSpec::durable(unique("prio")) }).await;
    for (p, b) in [(1, "p1"), (5, "p5a"), (9, "p9"), (0, "p0"), (5, "p5b")] {
        bed.session.publish("", &q, &Message::json(b).with_priority(Some(p))).await.unwrap();
    }
    depth_eventually(&bed.session, &q, 5).await;
    let mut sub = bed.session.subscribe(&q, "t", 1).await.unwrap();
    let mut order = Vec::new();
    for _ in 0..5 {
        let d = next(&mut sub).await;
        order.push(body(&d));
        d.acker.ack(false).await.unwrap();
    }
    assert_eq!(order, ["p9", "p5a", "p5b", "p1", "p0"]);
    bed.cleanup().await;
}

async fn prefetch_bounds_unsettled(mut bed: Bed) {
    let q = bed.queue(QueueSpec::durable(unique("prefetch"))).await;
    for i in 0..5 {
        bed.publish("", &q, &format!("m{i}")).await;
    }
    let mut sub = bed.session.subscribe(&q, "t", 2).await.unwrap();
    let first = next(&mut sub).await;
    let _second = next(&mut sub).await;
    nothing(&mut sub).await;
    first.acker.ack(false).await.unwrap();
    let third = next(&mut sub).await;
    assert_eq!(body(&third), "m2");
    nothing(&mut sub).await;
    depth_eventually(&bed.session, &q, 2).await;
    bed.cleanup().await;
}

async fn nack_requeue_redelivers(mut bed: Bed) {
    let q = bed.queue(QueueSpec::durable(unique("requeue"))).await;
    bed.publish("", &q, "again").await;
    let mut sub = bed.session.subscribe(&q, "t", 1).await.unwrap();
    let d = next(&mut sub).await;
    assert!(!d.redelivered);
    d.acker.nack(true).await.unwrap();
    let d = next(&mut sub).await;
    assert_eq!(body(&d), "again");
    assert!(d.redelivered);
    d.acker.ack(false).await.unwrap();
    nothing(&mut sub).await;
    depth_eventually(&bed.session, &q, 0).await;
    bed.cleanup().await;
}

async fn nack_dead_letters(mut bed: Bed) {
    let dlx = bed.exchange("dlx", ExchangeKind::Fanout).await;
    let dead = bed.queue(QueueSpec::durable(unique("dead"))).await;
    bed.session.bind(&dead, &dlx, "").await.unwrap();
    let q = bed.queue(QueueSpec { dead_letter_exchange: Some(dlx.clone()), ..QueueSpec::durable(unique("j")) }).await;
    let sent = Message::json("bad").with_header("x-reason", HeaderValue::Text("broken".into()));
    bed.session.publish("", &q, &sent).await.unwrap();
    let mut sub = bed.session.subscribe(&q, "t", 1).await.unwrap();
    next(&mut sub).await.acker.nack(false).await.unwrap();
    depth_eventually(&bed.session, &dead, 1).await;
    depth_eventually(&bed.session, &q, 0).await;
    let mut dead_sub = bed.session.subscribe(&dead, "t", 1).await.unwrap();
    let d = next(&mut dead_sub).await;
    assert_eq!(body(&d), "bad");
    assert_eq!(d.message.headers.get("x-reason"), Some(&HeaderValue::Text("broken".into())));
    d.acker.ack(false).await.unwrap();
    bed.cleanup().await;
}

async fn ttl_dead_letters_to_the_target(mut bed: Bed) {
    let target = bed.queue(QueueSpec::durable(unique("target"))).await;
    let retry = bed
        .queue(QueueSpec {
            message_ttl_ms: Some(300),
            dead_letter_exchange: Some(String::new()),
            dead_letter_routing_key: Some(target.clone()),
            ..QueueSpec::durable(unique("retry"))
        })
        .await;
    let started = std::time::Instant::now();
    bed.session
        .publish("", &retry, &Message::json("later").with_header("x-attempt", HeaderValue::Int(2)))
        .await
        .unwrap();
    let mut sub = bed.session.subscribe(&target, "t", 1).await.unwrap();
    let d = next(&mut sub).await;
    assert!(started.elapsed() >= Duration::from_millis(280), "delivered after {:?}", started.elapsed());
    assert_eq!(body(&d), "later");
    assert_eq!(d.message.header_u32("x-attempt"), Some(2));
    d.acker.ack(false).await.unwrap();
    depth_eventually(&bed.session, &retry, 0).await;
    bed.cleanup().await;
}

/// A queue nobody consumes from dead-letters its expired message on its own, then goes away after
/// `expires_ms` (the worker's job leases rely on both); a queue with a consumer does not expire.
async fn unused_queues_expire_after_their_messages(mut bed: Bed) {
    let target = bed.queue(QueueSpec::durable(unique("target"))).await;
    let lease = bed
        .queue(QueueSpec {
            message_ttl_ms: Some(300),
            dead_letter_exchange: Some(String::new()),
            dead_letter_routing_key: Some(target.clone()),
            expires_ms: Some(1_200),
            ..QueueSpec::durable(unique("lease"))
        })
        .await;
    let kept = bed.queue(QueueSpec { expires_ms: Some(600), ..QueueSpec::durable(unique("kept")) }).await;
    let _consumer = bed.session.subscribe(&kept, "k", 1).await.unwrap();
    bed.publish("", &lease, "held").await;
    depth_eventually(&bed.session, &target, 1).await;
    // Asking for the depth is a (passive) declaration: it renews the expiry, so ask once, then wait.
    assert_eq!(bed.session.queue_depth(&lease).await.unwrap(), Some(0), "the copy left the lease queue");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(bed.session.queue_depth(&lease).await.unwrap(), None, "{lease} was not deleted after going unused");
    assert_eq!(bed.session.queue_depth(&kept).await.unwrap(), Some(0), "a consumed queue stays");
    bed.cleanup().await;
}

async fn dropped_subscription_returns_unsettled(mut bed: Bed) {
    let q = bed.queue(QueueSpec::durable(unique("drop"))).await;
    for i in 0..3 {
        bed.publish("", &q, &format!("m{i}")).await;
    }
    let mut sub = bed.session.subscribe(&q, "t", 2).await.unwrap();
    let a = next(&mut sub).await;
    let b = next(&mut sub).await;
    sub.cancel().await.unwrap();
    drop(sub);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(bed.session.queue_depth(&q).await.unwrap(), Some(1), "only m2 is ready; m0 and m1 are held");
    // Deliveries still being worked on keep their subscription's channel open: settling works.
    a.acker.ack(false).await.unwrap();
    drop(a);
    // The last handle goes without settling m1: it returns to the queue, flagged as redelivered.
    drop(b);
    depth_eventually(&bed.session, &q, 2).await;
    let mut sub = bed.session.subscribe(&q, "t2", 2).await.unwrap();
    let (c, d) = (next(&mut sub).await, next(&mut sub).await);
    assert_eq!((body(&c), c.redelivered), ("m1".into(), true));
    assert_eq!((body(&d), d.redelivered), ("m2".into(), false));
    c.acker.ack(false).await.unwrap();
    d.acker.ack(false).await.unwrap();
    bed.cleanup().await;
}

async fn ack_multiple_settles_earlier(mut bed: Bed) {
    let q = bed.queue(QueueSpec::durable(unique("multi"))).await;
    for i in 0..4 {
        bed.publish("", &q, &format!("m{i}")).await;
    }
    let mut sub = bed.session.subscribe(&q, "t", 3).await.unwrap();
    let batch = [next(&mut sub).await, next(&mut sub).await, next(&mut sub).await];
    nothing(&mut sub).await;
    batch[2].acker.ack(true).await.unwrap();
    let last = next(&mut sub).await;
    assert_eq!(body(&last), "m3");
    last.acker.ack(false).await.unwrap();
    drop(batch);
    drop(sub);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(bed.session.queue_depth(&q).await.unwrap(), Some(0), "every delivery was settled");
    bed.cleanup().await;
}

async fn competing_consumers_share(mut bed: Bed) {
    let q = bed.queue(QueueSpec::durable(unique("compete"))).await;
    let mut one = bed.session.subscribe(&q, "one", 1).await.unwrap();
    let other_session = bed.broker.connect("other").await.unwrap();
    let mut two = other_session.subscribe(&q, "two", 1).await.unwrap();
    // The count covers every connection's subscriptions (the hub's `queue_consumers` gauge).
    let stats = bed.session.queue_stats(&q).await.unwrap().unwrap();
    assert_eq!((stats.ready, stats.consumers), (0, 2));
    for i in 0..2 {
        bed.publish("", &q, &format!("m{i}")).await;
    }
    // Each holds one unsettled delivery: prefetch 1 sends the second message to the other consumer.
    let (a, b) = (next(&mut one).await, next(&mut two).await);
    let mut got = vec![body(&a), body(&b)];
    got.sort();
    assert_eq!(got, ["m0", "m1"]);
    a.acker.ack(false).await.unwrap();
    b.acker.ack(false).await.unwrap();
    // (Settled and dropped first: the in-process broker keeps a channel, and its consumer, while a
    // delivery of it is held, even after its session closed.)
    drop((a, b));
    drop(two);
    other_session.close().await;
    one.cancel().await.unwrap();
    let mut left = 2;
    for _ in 0..50 {
        left = bed.session.queue_stats(&q).await.unwrap().unwrap().consumers;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "cancelled and closed subscriptions still counted");
    drop(one);
    bed.cleanup().await;
}

async fn exclusive_queue_goes_with_its_session(mut bed: Bed) {
    let events = bed.exchange("events", ExchangeKind::Topic).await;
    let owner = bed.broker.connect("owner").await.unwrap();
    let q = owner.declare_queue(&QueueSpec { exclusive: true, ..Default::default() }).await.unwrap();
    assert!(!q.is_empty(), "the broker names the queue");
    owner.bind(&q, &events, "worker.all").await.unwrap();
    bed.publish(&events, "worker.all", "cordon").await;
    let mut sub = owner.subscribe(&q, "control", 0).await.unwrap();
    assert_eq!(body(&next(&mut sub).await), "cordon");
    assert_eq!(owner.queue_depth(&q).await.unwrap(), Some(0));
    drop(sub);
    owner.close().await;
    drop(owner);
    let mut gone = false;
    for _ in 0..50 {
        if bed.session.queue_depth(&q).await.unwrap().is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the exclusive queue {q} outlived its session");
    bed.cleanup().await;
}

async fn declarations_are_idempotent(mut bed: Bed) {
    let spec = QueueSpec { max_priority: Some(9), ..QueueSpec::durable(unique("idem")) };
    let q = bed.queue(spec.clone()).await;
    assert_eq!(bed.session.declare_queue(&spec).await.unwrap(), q);
    let other = QueueSpec { message_ttl_ms: Some(5), ..spec.clone() };
    let err = bed.session.declare_queue(&other).await.unwrap_err();
    assert!(matches!(err, QueueError::Mismatch(ref n) if *n == q), "{err}");
    assert!(!err.is_retryable());
    // The session is still usable after a refused declaration.
    bed.publish("", &q, "still here").await;
    depth_eventually(&bed.session, &q, 1).await;
    assert_eq!(bed.session.queue_depth(&unique("missing")).await.unwrap(), None);
    bed.cleanup().await;
}

async fn deleting_the_queue_ends_the_subscription(mut bed: Bed) {
    let q = bed.queue(QueueSpec::durable(unique("deleted"))).await;
    let mut sub = bed.session.subscribe(&q, "t", 1).await.unwrap();
    bed.session.delete_queue(&q).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), sub.next()).await.expect("the subscription ends");
    assert!(end.is_none(), "expected the end of the subscription, got {end:?}");
    let err = match bed.session.subscribe(&q, "t2", 1).await {
        Ok(_) => panic!("subscribing to a deleted queue succeeded"),
        Err(e) => e,
    };
    assert!(matches!(err, QueueError::NoQueue(_)), "{err}");
    bed.cleanup().await;
}

async fn mandatory_publishes_fail_when_unroutable(mut bed: Bed) {
    let events = bed.exchange("nowhere", ExchangeKind::Topic).await;
    let missing = unique("missing");
    let mandatory = Message::json("{}").mandatory();
    for (exchange, key) in [("", missing.as_str()), (events.as_str(), "job.llm.succeeded")] {
        let err = bed.session.publish(exchange, key, &mandatory).await.expect_err("no queue takes it");
        assert!(matches!(err, QueueError::Unroutable(_)), "{err}");
        assert!(err.to_string().contains(key), "{err}");
        // Without the flag the broker drops it silently, as AMQP says; an unawaited publish never fails.
        bed.session.publish(exchange, key, &Message::json("{}")).await.unwrap();
        bed.session.publish_nowait(exchange, key, &mandatory).await.unwrap();
    }
    let q = bed.queue(QueueSpec::durable(missing.clone())).await;
    bed.session.publish("", &q, &mandatory).await.unwrap();
    depth_eventually(&bed.session, &q, 1).await;
    // The session is still usable after the returns.
    bed.publish("", &q, "after").await;
    depth_eventually(&bed.session, &q, 2).await;
    bed.cleanup().await;
}

async fn prefetch_can_change_while_subscribed(mut bed: Bed) {
    let q = bed.queue(QueueSpec::durable(unique("qos"))).await;
    for i in 0..6 {
        bed.publish("", &q, &format!("m{i}")).await;
    }
    let mut sub = bed.session.subscribe(&q, "t", 1).await.unwrap();
    let first = next(&mut sub).await;
    nothing(&mut sub).await;
    sub.set_prefetch(3).await.unwrap();
    let (second, third) = (next(&mut sub).await, next(&mut sub).await);
    nothing(&mut sub).await;
    sub.set_prefetch(1).await.unwrap();
    for d in [first, second, third] {
        d.acker.ack(false).await.unwrap();
    }
    let fourth = next(&mut sub).await;
    nothing(&mut sub).await;
    fourth.acker.ack(false).await.unwrap();
    bed.cleanup().await;
}

async fn settling_twice_is_an_error(mut bed: Bed) {
    let q = bed.queue(QueueSpec::durable(unique("twice"))).await;
    bed.publish("", &q, "once").await;
    let mut sub = bed.session.subscribe(&q, "t", 1).await.unwrap();
    let d = next(&mut sub).await;
    d.acker.ack(false).await.unwrap();
    assert!(d.acker.ack(false).await.is_err(), "a second ack must not report success");
    assert!(d.acker.nack(true).await.is_err(), "nor a nack after the ack");
    depth_eventually(&bed.session, &q, 0).await;
    bed.cleanup().await;
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod rabbitmq {
            $(#[tokio::test] async fn $name() { super::$name(super::Bed::rabbitmq().await).await })*
        }
        mod embedded {
            $(#[tokio::test] async fn $name() { super::$name(super::Bed::embedded().await).await })*
        }
    };
}

conformance!(
    topic_and_default_routing,
    properties_round_trip,
    priorities_first,
    prefetch_bounds_unsettled,
    nack_requeue_redelivers,
    nack_dead_letters,
    ttl_dead_letters_to_the_target,
    unused_queues_expire_after_their_messages,
    dropped_subscription_returns_unsettled,
    ack_multiple_settles_earlier,
    competing_consumers_share,
    exclusive_queue_goes_with_its_session,
    declarations_are_idempotent,
    deleting_the_queue_ends_the_subscription,
    mandatory_publishes_fail_when_unroutable,
    prefetch_can_change_while_subscribed,
    settling_twice_is_an_error,
);
