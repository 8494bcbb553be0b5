//! RabbitMQ through lapin. A session is one connection with a confirm-mode channel for publishing, a
//! channel for declarations (re-opened when a failed declaration closed it) and one channel per
//! subscription, so that a subscription's prefetch is its own and its deliveries are requeued by the broker
//! when the subscription and its deliveries are dropped (the channel closes with the last handle).
//!
//! Unawaited publishes (`publish_nowait`) stay on the confirm channel, so they keep their order with the
//! confirmed ones, but their confirms are not dropped: lapin keeps a dropped, unresolved confirm until
//! `wait_for_confirms` (memory that grows with every progress event). A task of the session awaits them
//! in order instead, through a bounded queue that makes a publisher wait when too many are unconfirmed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    Acker, Broker, Delivery, ExchangeKind, HeaderValue, Message, QueueError, QueueSpec, QueueStats, Result, Session,
    Subscription,
};

/// RabbitMQ at an `amqp://` URL.
pub struct AmqpBroker {
    url: String,
}

impl AmqpBroker {
    pub fn new(url: impl Into<String>) -> Self {
        AmqpBroker { url: url.into() }
    }
}

#[async_trait]
impl Broker for AmqpBroker {
    async fn connect(&self, name: &str) -> Result<Arc<dyn Session>> {
        let props = ConnectionProperties::default().with_connection_name(name.into());
        let conn = Connection::connect(&self.url, props).await?;
        let publisher = conn.create_channel().await?;
        publisher.confirm_select(ConfirmSelectOptions::default()).await?;
        let admin = conn.create_channel().await?;
        let lost = CancellationToken::new();
        let reason = Arc::new(OnceLock::new());
        {
            let (lost, reason) = (lost.clone(), reason.clone());
            let mut events = conn.events_listener();
            tokio::spawn(async move {
                while let Some(event) = events.next().await {
                    if let lapin::Event::Error(e) = event {
                        let _ = reason.set(format!("connection error: {e}"));
                        lost.cancel();
                        break;
                    }
                }
            });
        }
        let (unconfirmed, pending) = mpsc::channel(MAX_UNCONFIRMED);
        tokio::spawn(await_confirms(pending));
        Ok(Arc::new(AmqpSession { conn, publisher, admin: Mutex::new(admin), lost, reason, unconfirmed }))
    }

    fn describe(&self) -> String {
        mask_url(&self.url)
    }
}

/// `amqp://user:secret@host/vhost` → `amqp://user:***@host/vhost`.
pub fn mask_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.find(':') {
                Some(colon) => format!("{}{}:***{}", &url[..scheme + 3], &creds[..colon], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// The prefetch limit is the channel's (RabbitMQ's `global` flag), not the consumer's: a subscription is
/// one consumer on its own channel either way, but RabbitMQ applies a changed per-consumer limit only to
/// consumers started after it, while a changed channel limit applies at once (a downgrade lowers it).
const CHANNEL_QOS: BasicQosOptions = BasicQosOptions { global: true };

/// Unawaited publishes that may be unconfirmed at once before `publish_nowait` waits.
const MAX_UNCONFIRMED: usize = 1024;

struct AmqpSession {
    conn: Connection,
    publisher: Channel,
    admin: Mutex<Channel>,
    lost: CancellationToken,
    reason: Arc<OnceLock<String>>,
    /// Confirms of unawaited publishes, resolved in order by `await_confirms`.
    unconfirmed: mpsc::Sender<(String, lapin::PublisherConfirm)>,
}

/// Resolves the confirms of unawaited publishes so lapin can forget them; a nack or a return is logged
/// (the publisher chose not to wait, so nobody else will hear of it). Ends with the session's channel.
async fn await_confirms(mut pending: mpsc::Receiver<(String, lapin::PublisherConfirm)>) {
    while let Some((target, confirm)) = pending.recv().await {
        match confirm.await {
            Ok(c) if c.is_nack() => tracing::warn!(%target, "the broker nacked an unawaited publish"),
            Ok(c) => {
                if c.take_message().is_some() {
                    tracing::debug!(%target, "an unawaited publish was unroutable");
                }
            }
            // The channel is gone: every later confirm fails the same way, and the session is lost.
            Err(_) => {}
        }
    }
}

impl AmqpSession {
    /// The declaration channel; a declaration the broker refused closed the last one.
    async fn admin(&self) -> Result<Channel> {
        let current = self.admin.lock().expect("admin channel lock").clone();
        if current.status().connected() {
            return Ok(current);
        }
        let fresh = self.conn.create_channel().await?;
        *self.admin.lock().expect("admin channel lock") = fresh.clone();
        Ok(fresh)
    }
}

impl AmqpSession {
    async fn send(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &Message,
    ) -> lapin::Result<lapin::PublisherConfirm> {
        let options = BasicPublishOptions { mandatory: message.mandatory, ..Default::default() };
        let props = properties(message);
        self.publisher.basic_publish(exchange.into(), routing_key.into(), options, &message.body, props).await
    }
}

fn table(pairs: Vec<(&str, AMQPValue)>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert(ShortString::from(k), v);
    }
    t
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.to_string()))
}

