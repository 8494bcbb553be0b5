//! A fake ComfyUI (v0.8.0) server for tests: an in-process axum server on `127.0.0.1:0` that speaks the
//! real HTTP and WebSocket protocol closely enough for a client to be tested against it, down to the
//! quirks (`{}` for an unknown history id, `executing{node:null}` after history is written, events that
//! can arrive before the `POST /prompt` answer, 5-element queue items, heap order in `queue_pending`,
//! targeted interrupts that only touch the running prompt). It does not know node definitions beyond a
//! small `/object_info` table: it accepts any class type, treats the `Save*`/`PreviewImage`/
//! `VHS_VideoCombine` classes as output nodes, and "runs" a prompt by sending the messages ComfyUI sends,
//! with progress ticks for KSampler-like nodes and files it keeps in memory for `/view`.
//!
//! `Behaviour` sets what happens (delays, cached nodes, failures, interrupts, hangs, dropped sockets,
//! restarts, validation errors, output bytes, slow or oversized downloads); it can change while the server
//! runs. The handle records what clients sent (`prompts`, `interrupts`, `deleted`, `uploads`, `frees`).
//! Written from ComfyUI's `server.py`, `execution.py`, `main.py` and `comfy_execution/`; module by module:
//! `routes`/`view`/`ws` the endpoints, `validate` the `POST /prompt` checks, `run` the prompt worker,
//! `outputs` what output nodes write, `state` the shared memory.

mod behaviour;
mod object_info;
mod outputs;
mod pyjson;
mod routes;
mod run;
mod state;
mod validate;
mod view;
mod ws;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub use behaviour::{At, Behaviour, Bytes, Device, Failure, OOM_TIPS, OutputFile, Reject, View};
use state::{Number, State, now_ms};

/// What the server and the worker share.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Wakes the worker when a prompt is queued.
    wake: Notify,
    worker: Mutex<Option<JoinHandle<()>>>,
    runtime: tokio::runtime::Handle,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A fresh worker for the current generation; the old one (if any) is aborted.
    fn spawn_worker(self: &Arc<Self>) {
        let generation = self.lock().generation;
        let handle = self.runtime.spawn(run::worker(self.clone(), generation));
        if let Some(old) = self.worker.lock().unwrap().replace(handle) {
            old.abort();
        }
    }

    /// A ComfyUI restart: queue, history and the running prompt forgotten, every WebSocket dropped, the
    /// counter back at 0. Files stay, as on disk.
    pub(crate) fn restart(self: &Arc<Self>) {
        self.lock().restart();
        self.spawn_worker();
    }
}

/// A running fake ComfyUI. Dropping it stops the server, the worker and every WebSocket.
pub struct FakeComfy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: JoinHandle<()>,
}

