//! What the hub's integration tests share: a prefix and schema of their own, the real hub binary, a
//! worker on the same prefix, events published as a worker would, and Postgres polling.
#![allow(dead_code)] // each test file uses part of it

use std::time::{Duration, Instant};

use ainern2d_contract::{Event, EventStatus, HEARTBEAT_SCHEMA, Heartbeat, JobKind, SlotUsage, WorkerState};
use ainern2d_tests::*;
use sqlx::Row;

pub const T: Duration = Duration::from_secs(60);

pub struct Setup {
    pub prefix: String,
    pub schema: String,
    pub conn: lapin::Connection,
    pub channel: lapin::Channel,
}

pub async fn setup(name: &str) -> Setup {
    let prefix = unique(name);
    let schema = prefix.replace('-', "_");
    let conn = connect(&amqp_url()).await;
    let channel = confirm_channel(&conn).await;
    Setup { prefix, schema, conn, channel }
}

impl Setup {
    pub async fn hub(&self, extra: &str) -> Worker {
        let mut hub =
            Worker::spawn_bin("ainern2d-hub", &hub_config(&amqp_url(), &self.prefix, &self.schema, free_port(), extra));
        hub.wait_ready().await;
        hub
    }

    pub async fn publish(&self, routing_key: &str, body: &[u8]) {
        let confirm = self
            .channel
            .basic_publish(
                format!("{}.events", self.prefix).as_str().into(),
                routing_key.into(),
                Default::default(),
                body,
                lapin::BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
    }

    /// A ready worker on this test's prefix, with its own bucket; returns it with its id and HTTP port.
    pub async fn worker(&self) -> (Worker, String, u16) {
        create_bucket(&s3().await, &self.prefix.to_lowercase()).await;
        let port = free_port();
        let mut worker =
            Worker::spawn(&worker_config(&amqp_url(), &self.prefix, &self.prefix.to_lowercase(), port, ""));
        worker.wait_ready().await;
        (worker, format!("{}-w{port}", self.prefix), port)
    }

    /// Stops the worker and removes the queues and the bucket it used.
    pub async fn stop_worker(&self, mut worker: Worker) {
        worker.kill9();
        delete_topology(&self.channel, &self.prefix, 3).await;
        delete_bucket(&s3().await, &self.prefix.to_lowercase()).await;
    }

    pub async fn send(&self, event: &Event) {
        self.publish(&event.routing_key(), &serde_json::to_vec(event).unwrap()).await;
    }

    pub async fn cleanup(self) {
        let _ =
            self.channel.queue_delete(format!("{}.hub.events", self.prefix).as_str().into(), Default::default()).await;
        // The hub declares the job topology it publishes to, as a worker does.
        delete_topology(&self.channel, &self.prefix, 3).await;
        let _ = self.conn.close(200, "done".into()).await;
        drop_schema(&self.schema).await;
    }
}

pub fn event(job: &str, attempt: u32, status: EventStatus, seq: u32) -> Event {
    Event::new(job, Some(JobKind::Video), attempt, "w-1", status, seq)
}

pub async fn wait_count(pool: &sqlx::PgPool, sql: &str, n: i64) {
    let deadline = Instant::now() + T;
    loop {
        let got: i64 = sqlx::query_scalar(sql).fetch_one(pool).await.unwrap_or(-1);
        if got == n {
            return;
        }
        assert!(Instant::now() < deadline, "`{sql}` is {got}, expected {n}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn job_row(pool: &sqlx::PgPool, job: &str) -> (String, i32) {
    let row =
        sqlx::query("SELECT status, attempt FROM jobs WHERE job_id = $1").bind(job).fetch_one(pool).await.unwrap();
    (row.get("status"), row.get("attempt"))
}

pub fn heartbeat(worker: &str, sent_at: chrono::DateTime<chrono::Utc>) -> Heartbeat {
    Heartbeat {
        schema: HEARTBEAT_SCHEMA.into(),
        worker_id: worker.into(),
        host: "gpu-a".into(),
        version: "0.1.0".into(),
        state: WorkerState::Ready,
        sent_at,
        slots: [("video".to_string(), SlotUsage { total: 1, busy: 0 })].into(),
        models_loaded: Vec::new(),
        gpus: Vec::new(),
        downgrade: None,
        backends: Default::default(),
    }
}

impl Setup {
    /// Publishes 16 minutes of heartbeats (every 30 s from `start`) in which `worker`'s GPU is 95 % busy:
    /// enough for the GPU rule's 15-minute window.
    pub async fn hot_gpu_trace(&self, worker: &str, start: chrono::DateTime<chrono::Utc>) {
        for i in 0..=32 {
            let mut hb = heartbeat(worker, start + chrono::Duration::seconds(30 * i));
            hb.gpus = vec![ainern2d_contract::GpuStats {
                index: 0,
                name: "synthetic".into(),
                uuid: "GPU-test".into(),
                utilization_pct: 95,
                memory_used_bytes: 1,
                memory_total_bytes: 2,
                temperature_c: None,
                power_w: None,
                source: None,
            }];
            self.publish(&format!("worker.heartbeat.{worker}"), &serde_json::to_vec(&hb).unwrap()).await;
        }
    }
}
