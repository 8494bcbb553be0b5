//! ComfyUI's HTTP API: queue a prompt under our own id, read `/history` and `/queue`, cancel one prompt
//! (never a global interrupt), upload inputs, download outputs with a size limit, and the server's stats.
//! Every route is used without the `/api` prefix, which ComfyUI serves the same.

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::error::{PipelineError, PipelineErrorKind};

/// A file an output node wrote, as `/history` names it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct OutputFile {
    pub filename: String,
    #[serde(default)]
    pub subfolder: String,
    #[serde(rename = "type", default = "output_type")]
    pub kind: String,
}

fn output_type() -> String {
    "output".into()
}

/// A prompt's entry in `/history/<id>`.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    /// `success` or `error`.
    pub status: String,
    pub completed: bool,
    /// The `execution_error` or `execution_interrupted` message that ended it, if one did.
    pub failure: Option<(String, Value)>,
    /// Output node id → its `ui` dict.
    pub outputs: serde_json::Map<String, Value>,
}

impl HistoryEntry {
    /// Public (hidden) for the `comfy_stream` fuzz target.
    #[doc(hidden)]
    pub fn parse(v: &Value) -> HistoryEntry {
        let status = &v["status"];
        let failure = status["messages"].as_array().and_then(|m| {
            m.iter().rev().find_map(|msg| {
                let kind = msg.get(0)?.as_str()?;
                matches!(kind, "execution_error" | "execution_interrupted")
                    .then(|| (kind.to_string(), msg.get(1).cloned().unwrap_or(Value::Null)))
            })
        });
        HistoryEntry {
            status: status["status_str"].as_str().unwrap_or("").to_string(),
            completed: status["completed"].as_bool().unwrap_or(false),
            failure,
            outputs: v["outputs"].as_object().cloned().unwrap_or_default(),
        }
    }

    /// The files of output node `node`, in the order ComfyUI lists them (`images`, `gifs`, `videos`).
    pub fn files_of(&self, node: &str) -> Vec<OutputFile> {
        let Some(ui) = self.outputs.get(node) else { return Vec::new() };
        ["videos", "gifs", "images"]
            .iter()
            .filter_map(|k| ui.get(*k).and_then(Value::as_array))
            .flatten()
            .filter_map(|f| serde_json::from_value(f.clone()).ok())
            .collect()
    }
}

/// Where a prompt is in `/queue`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    Running,
    Pending,
    Absent,
}

/// ComfyUI's device and memory figures (`/system_stats`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SystemStats {
    pub system: SystemInfo,
    #[serde(default)]
    pub devices: Vec<DeviceStats>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SystemInfo {
    #[serde(default)]
    pub comfyui_version: Option<String>,
    #[serde(default)]
    pub ram_total: u64,
    #[serde(default)]
    pub ram_free: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DeviceStats {
    pub name: String,
    #[serde(default)]
    pub index: Option<u32>,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub vram_total: u64,
    #[serde(default)]
    pub vram_free: u64,
}

impl SystemStats {
    /// The device whose memory is fullest, and how full (percent used), among those that report a total.
    pub fn fullest_device(&self) -> Option<(&DeviceStats, f64)> {
        self.devices
            .iter()
            .filter(|d| d.vram_total > 0 && d.kind != "cpu")
            .map(|d| (d, 100.0 * d.vram_total.saturating_sub(d.vram_free) as f64 / d.vram_total as f64))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }
}

/// One ComfyUI server, seen by one WebSocket client id.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    pub client_id: String,
}

/// Transport trouble (refused, reset, 5xx) is retryable: ComfyUI restarts, the job does not change.
fn unreachable(base: &str, what: &str, e: impl std::fmt::Display) -> PipelineError {
    PipelineError::retryable(format!("ComfyUI at {base}: {what}: {e}"))
}