impl FakeComfy {
    pub async fn start(behaviour: Behaviour) -> FakeComfy {
        FakeComfy::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), behaviour).await
    }

    /// On a chosen address: the `fake-comfyui` binary, which a test runs at a port it picked for the client.
    pub async fn start_on(addr: SocketAddr, behaviour: Behaviour) -> FakeComfy {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind {addr} for the fake ComfyUI: {e}"));
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(behaviour)),
            wake: Notify::new(),
            worker: Mutex::new(None),
            runtime: tokio::runtime::Handle::current(),
        });
        shared.spawn_worker();
        let app = routes::router(shared.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("fake ComfyUI server failed");
        });
        FakeComfy { shared, addr, server }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `ws://127.0.0.1:PORT/ws?clientId=<client_id>`
    pub fn ws_url(&self, client_id: &str) -> String {
        format!("ws://{}/ws?clientId={client_id}", self.addr)
    }

    /// The `prompt_id` of each `POST /interrupt` (`None` for a global interrupt).
    pub fn interrupts(&self) -> Vec<Option<String>> {
        self.shared.lock().record.interrupts.clone()
    }

    /// The ids of every `POST /queue {"delete": [...]}`, in order, whether or not they were pending.
    pub fn deleted(&self) -> Vec<String> {
        self.shared.lock().record.deleted.clone()
    }

    /// Every `POST /prompt` body that parsed as JSON, accepted or not.
    pub fn prompts(&self) -> Vec<Value> {
        self.shared.lock().record.prompts.clone()
    }

    /// `(name, bytes)` of every upload, a duplicate of an existing file included; the name is the final one
    /// (`"x (1).png"` after a clash), as `"<subfolder>/<name>"` when a subfolder was given: what `LoadImage` takes.
    pub fn uploads(&self) -> Vec<(String, Vec<u8>)> {
        self.shared.lock().record.uploads.clone()
    }

    /// How many `POST /free` calls there were.
    pub fn frees(&self) -> usize {
        self.shared.lock().record.frees
    }

    /// The sid of every WebSocket connection made, in order.
    pub fn ws_connects(&self) -> Vec<String> {
        self.shared.lock().record.ws_connects.clone()
    }

    /// Sids that currently receive messages.
    pub fn connected(&self) -> Vec<String> {
        let mut sids: Vec<String> = self.shared.lock().sockets.keys().cloned().collect();
        sids.sort();
        sids
    }

    /// The prompt id now running.
    pub fn running(&self) -> Option<String> {
        self.shared.lock().running.as_ref().map(|i| i.prompt_id.clone())
    }

    /// A history entry as `GET /history/{id}` would give it (without the wrapping object).
    pub fn history(&self, prompt_id: &str) -> Option<Value> {
        self.shared.lock().history.iter().find(|(id, _)| id == prompt_id).map(|(_, e)| e.clone())
    }

    /// A file as `GET /view` would serve it.
    pub fn file(&self, kind: &str, subfolder: &str, filename: &str) -> Option<Bytes> {
        self.shared.lock().files.get(&(kind.into(), subfolder.into(), filename.into())).cloned()
    }

    pub fn behaviour(&self) -> Behaviour {
        self.shared.lock().behaviour.clone()
    }

    /// Takes effect at once, also for the prompt running now.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        self.shared.lock().behaviour = behaviour;
    }

    /// As if ComfyUI restarted: queue, history and the running prompt forgotten, every WebSocket dropped
    /// (no close frame), the `number` counter back at 0. Output files stay.
    pub fn restart(&self) {
        self.shared.restart();
    }

    /// Drops every WebSocket without a close frame; the running prompt goes on.
    pub fn close_websockets(&self) {
        self.shared.lock().drop_websockets();
    }

    /// A finished, successful entry for `prompt_id` as if `prompt` had run (before a restart, say): its
    /// output nodes write their files now, and no message is sent. Returns the entry.
    pub fn seed_history(&self, prompt_id: &str, prompt: Value) -> Value {
        let map = prompt.as_object().expect("seed_history takes a prompt object");
        let graph = validate::Graph::new(map, None);
        let mut st = self.shared.lock();
        let mut outputs = serde_json::Map::new();
        let mut meta = serde_json::Map::new();
        let mut out_ids = Vec::new();
        for node in graph.nodes.iter().filter(|n| outputs::is_output(&n.class_type)) {
            let ui =
                st.save(&graph, node).unwrap_or_else(|e| panic!("seed_history: node {} cannot save: {}", node.id, e.0));
            outputs.insert(node.id.clone(), ui);
            meta.insert(
                node.id.clone(),
                json!({"node_id": node.id, "display_node": node.id, "parent_node": null, "real_node_id": node.id}),
            );
            out_ids.push(node.id.clone());
        }
        let number = Number::Int(st.number);
        st.number += 1;
        let t = now_ms();
        let messages = json!([
            ["execution_start", {"prompt_id": prompt_id, "timestamp": t}],
            ["execution_cached", {"nodes": [], "prompt_id": prompt_id, "timestamp": t}],
            ["execution_success", {"prompt_id": prompt_id, "timestamp": t}],
        ]);
        let entry = json!({
            "prompt": [number.json(), prompt_id, prompt, {"create_time": t}, out_ids],
            "outputs": outputs,
            "status": {"status_str": "success", "completed": true, "messages": messages},
            "meta": meta,
        });
        st.insert_history(prompt_id, entry.clone());
        entry
    }

    /// Puts `entry` into history as is (an id already there keeps its place).
    pub fn insert_history(&self, prompt_id: &str, entry: Value) {
        self.shared.lock().insert_history(prompt_id, entry);
    }
}

impl Drop for FakeComfy {
    fn drop(&mut self) {
        self.server.abort();
        if let Some(worker) = self.shared.worker.lock().unwrap().take() {
            worker.abort();
        }
        self.shared.lock().drop_websockets();
    }
}
