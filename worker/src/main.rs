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
    /// Run one job file locally with no broker or S3, and write its outputs to --out.
    Exec {
        job: PathBuf,
        #[arg(long, default_value = "outputs")]
        out: PathBuf,
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
        Command::Exec { job, out } => {
            let written = ainern2d_worker::exec::exec(&config, &job, &out, false).await?;
            for path in written {
                println!("{}", path.display());
            }
            Ok(())
        }
    }
}
