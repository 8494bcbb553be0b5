//! The fake's memory: queue (a Python `heapq` list), the running item, history, connected WebSockets,
//! written files and what the tests read back. One `std::sync::Mutex` guards it; nothing awaits while
//! holding it, so every message is queued to the sockets in the order it was produced, as ComfyUI's
//! single publish queue does.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedSender;

use super::behaviour::{Behaviour, Bytes};
use super::pyjson;
use super::validate::Graph;

/// `number` of a queue item: the server's int counter, or the client's number as a float.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Number {
    Int(i64),
    Float(f64),
}

impl Number {
    fn key(self) -> f64 {
        match self {
            Number::Int(i) => i as f64,
            Number::Float(f) => f,
        }
    }

    pub(crate) fn json(self) -> Value {
        match self {
            Number::Int(i) => json!(i),
            Number::Float(f) => json!(f),
        }
    }
}

/// A queue item: `(number, prompt_id, prompt, extra_data, outputs_to_execute)`.
#[derive(Clone, Debug)]
pub(crate) struct Item {
    pub number: Number,
    pub prompt_id: String,
    pub prompt: Value,
    pub extra_data: Value,
    pub outputs: Vec<String>,
    pub graph: Graph,
}

impl Item {
    pub(crate) fn json(&self) -> Value {
        json!([self.number.json(), self.prompt_id, self.prompt, self.extra_data, self.outputs])
    }

    /// Tuple order; equal numbers and ids would make Python compare the prompt dicts and fail, which
    /// the fake does not imitate.
    fn less(&self, other: &Item) -> bool {
        let (a, b) = (self.number.key(), other.number.key());
        a < b || (a == b && self.prompt_id < other.prompt_id)
    }

    /// `extra_data.client_id` as the sid events go to (`None` when absent or null).
    pub(crate) fn client_id(&self) -> Option<String> {
        match self.extra_data.get("client_id") {
            None | Some(Value::Null) => None,
            Some(v) => Some(pyjson::py_str(v)),
        }
    }
}

/// `heapq.heappush`, `heappop` and `heapify`, step for step, so `queue_pending` comes back in the same
/// (unsorted) order as ComfyUI's.
pub(crate) mod heap {
    use super::Item;

    fn sift_down(h: &mut [Item], start: usize, mut pos: usize) {
        while pos > start {
            let parent = (pos - 1) >> 1;
            if h[pos].less(&h[parent]) {
                h.swap(pos, parent);
                pos = parent;
            } else {
                break;
            }
        }
    }

    fn sift_up(h: &mut [Item], mut pos: usize) {
        let (end, start) = (h.len(), pos);
        let mut child = 2 * pos + 1;
        while child < end {
            let right = child + 1;
            if right < end && !h[child].less(&h[right]) {
                child = right;
            }
            h.swap(pos, child);
            pos = child;
            child = 2 * pos + 1;
        }
        sift_down(h, start, pos);
    }

    pub(crate) fn push(h: &mut Vec<Item>, item: Item) {
        h.push(item);
        let last = h.len() - 1;
        sift_down(h, 0, last);
    }

    pub(crate) fn pop(h: &mut Vec<Item>) -> Option<Item> {
        let last = h.pop()?;
        if h.is_empty() {
            return Some(last);
        }
        let top = std::mem::replace(&mut h[0], last);
        sift_up(h, 0);
        Some(top)
    }

    pub(crate) fn heapify(h: &mut [Item]) {
        for i in (0..h.len() / 2).rev() {
            sift_up(h, i);
        }
    }
}

/// A frame for one WebSocket connection; `Drop` ends it without a close frame.
#[derive(Debug)]
pub(crate) enum Frame {
    Text(String),
    Binary(Vec<u8>),
    Drop,
}

#[derive(Clone, Debug)]
pub(crate) struct Conn {
    pub id: u64,
    pub tx: UnboundedSender<Frame>,
}

/// What the tests read back.
#[derive(Default, Debug)]
pub(crate) struct Record {
    pub prompts: Vec<Value>,
    pub interrupts: Vec<Option<String>>,
    pub deleted: Vec<String>,
    pub uploads: Vec<(String, Vec<u8>)>,
    pub frees: usize,
    pub ws_connects: Vec<String>,
}

/// A file on the fake's disk: `(type, subfolder, filename)`, subfolder normalised (`a/b`, `""`).
pub(crate) type FileKey = (String, String, String);

