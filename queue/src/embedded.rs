//! An in-process broker for the one-command local mode, with the AMQP semantics the programs rely on:
//! the default, topic and fanout exchanges; durable, exclusive and server-named queues; priorities;
//! message TTL with dead-lettering (the retry queues); per-subscription prefetch; ack (single and
//! multiple), nack with and without requeue; and, as when an AMQP channel closes, deliveries left unsettled
//! by a dropped subscription return to their queue flagged as redelivered.
//!
//! Everything lives in memory behind one mutex that is never held across an await. Messages do not survive
//! the process; the local mode's hub re-enqueues unfinished jobs from its status store at start.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    Acker, Broker, Delivery, ExchangeKind, Message, QueueError, QueueSpec, QueueStats, Result, Session, Subscription,
    topic_matches,
};

/// The broker. Clones share the same queues.
#[derive(Clone, Default)]
pub struct EmbeddedBroker {
    inner: Arc<Inner>,
}

impl EmbeddedBroker {
    pub fn new() -> Self {
        Self::default()
    }
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    ids: AtomicU64,
}

impl Inner {
    fn id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("embedded broker lock")
    }
}

#[derive(Default)]
struct State {
    exchanges: HashMap<String, Exchange>,
    queues: HashMap<String, Queue>,
    /// Subscriptions (the equivalent of AMQP channels), by id.
    channels: HashMap<u64, Chan>,
    /// Publication order, so equal priorities keep FIFO order and a requeued message keeps its place.
    seq: u64,
}

struct Exchange {
    kind: ExchangeKind,
    /// (queue, binding key)
    bindings: Vec<(String, String)>,
}

/// Ready messages are ordered by (inverted priority, publication order).
type ReadyKey = (u8, u64);

struct Queue {
    spec: QueueSpec,
    /// Tells a re-declared queue of the same name from this one (for `expires_ms`).
    id: u64,
    /// Last declared, subscribed to or left by its last consumer (for `expires_ms`).
    used: Instant,
    owner: Option<u64>,
    ready: BTreeMap<ReadyKey, Stored>,
    consumers: Vec<Consumer>,
    next_consumer: usize,
}

#[derive(Clone)]
struct Stored {
    message: Message,
    exchange: String,
    routing_key: String,
    redelivered: bool,
}

struct Consumer {
    channel: u64,
    /// (delivery tag, message); the subscription turns them into `Delivery`s.
    tx: mpsc::UnboundedSender<(u64, Stored)>,
}

struct Chan {
    prefetch: u16,
    next_tag: u64,
    /// Unsettled deliveries by tag: the queue they came from, their ready key and the message.
    unacked: BTreeMap<u64, (String, ReadyKey, Stored)>,
}

impl Queue {
    fn ready_key(&self, priority: Option<u8>, seq: u64) -> ReadyKey {
        let p = match self.spec.max_priority {
            Some(max) => priority.unwrap_or(0).min(max),
            None => 0,
        };
        (u8::MAX - p, seq)
    }
}

impl State {
    fn route(&self, exchange: &str, routing_key: &str) -> Result<Vec<String>> {
        if exchange.is_empty() {
            return Ok(self.queues.contains_key(routing_key).then(|| routing_key.to_string()).into_iter().collect());
        }
        let ex = self.exchanges.get(exchange).ok_or_else(|| QueueError::NoExchange(exchange.to_string()))?;
        let mut queues: Vec<String> = ex
            .bindings
            .iter()
            .filter(|(_, key)| ex.kind == ExchangeKind::Fanout || topic_matches(key, routing_key))
            .map(|(q, _)| q.clone())
            .collect();
        queues.sort();
        queues.dedup();
        Ok(queues)
    }

