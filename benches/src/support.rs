//! What the worker benchmarks share: the topology, filling a queue, the worker process and its /proc
//! figures. Each benchmark binary uses a part of it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use ainern2d_contract::JobKind;
use ainern2d_contract::topology::Topology;
use lapin::options::*;
use lapin::{BasicProperties, Channel};

/// Declares the worker's topology for `llm` jobs (one retry level of 1 s).
pub async fn declare(amqp: &str, topo: &Topology) -> anyhow::Result<()> {
    use ainern2d_queue::Broker;
    let session = ainern2d_queue::amqp::AmqpBroker::new(amqp.to_string()).connect("bench setup").await?;
    ainern2d_queue::topology::declare_worker(session.as_ref(), topo, &[JobKind::Llm], &[1000]).await?;
    session.close().await;
    Ok(())
}

/// A consumer (auto-ack) of the events exchange's messages matching `key`, on a queue of its own.
pub async fn tap(ch: &Channel, topo: &Topology, key: &str) -> anyhow::Result<lapin::Consumer> {
    use lapin::types::FieldTable;
    let options = QueueDeclareOptions { exclusive: true, ..Default::default() };
    let queue = ch.queue_declare("".into(), options, FieldTable::default()).await?;
    let exchange = topo.events_exchange();
    ch.queue_bind(
        queue.name().clone(),
        exchange.as_str().into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let no_ack = BasicConsumeOptions { no_ack: true, ..Default::default() };
    Ok(ch.basic_consume(queue.name().clone(), "tap".into(), no_ack, FieldTable::default()).await?)
}

/// Deletes what `declare` made.
pub async fn delete(ch: &Channel, topo: &Topology) {
    for q in [topo.job_queue(JobKind::Llm), topo.retry_queue(JobKind::Llm, 0), topo.dead_letter_queue()] {
        let _ = ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()).await;
    }
    for e in [topo.events_exchange(), topo.control_exchange(), topo.dead_letter_exchange()] {
        let _ = ch.exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default()).await;
    }
}

/// Publishes `n` persistent messages to `queue` and waits for every confirm.
pub async fn fill(ch: &Channel, queue: &str, n: usize, body: impl Fn(usize) -> Vec<u8>) -> anyhow::Result<()> {
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut pending = Vec::with_capacity(1000);
    for i in 0..n {
        let props = BasicProperties::default().with_delivery_mode(2);
        pending.push(ch.basic_publish("".into(), queue.into(), BasicPublishOptions::default(), &body(i), props).await?);
        if pending.len() == 1000 {
            for p in pending.drain(..) {
                p.await?;
            }
        }
    }
    for p in pending {
        p.await?;
    }
    Ok(())
}

/// The real worker binary on a local-directory store (on tmpfs when there is one: this measures the
/// runtime, not the disk).
pub struct Worker {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Worker {
    pub fn start(
        bin: Option<PathBuf>,
        amqp: &str,
        prefix: &str,
        backend: &str,
        slots: u32,
        extra: &str,
    ) -> anyhow::Result<Worker> {
        let dir = match std::path::Path::new("/dev/shm").is_dir() {
            true => tempfile::tempdir_in("/dev/shm")?,
            false => tempfile::tempdir()?,
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let config = format!(
            "worker_id = \"bench\"\nscratch_dir = \"{scratch}\"\n[broker]\nurl = \"{amqp}\"\nprefix = \"{prefix}\"\n[jobs]\nkinds = [\"llm\"]\nbackend = \"{backend}\"\nupload_overlap = 0\nretry_delays_ms = [1000]\n[jobs.slots]\nllm = {slots}\n[store]\nkind = \"local\"\nbucket = \"bench\"\nlocal_dir = \"{out}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n[log]\nfilter = \"warn\"\n{extra}",
            scratch = dir.path().join("scratch").display(),
            out = dir.path().join("out").display(),
        );
        std::fs::write(dir.path().join("w.toml"), config)?;
        let bin = bin.unwrap_or_else(|| std::env::current_exe().unwrap().with_file_name("ainern2d-worker"));
        let child = Command::new(&bin)
            .args(["run", "--config"])
            .arg(dir.path().join("w.toml"))
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Worker { child, port, _dir: dir })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// SIGTERM, then wait for the drain.
    pub fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

/// User + system CPU seconds of a process (Linux `/proc`).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Resident set size of a process in KiB (Linux `/proc`).
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}
