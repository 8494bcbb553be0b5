//! One conformance suite for every implementation of the hub's status store boundary: each test body runs
//! against Postgres (a schema of its own, dropped afterwards), a SQLite file and an in-memory SQLite database.
//! A Postgres that cannot be reached fails the test with a message that says how to start it.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use ainern2d_contract::{
    ErrorCode, ErrorInfo, Event, EventStatus, HEARTBEAT_SCHEMA, Heartbeat, JobKind, OutputObject, Progress, SlotUsage,
    WorkerState,
};
use ainern2d_hub::status::JobStatus;
use ainern2d_hub::store::{self, BatchStats, DatabaseConfig, Finished, JobFilter, StatusStore, Submission};
use ainern2d_tests::*;
use chrono::{DateTime, TimeZone, Utc};
use futures_util::FutureExt;

type Store = Arc<dyn StatusStore>;

/// Runs `body`, closes the store whether it passed or not, then `cleanup`, then passes a panic on.
async fn run_on(store: Store, body: impl Future<Output = ()>, cleanup: impl Future<Output = ()>) {
    let outcome = AssertUnwindSafe(body).catch_unwind().await;
    store.close().await;
    cleanup.await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn on_postgres<F, Fut>(body: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    let schema = unique("store").replace('-', "_");
    let config = DatabaseConfig { url: database_url(), schema: schema.clone(), max_connections: 4 };
    let store = store::open(&config).await.unwrap_or_else(|e| {
        panic!("cannot reach Postgres at {} ({e}): run scripts/test.sh, which starts it", database_url())
    });
    store.migrate().await.unwrap();
    run_on(store.clone(), body(store), drop_schema(&schema)).await;
}

async fn on_sqlite<F, Fut>(body: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    // The file does not exist yet: opening creates it.
    let url = format!("sqlite://{}", dir.path().join("hub.db").display());
    let config = DatabaseConfig { url, schema: "public".into(), max_connections: 4 };
    let store = store::open(&config).await.unwrap();
    store.migrate().await.unwrap();
    run_on(store.clone(), body(store), async {}).await;
}

async fn on_sqlite_memory<F, Fut>(body: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    let config = DatabaseConfig { url: "sqlite::memory:".into(), schema: "public".into(), max_connections: 4 };
    let store = store::open(&config).await.unwrap();
    store.migrate().await.unwrap();
    run_on(store.clone(), body(store), async {}).await;
}

/// Each name is a test body below, run once per implementation.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $( #[tokio::test(flavor = "multi_thread")] async fn $name() { super::on_postgres(super::$name).await } )*
        }
        mod sqlite {
            $( #[tokio::test(flavor = "multi_thread")] async fn $name() { super::on_sqlite(super::$name).await } )*
        }
        mod sqlite_memory {
            $( #[tokio::test(flavor = "multi_thread")] async fn $name() { super::on_sqlite_memory(super::$name).await } )*
        }
    };
}

conformance!(
    a_batch_moves_the_job_row,
    an_event_id_is_applied_at_most_once,
    late_and_older_attempt_events_are_recorded_not_applied,
    every_order_of_a_retried_job_converges,
    heartbeats_upsert_and_an_older_one_does_not_overwrite,
    stale_workers_are_marked_lost_once,
    submitted_jobs_insert_once_unpublished_until_marked,
    the_outbox_lists_old_unpublished_queued_jobs_only,
    jobs_list_with_filters_and_keyset_pagination,
    job_events_come_in_attempt_and_sequence_order,
    decisions_come_back_newest_first,
    in_flight_and_replicas_are_counted_per_kind,
);

fn at(s: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap() + chrono::Duration::seconds(s)
}

/// An event of `job` (kind video) emitted by `worker` at `at(t)`.
fn ev(job: &str, attempt: u32, status: EventStatus, seq: u32, t: i64) -> Event {
    let mut e = Event::new(job, Some(JobKind::Video), attempt, &format!("w-{attempt}"), status, seq);
    e.emitted_at = at(t);
    e
}

