//! The HTTP routes of `server.py`, each at `/X` and `/api/X`. JSON bodies are parsed whatever the content
//! type; bad JSON gives aiohttp's 500 where ComfyUI does not catch it. Empty 200 answers have no body.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State as Extract};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::Shared;
use super::behaviour::Device;
use super::object_info;
use super::pyjson::{self, py_str, truthy};
use super::state::{Item, Number, now_ms};
use super::validate::{Graph, KeyOrder, Verdict, validate};
use super::{view, ws};

type S = Extract<Arc<Shared>>;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/prompt", get(get_prompt).post(post_prompt))
        .route("/queue", get(get_queue).post(post_queue))
        .route("/interrupt", post(post_interrupt))
        .route("/history", get(get_history).post(post_history))
        .route("/history/{prompt_id}", get(get_history_id))
        .route("/view", get(view::view))
        .route("/upload/image", post(view::upload).layer(DefaultBodyLimit::max(100 * 1024 * 1024)))
        .route("/system_stats", get(system_stats))
        .route("/features", get(features))
        .route("/free", post(post_free))
        .route("/object_info", get(object_info_all))
        .route("/object_info/{class}", get(object_info_one))
        .route("/ws", get(ws::handler));
    let wedge = axum::middleware::from_fn_with_state(shared.clone(), wedge);
    Router::new().nest("/api", api.clone()).merge(api).fallback(not_found).layer(wedge).with_state(shared)
}

/// `Behaviour::wedged`: hold every request until the server is unwedged.
async fn wedge(Extract(shared): S, request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    while shared.lock().behaviour.wedged {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    next.run(request).await
}

/// `web.json_response`: Python's JSON text.
pub(crate) fn json_response(status: StatusCode, value: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json; charset=utf-8")], pyjson::to_string(value)).into_response()
}

fn ok(value: &Value) -> Response {
    json_response(StatusCode::OK, value)
}

/// aiohttp's answer to an exception in a handler (bad JSON, a wrong type where Python indexes a dict).
pub(crate) fn server_error() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "500 Internal Server Error\n\nServer got itself in trouble",
    )
        .into_response()
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "404: Not Found").into_response()
}

fn parse(body: &Bytes) -> Option<Value> {
    serde_json::from_slice(body).ok()
}

async fn get_prompt(Extract(shared): S) -> Response {
    ok(&shared.lock().queue_info())
}

async fn post_prompt(Extract(shared): S, body: Bytes) -> Response {
    let Some(request) = parse(&body) else { return server_error() };
    let order: KeyOrder = serde_json::from_slice(&body).unwrap_or_default();
    let mut st = shared.lock();
    st.record.prompts.push(request.clone());
    let Some(request) = request.as_object() else { return server_error() };
    let number = match request.get("number") {
        Some(n) => match n.as_f64().or_else(|| n.as_str().and_then(|s| s.trim().parse().ok())) {
            Some(f) => Number::Float(f),
            None => return server_error(),
        },
        None => {
            let n = st.number;
            st.number += 1;
            Number::Int(if request.get("front").is_some_and(truthy) { -n } else { n })
        }
    };
    let Some(prompt) = request.get("prompt") else {
        let error = json!({"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided", "extra_info": {}});
        return json_response(StatusCode::BAD_REQUEST, &json!({"error": error, "node_errors": {}}));
    };
    let Some(prompt_map) = prompt.as_object() else { return server_error() };
    let prompt_id = request.get("prompt_id").map(py_str).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let partial = request.get("partial_execution_targets").and_then(Value::as_array);
    let graph = Graph::new(prompt_map, order.get("prompt"));
    let table = object_info::table(st.input_files());
    let verdict = validate(prompt_map, &graph, partial, &st.behaviour, &table);
    let mut extra_data = request.get("extra_data").cloned().unwrap_or_else(|| json!({}));
    if let Some(client_id) = request.get("client_id") {
        let Some(extra) = extra_data.as_object_mut() else { return server_error() };
        extra.insert("client_id".into(), client_id.clone());
    }
    match verdict {
        Verdict::Reject { error, node_errors } => {
            json_response(StatusCode::BAD_REQUEST, &json!({"error": error, "node_errors": node_errors}))
        }
        Verdict::Queue { outputs, node_errors } => {
            let Some(extra) = extra_data.as_object_mut() else { return server_error() };
            // `SENSITIVE_EXTRA_DATA_KEYS` go to a sixth tuple element that no answer shows.
            extra.remove("auth_token_comfy_org");
            extra.remove("api_key_comfy_org");
            extra.insert("create_time".into(), json!(now_ms()));
            let item =
                Item { number, prompt_id: prompt_id.clone(), prompt: prompt.clone(), extra_data, outputs, graph };
            st.put(item);
            drop(st);
            shared.wake.notify_one();
            ok(&json!({"prompt_id": prompt_id, "number": number.json(), "node_errors": node_errors}))
        }
    }
}

async fn get_queue(Extract(shared): S) -> Response {
    let st = shared.lock();
    let running: Vec<Value> = st.running.iter().map(Item::json).collect();
    let pending: Vec<Value> = st.queue.iter().map(Item::json).collect();
    ok(&json!({"queue_running": running, "queue_pending": pending}))
}

