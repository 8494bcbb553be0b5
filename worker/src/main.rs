//! `ainern2d-worker`: parse the command line and config, then run until a shutdown signal.

use std::path::PathBuf;

use ainern2d_worker::config::{Config, LogFormat};
use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "ainern2d-worker",
    version,
    about = "GPU job worker: RabbitMQ jobs -> pipelines -> S3 outputs -> events"
)]
struct Cli {
    /// TOML config file (environment variables AINERN2D_WORKER_<SECTION>__<KEY> override it).
    #[arg(long, global = true, env = "AINERN2D_WORKER_CONFIG")]
    config: Option<PathBuf>,
    /// Print the effective configuration (secrets masked) and exit.
    #[arg(long, global = true)]
    print_config: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: consume jobs until SIGTERM/SIGINT, then drain.
    Run,
    /// Run one job file locally with no broker, and write its outputs to --out. `llm` jobs run on the
    /// model manifest (--models, models.manifest, or ./models.toml); other kinds on the mock pipelines.
    Exec {
        job: PathBuf,
        #[arg(long, default_value = "outputs")]
        out: PathBuf,
        /// The model manifest (overrides models.manifest).
        #[arg(long)]
        models: Option<PathBuf>,
    },
    /// Model manifest tools.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// The local mode: hub and worker in one process with an in-process queue, SQLite and a local output
    /// directory. Serves the hub API and prints how to submit a job.
    Standalone {
        /// Holds hub.db (SQLite), outputs/, scratch/ and the admin-token file.
        #[arg(long, default_value = ".ainern2d")]
        data_dir: PathBuf,
        /// Address of the hub API.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Address of the worker's probes and metrics.
        #[arg(long, default_value = "127.0.0.1:9100")]
        worker_listen: std::net::SocketAddr,
        /// Hub config file (TOML; AINERN2D_HUB_* variables override it): policy, profiles, alerts.
        #[arg(long, env = "AINERN2D_HUB_CONFIG")]
        hub_config: Option<PathBuf>,
        /// Relative input paths of submitted jobs are read below this directory.
        #[arg(long, default_value = ".")]
        inputs_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Write tiny random-weight models in the real formats (GGUF, safetensors + config + tokenizer) into
    /// DIR: what the example manifest `models.toml` and the tests run.
    Tiny { dir: PathBuf },
    /// Validate a manifest, download its s3:// files into the cache, load every in-process model and
    /// report load time and memory (a pre-flight for a new host or manifest).
    Check {
        /// The manifest (default: models.manifest, else ./models.toml).
        manifest: Option<PathBuf>,
    },
}

fn init_logs(config: &Config) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.filter));
    let json = match config.log.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("shutdown signal received: taking no new jobs, draining");
    token.cancel();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config =
        Config::load(cli.config.as_deref()).map_err(|e| anyhow::anyhow!(e)).context("invalid configuration")?;
    if cli.print_config {
        print!("{}", config.to_masked_toml());
        return Ok(());
    }
    match cli.command {
        Command::Run => {
            init_logs(&config);
            let shutdown = CancellationToken::new();
            tokio::spawn(shutdown_signal(shutdown.clone()));
            ainern2d_worker::serve(config, shutdown).await
        }
        Command::Standalone { data_dir, listen, worker_listen, hub_config, inputs_dir } => {
            let hub = ainern2d_hub::config::Config::load(hub_config.as_deref())
                .map_err(|e| anyhow::anyhow!(e))
                .context("invalid hub configuration")?;
            init_logs(&config);
            let shutdown = CancellationToken::new();
            tokio::spawn(shutdown_signal(shutdown.clone()));
            let opts = ainern2d_worker::standalone::Options { data_dir, listen, worker_listen, inputs_dir };
            ainern2d_worker::standalone::run(config, hub, opts, shutdown).await
        }
        Command::Exec { job, out, models } => {
            let mut config = config;
            if models.is_some() {
                config.models.manifest = models;
            }
            let written = ainern2d_worker::exec::exec(&config, &job, &out, false).await?;
            for path in written {
                println!("{}", path.display());
            }
            Ok(())
        }
        Command::Models(ModelsCommand::Tiny { dir }) => {
            for path in ainern2d_pipelines::llm::tiny::write_examples(&dir).map_err(|e| anyhow::anyhow!(e))? {
                println!("{}", path.display());
            }
            Ok(())
        }
        Command::Models(ModelsCommand::Check { manifest }) => {
            let mut config = config;
            if manifest.is_some() {
                config.models.manifest = manifest;
            }
            ainern2d_worker::exec::check_models(&config).await
        }
    }
}
