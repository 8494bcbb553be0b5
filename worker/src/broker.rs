//! RabbitMQ (lapin): connecting, declaring the topology idempotently, publishing with confirms.
//! Only this module and `runner` know lapin.

use ainern2d_contract::JobKind;
use ainern2d_contract::topology::{MAX_PRIORITY, Topology};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("broker refused (nack) a publish to {0}")]
    Nacked(String),
}

pub async fn connect(url: &str, name: &str) -> Result<Connection, BrokerError> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    Ok(Connection::connect(url, props).await?)
}

fn args(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.to_string()))
}

/// Declares exchanges and queues for `kinds`. Safe to run from every process at every start: declarations
/// with the same arguments are no-ops.
pub async fn declare_topology(
    ch: &Channel,
    topo: &Topology,
    kinds: &[JobKind],
    retry_delays_ms: &[u64],
) -> Result<(), BrokerError> {
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    ch.exchange_declare(topo.events_exchange().into(), ExchangeKind::Topic, durable, FieldTable::default()).await?;
    ch.exchange_declare(topo.control_exchange().into(), ExchangeKind::Topic, durable, FieldTable::default()).await?;
    ch.exchange_declare(topo.dead_letter_exchange().into(), ExchangeKind::Fanout, durable, FieldTable::default())
        .await?;
    let queue = QueueDeclareOptions { durable: true, ..Default::default() };
    ch.queue_declare(topo.dead_letter_queue().into(), queue, FieldTable::default()).await?;
    ch.queue_bind(
        topo.dead_letter_queue().into(),
        topo.dead_letter_exchange().into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    for kind in kinds {
        let jobs = topo.job_queue(*kind);
        ch.queue_declare(
            jobs.as_str().into(),
            queue,
            args(&[
                ("x-max-priority", AMQPValue::ShortShortUInt(MAX_PRIORITY)),
                // What the broker itself rejects (e.g. a message nacked without requeue) still lands in the DLQ.
                ("x-dead-letter-exchange", long(&topo.dead_letter_exchange())),
            ]),
        )
        .await?;
        for (level, delay) in retry_delays_ms.iter().enumerate() {
            ch.queue_declare(
                topo.retry_queue(*kind, level).into(),
                queue,
                args(&[
                    ("x-message-ttl", AMQPValue::LongLongInt(*delay as i64)),
                    ("x-dead-letter-exchange", long("")),
                    ("x-dead-letter-routing-key", long(&jobs)),
                ]),
            )
            .await?;
        }
    }
    Ok(())
}

/// A channel in confirm mode; every publish that matters is awaited until the broker confirms it.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
}

pub fn persistent_json() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2).with_content_type("application/json".into())
}

impl Publisher {
    pub async fn new(conn: &Connection) -> Result<Self, BrokerError> {
        let channel = conn.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Publisher { channel })
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes and waits for the broker's confirm.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), BrokerError> {
        let confirm = self
            .channel
            .basic_publish(exchange.into(), routing_key.into(), BasicPublishOptions::default(), body, props)
            .await?
            .await?;
        if confirm.is_nack() {
            return Err(BrokerError::Nacked(format!("{exchange}/{routing_key}")));
        }
        Ok(())
    }

    /// Publishes without waiting for the confirm (progress-like events whose loss is harmless; ordering on
    /// the channel still holds).
    pub async fn publish_nowait(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), BrokerError> {
        drop(
            self.channel
                .basic_publish(exchange.into(), routing_key.into(), BasicPublishOptions::default(), body, props)
                .await?,
        );
        Ok(())
    }
}

/// Reads an integer header, whatever integer type the publisher used.
pub fn header_u32(props: &BasicProperties, name: &str) -> Option<u32> {
    let headers = props.headers().as_ref()?;
    let value = headers.inner().get(name)?;
    let n: i64 = match value {
        AMQPValue::ShortShortInt(v) => (*v).into(),
        AMQPValue::ShortShortUInt(v) => (*v).into(),
        AMQPValue::ShortInt(v) => (*v).into(),
        AMQPValue::ShortUInt(v) => (*v).into(),
        AMQPValue::LongInt(v) => (*v).into(),
        AMQPValue::LongUInt(v) => (*v).into(),
        AMQPValue::LongLongInt(v) => *v,
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.parse().ok()?,
        _ => return None,
    };
    u32::try_from(n).ok()
}

/// Copies the delivery's headers and sets `extra` on top.
pub fn headers_with(props: &BasicProperties, extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = props.headers().clone().unwrap_or_default();
    for (k, v) in extra {
        table.insert(ShortString::from(*k), v.clone());
    }
    table
}

pub fn text(s: &str) -> AMQPValue {
    long(s)
}