async fn post_queue(Extract(shared): S, body: Bytes) -> Response {
    let Some(request) = parse(&body) else { return server_error() };
    let mut st = shared.lock();
    if request.get("clear").is_some_and(truthy) {
        st.queue.clear();
        st.status();
    }
    if let Some(ids) = request.get("delete").and_then(Value::as_array) {
        for id in ids.iter().map(py_str) {
            st.record.deleted.push(id.clone());
            st.delete_pending(&id);
        }
    }
    StatusCode::OK.into_response()
}

async fn post_interrupt(Extract(shared): S, body: Bytes) -> Response {
    let request = parse(&body).unwrap_or_else(|| json!({}));
    let Some(request) = request.as_object() else { return server_error() };
    let mut st = shared.lock();
    match request.get("prompt_id").filter(|id| truthy(id)) {
        Some(id) => {
            st.record.interrupts.push(Some(py_str(id)));
            // Only the running prompt; anything else is logged and skipped.
            if st.running.as_ref().is_some_and(|r| Some(r.prompt_id.as_str()) == id.as_str()) {
                st.interrupt = true;
            }
        }
        None => {
            st.record.interrupts.push(None);
            st.interrupt = true;
        }
    }
    StatusCode::OK.into_response()
}

async fn get_history(Extract(shared): S, Query(q): Query<HashMap<String, String>>) -> Response {
    let int = |k: &str| q.get(k).map(|v| v.trim().parse::<i64>());
    let (max_items, offset) = match (int("max_items").transpose(), int("offset").transpose()) {
        (Ok(m), Ok(o)) => (m, o.unwrap_or(-1)),
        _ => return server_error(),
    };
    let st = shared.lock();
    let mut offset = offset;
    if let Some(max) = max_items.filter(|_| offset < 0) {
        offset = st.history.len() as i64 - max;
    }
    let mut out = serde_json::Map::new();
    for (i, (id, entry)) in st.history.iter().enumerate() {
        if i as i64 >= offset {
            out.insert(id.clone(), entry.clone());
            if max_items.is_some_and(|m| out.len() as i64 >= m) {
                break;
            }
        }
    }
    ok(&Value::Object(out))
}

async fn get_history_id(Extract(shared): S, Path(prompt_id): Path<String>) -> Response {
    let st = shared.lock();
    match st.history.iter().find(|(id, _)| *id == prompt_id) {
        Some((id, entry)) => ok(&json!({ id: entry })),
        None => ok(&json!({})),
    }
}

async fn post_history(Extract(shared): S, body: Bytes) -> Response {
    let Some(request) = parse(&body) else { return server_error() };
    let mut st = shared.lock();
    if request.get("clear").is_some_and(truthy) {
        st.history.clear();
    }
    if let Some(ids) = request.get("delete").and_then(Value::as_array) {
        let ids: Vec<String> = ids.iter().map(py_str).collect();
        st.history.retain(|(id, _)| !ids.contains(id));
    }
    StatusCode::OK.into_response()
}

async fn system_stats(Extract(shared): S) -> Response {
    let (ram_total, ram_free): (u64, u64) = (34_359_738_368, 30_064_771_072);
    let device = match shared.lock().behaviour.device.clone() {
        Device::Cpu => {
            json!({"name": "cpu", "type": "cpu", "index": null, "vram_total": ram_total, "vram_free": ram_free, "torch_vram_total": ram_total, "torch_vram_free": ram_free})
        }
        Device::Cuda { name, vram_total, vram_free, torch_vram_total, torch_vram_free } => json!({
            "name": name, "type": "cuda", "index": 0, "vram_total": vram_total, "vram_free": vram_free,
            "torch_vram_total": torch_vram_total, "torch_vram_free": torch_vram_free,
        }),
    };
    ok(&json!({
        "system": {
            "os": "linux", "ram_total": ram_total, "ram_free": ram_free, "comfyui_version": "0.8.0",
            "required_frontend_version": "1.35.9", "installed_templates_version": "0.7.69",
            "required_templates_version": "0.7.69",
            "python_version": "3.12.3 (main, Nov  6 2025, 13:44:16) [GCC 13.3.0]", "pytorch_version": "2.9.1+cu128",
            "embedded_python": false, "argv": ["main.py", "--listen", "127.0.0.1", "--port", "8188"],
        },
        "devices": [device],
    }))
}

pub(crate) fn server_features() -> Value {
    json!({"supports_preview_metadata": true, "max_upload_size": 104_857_600.0, "extension": {"manager": {"supports_v4": true}}})
}

async fn features() -> Response {
    ok(&server_features())
}

/// Only counted: ComfyUI sets flags the worker acts on between prompts (unloading models).
async fn post_free(Extract(shared): S, body: Bytes) -> Response {
    if parse(&body).is_none() {
        return server_error();
    }
    shared.lock().record.frees += 1;
    StatusCode::OK.into_response()
}

async fn object_info_all(Extract(shared): S) -> Response {
    let files = shared.lock().input_files();
    ok(&object_info::table(files))
}

async fn object_info_one(Extract(shared): S, Path(class): Path<String>) -> Response {
    let files = shared.lock().input_files();
    let table = object_info::table(files);
    match table.get(&class) {
        Some(info) => ok(&json!({ class: info })),
        None => ok(&json!({})),
    }
}