fn properties(message: &Message) -> BasicProperties {
    let mut props = BasicProperties::default();
    if message.persistent {
        props = props.with_delivery_mode(2);
    }
    if let Some(ct) = &message.content_type {
        props = props.with_content_type(ct.as_str().into());
    }
    if let Some(p) = message.priority {
        props = props.with_priority(p);
    }
    if let Some(id) = &message.message_id {
        props = props.with_message_id(id.as_str().into());
    }
    if !message.headers.is_empty() {
        let headers = message
            .headers
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    HeaderValue::Int(n) => AMQPValue::LongLongInt(*n),
                    HeaderValue::Text(s) => long(s),
                };
                (k.as_str(), v)
            })
            .collect();
        props = props.with_headers(table(headers));
    }
    props
}

fn header_value(value: &AMQPValue) -> Option<HeaderValue> {
    Some(match value {
        AMQPValue::ShortShortInt(v) => HeaderValue::Int((*v).into()),
        AMQPValue::ShortShortUInt(v) => HeaderValue::Int((*v).into()),
        AMQPValue::ShortInt(v) => HeaderValue::Int((*v).into()),
        AMQPValue::ShortUInt(v) => HeaderValue::Int((*v).into()),
        AMQPValue::LongInt(v) => HeaderValue::Int((*v).into()),
        AMQPValue::LongUInt(v) => HeaderValue::Int((*v).into()),
        AMQPValue::LongLongInt(v) => HeaderValue::Int(*v),
        AMQPValue::LongString(s) => HeaderValue::Text(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => HeaderValue::Text(s.as_str().to_string()),
        // Broker bookkeeping such as `x-death` (arrays of tables) is not part of the contract.
        _ => return None,
    })
}

fn message(props: &BasicProperties, data: Vec<u8>) -> Message {
    let headers: BTreeMap<String, HeaderValue> = props
        .headers()
        .as_ref()
        .map(|h| h.inner().iter().filter_map(|(k, v)| Some((k.as_str().to_string(), header_value(v)?))).collect())
        .unwrap_or_default();
    Message {
        body: data.into(),
        headers,
        priority: *props.priority(),
        message_id: props.message_id().as_ref().map(|s| s.as_str().to_string()),
        content_type: props.content_type().as_ref().map(|s| s.as_str().to_string()),
        persistent: props.delivery_mode() == &Some(2),
        mandatory: false,
    }
}

#[async_trait]
impl Session for AmqpSession {
    async fn declare_exchange(&self, name: &str, kind: ExchangeKind) -> Result<()> {
        let kind = match kind {
            ExchangeKind::Topic => lapin::ExchangeKind::Topic,
            ExchangeKind::Fanout => lapin::ExchangeKind::Fanout,
        };
        let options = ExchangeDeclareOptions { durable: true, ..Default::default() };
        self.admin().await?.exchange_declare(name.into(), kind, options, FieldTable::default()).await?;
        Ok(())
    }

    async fn declare_queue(&self, spec: &QueueSpec) -> Result<String> {
        let mut args = Vec::new();
        if let Some(p) = spec.max_priority {
            args.push(("x-max-priority", AMQPValue::ShortShortUInt(p)));
        }
        if let Some(ttl) = spec.message_ttl_ms {
            args.push(("x-message-ttl", AMQPValue::LongLongInt(ttl as i64)));
        }
        if let Some(dlx) = &spec.dead_letter_exchange {
            args.push(("x-dead-letter-exchange", long(dlx)));
        }
        if let Some(key) = &spec.dead_letter_routing_key {
            args.push(("x-dead-letter-routing-key", long(key)));
        }
        if let Some(expires) = spec.expires_ms {
            args.push(("x-expires", AMQPValue::LongLongInt(expires as i64)));
        }
        if spec.durable_dead_letters {
            args.push(("x-queue-type", long("quorum")));
            args.push(("x-dead-letter-strategy", long("at-least-once")));
            // At-least-once dead-lettering requires it: a full queue refuses publishes instead of dropping.
            args.push(("x-overflow", long("reject-publish")));
        }
        let options = QueueDeclareOptions {
            durable: spec.durable,
            exclusive: spec.exclusive,
            auto_delete: spec.exclusive,
            ..Default::default()
        };
        let channel = self.admin().await?;
        match channel.queue_declare(spec.name.as_str().into(), options, table(args)).await {
            Ok(queue) => Ok(queue.name().as_str().to_string()),
            Err(e) if is_precondition_failed(&e) => Err(QueueError::Mismatch(spec.name.clone())),
            Err(e) => Err(e.into()),
        }
    }

    async fn bind(&self, queue: &str, exchange: &str, routing_key: &str) -> Result<()> {
        self.admin()
            .await?
            .queue_bind(
                queue.into(),
                exchange.into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }

    async fn delete_queue(&self, queue: &str) -> Result<()> {
        self.admin().await?.queue_delete(queue.into(), QueueDeleteOptions::default()).await?;
        Ok(())
    }

    async fn delete_exchange(&self, exchange: &str) -> Result<()> {
        self.admin().await?.exchange_delete(exchange.into(), ExchangeDeleteOptions::default()).await?;
        Ok(())
    }

    async fn queue_stats(&self, queue: &str) -> Result<Option<QueueStats>> {
        // A passive declare of a missing queue closes its channel: use a channel of its own.
        let channel = self.conn.create_channel().await?;
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        match channel.queue_declare(queue.into(), passive, FieldTable::default()).await {
            Ok(q) => {
                let _ = channel.close(200, "done".into()).await;
                Ok(Some(QueueStats { ready: q.message_count(), consumers: q.consumer_count() }))
            }
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn publish(&self, exchange: &str, routing_key: &str, message: &Message) -> Result<()> {
        let confirm = self.send(exchange, routing_key, message).await?.await?;
        if confirm.is_nack() {
            return Err(QueueError::Nacked(format!("{exchange}/{routing_key}")));
        }
        // A mandatory message that no queue took comes back (basic.return) before its ack.
        if confirm.take_message().is_some() {
            return Err(QueueError::Unroutable(target(exchange, routing_key)));
        }
        Ok(())
    }

    async fn publish_nowait(&self, exchange: &str, routing_key: &str, message: &Message) -> Result<()> {
        let confirm = self.send(exchange, routing_key, message).await?;
        self.unconfirmed.send((target(exchange, routing_key), confirm)).await.map_err(|_| QueueError::Closed)
    }

    async fn subscribe(&self, queue: &str, tag: &str, prefetch: u16) -> Result<Box<dyn Subscription>> {
        let channel = self.conn.create_channel().await?;
        channel.basic_qos(prefetch, CHANNEL_QOS).await?;
        let consumer = match channel
            .basic_consume(queue.into(), tag.into(), BasicConsumeOptions::default(), FieldTable::default())
            .await
        {
            Ok(c) => c,
            Err(e) if is_not_found(&e) => return Err(QueueError::NoQueue(queue.to_string())),
            Err(e) => return Err(e.into()),
        };
        Ok(Box::new(AmqpSubscription { channel, consumer, tag: tag.to_string() }))
    }

    fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    fn lost_reason(&self) -> Option<String> {
        self.reason.get().cloned()
    }

    async fn close(&self) {
        let _ = self.conn.close(200, "closing".into()).await;
    }
}

/// `exchange/key`, with the default exchange spelled out.
fn target(exchange: &str, routing_key: &str) -> String {
    let exchange = if exchange.is_empty() { "(default exchange)" } else { exchange };
    format!("{exchange}/{routing_key}")
}

fn reply_code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.get_id()),
        _ => None,
    }
}

fn is_precondition_failed(e: &lapin::Error) -> bool {
    reply_code(e) == Some(406)
}

fn is_not_found(e: &lapin::Error) -> bool {
    reply_code(e) == Some(404)
}

struct AmqpSubscription {
    channel: Channel,
    consumer: lapin::Consumer,
    tag: String,
}

#[async_trait]
impl Subscription for AmqpSubscription {
    async fn next(&mut self) -> Option<Result<Delivery>> {
        let d = match self.consumer.next().await? {
            Ok(d) => d,
            Err(e) => return Some(Err(e.into())),
        };
        Some(Ok(Delivery {
            message: message(&d.properties, d.data),
            exchange: d.exchange.as_str().to_string(),
            routing_key: d.routing_key.as_str().to_string(),
            redelivered: d.redelivered,
            // The acker keeps the channel open: it closes (and the broker requeues what is unsettled) only
            // when the subscription and all of its deliveries are gone.
            acker: Box::new(AmqpAcker { acker: d.acker, _channel: self.channel.clone() }),
        }))
    }

    async fn cancel(&mut self) -> Result<()> {
        self.channel.basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default()).await?;
        Ok(())
    }

    async fn set_prefetch(&mut self, prefetch: u16) -> Result<()> {
        self.channel.basic_qos(prefetch, CHANNEL_QOS).await?;
        Ok(())
    }
}

