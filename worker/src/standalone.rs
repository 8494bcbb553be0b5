//! The one-command local mode: the hub and a worker in one process over the in-process broker, a local
//! output directory and SQLite. The code above those boundaries is the production code; only the parts
//! behind them differ. Jobs that were not finished when the process stopped are enqueued again from the
//! hub's status store at the next start, so a restart loses nothing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ainern2d_contract::topology::{ATTEMPT_HEADER, Topology};
use ainern2d_queue::embedded::EmbeddedBroker;
use ainern2d_queue::{Broker, HeaderValue, Message};
use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, StoreKind};
use crate::store::LocalStore;

/// What `ainern2d-worker standalone` takes on its command line.
#[derive(Debug, Clone)]
pub struct Options {
    /// Holds `hub.db` (SQLite), `outputs/`, `scratch/` and `admin-token`.
    pub data_dir: PathBuf,
    /// The hub API.
    pub listen: SocketAddr,
    /// The worker's `/health`, `/ready`, `/metrics`.
    pub worker_listen: SocketAddr,
    /// Relative input paths of submitted jobs are read below this directory (the local mode only).
    pub inputs_dir: PathBuf,
}

/// The worker and hub configs of the local mode: the given ones with the storage boundaries pointed at
/// `data_dir`.
pub fn configs(
    mut worker: Config,
    mut hub: ainern2d_hub::config::Config,
    opts: &Options,
) -> (Config, ainern2d_hub::config::Config) {
    worker.store.kind = StoreKind::Local;
    worker.store.local_dir = opts.data_dir.join("outputs");
    worker.scratch_dir = opts.data_dir.join("scratch");
    worker.http.listen = opts.worker_listen;
    if worker.worker_id.is_empty() {
        worker.worker_id = "local".into();
    }
    hub.broker.prefix = worker.broker.prefix.clone();
    hub.database.url = format!("sqlite://{}", opts.data_dir.join("hub.db").display());
    hub.http.listen = opts.listen;
    (worker, hub)
}

/// The admin token: `AINERN2D_HUB_ADMIN_TOKEN` when set, else the one in `<data_dir>/admin-token`
/// (created on first start, readable by the owner only).
fn admin_token(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let path = data_dir.join("admin-token");
    if !path.exists() {
        let token = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        std::fs::write(&path, token).with_context(|| format!("writing {}", path.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(path)
}

/// Runs hub and worker until `shutdown`; the worker drains first, then the hub records its last events.
pub async fn run(
    worker: Config,
    hub: ainern2d_hub::config::Config,
    opts: Options,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("cannot create the data directory {}", opts.data_dir.display()))?;
    let (worker, mut hub_config) = configs(worker, hub, &opts);
    if hub_config.api.admin_token_file.is_empty() && std::env::var_os("AINERN2D_HUB_ADMIN_TOKEN").is_none() {
        hub_config.api.admin_token_file = admin_token(&opts.data_dir)?.display().to_string();
    }
    let broker = Arc::new(EmbeddedBroker::new());

    let store = ainern2d_hub::store::open(&hub_config.database).await?;
    store.migrate().await?;
    let hub = ainern2d_hub::Hub::new(hub_config.clone(), store, broker.clone());
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("cannot listen on {} (pass --listen to choose another address)", opts.listen))?;
    let hub_stop = CancellationToken::new();
    let hub_task = tokio::spawn(ainern2d_hub::run(hub.clone(), listener, hub_stop.clone()));
    // The hub's event queue must exist before the worker publishes anything: the in-process broker, like
    // RabbitMQ, drops what no queue is bound to receive.
    for _ in 0..200 {
        if hub.ready().0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::ensure!(hub.ready().0, "the hub did not subscribe to the in-process broker");

    let shared = crate::Shared::with_parts(
        worker.clone(),
        broker.clone(),
        Arc::new(LocalStore::new(worker.store.local_dir.clone())),
        Some(opts.inputs_dir.clone()),
    )?;
    let requeued = requeue_unfinished(&hub, broker.as_ref(), &worker).await?;
    print_banner(&opts, &hub_config, requeued);

    let result = crate::serve_shared(shared, shutdown).await;
    // Give the hub a moment to ingest the worker's last events (the outcome of drained jobs, `drained`).
    tokio::time::sleep(Duration::from_millis(hub_config.ingest.batch_wait_ms + 200)).await;
    hub_stop.cancel();
    hub_task.await.context("the hub task panicked")??;
    result
}

/// Publishes again every job the status store holds as not finished: the in-process queue starts empty.
async fn requeue_unfinished(hub: &ainern2d_hub::Hub, broker: &dyn Broker, worker: &Config) -> anyhow::Result<usize> {
    let jobs = hub.store.unfinished_jobs().await?;
    if jobs.is_empty() {
        return Ok(0);
    }
    let session = broker.connect("standalone requeue").await?;
    crate::broker::declare_topology(
        session.as_ref(),
        &Topology::new(worker.broker.prefix.clone()),
        &worker.jobs.kinds,
        &worker.jobs.retry_delays_ms,
    )
    .await?;
    let topo = Topology::new(worker.broker.prefix.clone());
    for job in &jobs {
        let spec: ainern2d_contract::Job = serde_json::from_value(job.spec.clone())
            .with_context(|| format!("the stored spec of job {} is not a job", job.job_id))?;
        let message = Message::json(serde_json::to_vec(&job.spec)?)
            .with_priority(Some(spec.priority))
            .with_header(ATTEMPT_HEADER, HeaderValue::Int(job.attempt.into()));
        session.publish("", &topo.job_queue(spec.kind()), &message).await?;
    }
    session.close().await;
    tracing::info!(jobs = jobs.len(), "enqueued the jobs left unfinished by the last run");
    Ok(jobs.len())
}

fn print_banner(opts: &Options, hub: &ainern2d_hub::config::Config, requeued: usize) {
    let token = if hub.api.admin_token_file.is_empty() {
        "$AINERN2D_HUB_ADMIN_TOKEN".to_string()
    } else {
        format!("$(cat {})", hub.api.admin_token_file)
    };
    let api = format!("http://{}", opts.listen);
    println!("ainern2d standalone: hub and worker in one process (in-process queue, SQLite, local outputs)");
    println!("  hub API      {api}/v1   (probes: {api}/health /ready /metrics)");
    println!("  worker       http://{}/ready", opts.worker_listen);
    println!("  outputs      {}", opts.data_dir.join("outputs").display());
    println!("  status       {}", opts.data_dir.join("hub.db").display());
    if requeued > 0 {
        println!("  re-enqueued  {requeued} job(s) left unfinished by the last run");
    }
    println!();
    println!("Submit a job (inputs may be paths relative to {}):", opts.inputs_dir.display());
    println!(
        "  curl -s -H \"Authorization: Bearer {token}\" -H 'content-type: application/json' \\\n       -d @examples/jobs/video.json {api}/v1/jobs"
    );
    println!("Follow it:   curl -N {api}/v1/jobs/example-video/events");
    println!("Read it:     curl -s {api}/v1/jobs/example-video");
    println!();
}
