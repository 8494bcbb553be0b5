//! `ainern2d-worker`: parse the command line and config, then run until a shutdown signal. (The local mode,
//! hub and worker in one process, is its own program: `ainern2d`, in `local/`.)

use std::path::PathBuf;

use ainern2d_worker::config::Config;
use anyhow::Context;
use clap::{Parser, Subcommand};

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
        /// Run `video` jobs on this backend instead of the configured one (`comfyui`, `mock`).
        #[arg(long)]
        backend: Option<String>,
        /// The ComfyUI server for `--backend comfyui` (overrides comfyui.url).
        #[arg(long)]
        comfyui_url: Option<String>,
        /// The workflow templates for `--backend comfyui` (default: comfyui.templates, else examples/comfyui).
        #[arg(long)]
        templates: Option<PathBuf>,
    },
    /// Model manifest tools.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Check the config, the broker, the store, the scratch directory, the model manifest, ONNX Runtime,
    /// NVML and ComfyUI; print what is wrong and how to fix it. Exit status 1 when a check fails.
    Doctor {
        /// Print the checks as JSON.
        #[arg(long)]
        json: bool,
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

/// How long the exit waits for threads still running a pipeline (one that ignores its cancellation, or
/// waits on the runtime that is shutting down) before the process ends without them.
const EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// `AINERN2D_ABORT_ON_PANIC=1`: a panic on any thread ends the process with SIGABRT once it is reported,
/// as a `panic = "abort"` build would, instead of ending only its task (which tokio survives) or thread.
/// For tests that must see every panic (`tests/tests/poison.rs`) and for operators who prefer a restart
/// to a worker missing a task. It also defeats the `catch_unwind` around candle's model loaders
/// (`pipelines/src/llm/local.rs`): with it, a malformed checkpoint ends the worker instead of failing its job.
fn abort_on_panic() {
    if std::env::var_os("AINERN2D_ABORT_ON_PANIC").is_some_and(|v| v == "1") {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            report(info);
            std::process::abort();
        }));
    }
}

fn main() -> anyhow::Result<()> {
    abort_on_panic();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    let result = runtime.block_on(run());
    // Dropping a runtime waits for every blocking thread, however long it takes: bound it.
    runtime.shutdown_timeout(EXIT_WAIT);
    result
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Doctor { json } = cli.command {
        // A config that does not load is the first thing the doctor reports, not an error of its own.
        let checks = ainern2d_worker::doctor::run(Config::load(cli.config.as_deref())).await;
        if json {
            println!("{}", serde_json::to_string_pretty(&checks)?);
        } else {
            print!("{}", ainern2d_worker::doctor::render(&checks));
        }
        std::process::exit(i32::from(ainern2d_worker::doctor::failed(&checks)));
    }
    let config =
        Config::load(cli.config.as_deref()).map_err(|e| anyhow::anyhow!(e)).context("invalid configuration")?;
    if cli.print_config {
        print!("{}", config.to_masked_toml());
        return Ok(());
    }
    match cli.command {
        Command::Run => {
            let _telemetry = ainern2d_cli::init_logs(&config.log, "ainern2d-worker");
            ainern2d_worker::serve(config, ainern2d_cli::shutdown_on_signal()).await
        }
        Command::Exec { job, out, models, backend, comfyui_url, templates } => {
            let mut config = config;
            if models.is_some() {
                config.models.manifest = models;
            }
            ainern2d_worker::exec::video_backend(&mut config, backend.as_deref(), comfyui_url, templates)?;
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
        Command::Doctor { .. } => unreachable!("handled above"),
        Command::Models(ModelsCommand::Check { manifest }) => {
            let mut config = config;
            if manifest.is_some() {
                config.models.manifest = manifest;
            }
            ainern2d_worker::exec::check_models(&config).await
        }
    }
}
