//! One prompt from queueing to its history entry. The WebSocket is opened before the prompt is queued.
//! Its messages for our `prompt_id` become progress. A watchdog covers a socket that closes or goes quiet:
//! it reconnects and reconciles from `/history` and `/queue`. A prompt found in neither has been lost
//! (ComfyUI restarted), which is retryable. A redelivered job finds its own prompt by id instead of queueing
//! it again. Cancelling stops this prompt only.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::client::{Client, HistoryEntry, Queued};
use crate::error::PipelineError;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long the watchdog and the deadline allow.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub silence: Duration,
    pub timeout: Duration,
}

/// Progress through the workflow: finished nodes, and the running node's step count. Public (hidden) with
/// [`interpret`] for the `comfy_stream` fuzz target.
#[doc(hidden)]
pub struct Tracker<'a> {
    prompt: &'a Value,
    total: usize,
    done: HashSet<String>,
    node: Option<String>,
    step: (f64, f64),
}

impl<'a> Tracker<'a> {
    pub fn new(prompt: &'a Value) -> Self {
        let total = prompt.as_object().map_or(1, |m| m.len().max(1));
        Tracker { prompt, total, done: HashSet::new(), node: None, step: (0.0, 0.0) }
    }

    pub fn fraction(&self) -> f32 {
        // What ComfyUI says of the running node's steps is capped to that one node.
        let within = if self.step.1 > 0.0 { (self.step.0 / self.step.1).clamp(0.0, 1.0) } else { 0.0 };
        (((self.done.len() as f64) + within) / self.total as f64).min(1.0) as f32
    }

    fn class(&self, node: &str) -> String {
        self.prompt[node]["class_type"].as_str().unwrap_or("node").to_string()
    }

    /// What a progress report names: the running node's class, `queued` before any node ran.
    pub fn stage(&self) -> String {
        self.node.as_deref().map(|n| self.class(n)).unwrap_or_else(|| "queued".into())
    }

    fn start(&mut self, node: &str) {
        if let Some(prev) = self.node.replace(node.to_string()) {
            self.done.insert(prev);
        }
        self.step = (0.0, 0.0);
    }
}

/// What one WebSocket message means for our prompt.
#[doc(hidden)]
pub enum Seen {
    Nothing,
    Progress,
    /// `executing` with `node: null`: ComfyUI has written the history entry.
    Finished,
    Failed(PipelineError),
    Interrupted,
}

#[doc(hidden)]
pub fn interpret(msg: &Value, prompt_id: &str, t: &mut Tracker<'_>) -> Seen {
    let data = &msg["data"];
    if data.get("prompt_id").and_then(Value::as_str).is_some_and(|p| p != prompt_id) {
        return Seen::Nothing; // another client's prompt (progress frames go to everyone without a client id)
    }
    match msg["type"].as_str().unwrap_or("") {
        "execution_cached" => {
            t.done.extend(data["nodes"].as_array().into_iter().flatten().filter_map(|n| n.as_str().map(String::from)));
            Seen::Progress
        }
        "executing" => match data["node"].as_str() {
            Some(node) => {
                t.start(node);
                Seen::Progress
            }
            None if data.get("prompt_id").is_some() => Seen::Finished,
            None => Seen::Nothing,
        },
        "progress" => {
            if let Some(node) = data["node"].as_str()
                && t.node.as_deref() != Some(node)
            {
                t.start(node);
            }
            t.step = (data["value"].as_f64().unwrap_or(0.0), data["max"].as_f64().unwrap_or(0.0));
            Seen::Progress
        }
        "executed" => {
            if let Some(node) = data["node"].as_str() {
                t.done.insert(node.to_string());
            }
            Seen::Progress
        }
        "execution_error" => Seen::Failed(execution_error(data)),
        "execution_interrupted" => Seen::Interrupted,
        _ => Seen::Nothing,
    }
}

/// `execution_error` as a job error: out of memory is retryable at a lower load, the rest permanent.
pub fn execution_error(data: &Value) -> PipelineError {
    let exception = data["exception_type"].as_str().unwrap_or("error");
    let message = data["exception_message"].as_str().unwrap_or("").lines().next().unwrap_or("").trim();
    let text = format!(
        "ComfyUI node {} ({}) failed: {exception}: {message}",
        data["node_id"].as_str().unwrap_or("?"),
        data["node_type"].as_str().unwrap_or("?")
    );
    let oom = exception.ends_with("OutOfMemoryError") || message.contains("Allocation on device");
    let mut e = PipelineError::inference(text);
    if oom {
        e.kind = crate::error::PipelineErrorKind::OutOfMemory;
    }
    e
}