struct AmqpAcker {
    acker: lapin::Acker,
    _channel: Channel,
}

/// How long a settlement may take: lapin's can wait for ever on a connection it has lost (a hub whose ack
/// never returned after a broker crash stopped ingesting, chaos round `0x58567b048dbe8bd4`).
const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

#[async_trait]
impl Acker for AmqpAcker {
    async fn ack(&self, multiple: bool) -> Result<()> {
        match tokio::time::timeout(SETTLE_WAIT, self.acker.ack(BasicAckOptions { multiple })).await {
            Ok(sent_or_not) => sent(sent_or_not?, "ack"),
            Err(_) => Err(QueueError::NotSettled("ack (no answer from the connection)")),
        }
    }

    async fn nack(&self, requeue: bool) -> Result<()> {
        let nack = self.acker.nack(BasicNackOptions { requeue, ..Default::default() });
        match tokio::time::timeout(SETTLE_WAIT, nack).await {
            Ok(sent_or_not) => sent(sent_or_not?, "nack"),
            Err(_) => Err(QueueError::NotSettled("nack (no answer from the connection)")),
        }
    }
}

/// lapin answers `Ok(false)` for a settlement it did not send (a used or poisoned acker): not done.
fn sent(sent: bool, what: &'static str) -> Result<()> {
    if sent { Ok(()) } else { Err(QueueError::NotSettled(what)) }
}

#[cfg(test)]
mod tests {
    use super::mask_url;

    #[test]
    fn masks_the_password() {
        assert_eq!(mask_url("amqp://guest:guest@127.0.0.1:5672/%2f"), "amqp://guest:***@127.0.0.1:5672/%2f");
        assert_eq!(mask_url("amqp://127.0.0.1:5672"), "amqp://127.0.0.1:5672");
    }
}