impl Client {
    pub fn new(base: &str, client_id: String) -> Result<Client, PipelineError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| PipelineError::permanent(format!("cannot build an HTTP client: {e}")))?;
        Ok(Client { http, base: base.trim_end_matches('/').to_string(), client_id })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `ws://…/ws?clientId=…` for this client.
    pub fn ws_url(&self) -> String {
        let ws = if let Some(rest) = self.base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else {
            format!("ws://{}", self.base.trim_start_matches("http://"))
        };
        format!("{ws}/ws?clientId={}", self.client_id)
    }

    async fn get_json(&self, path: &str) -> Result<Value, PipelineError> {
        self.get_json_within(path, Duration::from_secs(30)).await
    }

    async fn get_json_within(&self, path: &str, timeout: Duration) -> Result<Value, PipelineError> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| unreachable(&self.base, path, e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(unreachable(&self.base, path, format!("HTTP {status}")));
        }
        resp.json().await.map_err(|e| unreachable(&self.base, path, e))
    }

    async fn post_json(&self, path: &str, body: &Value) -> Result<reqwest::Response, PipelineError> {
        self.http
            .post(format!("{}{path}", self.base))
            .timeout(Duration::from_secs(30))
            .json(body)
            .send()
            .await
            .map_err(|e| unreachable(&self.base, path, e))
    }

    async fn post_ok(&self, path: &str, body: &Value) -> Result<(), PipelineError> {
        let resp = self.post_json(path, body).await?;
        if !resp.status().is_success() {
            return Err(unreachable(&self.base, path, format!("HTTP {}", resp.status())));
        }
        Ok(())
    }

    pub async fn system_stats(&self) -> Result<SystemStats, PipelineError> {
        self.system_stats_within(Duration::from_secs(30)).await
    }

    /// `/system_stats` with a time limit of its own (probes must not wait 30 s for a wedged server).
    pub async fn system_stats_within(&self, timeout: Duration) -> Result<SystemStats, PipelineError> {
        let v = self.get_json_within("/system_stats", timeout).await?;
        serde_json::from_value(v).map_err(|e| unreachable(&self.base, "/system_stats", e))
    }

    pub async fn object_info(&self) -> Result<Value, PipelineError> {
        self.get_json("/object_info").await
    }

    /// Queues `prompt` under `prompt_id` (ComfyUI v0.3.45+ keeps the id it is given). A 400 is the
    /// workflow's fault: permanent, naming the nodes and inputs ComfyUI rejected.
    pub async fn queue_prompt(&self, prompt: &Value, prompt_id: &str) -> Result<(), PipelineError> {
        let body = serde_json::json!({"prompt": prompt, "client_id": self.client_id, "prompt_id": prompt_id});
        let resp = self.post_json("/prompt", &body).await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let text = resp.text().await.unwrap_or_default();
        if status == reqwest::StatusCode::BAD_REQUEST {
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            return Err(PipelineError::permanent(rejection(&v, prompt)));
        }
        Err(unreachable(
            &self.base,
            "/prompt",
            format!("HTTP {status}: {}", text.chars().take(300).collect::<String>()),
        ))
    }

    /// The prompt's history entry, once it has one (ComfyUI answers `{}` until then).
    pub async fn history(&self, prompt_id: &str) -> Result<Option<HistoryEntry>, PipelineError> {
        let v = self.get_json(&format!("/history/{prompt_id}")).await?;
        Ok(v.get(prompt_id).map(HistoryEntry::parse))
    }

    pub async fn queued(&self, prompt_id: &str) -> Result<Queued, PipelineError> {
        let v = self.get_json("/queue").await?;
        let has = |key: &str| {
            v[key]
                .as_array()
                .is_some_and(|items| items.iter().any(|i| i.get(1).and_then(Value::as_str) == Some(prompt_id)))
        };
        Ok(if has("queue_running") {
            Queued::Running
        } else if has("queue_pending") {
            Queued::Pending
        } else {
            Queued::Absent
        })
    }

    /// Stops this prompt only: the targeted interrupt (v0.3.57+; a no-op unless it is the one running) and
    /// its removal from the pending queue.
    pub async fn cancel(&self, prompt_id: &str) -> Result<(), PipelineError> {
        self.post_ok("/interrupt", &serde_json::json!({"prompt_id": prompt_id})).await?;
        self.post_ok("/queue", &serde_json::json!({"delete": [prompt_id]})).await
    }

    /// Asks ComfyUI to unload its models and free cached memory (it does so when idle).
    pub async fn free(&self) -> Result<(), PipelineError> {
        self.post_ok("/free", &serde_json::json!({"unload_models": true, "free_memory": true})).await
    }

    /// Uploads `path` as input image `name` (overwriting: the name is the job's own). Returns the name
    /// workflows refer to.
    pub async fn upload_image(&self, path: &Path, name: &str) -> Result<String, PipelineError> {
        let bytes = tokio::fs::read(path).await?;
        let part = reqwest::multipart::Part::bytes(bytes).file_name(name.to_string());
        let form = reqwest::multipart::Form::new()
            .part("image", part)
            .text("type", "input")
            .text("subfolder", "")
            .text("overwrite", "true");
        let resp = self
            .http
            .post(format!("{}/upload/image", self.base))
            .timeout(Duration::from_secs(300))
            .multipart(form)
            .send()
            .await
            .map_err(|e| unreachable(&self.base, "/upload/image", e))?;
        let status = resp.status();
        if !status.is_success() {
            let kind =
                if status.is_client_error() { PipelineErrorKind::Permanent } else { PipelineErrorKind::Retryable };
            return Err(PipelineError {
                kind,
                message: format!("ComfyUI refused the input image {name}: HTTP {status}"),
            });
        }
        let v: Value = resp.json().await.map_err(|e| unreachable(&self.base, "/upload/image", e))?;
        let stored = v["name"].as_str().unwrap_or(name);
        Ok(match v["subfolder"].as_str().filter(|s| !s.is_empty()) {
            Some(sub) => format!("{sub}/{stored}"),
            None => stored.to_string(),
        })
    }

    /// Downloads an output through `/view` into `dest`, refusing more than `max_bytes`.
    pub async fn download(&self, file: &OutputFile, dest: &Path, max_bytes: u64) -> Result<u64, PipelineError> {
        let resp = self
            .http
            .get(format!("{}/view", self.base))
            .query(&[("filename", &file.filename), ("subfolder", &file.subfolder), ("type", &file.kind)])
            .send()
            .await
            .map_err(|e| unreachable(&self.base, "/view", e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(unreachable(&self.base, &format!("/view {}", file.filename), format!("HTTP {status}")));
        }
        let too_big = || {
            PipelineError::permanent(format!(
                "ComfyUI output {} is larger than comfyui.max_output_mb ({} MB)",
                file.filename,
                max_bytes / (1024 * 1024)
            ))
        };
        if resp.content_length().is_some_and(|n| n > max_bytes) {
            return Err(too_big());
        }
        let mut out = tokio::fs::File::create(dest).await?;
        let mut written = 0u64;
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| unreachable(&self.base, "/view", e))?;
            written += chunk.len() as u64;
            if written > max_bytes {
                drop(out);
                let _ = tokio::fs::remove_file(dest).await;
                return Err(too_big());
            }
            out.write_all(&chunk).await?;
        }
        out.flush().await?;
        Ok(written)
    }
}

