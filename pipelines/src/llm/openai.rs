//! Generation by an OpenAI-compatible server (Ollama, vLLM, llm-proxy): `POST {endpoint}/chat/completions`
//! with `stream: true`, read as server-sent events. The same progress events and output as in-process
//! generation; cancellation drops the stream (the server stops generating when the connection closes).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ainern2d_models::RemoteSpec;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::local::find_stop;
use super::{Finish, GenRequest, Generation};
use crate::ProgressSink;
use crate::error::PipelineError;

/// The OpenAI API accepts at most this many stop strings; the rest are enforced here.
const MAX_REMOTE_STOPS: usize = 4;

fn new_client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).build()
}

/// The client shared by every job on the worker's runtime (one connection pool).
fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| new_client().expect("building an HTTP client with static settings"))
}

/// Runs the streaming request on the worker's runtime (this is called on a blocking thread), or on a
/// private one when there is none (one-shot tools, tests).
pub fn generate(
    remote: &RemoteSpec,
    req: &GenRequest<'_>,
    progress: &dyn ProgressSink,
    cancel: &CancellationToken,
) -> Result<Generation, PipelineError> {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle.block_on(stream(client(), remote, req, progress, cancel)),
        Err(_) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| PipelineError::retryable(format!("cannot start an HTTP runtime: {e}")))?;
            // A pool belongs to the runtime it was made on: a private runtime gets a private client.
            let client =
                new_client().map_err(|e| PipelineError::retryable(format!("cannot build an HTTP client: {e}")))?;
            rt.block_on(stream(&client, remote, req, progress, cancel))
        }
    }
}

fn body(remote: &RemoteSpec, req: &GenRequest<'_>) -> serde_json::Value {
    let p = req.params;
    let mut messages = Vec::new();
    if let Some(system) = p.system.as_deref().filter(|s| !s.is_empty()) {
        messages.push(serde_json::json!({"role": "system", "content": system}));
    }
    messages.push(serde_json::json!({"role": "user", "content": p.prompt}));
    let mut body = serde_json::json!({
        "model": remote.model,
        "messages": messages,
        "stream": true,
        "stream_options": {"include_usage": true},
        "max_tokens": req.max_tokens,
        "temperature": p.temperature,
        "top_p": p.top_p,
        "seed": req.seed,
    });
    let extra = body.as_object_mut().expect("object");
    if !p.stop.is_empty() {
        extra.insert("stop".into(), p.stop.iter().take(MAX_REMOTE_STOPS).cloned().collect());
    }
    // Not in OpenAI's API; vLLM and llm-proxy honour them, Ollama ignores them.
    if let Some(k) = p.top_k {
        extra.insert("top_k".into(), k.into());
    }
    if p.repetition_penalty != 1.0 {
        extra.insert("repetition_penalty".into(), p.repetition_penalty.into());
    }
    body
}

fn short(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

async fn stream(
    client: &reqwest::Client,
    remote: &RemoteSpec,
    req: &GenRequest<'_>,
    progress: &dyn ProgressSink,
    cancel: &CancellationToken,
) -> Result<Generation, PipelineError> {
    let url = format!("{}/chat/completions", remote.endpoint.trim_end_matches('/'));
    let mut request = client.post(&url).json(&body(remote, req));
    if let Some(var) = &remote.api_key_env {
        let key = std::env::var(var).map_err(|_| {
            PipelineError::permanent(format!("model `{}` wants an API key in ${var}, which is not set", req.model))
        })?;
        request = request.bearer_auth(key);
    }
    let started = Instant::now();
    let idle = Duration::from_secs(remote.idle_timeout_s.max(1));
    progress.progress(0.0, "prompt", Some(format!("waiting for {}", remote.model)));
    let response = tokio::select! {
        _ = cancel.cancelled() => return Err(PipelineError::cancelled()),
        r = tokio::time::timeout(idle, request.send()) => match r {
            Err(_) => return Err(PipelineError::retryable(format!("{url} did not answer within {}s", idle.as_secs()))),
            Ok(Err(e)) => return Err(PipelineError::retryable(format!("{url}: {e}"))),
            Ok(Ok(r)) => r,
        },
    };
    let status = response.status();
    if !status.is_success() {
        let text = tokio::select! {
            _ = cancel.cancelled() => return Err(PipelineError::cancelled()),
            t = tokio::time::timeout(idle, response.text()) => t.ok().and_then(Result::ok).unwrap_or_default(),
        };
        let message = format!("{url} answered {status}: {}", short(&text));
        // Overload and server trouble pass; a rejected request (bad model name, prompt too long for the
        // context, bad key) fails the same way every time.
        return Err(if status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error() {
            PipelineError::retryable(message)
        } else {
            PipelineError::permanent(message)
        });
    }
    let mut bytes = response.bytes_stream();
    let mut reader = SseReader::new(&url, &req.params.stop);
    let mut first_token_s = None;
    let mut gen_started = None;
    let mut on_piece = |chunks: u64, stopped: bool| {
        first_token_s.get_or_insert_with(|| started.elapsed().as_secs_f64());
        let since = *gen_started.get_or_insert_with(Instant::now);
        if !stopped {
            let per_s = chunks as f64 / since.elapsed().as_secs_f64().max(1e-9);
            progress.tokens((chunks as f32 / req.max_tokens as f32).min(1.0), chunks as u32, per_s as f32);
        }
    };
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => return Err(PipelineError::cancelled()),
            n = tokio::time::timeout(idle, bytes.next()) => n,
        };
        let chunk = match next {
            Err(_) => {
                return Err(PipelineError::retryable(format!("{url} sent nothing for {}s mid-stream", idle.as_secs())));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(PipelineError::retryable(format!("{url}: stream broken: {e}"))),
            Ok(Some(Ok(chunk))) => chunk,
        };
        if reader.feed(&chunk, &mut on_piece)? {
            break;
        }
    }
    let SseReader { text, chunks, usage, finish, ended, .. } = reader;
    if !ended {
        // The connection closed mid-generation: what we have is a truncated answer, not a completion.
        return Err(PipelineError::retryable(format!(
            "{url} closed the stream after {chunks} chunks without finishing the completion"
        )));
    }
    let first = first_token_s.unwrap_or_else(|| started.elapsed().as_secs_f64());
    let (prompt_tokens, completion) = usage.unwrap_or((None, None));
    Ok(Generation {
        text,
        finish,
        prompt_tokens,
        // Servers stream about one token per chunk; the usage record, when sent, is exact.
        completion_tokens: completion.unwrap_or(chunks),
        prompt_eval_s: first,
        time_to_first_token_s: first,
        generation_s: gen_started.map_or(0.0, |t| t.elapsed().as_secs_f64()),
        context_length: None,
        truncated_to_context: false,
        template: None,
    })
}