pub(crate) struct State {
    pub behaviour: Behaviour,
    /// Bumped by every restart; a worker of an older generation must not touch the state.
    pub generation: u64,
    pub number: i64,
    pub queue: Vec<Item>,
    pub running: Option<Item>,
    pub history: Vec<(String, Value)>,
    pub interrupt: bool,
    /// `server.client_id` and `server.last_node_id`.
    pub client_id: Option<String>,
    pub last_node_id: Option<String>,
    /// The connection each sid's messages go to (`PromptServer.sockets`).
    pub sockets: HashMap<String, Conn>,
    /// Feature flag `supports_preview_metadata` per sid (`sockets_metadata`).
    pub preview_metadata: HashMap<String, bool>,
    /// Every open connection, including those replaced in `sockets` by a newer one with the same sid.
    pub conns: HashMap<u64, Conn>,
    pub next_conn: u64,
    /// Survive restarts, as files on disk do.
    pub files: HashMap<FileKey, Bytes>,
    /// The `ui` each output node last produced, for cached output nodes.
    pub ui_cache: HashMap<String, Value>,
    pub record: Record,
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl State {
    pub(crate) fn new(behaviour: Behaviour) -> State {
        State {
            behaviour,
            generation: 0,
            number: 0,
            queue: Vec::new(),
            running: None,
            history: Vec::new(),
            interrupt: false,
            client_id: None,
            last_node_id: None,
            sockets: HashMap::new(),
            preview_metadata: HashMap::new(),
            conns: HashMap::new(),
            next_conn: 0,
            files: HashMap::new(),
            ui_cache: HashMap::new(),
            record: Record::default(),
        }
    }

    /// A restarted process: memory gone, files and the test's records kept.
    pub(crate) fn restart(&mut self) {
        self.drop_websockets();
        self.generation += 1;
        self.number = 0;
        self.queue.clear();
        self.running = None;
        self.history.clear();
        self.interrupt = false;
        self.client_id = None;
        self.last_node_id = None;
        self.ui_cache.clear();
    }

    /// Ends every connection without a close frame and forgets it at once (as if the server had seen the
    /// sockets close), so a client reconnecting with the same id is not removed by the old one's cleanup.
    pub(crate) fn drop_websockets(&mut self) {
        for (_, conn) in self.conns.drain() {
            let _ = conn.tx.send(Frame::Drop);
        }
        self.sockets.clear();
        self.preview_metadata.clear();
    }

    pub(crate) fn queue_remaining(&self) -> usize {
        self.queue.len() + usize::from(self.running.is_some())
    }

    pub(crate) fn queue_info(&self) -> Value {
        json!({"exec_info": {"queue_remaining": self.queue_remaining()}})
    }

    /// `send_json`: to one sid (dropped when it is not connected) or, with `None`, to every socket.
    pub(crate) fn send(&mut self, sid: Option<&str>, event: &str, data: Value) {
        let text = pyjson::to_string(&json!({"type": event, "data": data}));
        self.send_frame(sid, || Frame::Text(text.clone()));
    }

    /// `send_bytes`: the u32 big-endian event type, then the payload.
    pub(crate) fn send_bytes(&mut self, sid: Option<&str>, event: u32, payload: &[u8]) {
        let mut bytes = event.to_be_bytes().to_vec();
        bytes.extend_from_slice(payload);
        self.send_frame(sid, || Frame::Binary(bytes.clone()));
    }

    fn send_frame(&mut self, sid: Option<&str>, frame: impl Fn() -> Frame) {
        match sid {
            None => self.sockets.values().for_each(|c| drop(c.tx.send(frame()))),
            Some(sid) => {
                if let Some(c) = self.sockets.get(sid) {
                    let _ = c.tx.send(frame());
                }
            }
        }
    }

    /// `queue_updated()`: a `status` to everyone.
    pub(crate) fn status(&mut self) {
        let info = self.queue_info();
        self.send(None, "status", json!({"status": info}));
    }

    /// `PromptQueue.put`.
    pub(crate) fn put(&mut self, item: Item) {
        heap::push(&mut self.queue, item);
        self.status();
    }

    /// `PromptQueue.get`: the next item becomes the running one.
    pub(crate) fn take(&mut self) -> Option<Item> {
        let item = heap::pop(&mut self.queue)?;
        self.running = Some(item.clone());
        self.status();
        Some(item)
    }

    /// `PromptQueue.delete_queue_item`: the first pending item with this id.
    pub(crate) fn delete_pending(&mut self, prompt_id: &str) {
        let Some(pos) = self.queue.iter().position(|i| i.prompt_id == prompt_id) else { return };
        if self.queue.len() == 1 {
            self.queue.clear();
            self.status();
        } else {
            self.queue.remove(pos);
            heap::heapify(&mut self.queue);
        }
        self.status();
    }

    /// `task_done`: history written (an id already there keeps its place), then `status`.
    pub(crate) fn task_done(&mut self, prompt_id: &str, entry: Value) {
        self.running = None;
        self.insert_history(prompt_id, entry);
        self.status();
    }

    pub(crate) fn insert_history(&mut self, prompt_id: &str, entry: Value) {
        if let Some(slot) = self.history.iter_mut().find(|(id, _)| id == prompt_id) {
            slot.1 = entry;
            return;
        }
        if self.history.len() > 10_000 {
            self.history.remove(0);
        }
        self.history.push((prompt_id.to_string(), entry));
    }

    /// The top-level files of the input folder, sorted (`LoadImage`'s choices).
    pub(crate) fn input_files(&self) -> Vec<String> {
        let mut names: Vec<String> =
            self.files.keys().filter(|(t, sub, _)| t == "input" && sub.is_empty()).map(|(_, _, n)| n.clone()).collect();
        names.sort();
        names
    }
}