    /// Puts a message into every queue it routes to; returns the queues that got it (for dispatch and TTL).
    fn enqueue(&mut self, exchange: &str, routing_key: &str, message: &Message) -> Result<Vec<(String, ReadyKey)>> {
        let targets = self.route(exchange, routing_key)?;
        let mut placed = Vec::with_capacity(targets.len());
        for name in targets {
            self.seq += 1;
            let seq = self.seq;
            let queue = self.queues.get_mut(&name).expect("routed queues exist");
            let key = queue.ready_key(message.priority, seq);
            let stored = Stored {
                message: message.clone(),
                exchange: exchange.to_string(),
                routing_key: routing_key.to_string(),
                redelivered: false,
            };
            queue.ready.insert(key, stored);
            placed.push((name, key));
        }
        Ok(placed)
    }

    /// A message that expired or was rejected: to the queue's dead-letter exchange, or gone.
    fn dead_letter(&mut self, queue: &str, stored: Stored) -> Vec<(String, ReadyKey)> {
        let Some(q) = self.queues.get(queue) else { return Vec::new() };
        let Some(dlx) = q.spec.dead_letter_exchange.clone() else { return Vec::new() };
        let key = q.spec.dead_letter_routing_key.clone().unwrap_or(stored.routing_key);
        let mut message = stored.message;
        // RabbitMQ drops the per-message expiry on dead-lettering; we carry no per-message TTL at all.
        message.headers.remove("expiration");
        self.enqueue(&dlx, &key, &message).unwrap_or_default()
    }

    /// Hands ready messages to consumers with room, round-robin, highest priority first.
    fn dispatch(&mut self, queue_name: &str) {
        loop {
            let Some(queue) = self.queues.get_mut(queue_name) else { return };
            if queue.ready.is_empty() || queue.consumers.is_empty() {
                return;
            }
            let n = queue.consumers.len();
            let mut chosen = None;
            for i in 0..n {
                let idx = (queue.next_consumer + i) % n;
                let channel = queue.consumers[idx].channel;
                let Some(chan) = self.channels.get(&channel) else { continue };
                if chan.prefetch == 0 || chan.unacked.len() < usize::from(chan.prefetch) {
                    chosen = Some(idx);
                    break;
                }
            }
            let Some(idx) = chosen else { return };
            queue.next_consumer = (idx + 1) % n;
            let (key, stored) = queue.ready.pop_first().expect("not empty");
            let consumer = &queue.consumers[idx];
            let (channel_id, tx) = (consumer.channel, consumer.tx.clone());
            let chan = self.channels.get_mut(&channel_id).expect("checked above");
            chan.next_tag += 1;
            let tag = chan.next_tag;
            chan.unacked.insert(tag, (queue_name.to_string(), key, stored.clone()));
            // The delivery is counted as unsettled before it is sent: if the subscription is already gone,
            // its guard (or the one dropped with this delivery) puts it back.
            let _ = tx.send((tag, stored));
        }
    }

    fn requeue(&mut self, queue: &str, key: ReadyKey, mut stored: Stored) {
        if let Some(q) = self.queues.get_mut(queue) {
            stored.redelivered = true;
            q.ready.insert(key, stored);
        }
    }
}

/// Kept by a subscription and each of its deliveries; when the last one goes, the subscription's
/// unsettled deliveries return to their queues (an AMQP channel closing).
struct ChanGuard {
    inner: Weak<Inner>,
    channel: u64,
}

impl Drop for ChanGuard {
    fn drop(&mut self) {
        let Some(inner) = self.inner.upgrade() else { return };
        let mut state = inner.lock();
        let Some(chan) = state.channels.remove(&self.channel) else { return };
        let mut touched: Vec<String> = Vec::new();
        for q in state.queues.values_mut() {
            q.consumers.retain(|c| c.channel != self.channel);
        }
        for (_, (queue, key, stored)) in chan.unacked {
            state.requeue(&queue, key, stored);
            touched.push(queue);
        }
        touched.sort();
        touched.dedup();
        for q in touched {
            state.dispatch(&q);
        }
    }
}

struct EmbeddedAcker {
    guard: Arc<ChanGuard>,
    tag: u64,
}