fn heartbeat(worker: &str, t: i64, kinds: &[&str]) -> Heartbeat {
    Heartbeat {
        schema: HEARTBEAT_SCHEMA.into(),
        worker_id: worker.into(),
        host: format!("host-at-{t}"),
        version: "0.1.0".into(),
        state: WorkerState::Ready,
        sent_at: at(t),
        slots: kinds.iter().map(|k| (k.to_string(), SlotUsage { total: 2, busy: 1 })).collect(),
        models_loaded: vec!["mock".into()],
        gpus: Vec::new(),
        downgrade: None,
        backends: Default::default(),
    }
}

async fn apply(store: &Store, events: &[Event]) -> BatchStats {
    store.apply_batch(events, &[]).await.unwrap().0
}

async fn status_of(store: &Store, job: &str) -> (String, i32) {
    let row = store.get_job(job).await.unwrap().unwrap_or_else(|| panic!("job {job} has no row"));
    (row.status, row.attempt)
}

async fn a_batch_moves_the_job_row(store: Store) {
    let spec = serde_json::json!({"job_id": "j", "kind": "video"});
    assert!(store.insert_submitted("j", "video", &spec).await.unwrap());
    let submitted = store.get_job("j").await.unwrap().unwrap().submitted_at.expect("submitted_at is set");

    let mut progress = ev("j", 1, EventStatus::Progress, 1, 2);
    progress.progress =
        Some(Progress { fraction: 0.5, stage: "inference".into(), message: None, tokens: None, tokens_per_s: None });
    let mut done = ev("j", 1, EventStatus::Succeeded, 2, 3);
    let output = OutputObject {
        name: "video.mp4".into(),
        bucket: "b".into(),
        key: "p/j/video.mp4".into(),
        size: 42,
        sha256: "ab".repeat(32),
        content_type: "video/mp4".into(),
        presigned_url: None,
    };
    done.outputs = vec![output.clone()];
    done.timings_ms = [("total".to_string(), 1500.0)].into();
    let batch = [ev("j", 1, EventStatus::Running, 0, 1), progress, done];

    let (stats, finished) = store.apply_batch(&batch, &[]).await.unwrap();
    assert_eq!(stats, BatchStats { applied: 3, ignored: 0, duplicates: 0, heartbeats: 0 });
    let e2e = (at(3) - submitted).num_milliseconds() as f64 / 1e3;
    assert_eq!(finished, [Finished { job_id: "j".into(), status: JobStatus::Succeeded, e2e_s: Some(e2e) }]);

    let row = store.get_job("j").await.unwrap().unwrap();
    assert_eq!((row.status.as_str(), row.attempt), ("succeeded", 1));
    assert_eq!((row.kind.as_deref(), row.worker_id.as_deref()), (Some("video"), Some("w-1")));
    assert_eq!((row.submitted_at, row.accepted_at), (Some(submitted), None));
    assert_eq!((row.started_at, row.finished_at), (Some(at(1)), Some(at(3))));
    assert_eq!(row.outputs, Some(serde_json::to_value([output]).unwrap()));
    assert_eq!(row.timings_ms, Some(serde_json::json!({"total": 1500.0})));
    assert_eq!(row.progress, Some(serde_json::json!({"fraction": 0.5, "stage": "inference"})));
    assert_eq!(row.error, None);
    assert!(row.updated_at.is_some());
    assert_eq!(store.job_status("j").await.unwrap().as_deref(), Some("succeeded"));
    assert_eq!(store.get_job("nope").await.unwrap(), None);
    assert_eq!(store.job_status("nope").await.unwrap(), None);

    // A failure records its error; a job first heard of through an event gets a row without a submission.
    let mut failed = ev("k", 1, EventStatus::Failed, 0, 5);
    failed.error = Some(ErrorInfo {
        code: ErrorCode::InvalidField,
        message: "bad prompt".into(),
        retryable: false,
        field: Some("params.prompt".into()),
    });
    apply(&store, &[failed.clone()]).await;
    let row = store.get_job("k").await.unwrap().unwrap();
    assert_eq!((row.status.as_str(), row.submitted_at), ("failed", None));
    assert_eq!(row.error, Some(serde_json::to_value(&failed.error).unwrap()));
}

