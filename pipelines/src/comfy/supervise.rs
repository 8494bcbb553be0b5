//! ComfyUI as a child of the worker (`comfyui.command`): started, its output forwarded to the log,
//! restarted with a backoff whenever it exits, and stopped with the worker.
//!
//! The child runs under a thread of its own with a current-thread runtime, so it lives as long as the
//! supervisor and not as long as whichever runtime happened to create it. On Linux the child also gets
//! `PR_SET_PDEATHSIG`: that signal follows the *thread* that forked it, which is why one long-lived thread
//! forks every child, and it is SIGKILL because a ComfyUI that outlived a `kill -9` of its worker would keep
//! the port and the GPU memory from the next one.
//!
//! A job does not talk to the child; it asks for the current [`Life`] and races its prompt against that
//! life's end, so a crash fails the prompt at once instead of after the watchdog's silence.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;

use super::client::Client;
use crate::error::{PipelineError, PipelineErrorKind};

/// How long a stopped child may take over SIGTERM before it gets SIGKILL.
const GRACE: Duration = Duration::from_secs(10);
/// How long after a lost connection the child's exit may still be on its way.
const EXIT_SEEN: Duration = Duration::from_secs(1);
/// Longer lines of the child's output are cut here (a progress bar redrawn with `\r` counts as lines).
const MAX_LINE: usize = 2000;

/// The supervisor of one ComfyUI process. Clones share it; when the last one is dropped the child is
/// stopped (SIGTERM, SIGKILL after 10 s) without waiting for it — [`Supervisor::stop`] waits.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

/// Owned by the handles only: its drop is the signal that nobody needs the child any more.
struct Inner {
    shared: Arc<Shared>,
    stop: CancellationToken,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// What the supervising thread and the handles share.
struct Shared {
    program: String,
    state: Mutex<State>,
}

struct State {
    pid: Option<u32>,
    restarts: u32,
    last_exit: Option<String>,
    /// The running child's life, or between children the life of the next one.
    life: Life,
}

/// One start of the child, from the moment it was planned to its exit (or failed spawn).
#[derive(Clone)]
pub struct Life {
    inner: Arc<LifeInner>,
}

struct LifeInner {
    pid: Mutex<Option<u32>>,
    why: Mutex<Option<String>>,
    ended: CancellationToken,
}

impl Life {
    fn new() -> Life {
        Life {
            inner: Arc::new(LifeInner {
                pid: Mutex::default(),
                why: Mutex::default(),
                ended: CancellationToken::new(),
            }),
        }
    }

    /// Resolves when this child has exited. A life taken while no child runs (during the backoff before a
    /// restart) is that of the child started next, so a prompt queued meanwhile follows the process that
    /// will run it.
    pub async fn ended(&self) {
        self.inner.ended.cancelled().await;
    }

    /// Whether [`Life::ended`] would resolve at once.
    pub fn is_ended(&self) -> bool {
        self.inner.ended.is_cancelled()
    }

    /// The child's pid, once it was spawned.
    pub fn pid(&self) -> Option<u32> {
        *lock(&self.inner.pid)
    }

    /// How it ended (`exit status: 1`, `signal: 9 (SIGKILL)`, `could not start ...`), or that it did not.
    pub fn why(&self) -> String {
        match (&*lock(&self.inner.why), self.pid()) {
            (Some(why), _) => why.clone(),
            (None, Some(pid)) => format!("running as pid {pid}"),
            (None, None) => "not started yet".into(),
        }
    }

    /// The error of a prompt this life's end cut short.
    pub fn ended_error(&self, prompt_id: &str) -> PipelineError {
        let who = self.pid().map_or_else(|| "ComfyUI".to_string(), |pid| format!("ComfyUI (pid {pid})"));
        PipelineError::retryable(format!(
            "{who} exited while prompt {prompt_id} ran ({}); it is being restarted",
            self.why()
        ))
    }

    /// Runs a prompt against this life: its end fails the prompt at once. A dying ComfyUI can also drop
    /// the prompt's connections before its exit is seen, so a retryable failure followed within a second by
    /// the end counts as the end, whose message says what happened.
    pub async fn guard<T>(
        &self,
        prompt_id: &str,
        prompt: impl Future<Output = Result<T, PipelineError>>,
    ) -> Result<T, PipelineError> {
        let ran = tokio::select! {
            ran = prompt => ran,
            () = self.ended() => return Err(self.ended_error(prompt_id)),
        };
        match ran {
            Err(e)
                if e.kind == PipelineErrorKind::Retryable
                    && tokio::time::timeout(EXIT_SEEN, self.ended()).await.is_ok() =>
            {
                Err(self.ended_error(prompt_id))
            }
            ran => ran,
        }
    }

