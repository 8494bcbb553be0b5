//! `ainern2d-hub`: parse the command line and config, then run until a shutdown signal.

use std::path::PathBuf;

use ainern2d_hub::config::Config;
use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "ainern2d-hub", version, about = "Job status in Postgres or SQLite, worker registry, fleet policy")]
struct Cli {
    /// TOML config file (environment variables AINERN2D_HUB_<SECTION>__<KEY> override it).
    #[arg(long, global = true, env = "AINERN2D_HUB_CONFIG")]
    config: Option<PathBuf>,
    /// Print the effective configuration (secrets masked) and exit.
    #[arg(long, global = true)]
    print_config: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume events into the status store until SIGTERM/SIGINT (applies migrations first).
    Run,
    /// Apply the database migrations and exit.
    Migrate,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let cli = Cli::parse();
    let config =
        Config::load(cli.config.as_deref()).map_err(|e| anyhow::anyhow!(e)).context("invalid configuration")?;
    if cli.print_config {
        print!("{}", config.to_masked_toml());
        return Ok(());
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.log.format.as_str() {
        "json" => builder.json().flatten_event(true).init(),
        "pretty" => builder.init(),
        _ if std::io::stderr().is_terminal() => builder.init(),
        _ => builder.json().flatten_event(true).init(),
    }
    match cli.command {
        Command::Migrate => {
            use ainern2d_hub::store::{self, Backend};
            let database = ainern2d_hub::config::DatabaseConfig { max_connections: 1, ..config.database.clone() };
            let status_store = store::open(&database).await?;
            status_store.migrate().await?;
            status_store.close().await;
            match Backend::of_url(&database.url) {
                Some(Backend::Postgres) => println!("migrations applied to schema `{}`", database.schema),
                _ => println!("migrations applied"),
            }
            Ok(())
        }
        Command::Run => {
            let shutdown = CancellationToken::new();
            let token = shutdown.clone();
            tokio::spawn(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
                let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
                tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
                token.cancel();
            });
            ainern2d_hub::serve(config, shutdown).await
        }
    }
}
