//! A tap on a prefix's events that survives the broker: a durable queue of its own bound to `job.#`,
//! consumed with acks and reconnected after every loss (the harness's `EventTap` uses an exclusive
//! queue, which a broker restart deletes with whatever it held). Every event is recorded, in arrival
//! order, and also sent to subscribers (the fault driver acts on them).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ainern2d_contract::Event;
use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use tokio::sync::broadcast;

pub struct DurableTap {
    pub queue: String,
    seen: Arc<Mutex<Vec<Event>>>,
    tx: broadcast::Sender<Event>,
    task: tokio::task::JoinHandle<()>,
}

impl DurableTap {
    /// Declares `<prefix>.chaos.tap` and starts consuming; returns once the queue is bound, so every
    /// event published from now on is seen.
    pub async fn start(url: &str, prefix: &str) -> DurableTap {
        let queue = format!("{prefix}.chaos.tap");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (tx, _) = broadcast::channel(4096);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let task =
            tokio::spawn(run(url.to_string(), prefix.to_string(), queue.clone(), seen.clone(), tx.clone(), ready_tx));
        tokio::time::timeout(Duration::from_secs(60), ready_rx)
            .await
            .expect("the event tap's queue is bound within 60 s")
            .unwrap();
        DurableTap { queue, seen, tx, task }
    }

    pub fn events(&self) -> Vec<Event> {
        self.seen.lock().unwrap().clone()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

impl Drop for DurableTap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(
    url: String,
    prefix: String,
    queue: String,
    seen: Arc<Mutex<Vec<Event>>>,
    tx: broadcast::Sender<Event>,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    loop {
        let _ = session(&url, &prefix, &queue, &seen, &tx, &mut ready).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn session(
    url: &str,
    prefix: &str,
    queue: &str,
    seen: &Mutex<Vec<Event>>,
    tx: &broadcast::Sender<Event>,
    ready: &mut Option<tokio::sync::oneshot::Sender<()>>,
) -> anyhow::Result<()> {
    // A paused broker accepts the TCP connection and never answers the handshake.
    let conn = tokio::time::timeout(Duration::from_secs(5), Connection::connect(url, ConnectionProperties::default()))
        .await??;
    let channel = conn.create_channel().await?;
    let exchange = format!("{prefix}.events");
    channel
        .exchange_declare(
            exchange.as_str().into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions { durable: true, ..Default::default() },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(queue.into(), QueueDeclareOptions { durable: true, ..Default::default() }, FieldTable::default())
        .await?;
    channel
        .queue_bind(
            queue.into(),
            exchange.as_str().into(),
            "job.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel.basic_qos(1000, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(queue.into(), "chaos-tap".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    if let Some(ready) = ready.take() {
        let _ = ready.send(());
    }
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        match serde_json::from_slice::<Event>(&delivery.data) {
            Ok(event) => {
                seen.lock().unwrap().push(event.clone());
                let _ = tx.send(event);
            }
            Err(e) => {
                eprintln!("chaos tap: an event that does not parse ({e}): {}", String::from_utf8_lossy(&delivery.data))
            }
        }
        delivery.ack(BasicAckOptions::default()).await?;
    }
    Ok(())
}
