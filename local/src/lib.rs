//! The one-command local mode (`ainern2d`): the hub and a worker in one process over the in-process
//! broker, a local output directory and SQLite. The code above those boundaries is the production code;
//! only the parts behind them differ. Jobs that were not finished when the process stopped are enqueued
//! again from the hub's status store at the next start (flagged for the worker's replay check, so one
//! that had finished is re-announced, not re-run), so a restart loses nothing.
//!
//! This is the only program that links both the worker and the hub: the daemons stay apart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ainern2d_contract::topology::{ATTEMPT_HEADER, REPLAY_HEADER, Topology};
use ainern2d_queue::embedded::EmbeddedBroker;
use ainern2d_queue::{Broker, HeaderValue, Message};
use anyhow::Context;
use tokio_util::sync::CancellationToken;

use ainern2d_worker::config::{Config, StoreKind};
use ainern2d_worker::store::LocalStore;

/// What `ainern2d` takes on its command line.
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
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = data_dir.join("admin-token");
    // Created 0600 in one step: a file written first and narrowed after is readable by others in between.
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
        Ok(mut file) => {
            let token = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
            file.write_all(token.as_bytes())
                .and_then(|()| file.sync_all())
                .with_context(|| format!("writing {}", path.display()))?;
            return Ok(path);
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
    }
    let meta = std::fs::symlink_metadata(&path).with_context(|| format!("reading {}", path.display()))?;
    anyhow::ensure!(
        meta.file_type().is_file(),
        "{} is not a regular file (a link or a directory); remove it, and a new token is made at the next start",
        path.display()
    );
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{mode:o}"),
            "the admin token file was readable by other users; narrowed it to 0600 (delete it to get a new token \
             if they may have read it)"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("narrowing the permissions of {} to 0600", path.display()))?;
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
    // A token file the hub cannot read is a start-up error with its key, not a hub that never gets ready.
    ainern2d_hub::api::Tokens::load(&hub_config.api)?;
    // Before the hub runs: its outbox relay would publish the never-published ones a second time.
    let requeued = requeue_unfinished(&hub, broker.as_ref(), &worker).await?;
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

    let shared = ainern2d_worker::Shared::with_parts(
        worker.clone(),
        broker.clone(),
        Arc::new(LocalStore::new(worker.store.local_dir.clone())),
        Some(opts.inputs_dir.clone()),
    )?;
    print_banner(&opts, &hub_config, requeued);

    let result = ainern2d_worker::serve_shared(shared, shutdown).await;
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
    ainern2d_worker::broker::declare_topology(
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
            .with_header(ATTEMPT_HEADER, HeaderValue::Int(job.attempt.into()))
            // It may have run to completion before the stop: the worker looks for its outputs first.
            .with_header(REPLAY_HEADER, HeaderValue::Int(1))
            .mandatory();
        session.publish("", &topo.job_queue(spec.kind()), &message).await?;
        hub.store.mark_published(&job.job_id).await?;
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_admin_token_file_is_readable_by_its_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = admin_token(dir.path()).unwrap();
        assert_eq!(mode(&path), 0o600);
        let token = std::fs::read_to_string(&path).unwrap();
        assert_eq!(token.len(), 64);
        // A second start keeps the token.
        assert_eq!(std::fs::read_to_string(admin_token(dir.path()).unwrap()).unwrap(), token);

        // A token file others can read (copied in, or made under a loose umask) is narrowed, not used as is.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        admin_token(dir.path()).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), token);
    }

    #[test]
    fn an_admin_token_path_that_is_not_a_plain_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, "x").unwrap();
        std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.path().join("admin-token")).unwrap();
        let err = admin_token(dir.path()).unwrap_err().to_string();
        assert!(err.contains("admin-token") && err.contains("regular file"), "{err}");
        assert_eq!(mode(&elsewhere), 0o644, "the link's target must not be touched");
    }
}
