//! Row 9: one job through the hub API of the local mode (`ainern2d`: the hub and a worker in one process,
//! the in-process queue, SQLite, the local-directory store), mock pipeline with no latency: from
//! `POST /v1/jobs` to `GET /v1/jobs/{id}` answering `succeeded`, polled back to back, one job at a time.
//! Beside it, a `GET` of a finished job alone: the HTTP round trip the figure cannot beat.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Ctx;
use crate::report::{Check, Row};

fn port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct Local {
    child: Child,
    api: String,
    token: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Local {
    async fn start(ctx: &Ctx) -> anyhow::Result<Local> {
        let dir = tempfile::tempdir()?;
        let (api, worker) = (port()?, port()?);
        let mut child = Command::new(ctx.bin("ainern2d"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen", &format!("127.0.0.1:{api}"), "--worker-listen", &format!("127.0.0.1:{worker}")])
            .env("AINERN2D_WORKER_MOCK__LATENCY_MS", "0")
            .env("RUST_LOG", "warn")
            .env_remove("AINERN2D_HUB_ADMIN_TOKEN")
            .env_remove("AINERN2D_WORKER_CONFIG")
            .env_remove("AINERN2D_HUB_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        // Both halves ready: the hub's API, then the worker consuming.
        crate::support::until_ready(api, &mut child).await?;
        crate::support::until_ready(worker, &mut child).await?;
        let token = std::fs::read_to_string(dir.path().join("data/admin-token"))?.trim().to_string();
        Ok(Local { child, api: format!("http://127.0.0.1:{api}"), token, http: reqwest::Client::new(), _dir: dir })
    }

    async fn status(&self, id: &str) -> anyhow::Result<String> {
        let job: serde_json::Value = self.http.get(format!("{}/v1/jobs/{id}", self.api)).send().await?.json().await?;
        Ok(job["status"].as_str().unwrap_or_default().to_string())
    }

    /// Milliseconds from submitting job `id` to seeing it `succeeded`.
    async fn round_trip(&self, id: &str) -> anyhow::Result<f64> {
        let job = serde_json::json!({"schema": "ainern2d.job.v1", "job_id": id, "kind": "llm",
            "params": {"prompt": "hello", "max_tokens": 1, "seed": 1}, "output": {"prefix": "bench"}});
        let started = Instant::now();
        let r = self.http.post(format!("{}/v1/jobs", self.api)).bearer_auth(&self.token).json(&job).send().await?;
        anyhow::ensure!(
            r.status().is_success(),
            "submit answered {}: {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
        loop {
            match self.status(id).await?.as_str() {
                "succeeded" => return Ok(started.elapsed().as_secs_f64() * 1e3),
                s @ ("failed" | "dead_lettered" | "cancelled") => anyhow::bail!("job {id} ended {s}"),
                _ if started.elapsed() > Duration::from_secs(30) => anyhow::bail!("job {id} not done in 30 s"),
                _ => {}
            }
        }
    }

    fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len().max(1));
    v.get(rank - 1).copied().unwrap_or(f64::NAN)
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<Row> {
    let mut row = Row::new(9, "One job through the hub API in the local mode, submit → succeeded", "p50 ≤ 5 ms");
    let n = if ctx.quick { 30 } else { 200 };
    let local = Local::start(ctx).await?;
    let result = async {
        for i in 0..5 {
            local.round_trip(&format!("warm-{i}")).await?; // warm-up: the SQLite file, the connections
        }
        let (mut p50, mut p99, mut get) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..ctx.rounds {
            let mut trips = Vec::with_capacity(n);
            for i in 0..n {
                trips.push(local.round_trip(&format!("r{round}-{i}")).await?);
            }
            let mut gets = Vec::with_capacity(n);
            for i in 0..n {
                let started = Instant::now();
                local.status(&format!("r{round}-{i}")).await?;
                gets.push(started.elapsed().as_secs_f64() * 1e3);
            }
            p50.push(quantile(trips.clone(), 0.5));
            p99.push(quantile(trips, 0.99));
            get.push(quantile(gets, 0.5));
        }
        Ok::<_, anyhow::Error>((p50, p99, get))
    }
    .await;
    local.stop();
    let (p50, p99, get) = result?;
    row.conditions.push(format!("`ainern2d` ({} build), mock `llm` jobs with no latency, {n} per round one after another, status polled back to back", ctx.profile()));
    let median = row.measure("submit → `succeeded` seen, p50", "ms", true, &p50);
    row.measure("submit → `succeeded` seen, p99", "ms", false, &p99);
    row.measure("`GET /v1/jobs/{id}` alone, p50 (the polling floor)", "ms", false, &get);
    row.checks.push(Check::at_most("p50 (ms)", median, 5.0));
    Ok(row)
}