async fn an_event_id_is_applied_at_most_once(store: Store) {
    let running = ev("j", 1, EventStatus::Running, 0, 1);
    let progress = ev("j", 1, EventStatus::Progress, 1, 2);
    let done = ev("j", 1, EventStatus::Succeeded, 2, 3);

    let stats = apply(&store, &[running.clone(), running.clone(), progress.clone()]).await;
    assert_eq!((stats.applied, stats.ignored, stats.duplicates), (2, 0, 1));
    let (stats, finished) = store.apply_batch(&[running, progress, done.clone(), done.clone()], &[]).await.unwrap();
    assert_eq!((stats.applied, stats.ignored, stats.duplicates), (1, 0, 3));
    assert_eq!(finished.len(), 1);
    // A redelivered terminal event does not end the job a second time.
    let (stats, finished) = store.apply_batch(&[done], &[]).await.unwrap();
    assert_eq!((stats.applied, stats.duplicates, finished.len()), (0, 1, 0));

    let events = store.job_events("j").await.unwrap();
    assert_eq!(events.iter().map(|e| e.event_id.as_str()).collect::<Vec<_>>(), ["j/1/0", "j/1/1", "j/1/succeeded"]);
    assert!(events.iter().all(|e| e.applied));
    assert_eq!(status_of(&store, "j").await, ("succeeded".into(), 1));
}

async fn late_and_older_attempt_events_are_recorded_not_applied(store: Store) {
    // Terminal is final: a progress after succeeded, and a conflicting outcome, do not move the job.
    apply(&store, &[ev("a", 1, EventStatus::Running, 0, 1), ev("a", 1, EventStatus::Succeeded, 2, 3)]).await;
    let stats = apply(&store, &[ev("a", 1, EventStatus::Progress, 1, 2), ev("a", 1, EventStatus::Failed, 3, 4)]).await;
    assert_eq!((stats.applied, stats.ignored), (0, 2));
    let row = store.get_job("a").await.unwrap().unwrap();
    assert_eq!((row.status.as_str(), row.finished_at), ("succeeded", Some(at(3))));

    // An older attempt after a newer one, in the same batch and in a later one.
    let stats = apply(&store, &[ev("b", 2, EventStatus::Running, 0, 5), ev("b", 1, EventStatus::Retrying, 2, 4)]).await;
    assert_eq!((stats.applied, stats.ignored), (1, 1));
    let stats = apply(&store, &[ev("b", 1, EventStatus::Progress, 1, 3)]).await;
    assert_eq!((stats.applied, stats.ignored), (0, 1));
    let row = store.get_job("b").await.unwrap().unwrap();
    assert_eq!((row.status.as_str(), row.attempt, row.worker_id.as_deref()), ("running", 2, Some("w-2")));

    // A stale event of the same attempt (running after running) is not applied either.
    let stats = apply(&store, &[ev("b", 2, EventStatus::Accepted, 1, 6)]).await;
    assert_eq!((stats.applied, stats.ignored), (0, 1));

    let applied =
        |events: Vec<store::JobEventRow>| events.into_iter().map(|e| (e.event_id, e.applied)).collect::<Vec<_>>();
    assert_eq!(
        applied(store.job_events("a").await.unwrap()),
        [("a/1/0".into(), true), ("a/1/1".into(), false), ("a/1/succeeded".into(), true), ("a/1/failed".into(), false)]
    );
    assert_eq!(
        applied(store.job_events("b").await.unwrap()),
        [("b/1/1".into(), false), ("b/1/retrying".into(), false), ("b/2/0".into(), true), ("b/2/1".into(), false)]
    );
}

