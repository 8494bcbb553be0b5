//! The prompt worker: one task takes queued prompts in heap order and "runs" them node by node in the
//! order `ExecutionList` would pick, with the messages `PromptExecutor.execute_async` and `execute` send
//! (orders A, B and C of the protocol notes). Faults from `Behaviour` fire at `At` points.

use std::collections::HashMap;
use std::sync::{Arc, MutexGuard};

use serde_json::{Map, Value, json};

use super::Shared;
use super::behaviour::{At, Failure};
use super::outputs::{SaveError, is_output, ticks};
use super::pyjson;
use super::state::{Item, State, now_ms};
use super::validate::{Graph, Node, link};

pub(crate) async fn worker(shared: Arc<Shared>, generation: u64) {
    loop {
        let next = {
            let mut st = shared.lock();
            if st.generation != generation {
                return;
            }
            st.take()
        };
        match next {
            Some(item) => Run::new(&shared, generation, item).go().await,
            None => shared.wake.notified().await,
        }
    }
}

/// `TopologicalSort`/`ExecutionList`: pending nodes in insertion order, how many nodes block each, and
/// which nodes each one blocks. Cached nodes are not added as dependencies.
struct ExecList {
    pending: Vec<String>,
    block_count: HashMap<String, usize>,
    blocking: HashMap<String, Vec<String>>,
}

impl ExecList {
    fn new(graph: &Graph, outputs: &[String], cached: &[String]) -> ExecList {
        let mut list = ExecList { pending: Vec::new(), block_count: HashMap::new(), blocking: HashMap::new() };
        for o in outputs {
            list.add_node(graph, o, cached);
        }
        list
    }

    fn add_node(&mut self, graph: &Graph, id: &str, cached: &[String]) {
        let mut stack = vec![id.to_string()];
        let mut links = Vec::new();
        while let Some(uid) = stack.pop() {
            if self.pending.contains(&uid) {
                continue;
            }
            self.pending.push(uid.clone());
            self.block_count.insert(uid.clone(), 0);
            self.blocking.insert(uid.clone(), Vec::new());
            for (_, value) in graph.node(&uid).map(|n| n.inputs.as_slice()).unwrap_or_default() {
                if let Some((from, _)) = link(value) {
                    if !cached.iter().any(|c| c == from) {
                        stack.push(from.to_string());
                    }
                    links.push((from.to_string(), uid.clone()));
                }
            }
        }
        for (from, to) in links {
            if cached.contains(&from) {
                continue;
            }
            let blocked = self.blocking.entry(from).or_default();
            if !blocked.contains(&to) {
                blocked.push(to.clone());
                *self.block_count.entry(to).or_default() += 1;
            }
        }
    }

    /// `ux_friendly_pick_node`: an output first, then a node feeding an output, then one two steps away.
    fn pick(&self, graph: &Graph) -> Option<String> {
        let ready: Vec<&String> = self.pending.iter().filter(|n| self.block_count[*n] == 0).collect();
        let output = |id: &String| graph.node(id).is_some_and(|n| is_output(&n.class_type));
        let blocks = |id: &String| self.blocking.get(id).map(Vec::as_slice).unwrap_or_default();
        ready
            .iter()
            .find(|n| output(n))
            .or_else(|| ready.iter().find(|n| blocks(n).iter().any(output)))
            .or_else(|| ready.iter().find(|n| blocks(n).iter().any(|b| blocks(b).iter().any(output))))
            .or(ready.first())
            .map(|n| n.to_string())
    }

    fn complete(&mut self, id: &str) {
        self.pending.retain(|n| n != id);
        for to in self.blocking.remove(id).unwrap_or_default() {
            if let Some(count) = self.block_count.get_mut(&to) {
                *count -= 1;
            }
        }
    }
}

/// How a node or the prompt ended early.
enum Stop {
    /// `execution_error` or `execution_interrupted` sent: finish into history.
    Failed,
    /// Restarted: the prompt is gone.
    Gone,
}

