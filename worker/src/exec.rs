//! One-shot mode: run one job file locally, with no broker and no S3, and show a progress bar
//! (`ainern2d-worker exec examples/jobs/video.json --out DIR`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ainern2d_contract::parse_job;
use ainern2d_pipelines::{CancellationToken, MockPipeline, Pipeline, ProgressSink, RunRequest};
use anyhow::Context;

use crate::config::Config;
use crate::fetch::Fetcher;

struct Bar(indicatif::ProgressBar);

impl ProgressSink for Bar {
    fn progress(&self, fraction: f32, stage: &str, message: Option<String>) {
        self.0.set_position((fraction.clamp(0.0, 1.0) * 1000.0) as u64);
        self.0.set_message(match message {
            Some(m) => format!("{stage}: {m}"),
            None => stage.to_string(),
        });
    }
}

/// Runs the job in `job_file` and writes its outputs to `out`. Relative input paths are resolved against the
/// current directory. Returns the written files.
pub async fn exec(config: &Config, job_file: &Path, out: &Path, quiet: bool) -> anyhow::Result<Vec<PathBuf>> {
    let body = std::fs::read(job_file).with_context(|| format!("cannot read {}", job_file.display()))?;
    let job = parse_job(&body).map_err(|e| anyhow::anyhow!("{} is not a valid job: {e}", job_file.display()))?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let scratch = tempfile::tempdir()?;
    let fetcher = Fetcher::new(&config.fetch, None, Some(std::env::current_dir()?));
    let mut inputs = BTreeMap::new();
    for (name, url) in &job.inputs {
        let dest = scratch.path().join(format!("input-{name}"));
        fetcher.fetch(name, &url.0, &dest).await?;
        inputs.insert(name.clone(), dest);
    }
    let pipeline: Arc<dyn Pipeline> = Arc::new(MockPipeline::new(job.kind(), config.mock.clone()));
    let bar = if quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(1000) };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} [{bar:40}] {percent:>3}% {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    let started = Instant::now();
    let workdir = scratch.path().to_path_buf();
    let job_for_run = job.clone();
    let result = tokio::task::spawn_blocking(move || {
        let req = RunRequest { job: &job_for_run, attempt: 1, inputs, workdir, downgrade: None };
        let sink = Bar(bar.clone());
        let r = pipeline.run(&req, &sink, &CancellationToken::new());
        bar.finish_and_clear();
        r
    })
    .await?;
    let artifacts = result.map_err(|e| anyhow::anyhow!("{} job {} failed: {}", job.kind(), job.job_id, e.message))?;
    let mut written = Vec::new();
    for a in artifacts {
        let dest = out.join(&a.name);
        std::fs::copy(&a.path, &dest).with_context(|| format!("cannot write {}", dest.display()))?;
        written.push(dest);
    }
    if !quiet {
        eprintln!("{} job {} finished in {:.2}s", job.kind(), job.job_id, started.elapsed().as_secs_f64());
    }
    Ok(written)
}