async fn connect(client: &Client) -> Result<Socket, PipelineError> {
    let (ws, _) = tokio::time::timeout(Duration::from_secs(15), tokio_tungstenite::connect_async(client.ws_url()))
        .await
        .map_err(|_| PipelineError::retryable(format!("ComfyUI at {}: WebSocket connect timed out", client.base())))?
        .map_err(|e| PipelineError::retryable(format!("ComfyUI at {}: WebSocket: {e}", client.base())))?;
    Ok(ws)
}

/// What the watchdog found after the socket closed or went quiet.
enum Reconciled {
    Done(HistoryEntry),
    StillThere,
}

async fn reconcile(client: &Client, prompt_id: &str) -> Result<Reconciled, PipelineError> {
    if let Some(h) = client.history(prompt_id).await? {
        return Ok(Reconciled::Done(h));
    }
    match client.queued(prompt_id).await? {
        Queued::Running | Queued::Pending => Ok(Reconciled::StillThere),
        // It may have finished between the two reads.
        Queued::Absent => match client.history(prompt_id).await? {
            Some(h) => Ok(Reconciled::Done(h)),
            None => Err(PipelineError::retryable(format!(
                "ComfyUI at {} lost prompt {prompt_id}: it is in neither /history nor /queue (did it restart?)",
                client.base()
            ))),
        },
    }
}

