//! OpenTelemetry traces: a worker and a hub with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at an OTLP/HTTP
//! receiver in this test (it decodes the protobuf bodies with the OTLP types of `opentelemetry-proto`).
//! A job arrives with the control plane's `traceparent`; its spans must continue that trace: the
//! worker's `job` span a child of the control plane's span, the stages (`receive`, `slot`, `fetch`,
//! `inference`, `upload`, `publish`) children of `job`, and the hub's `ingest` spans of the job's events
//! children of `job` too, each from its own `service.name`. A worker without the variable sends nothing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ainern2d_contract::{EventStatus, JobKind};
use ainern2d_tests::*;
use axum::body::Bytes;
use axum::extract::State;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;

const T: Duration = Duration::from_secs(60);
const TRACE_ID: &str = "5d1e2c3b4a5968778695a4b3c2d1e0f1";
const PARENT_ID: &str = "a1b2c3d4e5f60718";

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    attributes: BTreeMap<String, String>,
}

type Received = Arc<Mutex<Vec<Span>>>;

async fn receive(State(got): State<Received>, body: Bytes) -> Vec<u8> {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP trace export request");
    let text = |v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| match v
        .as_ref()
        .and_then(|v| v.value.as_ref())
    {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    };
    let mut got = got.lock().unwrap();
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .map(|a| text(&a.value))
            .unwrap_or_default();
        for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
            got.push(Span {
                service: service.clone(),
                name: span.name,
                trace_id: hex::encode(span.trace_id),
                span_id: hex::encode(span.span_id),
                parent: hex::encode(span.parent_span_id),
                attributes: span.attributes.iter().map(|a| (a.key.clone(), text(&a.value))).collect(),
            });
        }
    }
    ExportTraceServiceResponse::default().encode_to_vec()
}