/// A few bytes that start like a JPEG, for preview frames.
const JPEG: &[u8] = &[
    0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10, 0x4a, 0x46, 0x49, 0x46, 0x00, 0x01, 0x01, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00,
    0x00, 0xff, 0xd9,
];

struct Run<'a> {
    shared: &'a Arc<Shared>,
    generation: u64,
    item: Item,
    client: Option<String>,
    /// `status_messages` for history.
    messages: Vec<Value>,
    /// The progress registry: node → (value, max, state), in insertion order.
    progress: Vec<(String, (Value, Value, &'static str))>,
    executed: Vec<String>,
    ui: Vec<(String, Value)>,
    cached: Vec<String>,
}

impl<'a> Run<'a> {
    fn new(shared: &'a Arc<Shared>, generation: u64, item: Item) -> Run<'a> {
        let client = item.client_id();
        Run {
            shared,
            generation,
            item,
            client,
            messages: Vec::new(),
            progress: Vec::new(),
            executed: Vec::new(),
            ui: Vec::new(),
            cached: Vec::new(),
        }
    }

    /// The state, unless a restart made this run obsolete.
    fn lock(&self) -> Result<MutexGuard<'a, State>, Stop> {
        let shared: &'a Shared = self.shared;
        let st = shared.lock();
        if st.generation == self.generation { Ok(st) } else { Err(Stop::Gone) }
    }

    /// `PromptExecutor.add_message`: into history, and sent to the client (or everyone when `broadcast`
    /// and there is no client).
    fn add_message(&mut self, st: &mut State, event: &str, mut data: Value) {
        data["timestamp"] = json!(now_ms());
        self.messages.push(json!([event, data]));
        if self.client.is_some() || event == "execution_interrupted" {
            st.send(self.client.as_deref(), event, data);
        }
    }

    fn progress_state(&mut self, st: &mut State, node: &str, value: Value, max: Value, state: &'static str) {
        match self.progress.iter_mut().find(|(id, _)| id == node) {
            Some(slot) => slot.1 = (value, max, state),
            None => self.progress.push((node.to_string(), (value, max, state))),
        }
        let prompt_id = &self.item.prompt_id;
        let nodes: Map<String, Value> = self
            .progress
            .iter()
            .map(|(id, (value, max, state))| {
                let entry = json!({"value": value, "max": max, "state": state, "node_id": id, "prompt_id": prompt_id, "display_node_id": id, "parent_node_id": null, "real_node_id": id});
                (id.clone(), entry)
            })
            .collect();
        st.send(self.client.as_deref(), "progress_state", json!({"prompt_id": prompt_id, "nodes": nodes}));
    }

    async fn go(mut self) {
        let graph = self.item.graph.clone();
        let ended = match self.execute(&graph).await {
            Ok(()) => self.lock().map(|mut st| {
                let data = json!({"prompt_id": self.item.prompt_id});
                self.add_message(&mut st, "execution_success", data);
                st
            }),
            Err(Stop::Failed) => self.lock(),
            Err(Stop::Gone) => return,
        };
        let Ok(mut st) = ended else { return };
        let success = self.messages.last().is_some_and(|m| m[0] == "execution_success");
        let mut outputs = Map::new();
        let mut meta = Map::new();
        for (id, ui) in &self.ui {
            outputs.insert(id.clone(), ui.clone());
            meta.insert(
                id.clone(),
                json!({"node_id": id, "display_node": id, "parent_node": null, "real_node_id": id}),
            );
        }
        st.last_node_id = None;
        let status = json!({"status_str": if success { "success" } else { "error" }, "completed": success, "messages": self.messages});
        let entry = json!({"prompt": self.item.json(), "outputs": outputs, "status": status, "meta": meta});
        st.task_done(&self.item.prompt_id, entry);
        if let Some(client) = &self.client {
            st.send(Some(client), "executing", json!({"node": null, "prompt_id": self.item.prompt_id}));
        }
    }

    async fn execute(&mut self, graph: &Graph) -> Result<(), Stop> {
        let prompt_id = self.item.prompt_id.clone();
        {
            let mut st = self.lock()?;
            st.interrupt = false;
            st.client_id = self.client.clone();
            self.add_message(&mut st, "execution_start", json!({"prompt_id": prompt_id}));
            let cached = &st.behaviour.cached;
            self.cached = graph.nodes.iter().filter(|n| cached.contains(&n.id)).map(|n| n.id.clone()).collect();
            let nodes = self.cached.clone();
            self.add_message(&mut st, "execution_cached", json!({"nodes": nodes, "prompt_id": prompt_id}));
        }
        let mut list = ExecList::new(graph, &self.item.outputs, &self.cached);
        while let Some(id) = list.pick(graph) {
            let node = graph.node(&id).expect("validated links name prompt nodes").clone();
            if self.cached.contains(&id) {
                self.cached_output(graph, &node)?;
            } else {
                self.node(graph, &node).await?;
            }
            list.complete(&id);
        }
        Ok(())
    }

    /// A cached output node: `executed` with its earlier `ui` (only with a client, which is also the only
    /// case where history lists it), then `progress_state` finished; no `executing`.
    fn cached_output(&mut self, graph: &Graph, node: &Node) -> Result<(), Stop> {
        let mut st = self.lock()?;
        if let Some(client) = self.client.clone() {
            let ui = match st.ui_cache.get(&node.id).cloned() {
                Some(ui) => ui,
                None => st.save(graph, node).unwrap_or(Value::Null),
            };
            let data =
                json!({"node": node.id, "display_node": node.id, "output": ui, "prompt_id": self.item.prompt_id});
            st.send(Some(&client), "executed", data);
            self.ui.push((node.id.clone(), ui));
        }
        self.progress_state(&mut st, &node.id, json!(1), json!(1), "finished");
        Ok(())
    }

    async fn node(&mut self, graph: &Graph, node: &Node) -> Result<(), Stop> {
        let prompt_id = self.item.prompt_id.clone();
        {
            let mut st = self.lock()?;
            self.progress_state(&mut st, &node.id, json!(0.0), json!(1.0), "running");
            if let Some(client) = &self.client {
                st.last_node_id = Some(node.id.clone());
                let data = json!({"node": node.id, "display_node": node.id, "prompt_id": prompt_id});
                st.send(Some(client), "executing", data);
            }
            self.check_interrupt(&mut st, node)?;
        }
        self.point(node, 0).await?;
        let steps = ticks(graph, node);
        for step in 1..=steps {
            let delay = self.lock()?.behaviour.step_delay;
            if !delay.is_zero() && node.class_type != "VHS_VideoCombine" {
                tokio::time::sleep(delay).await;
            }
            // A wedged server sends nothing more until unwedged.
            while self.lock()?.behaviour.wedged {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            {
                let mut st = self.lock()?;
                self.check_interrupt(&mut st, node)?;
                self.tick(&mut st, node, step, steps);
            }
            self.point(node, step).await?;
        }
        let mut st = self.lock()?;
        if is_output(&node.class_type) {
            match st.save(graph, node) {
                Ok(ui) => {
                    if let Some(client) = &self.client {
                        let data =
                            json!({"node": node.id, "display_node": node.id, "output": ui, "prompt_id": prompt_id});
                        st.send(Some(client), "executed", data);
                    }
                    self.ui.push((node.id.clone(), ui));
                }
                Err(SaveError(message)) => {
                    let failure = Failure::exception(At::new(&node.id, 0), "Exception", &message);
                    return Err(self.fail(&mut st, node, &failure));
                }
            }
        }
        let max = if steps > 0 { json!(steps) } else { json!(1.0) };
        self.progress_state(&mut st, &node.id, max.clone(), max, "finished");
        self.executed.push(node.id.clone());
        Ok(())
    }

    /// One progress-bar update (`hijack_progress`): `progress_state`, a type 4 preview for clients that
    /// asked for metadata, `progress`, or a type 1 preview for the others.
    fn tick(&mut self, st: &mut State, node: &Node, step: u32, steps: u32) {
        let prompt_id = self.item.prompt_id.clone();
        self.progress_state(st, &node.id, json!(step), json!(steps), "running");
        let previews = st.behaviour.previews;
        let metadata = self.client.as_ref().is_some_and(|c| st.preview_metadata.get(c) == Some(&true));
        let client = self.client.as_deref();
        if previews && metadata {
            let meta = pyjson::to_string(
                &json!({"node_id": node.id, "prompt_id": prompt_id, "display_node_id": node.id, "parent_node_id": null, "real_node_id": node.id, "image_type": "image/jpeg"}),
            );
            let mut payload = (meta.len() as u32).to_be_bytes().to_vec();
            payload.extend_from_slice(meta.as_bytes());
            payload.extend_from_slice(JPEG);
            st.send_bytes(client, 4, &payload);
        }
        st.send(client, "progress", json!({"value": step, "max": steps, "prompt_id": prompt_id, "node": node.id}));
        if previews && !metadata {
            let mut payload = 1u32.to_be_bytes().to_vec();
            payload.extend_from_slice(JPEG);
            st.send_bytes(client, 1, &payload);
        }
    }

    /// `throw_exception_if_processing_interrupted`: the flag is read and cleared.
    fn check_interrupt(&mut self, st: &mut State, node: &Node) -> Result<(), Stop> {
        if !std::mem::take(&mut st.interrupt) {
            return Ok(());
        }
        let data = json!({"prompt_id": self.item.prompt_id, "node_id": node.id, "node_type": node.class_type, "executed": self.executed});
        self.add_message(st, "execution_interrupted", data);
        Err(Stop::Failed)
    }

    fn fail(&mut self, st: &mut State, node: &Node, failure: &Failure) -> Stop {
        let current_inputs: Map<String, Value> = node
            .inputs
            .iter()
            .map(|(name, value)| {
                let shown = match value {
                    v if link(v).is_some() => json!(format!("<output {} of node {}>", v[1], pyjson::py_str(&v[0]))),
                    Value::Array(_) | Value::Object(_) => json!(value.to_string()),
                    scalar => scalar.clone(),
                };
                (name.clone(), json!([shown]))
            })
            .collect();
        let data = json!({
            "prompt_id": self.item.prompt_id, "node_id": node.id, "node_type": node.class_type,
            "executed": self.executed, "exception_message": failure.exception_message,
            "exception_type": failure.exception_type, "traceback": failure.traceback,
            "current_inputs": current_inputs, "current_outputs": self.cached,
        });
        self.add_message(st, "execution_error", data);
        Stop::Failed
    }

    /// The faults planned for this point: the interrupt flag is set (honoured at the next check), sockets
    /// are dropped, then a restart, a hang or a failure ends the node, in that order of precedence.
    async fn point(&mut self, node: &Node, step: u32) -> Result<(), Stop> {
        let at = At::new(&node.id, step);
        let hang = {
            let mut st = self.lock()?;
            let b = &st.behaviour;
            let (close, restart, hang) = (
                b.close_websockets_at.as_ref() == Some(&at),
                b.restart_at.as_ref() == Some(&at),
                b.hang_at.as_ref() == Some(&at),
            );
            let fail = b.fail.clone().filter(|f| f.at == at);
            if b.interrupt_at.as_ref() == Some(&at) {
                st.interrupt = true;
            }
            if close {
                st.drop_websockets();
            }
            if restart {
                drop(st);
                self.shared.restart();
                return Err(Stop::Gone);
            }
            if let Some(f) = fail.filter(|_| !hang) {
                return Err(self.fail(&mut st, node, &f));
            }
            hang
        };
        if hang {
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}
