//! The hub's job publishing against real RabbitMQ and Postgres, running the real binary: the job topology
//! it declares, the outbox relay, and alerts that never hold up ingestion.

use std::time::{Duration, Instant};

use ainern2d_contract::{EventStatus, JobKind};
use ainern2d_tests::*;

mod hub_support;
use hub_support::*;

/// The next message on `queue`, from a plain lapin consumer (what a worker started later would see).
async fn first_message(channel: &lapin::Channel, queue: &str) -> lapin::message::Delivery {
    use futures_util::StreamExt;
    let mut consumer = channel
        .basic_consume(queue.into(), "test-consumer".into(), Default::default(), Default::default())
        .await
        .unwrap_or_else(|e| panic!("cannot consume {queue} (does it exist?): {e}"));
    let delivery = tokio::time::timeout(T, consumer.next()).await.expect("no message on the queue").unwrap().unwrap();
    delivery.ack(Default::default()).await.unwrap();
    delivery
}

fn has_header(delivery: &lapin::message::Delivery, name: &str) -> bool {
    delivery.properties.headers().as_ref().is_some_and(|h| h.inner().contains_key(name))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_submitted_to_a_fresh_prefix_waits_for_its_first_consumer() {
    let s = setup("hub-fresh").await;
    let token_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token_file.path(), "fresh-token\n").unwrap();
    let hub = s.hub(&format!("[api]\nadmin_token_file = \"{}\"\n", token_file.path().display())).await;
    // No worker has ever run on this prefix.
    let body = job(JobKind::Audio, "fresh-1", small_params(JobKind::Audio), serde_json::json!({}));
    let r = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/v1/jobs", hub.http_port))
        .bearer_auth("fresh-token")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let channel = s.conn.create_channel().await.unwrap();
    let delivery = first_message(&channel, &format!("{}.jobs.audio", s.prefix)).await;
    let sent: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap();
    assert_eq!(sent["job_id"], "fresh-1");
    assert!(!has_header(&delivery, ainern2d_contract::topology::REPLAY_HEADER), "a first publish is no replay");
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_recorded_by_a_hub_killed_before_publishing_reaches_its_queue() {
    let s = setup("hub-outbox").await;
    // What a hub killed between its insert and its publish leaves behind: the row, never published.
    let config =
        ainern2d_hub::store::DatabaseConfig { url: database_url(), schema: s.schema.clone(), max_connections: 1 };
    let store = ainern2d_hub::store::open(&config).await.unwrap();
    store.migrate().await.unwrap();
    let body = job(JobKind::Llm, "crashed-1", small_params(JobKind::Llm), serde_json::json!({}));
    let spec = serde_json::to_value(ainern2d_contract::parse_job(&body).unwrap()).unwrap();
    assert!(store.insert_submitted("crashed-1", "llm", &spec).await.unwrap());
    store.close().await;

    let _hub = s.hub("[outbox]\nrelay_after_ms = 500\nrelay_interval_ms = 100\n").await;
    let channel = s.conn.create_channel().await.unwrap();
    let delivery = first_message(&channel, &format!("{}.jobs.llm", s.prefix)).await;
    let sent: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap();
    assert_eq!(sent["job_id"], "crashed-1");
    // It may have been published before the crash: the worker runs its replay check first.
    assert!(has_header(&delivery, ainern2d_contract::topology::REPLAY_HEADER));
    let pool = pg(&s.schema).await;
    wait_count(&pool, "SELECT count(*) FROM jobs WHERE job_id = 'crashed-1' AND published_at IS NOT NULL", 1).await;
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_that_never_answers_does_not_hold_up_ingestion() {
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let webhook = format!("http://{}/api/v2/alerts", silent.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            held.push(conn);
        }
    });
    let s = setup("hub-webhook").await;
    let _hub = s.hub(&format!("[alerts]\nwebhook_url = \"{webhook}\"\ntimeout_ms = 60000\n")).await;
    // Three hot workers: three downgrade decisions, each an alert for the silent webhook.
    let start = chrono::Utc::now() - chrono::Duration::minutes(16);
    for worker in ["hot-1", "hot-2", "hot-3"] {
        s.hot_gpu_trace(worker, start).await;
    }
    let pool = pg(&s.schema).await;
    wait_count(&pool, "SELECT count(*) FROM policy_decisions", 3).await;
    // Events keep being committed while the alerts wait on the webhook.
    s.send(&event("after-alerts", 1, EventStatus::Succeeded, 0)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE job_id = 'after-alerts'")
            .fetch_one(&pool)
            .await
            .unwrap();
        if n == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "ingestion is blocked behind the alert webhook");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.cleanup().await;
}