/// All 120 orders of a retried job's five events, half delivered one event per batch, half in one batch:
/// every job ends with the same status, attempt, outcome and worker.
async fn every_order_of_a_retried_job_converges(store: Store) {
    let template = |job: &str| {
        let mut done = ev(job, 2, EventStatus::Succeeded, 1, 5);
        done.outputs = vec![OutputObject {
            name: "completion.json".into(),
            bucket: "b".into(),
            key: format!("p/{job}/completion.json"),
            size: 7,
            sha256: "cd".repeat(32),
            content_type: "application/json".into(),
            presigned_url: None,
        }];
        done.timings_ms = [("total".to_string(), 10.0)].into();
        vec![
            ev(job, 1, EventStatus::Running, 0, 1),
            ev(job, 1, EventStatus::Progress, 1, 2),
            ev(job, 1, EventStatus::Retrying, 2, 3),
            ev(job, 2, EventStatus::Running, 0, 4),
            done,
        ]
    };
    let mut orders: Vec<Vec<usize>> = vec![vec![]];
    for _ in 0..5 {
        orders = orders
            .iter()
            .flat_map(|o| (0..5).filter(|i| !o.contains(i)).map(move |i| [o.clone(), vec![i]].concat()))
            .collect();
    }
    assert_eq!(orders.len(), 120);
    for (n, order) in orders.iter().enumerate() {
        let job = format!("p{n:03}");
        let events = template(&job);
        let shuffled: Vec<Event> = order.iter().map(|i| events[*i].clone()).collect();
        if n % 2 == 0 {
            for e in &shuffled {
                apply(&store, std::slice::from_ref(e)).await;
            }
        } else {
            apply(&store, &shuffled).await;
        }
    }
    let rows = store.list_jobs(&JobFilter { limit: 1000, ..Default::default() }).await.unwrap();
    assert_eq!(rows.len(), 120);
    for row in rows {
        let outputs = row.outputs.as_ref().and_then(|o| o[0]["key"].as_str()).map(str::to_owned);
        assert_eq!(
            (row.status.as_str(), row.attempt, row.worker_id.as_deref(), row.finished_at),
            ("succeeded", 2, Some("w-2"), Some(at(5))),
            "{}",
            row.job_id
        );
        assert_eq!(outputs, Some(format!("p/{}/completion.json", row.job_id)));
        assert_eq!(row.timings_ms, Some(serde_json::json!({"total": 10.0})));
    }
}

async fn heartbeats_upsert_and_an_older_one_does_not_overwrite(store: Store) {
    let (stats, _) = store.apply_batch(&[], &[heartbeat("w1", 10, &["video"])]).await.unwrap();
    assert_eq!(stats.heartbeats, 1);
    let workers = store.list_workers().await.unwrap();
    assert_eq!(workers.len(), 1);
    let w = &workers[0];
    assert_eq!((w.worker_id.as_str(), w.host.as_str(), w.state.as_str()), ("w1", "host-at-10", "ready"));
    assert_eq!((w.last_heartbeat_at, w.lost, w.downgrade.as_deref()), (at(10), false, None));
    assert_eq!(w.slots, serde_json::json!({"video": {"total": 2, "busy": 1}}));
    assert_eq!((w.models_loaded.clone(), w.gpus.clone()), (serde_json::json!(["mock"]), serde_json::json!([])));
    assert!(store.worker_exists("w1").await.unwrap());
    assert!(!store.worker_exists("w2").await.unwrap());

    // Reordered: the older heartbeat arrives after the newer one, in a later batch and in the same batch.
    store.apply_batch(&[], &[heartbeat("w1", 5, &["llm"])]).await.unwrap();
    let mut newer = heartbeat("w1", 20, &["video", "llm"]);
    newer.downgrade = Some("gpu-hot".into());
    newer.state = WorkerState::Cordoned;
    store.apply_batch(&[], &[newer, heartbeat("w1", 15, &[]), heartbeat("w2", 1, &["audio"])]).await.unwrap();
    let workers = store.list_workers().await.unwrap();
    assert_eq!(workers.iter().map(|w| w.worker_id.as_str()).collect::<Vec<_>>(), ["w1", "w2"]);
    let w = &workers[0];
    assert_eq!((w.host.as_str(), w.state.as_str(), w.last_heartbeat_at), ("host-at-20", "cordoned", at(20)));
    assert_eq!(w.downgrade.as_deref(), Some("gpu-hot"));
    assert_eq!(store.downgraded_workers().await.unwrap(), ["w1"]);
}

