//! The job-queue boundary of ainern2d: the small AMQP-shaped interface that the worker and the hub use to
//! declare their topology, publish with confirms, consume with prefetch and manual acks, and read a queue's
//! depth. Two implementations sit behind it:
//!
//! - [`amqp::AmqpBroker`], RabbitMQ through lapin, the production engine that spreads jobs over any number
//!   of worker replicas;
//! - [`embedded::EmbeddedBroker`], an in-process broker with the same semantics (exchanges, priorities,
//!   message TTL with dead-lettering, prefetch, redelivery of what a closed channel left unacked) for the
//!   one-command local mode.
//!
//! One conformance suite (`tests/tests/queue.rs`) runs against both. Bodies are bytes: this crate knows
//! the contract's topology names (`topology` declares them for the worker and the hub alike) but never a
//! job or an event. It is the only crate that knows lapin. With the `faults` feature, `faults` wraps a
//! session to fail chosen publishes and settlements, for tests of the code above the boundary.

pub mod amqp;
pub mod embedded;
#[cfg(feature = "faults")]
pub mod faults;
mod topic;
pub mod topology;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

pub use topic::topic_matches;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker refused (nacked) a publish to {0}")]
    Nacked(String),
    #[error("no queue named `{0}`; it must be declared first")]
    NoQueue(String),
    #[error("no exchange named `{0}`; it must be declared first")]
    NoExchange(String),
    #[error("queue `{0}` is declared with different arguments")]
    Mismatch(String),
    #[error("the broker session is closed")]
    Closed,
    #[error("delivery {0} is already settled")]
    UnknownDelivery(u64),
    #[error("no queue took a mandatory message published to {0}; is the queue declared?")]
    Unroutable(String),
    #[error(
        "the broker client did not send the {0} (the delivery's channel is closed or the delivery was already settled)"
    )]
    NotSettled(&'static str),
}

impl QueueError {
    /// Every queue error is worth retrying on a fresh session except a declaration that can never succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, QueueError::Mismatch(_) | QueueError::UnknownDelivery(_))
    }

    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            QueueError::Amqp(_) => "amqp",
            QueueError::Nacked(_) => "nacked",
            QueueError::NoQueue(_) => "no_queue",
            QueueError::NoExchange(_) => "no_exchange",
            QueueError::Mismatch(_) => "mismatch",
            QueueError::Closed => "closed",
            QueueError::UnknownDelivery(_) => "unknown_delivery",
            QueueError::Unroutable(_) => "unroutable",
            QueueError::NotSettled(_) => "not_settled",
        }
    }
}

pub type Result<T, E = QueueError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages ready (deliveries not yet settled are not counted).
    pub ready: u32,
    /// Subscriptions on the queue, on every connection.
    pub consumers: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    /// Routing keys matched against binding patterns with `*` (one word) and `#` (any words).
    Topic,
    /// Every bound queue gets every message.
    Fanout,
}

/// A queue declaration. Declaring the same queue twice with the same spec is a no-op.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueSpec {
    /// Empty: the broker picks a unique name (returned by `declare_queue`).
    pub name: String,
    pub durable: bool,
    /// Deleted when the session that declared it ends.
    pub exclusive: bool,
    /// Messages with a higher priority (0..=max) are delivered first.
    pub max_priority: Option<u8>,
    /// Messages older than this are dead-lettered (or dropped without a dead-letter exchange).
    pub message_ttl_ms: Option<u64>,
    /// Where expired and rejected (nack without requeue) messages go; `""` is the default exchange.
    pub dead_letter_exchange: Option<String>,
    /// The routing key of dead letters; the message's own key when unset.
    pub dead_letter_routing_key: Option<String>,
    /// The queue is deleted once it has had no consumer and no declaration for this long (AMQP
    /// `x-expires`), with whatever it still holds: give its messages a shorter TTL to dead-letter them first.
    pub expires_ms: Option<u64>,
    /// Dead letters leave this queue only once their target has confirmed them. On RabbitMQ a quorum
    /// queue with `x-dead-letter-strategy: at-least-once` (3.10+; no priorities, never exclusive): a classic
    /// queue's dead-lettering is at-most-once, and a node killed soon after it loses the message. The
    /// in-process broker moves a dead letter in one step either way.
    pub durable_dead_letters: bool,
}

impl QueueSpec {
    pub fn durable(name: impl Into<String>) -> Self {
        QueueSpec { name: name.into(), durable: true, ..Default::default() }
    }
}

/// A header value. AMQP has more types; these are the ones the contract uses, and other types are not
/// carried across the boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    Int(i64),
    Text(String),
}

impl HeaderValue {
    pub fn as_int(&self) -> Option<i64> {
        match self {
            HeaderValue::Int(n) => Some(*n),
            HeaderValue::Text(s) => s.parse().ok(),
        }
    }

    pub fn as_text(&self) -> Option<&str> {
        match self {
            HeaderValue::Text(s) => Some(s),
            HeaderValue::Int(_) => None,
        }
    }
}

/// A message as published and as delivered.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Message {
    pub body: Bytes,
    pub headers: BTreeMap<String, HeaderValue>,
    pub priority: Option<u8>,
    pub message_id: Option<String>,
    pub content_type: Option<String>,
    /// Survives a broker restart (delivery mode 2).
    pub persistent: bool,
    /// A confirmed publish that no queue takes fails with [`QueueError::Unroutable`] instead of
    /// vanishing (AMQP's `mandatory` flag).
    pub mandatory: bool,
}