    fn end(&self, why: String) {
        *lock(&self.inner.why) = Some(why);
        self.inner.ended.cancel();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Supervisor {
    /// Starts `command` (program and arguments) in `dir` and keeps it running.
    pub fn start(command: &[String], dir: Option<&Path>) -> Result<Supervisor, String> {
        let Some(program) = command.first() else {
            return Err("the command is empty: give the program and its arguments".into());
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime for the ComfyUI supervisor: {e}"))?;
        let shared = Arc::new(Shared {
            program: program.clone(),
            state: Mutex::new(State { pid: None, restarts: 0, last_exit: None, life: Life::new() }),
        });
        let stop = CancellationToken::new();
        let (command, dir) = (command.to_vec(), dir.map(Path::to_path_buf));
        let thread = std::thread::Builder::new()
            .name("comfyui-supervisor".into())
            .spawn({
                let (shared, stop) = (shared.clone(), stop.clone());
                move || runtime.block_on(supervise(&shared, &command, dir.as_deref(), &stop))
            })
            .map_err(|e| format!("cannot start the ComfyUI supervisor thread: {e}"))?;
        Ok(Supervisor { inner: Arc::new(Inner { shared, stop, thread: Mutex::new(Some(thread)) }) })
    }

    /// The running child's pid.
    pub fn pid(&self) -> Option<u32> {
        lock(&self.inner.shared.state).pid
    }

    /// How many times the child exited (or failed to start) and was started again.
    pub fn restarts(&self) -> u32 {
        lock(&self.inner.shared.state).restarts
    }

    /// How the last child ended.
    pub fn last_exit(&self) -> Option<String> {
        lock(&self.inner.shared.state).last_exit.clone()
    }

    /// The current child's life (see [`Life::ended`] for the time between children; after a stop, the
    /// last child's).
    pub fn life(&self) -> Life {
        lock(&self.inner.shared.state).life.clone()
    }

    /// Waits until ComfyUI answers `/system_stats`: after a (re)start it takes a while to load.
    pub async fn wait_answering(
        &self,
        client: &Client,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<(), PipelineError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            // A server that accepts but does not answer yet (still loading) must not hold a try for long.
            let asked = tokio::time::timeout(
                left.clamp(Duration::from_millis(100), Duration::from_secs(2)),
                client.system_stats(),
            );
            let error = tokio::select! {
                r = asked => match r {
                    Ok(Ok(_)) => return Ok(()),
                    Ok(Err(e)) => e.message,
                    Err(_) => "no answer to /system_stats".to_string(),
                },
                () = cancel.cancelled() => return Err(PipelineError::cancelled()),
            };
            if Instant::now() >= deadline {
                let process = match (self.pid(), self.last_exit()) {
                    (Some(pid), _) => format!("running as pid {pid}"),
                    (None, Some(exit)) => format!("not running; last: {exit}"),
                    (None, None) => "not started yet".into(),
                };
                return Err(PipelineError::retryable(format!(
                    "the supervised ComfyUI did not answer within {} s (comfyui.start_timeout_s): {}; its process \
                     ({}): {process}",
                    timeout.as_secs_f32(),
                    error,
                    self.inner.shared.program
                )));
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(300).min(left)) => {}
                () = cancel.cancelled() => return Err(PipelineError::cancelled()),
            }
        }
    }

    /// Stops the child and waits for it (up to 10 s and a SIGKILL): blocks, so call it off the reactor.
    pub fn stop(&self) {
        self.inner.stop.cancel();
        let thread = lock(&self.inner.thread).take();
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!("the ComfyUI supervisor thread panicked");
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = lock(&self.inner.shared.state);
        f.debug_struct("Supervisor")
            .field("program", &self.inner.shared.program)
            .field("pid", &st.pid)
            .field("restarts", &st.restarts)
            .finish_non_exhaustive()
    }
}

/// The supervising thread's loop: one turn per child.
async fn supervise(shared: &Shared, command: &[String], dir: Option<&Path>, stop: &CancellationToken) {
    let mut delay = None;
    loop {
        let life = lock(&shared.state).life.clone();
        let started = Instant::now();
        let why = match spawn(command, dir) {
            Err(e) => {
                tracing::error!(program = %shared.program, "cannot start ComfyUI: {e}");
                format!("could not start {}: {e}", shared.program)
            }
            Ok(mut child) => {
                let pid = child.id();
                *lock(&life.inner.pid) = pid;
                lock(&shared.state).pid = pid;
                tracing::info!(program = %shared.program, pid, "ComfyUI started");
                let status = tokio::select! {
                    status = child.wait() => status,
                    () = stop.cancelled() => terminate(&mut child).await,
                };
                let why = status.as_ref().map_or_else(|e| format!("cannot wait for it: {e}"), ExitStatus::to_string);
                tracing::warn!(program = %shared.program, pid, "ComfyUI exited: {why}");
                why
            }
        };
        {
            let mut st = lock(&shared.state);
            st.pid = None;
            st.last_exit = Some(why.clone());
            // After a stop the ended life stays current: nothing will answer a prompt started later.
            if !stop.is_cancelled() {
                st.life = Life::new();
                st.restarts += 1;
            }
        }
        life.end(why);
        if stop.is_cancelled() {
            return;
        }
        let wait = backoff(delay, started.elapsed());
        delay = Some(wait);
        tracing::info!(program = %shared.program, "restarting ComfyUI in {} s", wait.as_secs());
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => {
                lock(&shared.state).life.end("stopped before it started".into());
                return;
            }
        }
    }
}

/// The wait before the next start: 1 s, doubling up to 30 s, back to 1 s after a child that lived 60 s.
fn backoff(previous: Option<Duration>, lived: Duration) -> Duration {
    match previous {
        Some(d) if lived < Duration::from_secs(60) => (d * 2).min(Duration::from_secs(30)),
        _ => Duration::from_secs(1),
    }
}

fn spawn(command: &[String], dir: Option<&Path>) -> std::io::Result<tokio::process::Child> {
    let mut cmd = tokio::process::Command::new(&command[0]);
    cmd.args(&command[1..]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn()?;
    let pid = child.id();
    if let Some(out) = child.stdout.take() {
        tokio::spawn(forward(out, "stdout", pid));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(forward(err, "stderr", pid));
    }
    Ok(child)
}

// The workspace denies unsafe code; `pre_exec` cannot be called without it. The closure only makes two
// async-signal-safe calls, as a forked child must.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut tokio::process::Command) {
    let parent = std::process::id();
    // SAFETY: prctl and getppid are async-signal-safe and touch no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl: then nobody will send the signal.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                return Err(std::io::Error::other("the worker exited while ComfyUI was starting"));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_: &mut tokio::process::Command) {}

/// SIGTERM, then SIGKILL after [`GRACE`].
async fn terminate(child: &mut tokio::process::Child) -> std::io::Result<ExitStatus> {
    #[cfg(unix)]
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) with a pid we own and have not reaped yet (it cannot have been reused).
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        if let Ok(status) = tokio::time::timeout(GRACE, child.wait()).await {
            return status;
        }
        tracing::warn!(pid, "ComfyUI did not stop within {} s of SIGTERM; killing it", GRACE.as_secs());
    }
    child.kill().await?;
    child.wait().await
}

