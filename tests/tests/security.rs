//! The worker's security boundaries, seen from outside as a control plane or an operator sees them: which
//! buckets a job may read and write, that presigned input URLs leave no credentials in events or logs,
//! and that a worker without S3 credentials does not start on a guessed default.

use std::process::{Command, Stdio};
use std::time::Duration;

use ainern2d_contract::{ErrorCode, EventStatus, JobKind};
use ainern2d_tests::*;

const T: Duration = Duration::from_secs(60);

async fn put_still(s: &Bed, bucket: &str) {
    let body =
        aws_sdk_s3::primitives::ByteStream::from_path(repo_root().join("examples/media/still.png")).await.unwrap();
    s.s3.put_object().bucket(bucket).key("in/still.png").body(body).send().await.unwrap();
}

fn video_job(id: &str, image: &str) -> Vec<u8> {
    job(JobKind::Video, id, small_params(JobKind::Video), serde_json::json!({ "image": image }))
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_inputs_are_read_only_from_allowed_buckets() {
    let s = Bed::new("inbuckets").await;
    let other = format!("{}-other", s.bucket);
    create_bucket(&s.s3, &other).await;
    put_still(&s, &s.bucket).await;
    put_still(&s, &other).await;
    // Default: the output bucket only, although the worker's credentials can read `other` too.
    let w = s.worker("").await;
    let mut tap = EventTap::new(&s.channel, &s.prefix).await;
    let own = format!("s3://{}/in/still.png", s.bucket);
    publish_job(&s.channel, &s.prefix, JobKind::Video, &video_job("own-bucket", &own)).await;
    let foreign = format!("s3://{other}/in/still.png");
    publish_job(&s.channel, &s.prefix, JobKind::Video, &video_job("other-bucket", &foreign)).await;

    let event = tap.terminal("own-bucket", T).await;
    assert_eq!(event.status, EventStatus::Succeeded, "{event:?}\n{}", w.logs());
    let event = tap.terminal("other-bucket", T).await;
    assert_eq!(event.status, EventStatus::Failed);
    let error = event.error.unwrap();
    assert_eq!((error.code, error.retryable), (ErrorCode::InputRefused, false), "{}", error.message);
    assert!(error.message.contains(&other) && error.message.contains("fetch.allowed_buckets"), "{}", error.message);
    delete_bucket(&s.s3, &other).await;
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn presigned_input_urls_leave_no_credentials_in_events_or_logs() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // An expired presigned URL: the server says 403, the job fails, and the message quotes the URL.
    let app = axum::Router::new().fallback(|| async { axum::http::StatusCode::FORBIDDEN });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let s = Bed::new("presigned").await;
    let w = s.worker("[fetch]\nallow_http = true\ntrusted_hosts = [\"localhost\"]\n").await;
    let mut tap = EventTap::new(&s.channel, &s.prefix).await;
    let url = format!(
        "http://localhost:{port}/in/still.png?X-Amz-Algorithm=AWS4-HMAC-SHA256\
         &X-Amz-Credential=AKIAEXAMPLEKEY%2F20250101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20250101T000000Z\
         &X-Amz-Expires=60&X-Amz-SignedHeaders=host&X-Amz-Signature=0badc0ffee0badc0ffee"
    );
    publish_job(&s.channel, &s.prefix, JobKind::Video, &video_job("presigned", &url)).await;
    let event = tap.terminal("presigned", T).await;
    assert_eq!(event.status, EventStatus::Failed);
    let error = event.error.unwrap();
    assert_eq!(error.code, ErrorCode::InputUnavailable, "{}", error.message);
    assert!(error.message.contains("403") && error.message.contains("/in/still.png"), "{}", error.message);
    let logs = w.logs();
    for secret in ["AKIAEXAMPLEKEY", "0badc0ffee0badc0ffee"] {
        assert!(!error.message.contains(secret), "event message: {}", error.message);
        assert!(!logs.contains(secret), "worker log shows {secret}:\n{logs}");
    }
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn outputs_are_written_only_to_allowed_buckets() {
    let s = Bed::new("outbuckets").await;
    let other = format!("{}-other", s.bucket);
    create_bucket(&s.s3, &other).await;
    let _w = s.worker("").await;
    let mut tap = EventTap::new(&s.channel, &s.prefix).await;
    let mut body: serde_json::Value =
        serde_json::from_slice(&job(JobKind::Llm, "other-out", small_params(JobKind::Llm), serde_json::json!({})))
            .unwrap();
    body["output"]["bucket"] = other.clone().into();
    publish_job(&s.channel, &s.prefix, JobKind::Llm, &serde_json::to_vec(&body).unwrap()).await;
    let event = tap.terminal("other-out", T).await;
    assert_eq!(event.status, EventStatus::Failed);
    let error = event.error.unwrap();
    assert_eq!((error.code, error.field.as_deref()), (ErrorCode::InvalidField, Some("output.bucket")));
    assert!(error.message.contains(&other) && error.message.contains("store.allowed_buckets"), "{}", error.message);
    assert!(list_keys(&s.s3, &other, "").await.is_empty(), "nothing may be written to {other}");
    delete_bucket(&s.s3, &other).await;
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_without_s3_credentials_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("worker.toml");
    let port = free_port();
    std::fs::write(
        &config,
        format!(
            "worker_id = \"nocreds\"\n[broker]\nurl = \"{}\"\nprefix = \"{}\"\n[store]\nkind = \"s3\"\nendpoint = \"{}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n",
            amqp_url(),
            unique("nocreds"),
            s3_endpoint()
        ),
    )
    .unwrap();
    let log = dir.path().join("worker.log");
    let mut cmd = Command::new(binary("ainern2d-worker"));
    cmd.args(["run", "--config"]).arg(&config);
    // No standard AWS source either: an empty home and none of the chain's variables.
    for (key, _) in std::env::vars() {
        if key.starts_with("AWS_") || key.starts_with("AINERN2D_WORKER_") {
            cmd.env_remove(key);
        }
    }
    let mut child =
        cmd.env("HOME", dir.path()).stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap();
    let code =
        wait_child_exit(&mut child, Duration::from_secs(30), || std::fs::read_to_string(&log).unwrap_or_default())
            .await;
    let logs = std::fs::read_to_string(&log).unwrap();
    assert_ne!(code, 0, "{logs}");
    assert!(logs.contains("store.access_key_id") && logs.contains("store.secret_access_key"), "{logs}");
}
