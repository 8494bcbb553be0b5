//! `/v1/queues`: each job queue's backlog as the backlog rule sees it, read now — ready messages (a passive
//! declare on the publishing session), jobs in flight and the workers serving the kind (the status store) —
//! with the replicas the policy wants, and the outbox's unpublished jobs.

use std::sync::Arc;

use ainern2d_contract::JobKind;
use ainern2d_contract::topology::Topology;
use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;

use super::ApiResult;
use crate::Hub;

pub(super) async fn queues(State(hub): State<Arc<Hub>>) -> ApiResult {
    let topo = Topology::new(hub.config.broker.prefix.clone());
    let session = hub.publisher.session();
    let mut queues = Vec::new();
    for kind in JobKind::ALL {
        let queue = topo.job_queue(kind);
        // Unknown (null) while the broker is away or the queue is not declared: never a guessed 0.
        let stats = match &session {
            Some(s) => s.queue_stats(&queue).await.ok().flatten(),
            None => None,
        };
        let (ready, consumers) = (stats.map(|s| s.ready), stats.map(|s| s.consumers));
        let in_flight = hub.store.in_flight(kind.as_str()).await?;
        let replicas = hub.store.replicas(kind.as_str()).await?;
        let backlog = ready.map(|r| u64::from(r) + in_flight);
        let desired = match backlog {
            Some(b) => Some(hub.policy.lock().await.desired_replicas(kind.as_str(), b, replicas)),
            None => None,
        };
        queues.push(serde_json::json!({
            "kind": kind.as_str(),
            "queue": queue,
            "ready": ready,
            "consumers": consumers,
            "in_flight": in_flight,
            "backlog": backlog,
            "replicas": replicas,
            "desired_replicas": desired,
        }));
    }
    let body = serde_json::json!({
        "queues": queues,
        "outbox_pending": hub.metrics.outbox_pending.get(),
        "broker_connected": session.is_some(),
    });
    Ok(Json(body).into_response())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use ainern2d_queue::Broker;
    use ainern2d_queue::embedded::EmbeddedBroker;
    use tokio_util::sync::CancellationToken;

    use crate::Hub;
    use crate::config::Config;

    #[tokio::test]
    async fn the_queues_report_ready_and_in_flight_jobs_per_kind() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("read-token");
        std::fs::write(&token, "reader\n").unwrap();
        let toml = format!(
            "[broker]\nprefix = \"q\"\n[database]\nurl = \"sqlite://{}\"\n[api]\nread_token_file = \"{}\"\n",
            dir.path().join("hub.db").display(),
            token.display()
        );
        let config = Config::from_toml(&toml).unwrap();
        let store = crate::store::open(&config.database).await.unwrap();
        store.migrate().await.unwrap();
        let broker = Arc::new(EmbeddedBroker::new());
        let hub = Hub::new(config, store, broker.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/queues", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let task = tokio::spawn(crate::run(hub.clone(), listener, stop.clone()));
        for _ in 0..500 {
            if hub.readiness().ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(hub.readiness().ok(), "{:?}", hub.readiness());
        // Two audio jobs wait in their queue (declared by the hub's publishing session); one video job runs.
        let session = broker.connect("test").await.unwrap();
        for body in ["{}", "{}"] {
            session.publish("", "q.jobs.audio", &ainern2d_queue::Message::json(body)).await.unwrap();
        }
        let running = ainern2d_contract::Event::new(
            "v-1",
            Some(ainern2d_contract::JobKind::Video),
            1,
            "w-1",
            ainern2d_contract::EventStatus::Running,
            0,
        );
        session
            .publish(
                "q.events",
                &running.routing_key(),
                &ainern2d_queue::Message::json(serde_json::to_vec(&running).unwrap()),
            )
            .await
            .unwrap();
        let http = reqwest::Client::new();
        assert_eq!(http.get(&url).send().await.unwrap().status(), 401, "a read like any other");
        let of = |body: &serde_json::Value, k: &str| {
            body["queues"].as_array().unwrap().iter().find(|q| q["kind"] == k).unwrap().clone()
        };
        let mut body = serde_json::Value::Null;
        for _ in 0..500 {
            body = http.get(&url).bearer_auth("reader").send().await.unwrap().json().await.unwrap();
            if of(&body, "video")["in_flight"] == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let kind = |k: &str| of(&body, k);
        assert_eq!(kind("audio")["queue"], "q.jobs.audio");
        assert_eq!(kind("audio")["consumers"], 0, "nothing subscribed in this test: {body}");
        assert_eq!((kind("audio")["ready"].clone(), kind("audio")["backlog"].clone()), (2.into(), 2.into()), "{body}");
        assert_eq!(
            (kind("video")["in_flight"].clone(), kind("video")["backlog"].clone()),
            (1.into(), 1.into()),
            "{body}"
        );
        assert_eq!(kind("llm")["backlog"], 0, "{body}");
        assert_eq!(kind("llm")["desired_replicas"], 0, "no worker and a quiet rule: {body}");
        assert_eq!(body["broker_connected"], true);
        stop.cancel();
        task.await.unwrap().unwrap();
    }
}