async fn stale_workers_are_marked_lost_once(store: Store) {
    store.apply_batch(&[], &[heartbeat("old", 0, &["video"]), heartbeat("new", 100, &["video"])]).await.unwrap();
    assert_eq!(store.mark_lost(at(50)).await.unwrap(), ["old"]);
    assert!(store.mark_lost(at(50)).await.unwrap().is_empty(), "already lost");
    let lost: Vec<(String, bool)> =
        store.list_workers().await.unwrap().into_iter().map(|w| (w.worker_id, w.lost)).collect();
    assert_eq!(lost, [("new".into(), false), ("old".into(), true)]);
    assert_eq!(store.replicas("video").await.unwrap(), 1);
    // A heartbeat brings it back.
    store.apply_batch(&[], &[heartbeat("old", 200, &["video"])]).await.unwrap();
    assert_eq!(store.replicas("video").await.unwrap(), 2);
    let mut both = store.mark_lost(at(1000)).await.unwrap();
    both.sort();
    assert_eq!(both, ["new", "old"]);
}

async fn submitted_jobs_insert_once_unpublished_until_marked(store: Store) {
    let spec = serde_json::json!({"job_id": "s1", "kind": "llm", "params": {"prompt": "hi"}});
    let other = serde_json::json!({"job_id": "s1", "kind": "llm", "params": {"prompt": "bye"}});
    assert!(store.insert_submitted("s1", "llm", &spec).await.unwrap());
    assert!(!store.insert_submitted("s1", "llm", &spec).await.unwrap(), "the same id twice");
    assert!(!store.insert_submitted("s1", "llm", &other).await.unwrap(), "a different spec under the same id");
    // The API compares the stored spec: the same spec is an idempotent resubmission, another one a conflict;
    // a resubmission of a job never published publishes it.
    let unpublished = Submission { spec: spec.clone(), published: false };
    assert_eq!(store.submission("s1").await.unwrap(), Some(unpublished));
    assert_eq!(store.submission("unknown").await.unwrap(), None);
    let row = store.get_job("s1").await.unwrap().unwrap();
    assert_eq!((row.status.as_str(), row.attempt, row.kind.as_deref()), ("queued", 1, Some("llm")));
    assert!(row.submitted_at.is_some() && row.updated_at.is_some());

    // Marked once the broker confirmed it; marking again is harmless.
    store.mark_published("s1").await.unwrap();
    store.mark_published("s1").await.unwrap();
    store.mark_published("unknown").await.unwrap();
    assert_eq!(store.submission("s1").await.unwrap(), Some(Submission { spec: spec.clone(), published: true }));

    // Events keep the submission.
    apply(&store, &[ev("s1", 1, EventStatus::Accepted, 0, 1)]).await;
    let row = store.get_job("s1").await.unwrap().unwrap();
    assert_eq!((row.status.as_str(), row.kind.as_deref(), row.accepted_at), ("accepted", Some("llm"), Some(at(1))));
    assert_eq!(store.submission("s1").await.unwrap().map(|s| s.spec), Some(spec));

    // A job known only from events has no spec: a submission under its id is a conflict.
    apply(&store, &[ev("e1", 1, EventStatus::Running, 0, 1)]).await;
    assert!(!store.insert_submitted("e1", "video", &serde_json::json!({})).await.unwrap());
    assert_eq!(store.submission("e1").await.unwrap(), None);
}

