//! A broker whose sessions fail on demand, for tests of the code above the boundary: a publish that is
//! nacked, an ack the client could not send, a settlement that never happened. It wraps any broker
//! (usually the in-process one) and records what was settled, so a test can check that a failed
//! publish brought its delivery back.

use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::{
    Acker, Broker, Delivery, ExchangeKind, Message, QueueError, QueueSpec, QueueStats, Result, Session, Subscription,
};

/// How a settlement of a delivery ended, in the order they happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    Ack {
        routing_key: String,
    },
    Nack {
        routing_key: String,
        requeue: bool,
    },
    /// A settlement that failed by injection (and so did not happen).
    Failed {
        routing_key: String,
        what: &'static str,
    },
}

#[derive(Debug)]
struct Rule {
    /// Publishes whose `exchange/routing_key` contains this fail.
    target: String,
    times: usize,
    error: fn(String) -> QueueError,
}

/// The switchboard shared by a [`FaultyBroker`] and every session, subscription and acker it made.
#[derive(Default)]
pub struct Faults {
    publishes: Mutex<Vec<Rule>>,
    acks: Mutex<usize>,
    hung_acks: Mutex<usize>,
    hung_closes: Mutex<usize>,
    nacks: Mutex<usize>,
    settled: Mutex<Vec<Settled>>,
    published: Mutex<Vec<String>>,
    sessions: Mutex<Vec<Weak<dyn Session>>>,
}

impl Faults {
    /// The next `times` confirmed publishes whose `exchange/routing_key` contains `target` are nacked.
    pub fn nack_publishes(&self, target: &str, times: usize) {
        self.publishes.lock().unwrap().push(Rule { target: target.into(), times, error: QueueError::Nacked });
    }

    /// The next `times` acks are not sent (`QueueError::NotSettled`), as lapin's `Ok(false)`.
    pub fn fail_acks(&self, times: usize) {
        *self.acks.lock().unwrap() += times;
    }

    /// The next `times` acks never complete, as lapin's can on a connection it has lost.
    pub fn hang_acks(&self, times: usize) {
        *self.hung_acks.lock().unwrap() += times;
    }

    /// The next `times` session closes never complete, as lapin's can on a connection that is going away.
    pub fn hang_closes(&self, times: usize) {
        *self.hung_closes.lock().unwrap() += times;
    }

    /// The next `times` nacks are not sent.
    pub fn fail_nacks(&self, times: usize) {
        *self.nacks.lock().unwrap() += times;
    }

    /// Closes every session opened so far, as a lost connection would (their `lost` token fires).
    pub async fn lose_sessions(&self) {
        let live: Vec<Arc<dyn Session>> = self.sessions.lock().unwrap().iter().filter_map(Weak::upgrade).collect();
        for session in live {
            session.close().await;
        }
    }

    /// Every settlement so far.
    pub fn settled(&self) -> Vec<Settled> {
        self.settled.lock().unwrap().clone()
    }

    /// `exchange/routing_key` of every publish that went through, in order.
    pub fn published(&self) -> Vec<String> {
        self.published.lock().unwrap().clone()
    }

    fn check_publish(&self, target: &str) -> Result<()> {
        let mut rules = self.publishes.lock().unwrap();
        if let Some(rule) = rules.iter_mut().find(|r| r.times > 0 && target.contains(&r.target)) {
            rule.times -= 1;
            return Err((rule.error)(target.to_string()));
        }
        drop(rules);
        self.published.lock().unwrap().push(target.to_string());
        Ok(())
    }

    fn take(counter: &Mutex<usize>) -> bool {
        let mut n = counter.lock().unwrap();
        if *n > 0 {
            *n -= 1;
            true
        } else {
            false
        }
    }
}

/// Wraps a broker; its sessions obey `faults`.
pub struct FaultyBroker {
    inner: Arc<dyn Broker>,
    pub faults: Arc<Faults>,
}

impl FaultyBroker {
    pub fn new(inner: Arc<dyn Broker>) -> Self {
        FaultyBroker { inner, faults: Arc::default() }
    }
}

#[async_trait]
impl Broker for FaultyBroker {
    async fn connect(&self, name: &str) -> Result<Arc<dyn Session>> {
        let inner = self.inner.connect(name).await?;
        self.faults.sessions.lock().unwrap().push(Arc::downgrade(&inner));
        Ok(Arc::new(FaultySession { inner, faults: self.faults.clone() }))
    }

    fn describe(&self) -> String {
        format!("faulty {}", self.inner.describe())
    }
}