/// Copies the child's output to the log, a line at a time.
async fn forward(mut from: impl AsyncRead + Unpin, stream: &'static str, pid: Option<u32>) {
    let mut lines = Lines::default();
    let mut buf = [0u8; 8192];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for line in lines.push(&buf[..n]) {
            tracing::info!(target: "comfyui", stream, pid, "{line}");
        }
    }
    if let Some(line) = lines.rest() {
        tracing::info!(target: "comfyui", stream, pid, "{line}");
    }
}

/// Splits output on `\n` and `\r`, keeping at most [`MAX_LINE`] bytes of a line so that a child that never
/// writes a newline cannot grow the worker's memory.
#[derive(Default)]
struct Lines {
    line: Vec<u8>,
    cut: bool,
}

impl Lines {
    fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for &b in bytes {
            if b == b'\n' || b == b'\r' {
                out.extend(self.rest());
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            } else {
                self.cut = true;
            }
        }
        out
    }

    /// The line so far (none when it is empty), ending it.
    fn rest(&mut self) -> Option<String> {
        let cut = std::mem::take(&mut self.cut);
        let line = std::mem::take(&mut self.line);
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        match (text.is_empty(), cut) {
            (true, _) => None,
            (false, true) => Some(format!("{text} [cut]")),
            (false, false) => Some(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Supervisor {
        Supervisor::start(&["sh".into(), "-c".into(), script.into()], None).unwrap()
    }

    async fn until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + within;
        while !f() {
            assert!(Instant::now() < deadline, "not within {within:?}: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[cfg(unix)]
    #[allow(unsafe_code)]
    fn signal(pid: u32, sig: i32) -> bool {
        // SAFETY: kill(2) has no memory effects.
        unsafe { libc::kill(pid as i32, sig) == 0 }
    }

    #[test]
    fn an_empty_command_is_refused() {
        assert!(Supervisor::start(&[], None).unwrap_err().contains("empty"));
    }

    #[test]
    fn the_backoff_doubles_to_30_s_and_resets_after_a_long_life() {
        let s = Duration::from_secs;
        assert_eq!(backoff(None, s(0)), s(1));
        assert_eq!(backoff(Some(s(1)), s(0)), s(2));
        assert_eq!(backoff(Some(s(16)), s(59)), s(30));
        assert_eq!(backoff(Some(s(30)), s(1)), s(30));
        assert_eq!(backoff(Some(s(30)), s(60)), s(1));
    }

    #[test]
    fn output_is_split_on_newlines_and_carriage_returns_and_long_lines_are_cut() {
        let mut l = Lines::default();
        assert_eq!(l.push(b"one\ntw"), vec!["one"]);
        assert_eq!(l.push(b"o\r\n 50%\rthree"), vec!["two", " 50%"]);
        assert_eq!(l.rest().as_deref(), Some("three"));
        let long = vec![b'x'; MAX_LINE + 10];
        let out = l.push(&[long.as_slice(), b"\n"].concat());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].len(), MAX_LINE + " [cut]".len());
    }

    #[tokio::test]
    async fn a_child_that_exits_is_restarted() {
        let sup = sh("exit 3");
        until("the first exit", Duration::from_secs(3), || sup.restarts() >= 1).await;
        assert_eq!(sup.last_exit().as_deref(), Some("exit status: 3"));
        until("a restart after the 1 s backoff", Duration::from_secs(4), || sup.restarts() >= 2).await;
    }

    #[tokio::test]
    async fn a_program_that_cannot_start_is_retried() {
        let sup = Supervisor::start(&["/nonexistent/comfyui".into()], None).unwrap();
        until("the failed spawn", Duration::from_secs(3), || sup.restarts() >= 1).await;
        let exit = sup.last_exit().unwrap();
        assert!(exit.starts_with("could not start /nonexistent/comfyui: "), "{exit}");
        assert_eq!(sup.pid(), None);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_life_ends_when_its_child_is_killed_and_the_next_one_begins() {
        let sup = sh("exec sleep 30");
        until("the child", Duration::from_secs(3), || sup.pid().is_some()).await;
        let (life, pid) = (sup.life(), sup.pid().unwrap());
        assert_eq!(life.pid(), Some(pid));
        assert!(!life.is_ended());
        assert!(signal(pid, libc::SIGKILL));
        tokio::time::timeout(Duration::from_secs(2), life.ended()).await.expect("the life should end");
        assert_eq!(life.why(), "signal: 9 (SIGKILL)");
        assert!(life.ended_error("p1").message.contains(&format!("ComfyUI (pid {pid}) exited while prompt p1 ran")));
        let next = sup.life();
        assert!(!next.is_ended(), "the life of the child to come");
        until("the restarted child", Duration::from_secs(4), || sup.pid().is_some()).await;
        assert_eq!(next.pid(), sup.pid());
        assert_ne!(sup.pid(), Some(pid));
        assert_eq!(sup.restarts(), 1);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_lost_connection_is_put_down_to_the_exit_that_follows_it() {
        let sup = sh("exec sleep 30");
        until("the child", Duration::from_secs(3), || sup.pid().is_some()).await;
        let (life, pid) = (sup.life(), sup.pid().unwrap());
        let lost = || async { Err::<(), _>(PipelineError::retryable("connection refused")) };
        assert_eq!(life.guard("p1", lost()).await.unwrap_err().message, "connection refused", "the child lives");
        let e = life
            .guard("p2", async {
                assert!(signal(pid, libc::SIGKILL));
                lost().await
            })
            .await
            .unwrap_err();
        assert!(e.message.contains("exited while prompt p2 ran (signal: 9 (SIGKILL))"), "{e:?}");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn dropping_the_last_handle_stops_the_child() {
        let sup = sh("exec sleep 30");
        until("the child", Duration::from_secs(3), || sup.pid().is_some()).await;
        let pid = sup.pid().unwrap();
        let life = sup.life();
        let clone = sup.clone();
        drop(sup);
        assert!(signal(pid, 0), "a clone keeps it running");
        drop(clone);
        tokio::time::timeout(Duration::from_secs(3), life.ended()).await.expect("the child should be stopped");
        assert_eq!(life.why(), "signal: 15 (SIGTERM)");
        assert!(!signal(pid, 0), "pid {pid} is still there");
    }

    #[tokio::test]
    async fn stop_waits_for_the_child() {
        let sup = sh("exec sleep 30");
        until("the child", Duration::from_secs(3), || sup.pid().is_some()).await;
        let life = sup.life();
        tokio::task::spawn_blocking({
            let sup = sup.clone();
            move || sup.stop()
        })
        .await
        .unwrap();
        assert!(life.is_ended());
        assert_eq!(sup.pid(), None);
        assert_eq!(sup.restarts(), 0, "a stop is not a restart");
    }
}
