//! The OpenAI-compatible backend against a local server that speaks the chat-completions streaming API
//! (server-sent events, as Ollama and vLLM send them).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ainern2d_contract::parse_job;
use ainern2d_models::{CacheMetrics, Manifest, Models};
use ainern2d_pipelines::{
    CancellationToken, LlmPipeline, NoProgress, Pipeline, PipelineError, PipelineErrorKind, ProgressSink, RunRequest,
};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

#[derive(Default)]
struct Seen {
    bodies: Vec<serde_json::Value>,
    auth: Vec<Option<String>>,
}

type Shared = Arc<Mutex<Seen>>;

fn sse(events: Vec<serde_json::Value>, done: bool, stall: bool) -> Response {
    let mut chunks: Vec<Result<String, std::io::Error>> =
        events.into_iter().map(|e| Ok(format!("data: {e}\n\n"))).collect();
    if done {
        chunks.push(Ok("data: [DONE]\n\n".into()));
    }
    let stream = futures_util::stream::iter(chunks);
    let body = if stall {
        // Send what we have, then nothing more, ever.
        use futures_util::StreamExt;
        Body::from_stream(stream.chain(futures_util::stream::pending()))
    } else {
        Body::from_stream(stream)
    };
    Response::builder().header("content-type", "text/event-stream").body(body).unwrap()
}

fn delta(text: &str) -> serde_json::Value {
    serde_json::json!({"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]})
}

async fn completions(State(seen): State<Shared>, headers: HeaderMap, body: String) -> Response {
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    let auth = headers.get("authorization").map(|v| v.to_str().unwrap().to_string());
    seen.lock().unwrap().bodies.push(body.clone());
    seen.lock().unwrap().auth.push(auth);
    match body["model"].as_str().unwrap() {
        "ok" => {
            let mut events: Vec<_> = ["Hel", "lo, ", "sto", "rm!"].iter().map(|t| delta(t)).collect();
            events.push(serde_json::json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}));
            events.push(serde_json::json!({"choices": [], "usage": {"prompt_tokens": 21, "completion_tokens": 5, "total_tokens": 26}}));
            sse(events, true, false)
        }
        "no-usage" => sse(vec![delta("a"), delta("b"), delta("c")], true, false),
        "stop" => sse(vec![delta("keep this"), delta(" ### drop"), delta(" that")], true, false),
        "stall" => sse(vec![delta("slow")], false, true),
        "truncated" => sse(vec![delta("half an ans")], false, false),
        "overloaded" => (StatusCode::SERVICE_UNAVAILABLE, "model is loading").into_response(),
        "too-long" => (
            StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({"error": {"message": "This model's maximum context length is 4096 tokens"}})),
        )
            .into_response(),
        other => (StatusCode::NOT_FOUND, format!("model {other} not found")).into_response(),
    }
}

async fn server() -> (String, Shared) {
    let seen: Shared = Arc::default();
    let app =
        axum::Router::new().route("/v1/chat/completions", axum::routing::post(completions)).with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1"), seen)
}

fn pipeline(endpoint: &str) -> LlmPipeline {
    let mut text = String::from("default_llm = \"ok\"\n");
    for name in ["ok", "no-usage", "stop", "stall", "truncated", "overloaded", "too-long", "missing"] {
        text.push_str(&format!(
            "[models.{name}]\nkind = \"llm\"\nbackend = \"openai\"\nremote = {{ endpoint = \"{endpoint}\", model = \"{name}\", idle_timeout_s = 30 }}\n"
        ));
    }
    text.push_str(&format!(
        "[models.keyed]\nkind = \"llm\"\nbackend = \"openai\"\nremote = {{ endpoint = \"{endpoint}/\", model = \"ok\", api_key_env = \"AINERN2D_TEST_LLM_KEY\" }}\n"
    ));
    // Cargo sets CARGO_PKG_NAME for the test process: a variable that is certainly there.
    text.push_str(&format!(
        "[models.keyed-set]\nkind = \"llm\"\nbackend = \"openai\"\nremote = {{ endpoint = \"{endpoint}\", model = \"ok\", api_key_env = \"CARGO_PKG_NAME\" }}\n"
    ));
    let manifest = Manifest::from_toml(&text, std::path::Path::new(".")).unwrap();
    LlmPipeline::new(Arc::new(Models::new(manifest, None, CacheMetrics::new(), &[]).unwrap()))
}

struct Tokens(Mutex<Vec<u32>>);

impl ProgressSink for Tokens {
    fn progress(&self, _: f32, _: &str, _: Option<String>) {}
    fn tokens(&self, _: f32, tokens: u32, _: f32) {
        self.0.lock().unwrap().push(tokens);
    }
}