struct FaultySession {
    inner: Arc<dyn Session>,
    faults: Arc<Faults>,
}

#[async_trait]
impl Session for FaultySession {
    async fn declare_exchange(&self, name: &str, kind: ExchangeKind) -> Result<()> {
        self.inner.declare_exchange(name, kind).await
    }
    async fn declare_queue(&self, spec: &QueueSpec) -> Result<String> {
        self.inner.declare_queue(spec).await
    }
    async fn bind(&self, queue: &str, exchange: &str, routing_key: &str) -> Result<()> {
        self.inner.bind(queue, exchange, routing_key).await
    }
    async fn delete_queue(&self, queue: &str) -> Result<()> {
        self.inner.delete_queue(queue).await
    }
    async fn delete_exchange(&self, exchange: &str) -> Result<()> {
        self.inner.delete_exchange(exchange).await
    }
    async fn queue_stats(&self, queue: &str) -> Result<Option<QueueStats>> {
        self.inner.queue_stats(queue).await
    }
    async fn publish(&self, exchange: &str, routing_key: &str, message: &Message) -> Result<()> {
        self.faults.check_publish(&format!("{exchange}/{routing_key}"))?;
        self.inner.publish(exchange, routing_key, message).await
    }
    async fn publish_nowait(&self, exchange: &str, routing_key: &str, message: &Message) -> Result<()> {
        self.inner.publish_nowait(exchange, routing_key, message).await
    }
    async fn subscribe(&self, queue: &str, tag: &str, prefetch: u16) -> Result<Box<dyn Subscription>> {
        let inner = self.inner.subscribe(queue, tag, prefetch).await?;
        Ok(Box::new(FaultySubscription { inner, faults: self.faults.clone() }))
    }
    fn lost(&self) -> CancellationToken {
        self.inner.lost()
    }
    fn lost_reason(&self) -> Option<String> {
        self.inner.lost_reason()
    }
    async fn close(&self) {
        if Faults::take(&self.faults.hung_closes) {
            return std::future::pending().await;
        }
        self.inner.close().await
    }
}

struct FaultySubscription {
    inner: Box<dyn Subscription>,
    faults: Arc<Faults>,
}

#[async_trait]
impl Subscription for FaultySubscription {
    async fn next(&mut self) -> Option<Result<Delivery>> {
        let mut delivery = match self.inner.next().await? {
            Ok(d) => d,
            Err(e) => return Some(Err(e)),
        };
        let inner = std::mem::replace(&mut delivery.acker, Box::new(NoAcker));
        delivery.acker =
            Box::new(FaultyAcker { inner, faults: self.faults.clone(), routing_key: delivery.routing_key.clone() });
        Some(Ok(delivery))
    }
    async fn cancel(&mut self) -> Result<()> {
        self.inner.cancel().await
    }
    async fn set_prefetch(&mut self, prefetch: u16) -> Result<()> {
        self.inner.set_prefetch(prefetch).await
    }
}

struct NoAcker;

#[async_trait]
impl Acker for NoAcker {
    async fn ack(&self, _: bool) -> Result<()> {
        Err(QueueError::Closed)
    }
    async fn nack(&self, _: bool) -> Result<()> {
        Err(QueueError::Closed)
    }
}

struct FaultyAcker {
    inner: Box<dyn Acker>,
    faults: Arc<Faults>,
    routing_key: String,
}

impl FaultyAcker {
    fn record(&self, s: Settled) {
        self.faults.settled.lock().unwrap().push(s);
    }
}

#[async_trait]
impl Acker for FaultyAcker {
    async fn ack(&self, multiple: bool) -> Result<()> {
        if Faults::take(&self.faults.hung_acks) {
            return std::future::pending().await;
        }
        if Faults::take(&self.faults.acks) {
            self.record(Settled::Failed { routing_key: self.routing_key.clone(), what: "ack" });
            return Err(QueueError::NotSettled("ack"));
        }
        self.inner.ack(multiple).await?;
        self.record(Settled::Ack { routing_key: self.routing_key.clone() });
        Ok(())
    }

    async fn nack(&self, requeue: bool) -> Result<()> {
        if Faults::take(&self.faults.nacks) {
            self.record(Settled::Failed { routing_key: self.routing_key.clone(), what: "nack" });
            return Err(QueueError::NotSettled("nack"));
        }
        self.inner.nack(requeue).await?;
        self.record(Settled::Nack { routing_key: self.routing_key.clone(), requeue });
        Ok(())
    }
}
