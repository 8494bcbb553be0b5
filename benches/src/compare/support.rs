//! What the rows share: the worker's topology, filling a queue, a tap on the events, the worker process,
//! waiting for `/ready`, and /proc figures.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ainern2d_contract::JobKind;
use ainern2d_contract::topology::Topology;
use lapin::options::*;
use lapin::{BasicProperties, Channel};

/// Declares the worker's topology for `kind` jobs (one retry level of 1 s).
pub async fn declare(amqp: &str, topo: &Topology, kind: JobKind) -> anyhow::Result<()> {
    use ainern2d_queue::Broker;
    let session = ainern2d_queue::amqp::AmqpBroker::new(amqp.to_string()).connect("bench setup").await?;
    ainern2d_queue::topology::declare_worker(session.as_ref(), topo, &[kind], &[1000]).await?;
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
pub async fn delete(ch: &Channel, topo: &Topology, kind: JobKind) {
    for q in [topo.job_queue(kind), topo.retry_queue(kind, 0), topo.dead_letter_queue()] {
        let _ = ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()).await;
    }
    for e in [topo.events_exchange(), topo.control_exchange(), topo.dead_letter_exchange()] {
        let _ = ch.exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default()).await;
    }
}

/// Publishes `n` persistent messages to `queue` and waits for every confirm.
pub async fn fill(ch: &Channel, queue: &str, n: usize, body: impl Fn(usize) -> Vec<u8>) -> anyhow::Result<()> {
    publish_all(ch, (0..n).map(|i| (String::new(), queue.to_string(), body(i)))).await
}

/// Publishes `(exchange, routing key, body)` messages, persistent, 1,000 confirms in flight at most, and
/// waits for every confirm.
pub async fn publish_all(
    ch: &Channel,
    messages: impl Iterator<Item = (String, String, Vec<u8>)>,
) -> anyhow::Result<()> {
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut pending = Vec::with_capacity(1000);
    for (exchange, key, body) in messages {
        let props = BasicProperties::default().with_delivery_mode(2);
        let options = BasicPublishOptions::default();
        pending.push(ch.basic_publish(exchange.as_str().into(), key.as_str().into(), options, &body, props).await?);
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

/// Runs a benchmark binary that writes its figures to the file its `--json` argument names (`json`),
/// and reads them; a failure shows what it printed.
pub fn bench_json(cmd: &mut Command, json: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    let out = cmd.arg("--json").arg(json).output().map_err(|e| anyhow::anyhow!("running {cmd:?}: {e}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&std::fs::read(json)?)?)
}

/// The real worker binary serving `kind` jobs on a local-directory store (on tmpfs when there is one:
/// this measures the runtime, not the disk).
pub struct Worker {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Worker {
    /// `jobs` is appended to the `[jobs]` table (`upload_overlap` is 0 unless it names one), `extra` after
    /// the whole config (tables of its own).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        bin: Option<PathBuf>,
        amqp: &str,
        prefix: &str,
        kind: JobKind,
        backend: &str,
        slots: u32,
        jobs: &str,
        extra: &str,
    ) -> anyhow::Result<Worker> {
        let dir = match std::path::Path::new("/dev/shm").is_dir() {
            true => tempfile::tempdir_in("/dev/shm")?,
            false => tempfile::tempdir()?,
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let jobs =
            if jobs.contains("upload_overlap") { jobs.to_string() } else { format!("upload_overlap = 0\n{jobs}") };
        let config = format!(
            "worker_id = \"bench\"\nscratch_dir = \"{scratch}\"\n[broker]\nurl = \"{amqp}\"\nprefix = \"{prefix}\"\n\
             [jobs]\nkinds = [\"{kind}\"]\nbackend = \"{backend}\"\nretry_delays_ms = [1000]\n{jobs}\n\
             [jobs.slots]\n{kind} = {slots}\n[store]\nkind = \"local\"\nbucket = \"bench\"\nlocal_dir = \"{out}\"\n\
             [http]\nlisten = \"127.0.0.1:{port}\"\n[log]\nfilter = \"warn\"\n{extra}",
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

/// Polls `/ready` on `port` every 2 ms until it answers 200; fails when the process exits or after 30 s.
pub async fn until_ready(port: u16, child: &mut Child) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/ready");
    let started = std::time::Instant::now();
    loop {
        if let Ok(r) = http.get(&url).timeout(Duration::from_millis(500)).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("the process exited before it was ready ({status})");
        }
        if started.elapsed() > Duration::from_secs(30) {
            anyhow::bail!("not ready within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// User + system CPU seconds of a process (Linux `/proc`).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// CPU seconds (user + system) of every process whose name is one of `names`, by pid: two snapshots
/// around a stretch of work give each one's share of it (`cpu_between`).
pub fn cpu_of(names: &[&str]) -> std::collections::HashMap<u32, (String, f64)> {
    let mut out = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
        let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else { continue };
        let comm = comm.trim();
        if names.contains(&comm)
            && let Some(cpu) = cpu_seconds(pid)
        {
            out.insert(pid, (comm.to_string(), cpu));
        }
    }
    out
}

/// Seconds each name's processes spent between two `cpu_of` snapshots (a process started in between counts
/// from zero).
pub fn cpu_between(
    before: &std::collections::HashMap<u32, (String, f64)>,
    after: &std::collections::HashMap<u32, (String, f64)>,
) -> std::collections::BTreeMap<String, f64> {
    let mut by_name = std::collections::BTreeMap::new();
    for (pid, (name, cpu)) in after {
        let start = before.get(pid).map_or(0.0, |b| b.1);
        *by_name.entry(name.clone()).or_insert(0.0) += cpu - start;
    }
    by_name
}

/// Resident set size of a process in KiB (Linux `/proc`).
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// Where a process's resident set is (Linux `/proc/<pid>/smaps`, KiB): anonymous memory (heap, stacks),
/// its executable's pages, and the pages of the shared libraries and other files it maps, with the
/// libraries' count; and how much of it is private.
#[derive(Debug, Default, Clone, Copy)]
pub struct RssParts {
    pub anon_kb: u64,
    pub exe_kb: u64,
    pub libs_kb: u64,
    pub libs: usize,
    /// Pages no other process shares (the unique set: what one more worker costs).
    pub private_kb: u64,
}

pub fn rss_parts(pid: u32) -> Option<RssParts> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let (mut parts, mut path, mut libs) = (RssParts::default(), String::new(), std::collections::HashSet::new());
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: address range, perms, offset, device, inode, then the path, if any.
            path = fields.nth(4).unwrap_or_default().to_string();
        } else if first == "Private_Clean:" || first == "Private_Dirty:" {
            parts.private_kb += fields.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        } else if first == "Rss:" {
            let kb: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            if path.starts_with('/') && std::path::Path::new(&path) == exe {
                parts.exe_kb += kb;
            } else if path.starts_with('/') {
                parts.libs_kb += kb;
                if path.contains(".so") {
                    libs.insert(path.clone());
                }
            } else {
                parts.anon_kb += kb;
            }
        }
    }
    parts.libs = libs.len();
    Some(parts)
}