impl EmbeddedAcker {
    fn settle(&self, multiple: bool, mut settle: impl FnMut(&mut State, String, ReadyKey, Stored)) -> Result<()> {
        let guard = &self.guard;
        let inner = guard.inner.upgrade().ok_or(QueueError::Closed)?;
        let mut state = inner.lock();
        let chan = state.channels.get_mut(&guard.channel).ok_or(QueueError::Closed)?;
        let tags: Vec<u64> = if multiple {
            chan.unacked.range(..=self.tag).map(|(t, _)| *t).collect()
        } else if chan.unacked.contains_key(&self.tag) {
            vec![self.tag]
        } else {
            return Err(QueueError::UnknownDelivery(self.tag));
        };
        let settled: Vec<_> = tags.iter().filter_map(|t| chan.unacked.remove(t)).collect();
        let mut touched = Vec::new();
        for (queue, key, stored) in settled {
            touched.push(queue.clone());
            settle(&mut state, queue, key, stored);
        }
        touched.sort();
        touched.dedup();
        for q in touched {
            state.dispatch(&q);
        }
        Ok(())
    }
}

#[async_trait]
impl Acker for EmbeddedAcker {
    async fn ack(&self, multiple: bool) -> Result<()> {
        self.settle(multiple, |_, _, _, _| {})
    }

    async fn nack(&self, requeue: bool) -> Result<()> {
        let mut placed = Vec::new();
        self.settle(false, |state, queue, key, stored| {
            if requeue {
                state.requeue(&queue, key, stored);
            } else {
                placed.extend(state.dead_letter(&queue, stored));
            }
        })?;
        if let Some(inner) = self.guard.inner.upgrade() {
            after_enqueue(&inner, placed);
        }
        Ok(())
    }
}

/// Dispatches newly placed messages and arms the TTL timers of queues that have one.
fn after_enqueue(inner: &Arc<Inner>, placed: Vec<(String, ReadyKey)>) {
    let mut state = inner.lock();
    for (queue, key) in placed {
        if let Some(ttl) = state.queues.get(&queue).and_then(|q| q.spec.message_ttl_ms) {
            let weak = Arc::downgrade(inner);
            let queue = queue.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(ttl)).await;
                if let Some(inner) = weak.upgrade() {
                    expire(&inner, &queue, key);
                }
            });
        }
        state.dispatch(&queue);
    }
}

fn expire(inner: &Arc<Inner>, queue: &str, key: ReadyKey) {
    let placed = {
        let mut state = inner.lock();
        let Some(stored) = state.queues.get_mut(queue).and_then(|q| q.ready.remove(&key)) else { return };
        state.dead_letter(queue, stored)
    };
    after_enqueue(inner, placed);
}

/// Deletes queue `name` (this declaration of it, `id`) once it has gone unused for `expires`, as
/// RabbitMQ's `x-expires` does: no consumer, no declaration.
async fn expire_queue(inner: Weak<Inner>, name: String, id: u64, expires: Duration) {
    let mut wait = expires;
    loop {
        tokio::time::sleep(wait).await;
        let Some(inner) = inner.upgrade() else { return };
        let mut state = inner.lock();
        let Some(q) = state.queues.get(&name).filter(|q| q.id == id) else { return };
        let idle = q.used.elapsed();
        wait = if !q.consumers.is_empty() {
            expires
        } else if idle >= expires {
            delete(&mut state, &name);
            return;
        } else {
            expires - idle
        };
    }
}

#[async_trait]
impl Broker for EmbeddedBroker {
    async fn connect(&self, _name: &str) -> Result<Arc<dyn Session>> {
        Ok(Arc::new(EmbeddedSession { inner: self.inner.clone(), id: self.inner.id(), lost: CancellationToken::new() }))
    }

    fn describe(&self) -> String {
        "embedded (in-process)".into()
    }
}

