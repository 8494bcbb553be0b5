//! `ainern2d`: the local mode in one process. Parse the command line and both configs, then run until a
//! shutdown signal; the worker drains first, then the hub takes the last events.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "ainern2d",
    version,
    about = "The local mode: hub and worker in one process, in-process queue, SQLite, outputs on disk"
)]
struct Cli {
    /// Worker config file (TOML; AINERN2D_WORKER_* variables override it): kinds, slots, backends, models.
    #[arg(long, env = "AINERN2D_WORKER_CONFIG")]
    config: Option<PathBuf>,
    /// Hub config file (TOML; AINERN2D_HUB_* variables override it): policy, profiles, alerts.
    #[arg(long, env = "AINERN2D_HUB_CONFIG")]
    hub_config: Option<PathBuf>,
    /// Holds hub.db (SQLite), outputs/, scratch/ and the admin-token file.
    #[arg(long, default_value = ".ainern2d")]
    data_dir: PathBuf,
    /// Address of the hub API.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// Address of the worker's probes and metrics.
    #[arg(long, default_value = "127.0.0.1:9100")]
    worker_listen: std::net::SocketAddr,
    /// Relative input paths of submitted jobs are read below this directory.
    #[arg(long, default_value = ".")]
    inputs_dir: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let worker = ainern2d_worker::config::Config::load(cli.config.as_deref())
        .map_err(|e| anyhow::anyhow!(e))
        .context("invalid worker configuration")?;
    let hub = ainern2d_hub::config::Config::load(cli.hub_config.as_deref())
        .map_err(|e| anyhow::anyhow!(e))
        .context("invalid hub configuration")?;
    let _telemetry = ainern2d_cli::init_logs(&worker.log, "ainern2d-local");
    let shutdown = ainern2d_cli::shutdown_on_signal();
    let opts = ainern2d_local::Options {
        data_dir: cli.data_dir,
        listen: cli.listen,
        worker_listen: cli.worker_listen,
        inputs_dir: cli.inputs_dir,
    };
    ainern2d_local::run(worker, hub, opts, shutdown).await
}