/// An OTLP/HTTP receiver on loopback: its base URL (the `OTEL_EXPORTER_OTLP_ENDPOINT`) and what it got.
async fn receiver() -> (String, Received) {
    let got = Received::default();
    let app = axum::Router::new().route("/v1/traces", axum::routing::post(receive)).with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

/// The spans received so far once `done` says they are all there, or what came within `T`.
async fn wait_for(got: &Received, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
    let deadline = Instant::now() + T;
    loop {
        let spans = got.lock().unwrap().clone();
        if done(&spans) || Instant::now() > deadline {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_jobs_spans_continue_the_control_planes_trace_through_the_worker_into_the_hub() {
    let s = Bed::new("otel").await;
    let schema = s.prefix.replace('-', "_");
    let (endpoint, got) = receiver().await;
    // Export within 100 ms of a span's end instead of the SDK's 5 s.
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "100")];
    let hub_conf = hub_config(&amqp_url(), &s.prefix, &schema, free_port(), "");
    let mut hub = Worker::spawn_bin_env("ainern2d-hub", &hub_conf, &env);
    hub.wait_ready().await;
    let (conf, _) = s.config("");
    let mut w = Worker::spawn_bin_env("ainern2d-worker", &conf, &env);
    w.wait_ready().await;

    let mut tap = EventTap::new(&s.channel, &s.prefix).await;
    let traced = |id: &str| {
        let mut job: serde_json::Value =
            serde_json::from_slice(&job(JobKind::Audio, id, small_params(JobKind::Audio), serde_json::json!({})))
                .unwrap();
        job["traceparent"] = format!("00-{TRACE_ID}-{PARENT_ID}-01").into();
        serde_json::to_vec(&job).unwrap()
    };
    publish_job(&s.channel, &s.prefix, JobKind::Audio, &traced("otel-1")).await;
    let event = tap.terminal("otel-1", T).await;
    assert_eq!(event.status, EventStatus::Succeeded, "{event:?}\n{}", w.logs());
    let tp = event.traceparent.clone().expect("the outcome event carries a traceparent");
    assert!(tp.starts_with(&format!("00-{TRACE_ID}-")), "the event continues the job's trace: {tp}");

    let stages = ["receive", "slot", "fetch", "inference", "upload", "publish"];
    let spans = wait_for(&got, |spans| {
        spans.iter().any(|s| s.name == "job")
            && stages.iter().all(|st| spans.iter().any(|s| &s.name == st))
            && spans
                .iter()
                .any(|s| s.name == "ingest" && s.attributes.get("status").map(String::as_str) == Some("succeeded"))
    })
    .await;
    let dump = || spans.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join("\n  ");
    let job_span = spans.iter().find(|s| s.name == "job").unwrap_or_else(|| panic!("no job span:\n  {}", dump()));
    assert_eq!(job_span.service, "ainern2d-worker");
    assert_eq!((job_span.trace_id.as_str(), job_span.parent.as_str()), (TRACE_ID, PARENT_ID), "{}", dump());
    assert_eq!(job_span.attributes.get("job_id").map(String::as_str), Some("otel-1"));
    assert_eq!(tp, format!("00-{TRACE_ID}-{}-01", job_span.span_id), "events carry the worker's job span");
    for stage in stages {
        let span = spans.iter().find(|s| s.name == stage).unwrap_or_else(|| panic!("no {stage} span:\n  {}", dump()));
        assert_eq!((span.trace_id.as_str(), span.parent.as_str()), (TRACE_ID, job_span.span_id.as_str()), "{stage}");
    }
    let inference = spans.iter().find(|s| s.name == "inference").unwrap();
    assert_eq!(inference.attributes.get("backend").map(String::as_str), Some("mock"), "{inference:?}");
    let ingest: Vec<_> = spans.iter().filter(|s| s.name == "ingest").collect();
    assert!(!ingest.is_empty(), "no ingest span:\n  {}", dump());
    for span in &ingest {
        assert_eq!(span.service, "ainern2d-hub");
        assert_eq!((span.trace_id.as_str(), span.parent.as_str()), (TRACE_ID, job_span.span_id.as_str()));
        assert_eq!(span.attributes.get("job_id").map(String::as_str), Some("otel-1"));
    }
    // Only our crates' spans are exported: none of the broker client's, the database's or HTTP's.
    let foreign: Vec<_> = spans
        .iter()
        .filter(|s| !["job", "ingest"].contains(&s.name.as_str()) && !stages.contains(&s.name.as_str()))
        .map(|s| s.name.clone())
        .collect();
    assert!(foreign.is_empty(), "spans from outside the job path: {foreign:?}");

    // A worker without the variable takes the next job: nothing more reaches the receiver from a worker.
    w.signal("TERM");
    assert_eq!(w.wait_exit(T).await, 0);
    let mut quiet = s.worker("").await;
    let before = got.lock().unwrap().iter().filter(|s| s.service == "ainern2d-worker").count();
    publish_job(&s.channel, &s.prefix, JobKind::Audio, &traced("otel-2")).await;
    let event = tap.terminal("otel-2", T).await;
    assert_eq!(event.status, EventStatus::Succeeded, "{event:?}\n{}", quiet.logs());
    assert_eq!(event.worker_id, s.worker_id(quiet.http_port));
    // Without an endpoint the job's own traceparent goes on unchanged.
    assert_eq!(event.traceparent.as_deref(), Some(format!("00-{TRACE_ID}-{PARENT_ID}-01").as_str()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = got.lock().unwrap().iter().filter(|s| s.service == "ainern2d-worker").count();
    assert_eq!(before, after, "a worker without OTEL_EXPORTER_OTLP_ENDPOINT exported spans");

    quiet.signal("TERM");
    assert_eq!(quiet.wait_exit(T).await, 0);
    hub.signal("TERM");
    assert_eq!(hub.wait_exit(T).await, 0);
    drop_schema(&schema).await;
    s.cleanup().await;
}