struct EmbeddedSession {
    inner: Arc<Inner>,
    id: u64,
    lost: CancellationToken,
}

impl EmbeddedSession {
    fn check_open(&self) -> Result<()> {
        if self.lost.is_cancelled() { Err(QueueError::Closed) } else { Ok(()) }
    }

    fn drop_exclusive(&self) {
        let mut state = self.inner.lock();
        let mine: Vec<String> =
            state.queues.iter().filter(|(_, q)| q.owner == Some(self.id)).map(|(n, _)| n.clone()).collect();
        for name in mine {
            delete(&mut state, &name);
        }
    }
}

impl Drop for EmbeddedSession {
    fn drop(&mut self) {
        self.drop_exclusive();
    }
}

/// Deletes a queue: its consumers see the end of their stream (a broker-side cancel), its messages go.
fn delete(state: &mut State, name: &str) {
    state.queues.remove(name);
    for ex in state.exchanges.values_mut() {
        ex.bindings.retain(|(q, _)| q != name);
    }
}

#[async_trait]
impl Session for EmbeddedSession {
    async fn declare_exchange(&self, name: &str, kind: ExchangeKind) -> Result<()> {
        self.check_open()?;
        let mut state = self.inner.lock();
        match state.exchanges.get(name) {
            Some(ex) if ex.kind != kind => Err(QueueError::Mismatch(name.to_string())),
            Some(_) => Ok(()),
            None => {
                state.exchanges.insert(name.to_string(), Exchange { kind, bindings: Vec::new() });
                Ok(())
            }
        }
    }

    async fn declare_queue(&self, spec: &QueueSpec) -> Result<String> {
        self.check_open()?;
        let mut state = self.inner.lock();
        let name = if spec.name.is_empty() { format!("amq.gen-{}", self.inner.id()) } else { spec.name.clone() };
        let spec = QueueSpec { name: name.clone(), ..spec.clone() };
        if let Some(existing) = state.queues.get_mut(&name) {
            if existing.spec != spec {
                return Err(QueueError::Mismatch(name));
            }
            existing.used = Instant::now();
            return Ok(name);
        }
        let id = self.inner.id();
        if let Some(expires) = spec.expires_ms {
            tokio::spawn(expire_queue(Arc::downgrade(&self.inner), name.clone(), id, Duration::from_millis(expires)));
        }
        state.queues.insert(
            name.clone(),
            Queue {
                owner: spec.exclusive.then_some(self.id),
                id,
                used: Instant::now(),
                spec,
                ready: BTreeMap::new(),
                consumers: Vec::new(),
                next_consumer: 0,
            },
        );
        Ok(name)
    }

    async fn bind(&self, queue: &str, exchange: &str, routing_key: &str) -> Result<()> {
        self.check_open()?;
        let mut state = self.inner.lock();
        if !state.queues.contains_key(queue) {
            return Err(QueueError::NoQueue(queue.to_string()));
        }
        let ex = state.exchanges.get_mut(exchange).ok_or_else(|| QueueError::NoExchange(exchange.to_string()))?;
        let binding = (queue.to_string(), routing_key.to_string());
        if !ex.bindings.contains(&binding) {
            ex.bindings.push(binding);
        }
        Ok(())
    }

    async fn delete_queue(&self, queue: &str) -> Result<()> {
        self.check_open()?;
        delete(&mut self.inner.lock(), queue);
        Ok(())
    }

    async fn delete_exchange(&self, exchange: &str) -> Result<()> {
        self.check_open()?;
        self.inner.lock().exchanges.remove(exchange);
        Ok(())
    }

    async fn queue_stats(&self, queue: &str) -> Result<Option<QueueStats>> {
        self.check_open()?;
        // A passive declaration on RabbitMQ: it renews `expires_ms` too.
        let mut state = self.inner.lock();
        Ok(state.queues.get_mut(queue).map(|q| {
            q.used = Instant::now();
            QueueStats { ready: q.ready.len() as u32, consumers: q.consumers.len() as u32 }
        }))
    }