async fn the_outbox_lists_old_unpublished_queued_jobs_only(store: Store) {
    for id in ["o1", "o2", "o3", "o4"] {
        assert!(store.insert_submitted(id, "llm", &serde_json::json!({"job_id": id})).await.unwrap());
    }
    // o2 was published; o3 was published but never marked, and a worker has taken it since.
    store.mark_published("o2").await.unwrap();
    apply(&store, &[ev("o3", 1, EventStatus::Running, 0, 1)]).await;
    // A job known only from events has nothing to publish.
    apply(&store, &[ev("e1", 1, EventStatus::Succeeded, 0, 1)]).await;

    let soon = Utc::now() + chrono::Duration::seconds(1);
    let due = store.unpublished_jobs(soon, 10).await.unwrap();
    let ids: Vec<&str> = due.iter().map(|j| j.job_id.as_str()).collect();
    assert_eq!(ids, ["o1", "o4"], "oldest first");
    assert_eq!((due[0].attempt, &due[0].spec), (1, &serde_json::json!({"job_id": "o1"})));
    assert_eq!(store.unpublished_jobs(soon, 1).await.unwrap().len(), 1, "the limit holds");
    // Younger than the cut-off: a request may still be publishing it.
    let long_ago = Utc::now() - chrono::Duration::minutes(5);
    assert!(store.unpublished_jobs(long_ago, 10).await.unwrap().is_empty());
    store.mark_published("o1").await.unwrap();
    let ids: Vec<String> = store.unpublished_jobs(soon, 10).await.unwrap().into_iter().map(|j| j.job_id).collect();
    assert_eq!(ids, ["o4"]);
}

async fn jobs_list_with_filters_and_keyset_pagination(store: Store) {
    // j01..j07: odd ones llm, even ones video; j03, j04 and j06 running, the rest queued.
    for n in 1..=7 {
        let kind = if n % 2 == 1 { "llm" } else { "video" };
        store.insert_submitted(&format!("j{n:02}"), kind, &serde_json::json!({"n": n})).await.unwrap();
    }
    let running: Vec<Event> =
        [3, 4, 6].iter().map(|n| ev(&format!("j{n:02}"), 1, EventStatus::Running, 0, 1)).collect();
    apply(&store, &running).await;

    let ids = |filter: JobFilter| {
        let store = store.clone();
        async move { store.list_jobs(&filter).await.unwrap().into_iter().map(|j| j.job_id).collect::<Vec<_>>() }
    };
    let some = |s: &str| Some(s.to_string());
    let all = JobFilter { limit: 100, ..Default::default() };
    assert_eq!(ids(all.clone()).await, ["j01", "j02", "j03", "j04", "j05", "j06", "j07"]);
    assert_eq!(ids(JobFilter { status: some("running"), ..all.clone() }).await, ["j03", "j04", "j06"]);
    assert_eq!(ids(JobFilter { kind: some("llm"), ..all.clone() }).await, ["j01", "j03", "j05", "j07"]);
    assert_eq!(ids(JobFilter { status: some("queued"), kind: some("video"), ..all.clone() }).await, ["j02"]);
    assert_eq!(ids(JobFilter { status: some("failed"), ..all.clone() }).await, Vec::<String>::new());

    // Pages of three, each after the last id of the one before.
    let page = |after: Option<String>| JobFilter { after, limit: 3, ..Default::default() };
    assert_eq!(ids(page(None)).await, ["j01", "j02", "j03"]);
    assert_eq!(ids(page(some("j03"))).await, ["j04", "j05", "j06"]);
    assert_eq!(ids(page(some("j06"))).await, ["j07"]);
    assert_eq!(ids(page(some("j07"))).await, Vec::<String>::new());
    assert_eq!(
        ids(JobFilter { kind: some("video"), after: some("j02"), limit: 1, ..Default::default() }).await,
        ["j04"]
    );

    // The most recently changed first: the three that ran (one batch), then the others newest first.
    let recent = JobFilter { recent: true, ..all.clone() };
    assert_eq!(ids(recent.clone()).await, ["j06", "j04", "j03", "j07", "j05", "j02", "j01"]);
    assert_eq!(ids(JobFilter { limit: 2, ..recent.clone() }).await, ["j06", "j04"]);
    assert_eq!(ids(JobFilter { kind: some("llm"), ..recent }).await, ["j03", "j07", "j05", "j01"]);
}