/// ComfyUI's 400 body as one message: the error, then each rejected node with its class and inputs.
fn rejection(body: &Value, prompt: &Value) -> String {
    let error = &body["error"];
    let mut msg = format!(
        "ComfyUI rejected the workflow: {}",
        error["message"].as_str().or(error.as_str()).unwrap_or("no reason given")
    );
    if let Some(d) = error["details"].as_str().filter(|d| !d.is_empty()) {
        msg.push_str(&format!(" ({d})"));
    }
    if let Some(nodes) = body["node_errors"].as_object() {
        for (node, e) in nodes {
            let class = e["class_type"].as_str().or(prompt[node]["class_type"].as_str()).unwrap_or("?");
            for err in e["errors"].as_array().into_iter().flatten() {
                let input = err["extra_info"]["input_name"].as_str().unwrap_or("?");
                let what = err["message"].as_str().unwrap_or("invalid");
                let details = err["details"].as_str().unwrap_or("");
                msg.push_str(&format!("; node {node} ({class}) input `{input}`: {what}"));
                if !details.is_empty() {
                    msg.push_str(&format!(" ({details})"));
                }
            }
        }
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_400_names_each_node_and_input() {
        let body = serde_json::json!({
            "error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                      "details": "", "extra_info": {}},
            "node_errors": {"3": {"errors": [{"type": "value_bigger_than_max",
                "message": "Value 99999 bigger than max of 16384", "details": "width",
                "extra_info": {"input_name": "width"}}], "dependent_outputs": ["9"], "class_type": "EmptyImage"}}
        });
        let msg = rejection(&body, &Value::Null);
        assert!(msg.contains("Prompt outputs failed validation"), "{msg}");
        assert!(msg.contains("node 3 (EmptyImage) input `width`: Value 99999 bigger than max of 16384"), "{msg}");
    }

    #[test]
    fn history_entries_give_files_and_the_failure() {
        let v = serde_json::json!({
            "outputs": {"9": {"images": [{"filename": "a_00001_.mp4", "subfolder": "video", "type": "output"}],
                              "animated": [true]}},
            "status": {"status_str": "error", "completed": false, "messages": [
                ["execution_start", {"prompt_id": "p"}],
                ["execution_error", {"prompt_id": "p", "node_id": "3", "exception_type": "torch.OutOfMemoryError"}]]}
        });
        let h = HistoryEntry::parse(&v);
        assert_eq!(h.status, "error");
        assert!(!h.completed);
        assert_eq!(h.failure.as_ref().unwrap().0, "execution_error");
        let files = h.files_of("9");
        assert_eq!(
            files,
            [OutputFile { filename: "a_00001_.mp4".into(), subfolder: "video".into(), kind: "output".into() }]
        );
        assert!(h.files_of("8").is_empty());
    }

    #[test]
    fn websocket_urls_follow_the_scheme() {
        let c = Client::new("http://127.0.0.1:8188/", "c1".into()).unwrap();
        assert_eq!(c.ws_url(), "ws://127.0.0.1:8188/ws?clientId=c1");
        let c = Client::new("https://comfy.example", "c2".into()).unwrap();
        assert_eq!(c.ws_url(), "wss://comfy.example/ws?clientId=c2");
    }
}