/// The answer read so far from the server-sent events: the pure part of `stream` (no clock, no I/O), public
/// (hidden) for the `openai_stream` fuzz target.
#[doc(hidden)]
#[derive(Debug)]
pub struct SseReader<'a> {
    url: &'a str,
    stop: &'a [String],
    max_stop: usize,
    /// The start of a line whose end has not come yet.
    buffer: Vec<u8>,
    pub text: String,
    /// Content pieces received.
    pub chunks: u64,
    /// `prompt_tokens` and `completion_tokens` of the usage record, when one came.
    pub usage: Option<(Option<u64>, Option<u64>)>,
    pub finish: Finish,
    /// Whether the server said the generation is over (`[DONE]`, a finish reason, or our stop string).
    pub ended: bool,
}

impl<'a> SseReader<'a> {
    /// A reader for the stream from `url` (named in errors), ending the answer before any of `stop`.
    pub fn new(url: &'a str, stop: &'a [String]) -> Self {
        let max_stop = stop.iter().map(String::len).max().unwrap_or(0);
        SseReader {
            url,
            stop,
            max_stop,
            buffer: Vec::new(),
            text: String::new(),
            chunks: 0,
            usage: None,
            finish: Finish::Length,
            ended: false,
        }
    }

    /// Reads the complete lines `chunk` ends (the rest waits for the next chunk). `on_piece(chunks, stopped)`
    /// is called for each content piece, `stopped` when it ended the answer on a stop string. `Ok(true)`:
    /// nothing more is to be read (`[DONE]` or a stop string).
    pub fn feed(&mut self, chunk: &[u8], on_piece: &mut dyn FnMut(u64, bool)) -> Result<bool, PipelineError> {
        let url = self.url;
        self.buffer.extend_from_slice(chunk);
        while let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let Some(data) = line.trim().strip_prefix("data:").map(str::trim) else { continue };
            if data == "[DONE]" {
                self.ended = true;
                return Ok(true);
            }
            let event: serde_json::Value = serde_json::from_str(data).map_err(|e| {
                PipelineError::retryable(format!("{url} sent an unreadable event ({e}): {}", short(data)))
            })?;
            if let Some(error) = event.get("error") {
                return Err(PipelineError::permanent(format!(
                    "{url} reported an error: {}",
                    short(&error.to_string())
                )));
            }
            if let Some(u) = event.get("usage").filter(|u| !u.is_null()) {
                self.usage = Some((
                    u.get("prompt_tokens").and_then(|v| v.as_u64()),
                    u.get("completion_tokens").and_then(|v| v.as_u64()),
                ));
            }
            let Some(choice) = event.get("choices").and_then(|c| c.get(0)) else { continue };
            if let Some(piece) = choice.pointer("/delta/content").and_then(|v| v.as_str()).filter(|s| !s.is_empty()) {
                self.chunks += 1;
                let from = self.text.len().saturating_sub(self.max_stop);
                self.text.push_str(piece);
                if let Some(at) = find_stop(&self.text, from, self.stop) {
                    self.text.truncate(at);
                    self.finish = Finish::Stop;
                    self.ended = true;
                    on_piece(self.chunks, true);
                    return Ok(true);
                }
                on_piece(self.chunks, false);
            }
            match choice.get("finish_reason").and_then(|v| v.as_str()) {
                Some("length") => (self.finish, self.ended) = (Finish::Length, true),
                Some(_) => (self.finish, self.ended) = (Finish::Stop, true),
                None => {}
            }
        }
        Ok(false)
    }
}