impl Message {
    /// A persistent JSON message.
    pub fn json(body: impl Into<Bytes>) -> Self {
        Message {
            body: body.into(),
            content_type: Some("application/json".into()),
            persistent: true,
            ..Default::default()
        }
    }

    pub fn with_header(mut self, name: &str, value: HeaderValue) -> Self {
        self.headers.insert(name.to_string(), value);
        self
    }

    pub fn with_priority(mut self, priority: Option<u8>) -> Self {
        self.priority = priority;
        self
    }

    /// See [`Message::mandatory`].
    pub fn mandatory(mut self) -> Self {
        self.mandatory = true;
        self
    }

    pub fn with_message_id(mut self, id: impl Into<String>) -> Self {
        self.message_id = Some(id.into());
        self
    }

    pub fn header_u32(&self, name: &str) -> Option<u32> {
        u32::try_from(self.headers.get(name)?.as_int()?).ok()
    }
}

/// Settles one delivery. A delivery that is never settled returns to its queue (flagged redelivered) when
/// its subscription and every other delivery of that subscription are gone, like an AMQP channel closing.
/// `Ok` means the settlement was sent; one the client could not send (closed channel, already settled) is
/// an error ([`QueueError::NotSettled`]), never a silent success.
#[async_trait]
pub trait Acker: Send + Sync {
    /// `multiple`: also every earlier unsettled delivery of the same subscription.
    async fn ack(&self, multiple: bool) -> Result<()>;
    /// `requeue`: back to the queue; otherwise dead-lettered when the queue has a dead-letter exchange.
    async fn nack(&self, requeue: bool) -> Result<()>;
}

pub struct Delivery {
    pub message: Message,
    pub exchange: String,
    pub routing_key: String,
    /// Delivered before and not settled then.
    pub redelivered: bool,
    pub acker: Box<dyn Acker>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("routing_key", &self.routing_key)
            .field("redelivered", &self.redelivered)
            .field("bytes", &self.message.body.len())
            .finish()
    }
}

/// One consumer on one queue.
#[async_trait]
pub trait Subscription: Send {
    /// The next delivery; `None` when the broker cancelled the consumer (queue deleted, node maintenance).
    async fn next(&mut self) -> Option<Result<Delivery>>;
    /// Stops deliveries. Deliveries already handed out can still be settled.
    async fn cancel(&mut self) -> Result<()>;
    /// Changes the prefetch limit of this subscription from now on (AMQP `basic.qos`); deliveries already
    /// handed out stay.
    async fn set_prefetch(&mut self, prefetch: u16) -> Result<()>;
}

/// How long closing a session may take: a client can wait for ever for the broker's answer on a connection
/// that is going away (a hub that did not exit within 20 s of SIGTERM, chaos round `0x2daa3530f39c7b62`).
pub const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Closes `session`, giving up after [`CLOSE_WAIT`]: the connection is dropped either way.
pub async fn close(session: &dyn Session) {
    if tokio::time::timeout(CLOSE_WAIT, session.close()).await.is_err() {
        tracing::warn!("the broker did not answer a session's close within {CLOSE_WAIT:?}; dropping it");
    }
}

/// A connection to the broker.
#[async_trait]
pub trait Session: Send + Sync {
    async fn declare_exchange(&self, name: &str, kind: ExchangeKind) -> Result<()>;
    /// Returns the queue's name (the generated one when `spec.name` is empty).
    async fn declare_queue(&self, spec: &QueueSpec) -> Result<String>;
    async fn bind(&self, queue: &str, exchange: &str, routing_key: &str) -> Result<()>;
    /// Deletes a queue and its messages; its consumers see their subscription end. A missing queue is fine.
    async fn delete_queue(&self, queue: &str) -> Result<()>;
    /// Deletes an exchange and its bindings. A missing exchange is fine.
    async fn delete_exchange(&self, exchange: &str) -> Result<()>;
    /// Messages ready in a queue (not counting deliveries not yet settled); `None` when it does not exist.
    /// A passive declaration: it renews the queue's `expires_ms`.
    async fn queue_depth(&self, queue: &str) -> Result<Option<u32>> {
        Ok(self.queue_stats(queue).await?.map(|s| s.ready))
    }
    /// [`Session::queue_depth`] and the queue's consumer count, in one passive declaration.
    async fn queue_stats(&self, queue: &str) -> Result<Option<QueueStats>>;
    /// Publishes and waits until the broker has taken responsibility for the message.
    async fn publish(&self, exchange: &str, routing_key: &str, message: &Message) -> Result<()>;
    /// Publishes without waiting for the confirm (progress-like messages whose loss is harmless); order
    /// with the session's other publishes is kept. Memory stays bounded: at most a fixed number of these
    /// may be unconfirmed at once, and a publish beyond that waits for the oldest confirm.
    async fn publish_nowait(&self, exchange: &str, routing_key: &str, message: &Message) -> Result<()>;
    /// Subscribes with at most `prefetch` unsettled deliveries (0: unlimited).
    async fn subscribe(&self, queue: &str, tag: &str, prefetch: u16) -> Result<Box<dyn Subscription>>;
    /// Fires when the session is lost (connection error, broker gone); `lost_reason` says why.
    fn lost(&self) -> CancellationToken;
    fn lost_reason(&self) -> Option<String>;
    async fn close(&self);
}

/// Opens sessions: the thing a program holds for the whole of its life.
#[async_trait]
pub trait Broker: Send + Sync {
    /// `name` shows up in the broker's connection list.
    async fn connect(&self, name: &str) -> Result<Arc<dyn Session>>;
    /// For logs: where this broker is (credentials masked).
    fn describe(&self) -> String;
}