async fn job_events_come_in_attempt_and_sequence_order(store: Store) {
    let events = [
        ev("j", 2, EventStatus::Succeeded, 2, 9),
        ev("j", 1, EventStatus::Progress, 1, 2),
        ev("j", 2, EventStatus::Running, 0, 7),
        ev("j", 1, EventStatus::Running, 0, 1),
        ev("j", 1, EventStatus::Retrying, 2, 3),
        ev("other", 1, EventStatus::Running, 0, 1),
    ];
    apply(&store, &events[..3]).await;
    apply(&store, &events[3..]).await;
    let got = store.job_events("j").await.unwrap();
    assert_eq!(
        got.iter().map(|e| (e.event_id.as_str(), e.status.as_str())).collect::<Vec<_>>(),
        [
            ("j/1/0", "running"),
            ("j/1/1", "progress"),
            ("j/1/retrying", "retrying"),
            ("j/2/0", "running"),
            ("j/2/succeeded", "succeeded")
        ]
    );
    // The body is the event as received.
    let body: Event = serde_json::from_value(got[4].body.clone()).unwrap();
    assert_eq!(body, events[0]);
    assert!(store.job_events("nope").await.unwrap().is_empty());
}

async fn decisions_come_back_newest_first(store: Store) {
    for (n, subject) in ["w1", "video", "success_rate"].iter().enumerate() {
        let decision = serde_json::json!({"decision": "x", "n": n});
        store.record_decision(at(n as i64), subject, &decision, &format!("reason {n}")).await.unwrap();
    }
    let got = store.recent_decisions(2).await.unwrap();
    assert_eq!(
        got.iter().map(|d| (d.subject.as_str(), d.reason.as_str(), d.decided_at)).collect::<Vec<_>>(),
        [("success_rate", "reason 2", at(2)), ("video", "reason 1", at(1))]
    );
    assert_eq!(got[0].decision, serde_json::json!({"decision": "x", "n": 2}));
    assert_eq!(store.recent_decisions(50).await.unwrap().len(), 3);
}

async fn in_flight_and_replicas_are_counted_per_kind(store: Store) {
    let mut llm = ev("l1", 1, EventStatus::Running, 0, 1);
    llm.kind = Some(JobKind::Llm);
    store.insert_submitted("v-queued", "video", &serde_json::json!({})).await.unwrap();
    apply(
        &store,
        &[
            ev("v-accepted", 1, EventStatus::Accepted, 0, 1),
            ev("v-running", 1, EventStatus::Running, 0, 1),
            ev("v-done", 1, EventStatus::Running, 0, 1),
            ev("v-done", 1, EventStatus::Succeeded, 1, 2),
            ev("v-retrying", 1, EventStatus::Retrying, 0, 1),
            llm,
        ],
    )
    .await;
    assert_eq!(store.in_flight("video").await.unwrap(), 2);
    assert_eq!(store.in_flight("llm").await.unwrap(), 1);
    assert_eq!(store.in_flight("audio").await.unwrap(), 0);

    let hbs = [heartbeat("w1", 100, &["video", "llm"]), heartbeat("w2", 100, &["video"]), heartbeat("w3", 0, &["llm"])];
    store.apply_batch(&[], &hbs).await.unwrap();
    assert_eq!(store.replicas("llm").await.unwrap(), 2);
    store.mark_lost(at(50)).await.unwrap();
    assert_eq!(store.replicas("video").await.unwrap(), 2);
    assert_eq!(store.replicas("llm").await.unwrap(), 1);
    assert_eq!(store.replicas("lipsync").await.unwrap(), 0);
}
