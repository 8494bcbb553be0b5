//! `ainern2d-hub`: parse the command line and config, then run until a shutdown signal.

use std::path::PathBuf;

use ainern2d_hub::config::Config;
use anyhow::Context;
use clap::{Parser, Subcommand};

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
    let cli = Cli::parse();
    let config =
        Config::load(cli.config.as_deref()).map_err(|e| anyhow::anyhow!(e)).context("invalid configuration")?;
    if cli.print_config {
        print!("{}", config.to_masked_toml());
        return Ok(());
    }
    let _telemetry = ainern2d_cli::init_logs(&config.log, "ainern2d-hub");
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
            let shutdown = ainern2d_cli::shutdown_on_signal();
            ainern2d_hub::serve(config, shutdown).await
        }
    }
}