/// The history entry once `executing{node: null}` came (ComfyUI writes it just before). A short retry
/// covers a proxy that reorders.
async fn finished(client: &Client, prompt_id: &str) -> Result<HistoryEntry, PipelineError> {
    for _ in 0..20 {
        if let Some(h) = client.history(prompt_id).await? {
            return Ok(h);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(PipelineError::retryable(format!("ComfyUI finished prompt {prompt_id} but /history has no entry for it")))
}

/// Runs `prompt` as `prompt_id` (or finds it, when a redelivered job queued it before) and returns its
/// history entry. `progress(fraction, node class)` is called as nodes run.
pub async fn run_prompt(
    client: &Client,
    prompt: &Value,
    prompt_id: &str,
    limits: Limits,
    progress: &(dyn Fn(f32, &str) + Sync),
    cancel: &CancellationToken,
) -> Result<HistoryEntry, PipelineError> {
    // Cancel wins over whatever the follower awaits, a request to a wedged server included.
    tokio::select! {
        r = follow(client, prompt, prompt_id, limits, progress, cancel) => r,
        () = cancel.cancelled() => {
            stop_prompt(client, prompt_id).await;
            Err(PipelineError::cancelled())
        }
    }
}

/// Interrupts the prompt and takes it off the queue, giving ComfyUI 2 s to answer: the job ends
/// either way, and an unreachable or wedged ComfyUI only means the prompt may run on unseen (logged).
async fn stop_prompt(client: &Client, prompt_id: &str) {
    match tokio::time::timeout(Duration::from_secs(2), client.cancel(prompt_id)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(prompt_id, "could not cancel the ComfyUI prompt: {e}"),
        Err(_) => tracing::warn!(prompt_id, "could not cancel the ComfyUI prompt: no answer within 2 s"),
    }
}

async fn follow(
    client: &Client,
    prompt: &Value,
    prompt_id: &str,
    limits: Limits,
    progress: &(dyn Fn(f32, &str) + Sync),
    cancel: &CancellationToken,
) -> Result<HistoryEntry, PipelineError> {
    let deadline = Instant::now() + limits.timeout;
    let mut ws = connect(client).await?;
    match client.history(prompt_id).await? {
        Some(h) => {
            tracing::info!(prompt_id, "the prompt is already in ComfyUI's history: collecting it");
            return Ok(h);
        }
        None if client.queued(prompt_id).await? != Queued::Absent => {
            tracing::info!(prompt_id, "the prompt is already queued in ComfyUI: following it");
        }
        None => client.queue_prompt(prompt, prompt_id).await?,
    }
    let mut t = Tracker::new(prompt);
    loop {
        let now = Instant::now();
        if now >= deadline {
            stop_prompt(client, prompt_id).await;
            return Err(PipelineError::permanent(format!(
                "ComfyUI prompt {prompt_id} ran past comfyui.prompt_timeout_s ({} s) and was cancelled",
                limits.timeout.as_secs()
            )));
        }
        let wait = limits.silence.min(deadline - now);
        let next = tokio::time::timeout(wait, ws.next()).await;
        let message = match next {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(_)) | None) | Err(_) => {
                // Closed, broken or silent: ask the server where the prompt is.
                let why = if next.is_err() { "silent" } else { "closed" };
                tracing::warn!(prompt_id, why, "ComfyUI WebSocket {why}; reconciling from /history and /queue");
                match reconcile(client, prompt_id).await? {
                    Reconciled::Done(h) => return Ok(h),
                    Reconciled::StillThere => {
                        // ComfyUI forgets a client id when its old socket closes, even if a new socket holds
                        // it by then: close the old one first and give the server a moment.
                        let _ = ws.close(None).await;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        ws = connect(client).await?;
                    }
                }
                continue;
            }
        };
        let Message::Text(text) = message else { continue }; // previews (binary), pings
        let Ok(msg) = serde_json::from_str::<Value>(text.as_str()) else { continue };
        match interpret(&msg, prompt_id, &mut t) {
            Seen::Nothing => {}
            Seen::Progress => progress(t.fraction(), &t.stage()),
            Seen::Finished => return finished(client, prompt_id).await,
            Seen::Failed(e) => return Err(e),
            Seen::Interrupted if cancel.is_cancelled() => return Err(PipelineError::cancelled()),
            Seen::Interrupted => {
                return Err(PipelineError::retryable(format!(
                    "ComfyUI prompt {prompt_id} was interrupted by someone else"
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_counts_cached_and_finished_nodes_and_steps() {
        let prompt = serde_json::json!({"1": {"class_type": "A"}, "2": {"class_type": "KSampler"}, "3": {"class_type": "C"}, "4": {"class_type": "D"}});
        let mut t = Tracker::new(&prompt);
        let m = |v: Value| v;
        interpret(
            &m(serde_json::json!({"type": "execution_cached", "data": {"nodes": ["1"], "prompt_id": "p"}})),
            "p",
            &mut t,
        );
        assert_eq!(t.fraction(), 0.25);
        interpret(&m(serde_json::json!({"type": "executing", "data": {"node": "2", "prompt_id": "p"}})), "p", &mut t);
        interpret(
            &m(serde_json::json!({"type": "progress", "data": {"value": 5, "max": 10, "node": "2", "prompt_id": "p"}})),
            "p",
            &mut t,
        );
        assert_eq!(t.fraction(), 0.375);
        assert_eq!(t.class("2"), "KSampler");
        // Another prompt's progress changes nothing.
        interpret(
            &m(
                serde_json::json!({"type": "progress", "data": {"value": 10, "max": 10, "node": "9", "prompt_id": "q"}}),
            ),
            "p",
            &mut t,
        );
        assert_eq!(t.fraction(), 0.375);
        interpret(&m(serde_json::json!({"type": "executing", "data": {"node": "3", "prompt_id": "p"}})), "p", &mut t);
        assert_eq!(t.fraction(), 0.5);
        let done = interpret(
            &m(serde_json::json!({"type": "executing", "data": {"node": null, "prompt_id": "p"}})),
            "p",
            &mut t,
        );
        assert!(matches!(done, Seen::Finished));
        // `executing` without a prompt id (sent on reconnect) is not the end.
        let mid = interpret(&m(serde_json::json!({"type": "executing", "data": {"node": null}})), "p", &mut t);
        assert!(matches!(mid, Seen::Nothing));
    }

    #[test]
    fn progress_stays_within_0_and_1_whatever_the_step_counts() {
        // A negative step count made the fraction negative (-inf for -1e308), and a progress event's
        // fraction is 0 to 1 (serialised, -inf becomes null).
        let prompt = serde_json::json!({"3": {"class_type": "KSampler"}, "8": {"class_type": "VAEDecode"}});
        for (value, max) in [(-1.0, 20.0), (-1e308, 1.0), (1e308, 1e-300), (30.0, 20.0), (5.0, -1.0)] {
            let mut t = Tracker::new(&prompt);
            let data = serde_json::json!({"value": value, "max": max, "node": "3", "prompt_id": "p"});
            let frame = serde_json::json!({"type": "progress", "data": data});
            assert!(matches!(interpret(&frame, "p", &mut t), Seen::Progress));
            let f = t.fraction();
            assert!((0.0..=1.0).contains(&f), "{value}/{max}: {f}");
        }
    }

    #[test]
    fn out_of_memory_is_told_apart_from_other_node_errors() {
        use crate::error::PipelineErrorKind;
        let oom = serde_json::json!({"node_id": "11", "node_type": "KSampler", "exception_type": "torch.OutOfMemoryError",
            "exception_message": "Allocation on device \nThis error means you ran out of memory on your GPU."});
        let e = execution_error(&oom);
        assert_eq!(e.kind, PipelineErrorKind::OutOfMemory);
        assert_eq!(e.message, "ComfyUI node 11 (KSampler) failed: torch.OutOfMemoryError: Allocation on device");
        let other = serde_json::json!({"node_id": "12", "node_type": "VAEDecode", "exception_type": "RuntimeError",
            "exception_message": "shape mismatch"});
        assert_eq!(execution_error(&other).kind, PipelineErrorKind::Permanent);
    }
}