/// Runs a job on a blocking thread (as the worker does) and returns completion.json.
async fn run(
    p: &LlmPipeline,
    params: serde_json::Value,
    cancel: CancellationToken,
    sink: Arc<dyn ProgressSink>,
) -> Result<serde_json::Value, PipelineError> {
    let p = p.clone();
    tokio::task::spawn_blocking(move || {
        let body = serde_json::json!({"schema": "ainern2d.job.v1", "job_id": "remote", "kind": "llm",
                                      "params": params, "output": {"prefix": "t"}});
        let job = parse_job(&serde_json::to_vec(&body).unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let req = RunRequest {
            job: &job,
            attempt: 1,
            inputs: Default::default(),
            workdir: dir.path().into(),
            downgrade: None,
        };
        let output = p.run(&req, sink.as_ref(), &cancel)?;
        assert_eq!(output.execution.backend, "openai");
        assert_eq!(output.execution.device.as_deref(), Some("remote"));
        Ok(serde_json::from_slice(&std::fs::read(&output.artifacts[0].path).unwrap()).unwrap())
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_a_completion_with_the_same_artifact_as_candle() {
    let (endpoint, seen) = server().await;
    let p = pipeline(&endpoint);
    let sink = Arc::new(Tokens(Mutex::default()));
    let params = serde_json::json!({"prompt": "Greet the storm.", "system": "Be brief.", "max_tokens": 64,
        "temperature": 0.3, "top_p": 0.9, "top_k": 20, "repetition_penalty": 1.2, "seed": 5,
        "stop": ["<1>", "<2>", "<3>", "<4>", "<5>"]});
    let out = run(&p, params, CancellationToken::new(), sink.clone()).await.unwrap();
    assert_eq!(out["text"], "Hello, storm!");
    assert_eq!(out["backend"], "openai");
    assert_eq!(out["model"], "ok");
    assert_eq!(out["finish_reason"], "stop");
    assert_eq!(out["usage"]["prompt_tokens"], 21);
    assert_eq!(out["usage"]["completion_tokens"], 5, "the server's usage record wins over counting chunks");
    assert!(out["timings"]["tokens_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(*sink.0.lock().unwrap(), [1, 2, 3, 4]);
    let body = seen.lock().unwrap().bodies[0].clone();
    assert_eq!(body["stream"], true);
    assert_eq!(body["max_tokens"], 64);
    assert_eq!(body["seed"], 5);
    assert_eq!(body["top_k"], 20);
    assert_eq!(body["messages"][0], serde_json::json!({"role": "system", "content": "Be brief."}));
    assert_eq!(body["messages"][1], serde_json::json!({"role": "user", "content": "Greet the storm."}));
    assert_eq!(body["stop"].as_array().unwrap().len(), 4, "the API takes 4 stop strings; the rest apply locally");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_chunks_without_usage_and_enforces_stop_strings_locally() {
    let (endpoint, _) = server().await;
    let p = pipeline(&endpoint);
    let out = run(
        &p,
        serde_json::json!({"prompt": "x", "model": "no-usage"}),
        CancellationToken::new(),
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    assert_eq!(out["text"], "abc");
    assert_eq!(out["usage"]["completion_tokens"], 3);
    let out = run(
        &p,
        serde_json::json!({"prompt": "x", "model": "stop", "stop": ["###"]}),
        CancellationToken::new(),
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    assert_eq!(out["text"], "keep this ");
    assert_eq!(out["finish_reason"], "stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_classified() {
    let (endpoint, _) = server().await;
    let p = pipeline(&endpoint);
    let cases = [
        ("overloaded", PipelineErrorKind::Retryable, "503"),
        ("truncated", PipelineErrorKind::Retryable, "without finishing"),
        ("too-long", PipelineErrorKind::Permanent, "maximum context length"),
        ("missing", PipelineErrorKind::Permanent, "404"),
    ];
    for (model, kind, text) in cases {
        let err =
            run(&p, serde_json::json!({"prompt": "x", "model": model}), CancellationToken::new(), Arc::new(NoProgress))
                .await
                .unwrap_err();
        assert_eq!(err.kind, kind, "{model}: {err}");
        assert!(err.message.contains(text), "{model}: {err}");
    }
    // Nothing listening: retryable.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let p = pipeline(&format!("http://{closed}/v1"));
    let err =
        run(&p, serde_json::json!({"prompt": "x"}), CancellationToken::new(), Arc::new(NoProgress)).await.unwrap_err();
    assert_eq!(err.kind, PipelineErrorKind::Retryable, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_interrupts_a_stalled_stream() {
    let (endpoint, _) = server().await;
    let p = pipeline(&endpoint);
    let cancel = CancellationToken::new();
    let canceller = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        canceller.cancel();
    });
    let started = Instant::now();
    let err =
        run(&p, serde_json::json!({"prompt": "x", "model": "stall"}), cancel, Arc::new(NoProgress)).await.unwrap_err();
    assert_eq!(err.kind, PipelineErrorKind::Cancelled);
    assert!(started.elapsed() < Duration::from_secs(5), "cancel took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_comes_from_the_named_variable() {
    let (endpoint, seen) = server().await;
    let p = pipeline(&endpoint);
    let err =
        run(&p, serde_json::json!({"prompt": "x", "model": "keyed"}), CancellationToken::new(), Arc::new(NoProgress))
            .await
            .unwrap_err();
    assert!(err.message.contains("$AINERN2D_TEST_LLM_KEY"), "{err}");
    assert!(seen.lock().unwrap().auth.is_empty(), "no request without the key");
    run(&p, serde_json::json!({"prompt": "x", "model": "keyed-set"}), CancellationToken::new(), Arc::new(NoProgress))
        .await
        .unwrap();
    assert_eq!(seen.lock().unwrap().auth, [Some("Bearer ainern2d-pipelines".to_string())]);
}