    async fn publish(&self, exchange: &str, routing_key: &str, message: &Message) -> Result<()> {
        self.check_open()?;
        let placed = self.inner.lock().enqueue(exchange, routing_key, message)?;
        if placed.is_empty() && message.mandatory {
            let exchange = if exchange.is_empty() { "(default exchange)" } else { exchange };
            return Err(QueueError::Unroutable(format!("{exchange}/{routing_key}")));
        }
        after_enqueue(&self.inner, placed);
        Ok(())
    }

    async fn publish_nowait(&self, exchange: &str, routing_key: &str, message: &Message) -> Result<()> {
        // As on RabbitMQ, an unawaited publish that no queue takes is not the publisher's error.
        match self.publish(exchange, routing_key, message).await {
            Err(QueueError::Unroutable(_)) => Ok(()),
            other => other,
        }
    }

    async fn subscribe(&self, queue: &str, _tag: &str, prefetch: u16) -> Result<Box<dyn Subscription>> {
        self.check_open()?;
        let channel = self.inner.id();
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let mut state = self.inner.lock();
            if !state.queues.contains_key(queue) {
                return Err(QueueError::NoQueue(queue.to_string()));
            }
            state.channels.insert(channel, Chan { prefetch, next_tag: 0, unacked: BTreeMap::new() });
            let q = state.queues.get_mut(queue).expect("checked");
            q.consumers.push(Consumer { channel, tx });
            q.used = Instant::now();
            state.dispatch(queue);
        }
        let guard = Arc::new(ChanGuard { inner: Arc::downgrade(&self.inner), channel });
        Ok(Box::new(EmbeddedSubscription { rx, guard, inner: self.inner.clone(), channel, lost: self.lost.clone() }))
    }

    fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    fn lost_reason(&self) -> Option<String> {
        self.lost.is_cancelled().then(|| "the session was closed".to_string())
    }

    async fn close(&self) {
        self.lost.cancel();
        self.drop_exclusive();
    }
}

struct EmbeddedSubscription {
    rx: mpsc::UnboundedReceiver<(u64, Stored)>,
    guard: Arc<ChanGuard>,
    inner: Arc<Inner>,
    channel: u64,
    lost: CancellationToken,
}

#[async_trait]
impl Subscription for EmbeddedSubscription {
    async fn next(&mut self) -> Option<Result<Delivery>> {
        let (tag, stored) = tokio::select! {
            d = self.rx.recv() => d?,
            _ = self.lost.cancelled() => return None,
        };
        Some(Ok(Delivery {
            message: stored.message,
            exchange: stored.exchange,
            routing_key: stored.routing_key,
            redelivered: stored.redelivered,
            // The delivery keeps the subscription's guard: its unsettled deliveries go back to their queues
            // only when the subscription and every delivery are gone.
            acker: Box::new(EmbeddedAcker { guard: self.guard.clone(), tag }),
        }))
    }

    async fn cancel(&mut self) -> Result<()> {
        let mut state = self.inner.lock();
        for q in state.queues.values_mut() {
            let before = q.consumers.len();
            q.consumers.retain(|c| c.channel != self.channel);
            if q.consumers.len() < before {
                q.used = Instant::now();
            }
        }
        drop(state);
        self.rx.close();
        Ok(())
    }

    async fn set_prefetch(&mut self, prefetch: u16) -> Result<()> {
        let mut state = self.inner.lock();
        let Some(chan) = state.channels.get_mut(&self.channel) else { return Err(QueueError::Closed) };
        chan.prefetch = prefetch;
        // A raised limit may let waiting messages through now.
        let queues: Vec<String> = state
            .queues
            .iter()
            .filter(|(_, q)| q.consumers.iter().any(|c| c.channel == self.channel))
            .map(|(n, _)| n.clone())
            .collect();
        for q in queues {
            state.dispatch(&q);
        }
        Ok(())
    }
}
