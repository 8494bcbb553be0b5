//! `POST /prompt` validation as `execution.validate_prompt` does it, for a server that knows every class
//! (except `Behaviour::missing_classes`) but not their input definitions: class types and output nodes
//! are checked, links are followed from each output, and `Behaviour::reject` plants one input error.
//! Also the prompt as an ordered graph: serde_json's map is sorted, while the execution order follows the
//! document's key order, so the order is read separately from the request body.

use std::collections::HashSet;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value, json};

use super::behaviour::Behaviour;
use super::outputs::is_output;
use super::pyjson::{py_str, repr_list};

/// The key order of every JSON object in a document.
#[derive(Clone, Debug, Default)]
pub(crate) struct KeyOrder(Vec<(String, KeyOrder)>);

impl KeyOrder {
    pub(crate) fn get(&self, key: &str) -> Option<&KeyOrder> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }
}

impl<'de> Deserialize<'de> for KeyOrder {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<KeyOrder, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyOrder;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KeyOrder, A::Error> {
                let mut keys: Vec<(String, KeyOrder)> = Vec::new();
                while let Some(k) = map.next_key::<String>()? {
                    let v: KeyOrder = map.next_value()?;
                    // A repeated key keeps its first place and its last value, as in a Python dict.
                    match keys.iter_mut().find(|(key, _)| *key == k) {
                        Some(slot) => slot.1 = v,
                        None => keys.push((k, v)),
                    }
                }
                Ok(KeyOrder(keys))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<KeyOrder, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(KeyOrder::default())
            }
            fn visit_bool<E>(self, _: bool) -> Result<KeyOrder, E> {
                Ok(KeyOrder::default())
            }
            fn visit_i64<E>(self, _: i64) -> Result<KeyOrder, E> {
                Ok(KeyOrder::default())
            }
            fn visit_u64<E>(self, _: u64) -> Result<KeyOrder, E> {
                Ok(KeyOrder::default())
            }
            fn visit_f64<E>(self, _: f64) -> Result<KeyOrder, E> {
                Ok(KeyOrder::default())
            }
            fn visit_str<E>(self, _: &str) -> Result<KeyOrder, E> {
                Ok(KeyOrder::default())
            }
            fn visit_unit<E>(self) -> Result<KeyOrder, E> {
                Ok(KeyOrder::default())
            }
        }
        d.deserialize_any(V)
    }
}

/// One node as the runner sees it.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub id: String,
    pub class_type: String,
    pub inputs: Vec<(String, Value)>,
}

impl Node {
    pub(crate) fn input(&self, name: &str) -> Option<&Value> {
        self.inputs.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

/// The prompt's nodes in document order.
#[derive(Clone, Debug, Default)]
pub(crate) struct Graph {
    pub nodes: Vec<Node>,
}

/// `graph_utils.is_link`: `[str, int|float]`.
pub(crate) fn link(v: &Value) -> Option<(&str, u64)> {
    let a = v.as_array().filter(|a| a.len() == 2)?;
    let index = a[1].as_u64().or_else(|| a[1].as_f64().map(|f| f as u64))?;
    Some((a[0].as_str()?, index))
}

fn ordered<'a>(map: &'a Map<String, Value>, order: Option<&'a KeyOrder>) -> Vec<&'a str> {
    let mut keys: Vec<&str> = order.map(|o| o.keys().filter(|k| map.contains_key(*k)).collect()).unwrap_or_default();
    for k in map.keys() {
        if !keys.contains(&k.as_str()) {
            keys.push(k);
        }
    }
    keys
}

impl Graph {
    pub(crate) fn new(prompt: &Map<String, Value>, order: Option<&KeyOrder>) -> Graph {
        let nodes = ordered(prompt, order)
            .into_iter()
            .map(|id| {
                let node = &prompt[id];
                let node_order = order.and_then(|o| o.get(id)).and_then(|o| o.get("inputs"));
                let inputs = match node.get("inputs").and_then(Value::as_object) {
                    Some(map) => {
                        ordered(map, node_order).into_iter().map(|k| (k.to_string(), map[k].clone())).collect()
                    }
                    None => Vec::new(),
                };
                let class_type = node.get("class_type").map(py_str).unwrap_or_default();
                Node { id: id.to_string(), class_type, inputs }
            })
            .collect();
        Graph { nodes }
    }

    pub(crate) fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }
}

/// The outcome of validation.
pub(crate) enum Verdict {
    /// Queue it: the outputs to execute, and the errors of outputs left out.
    Queue {
        outputs: Vec<String>,
        node_errors: Value,
    },
    Reject {
        error: Value,
        node_errors: Value,
    },
}

fn error(kind: &str, message: &str, details: &str) -> Value {
    json!({"type": kind, "message": message, "details": details, "extra_info": {}})
}

/// A Python exception raised during validation (`KeyError`, `RecursionError`).
struct Exc {
    kind: &'static str,
    message: String,
}

const TRACEBACK: &str = "  File \"/ComfyUI/execution.py\", line 1043, in validate_prompt\n    m = await validate_inputs(prompt_id, prompt, o, validated)\n";

struct Validator<'a> {
    prompt: &'a Map<String, Value>,
    graph: &'a Graph,
    behaviour: &'a Behaviour,
    table: &'a Value,
    /// `validated`, in insertion order: node id → (valid, its own errors).
    validated: Vec<(String, (bool, Vec<Value>))>,
    visiting: HashSet<String>,
}

impl Validator<'_> {
    fn set(&mut self, id: &str, result: (bool, Vec<Value>)) {
        match self.validated.iter_mut().find(|(k, _)| k == id) {
            Some(slot) => slot.1 = result,
            None => self.validated.push((id.to_string(), result)),
        }
    }

    fn get(&self, id: &str) -> Option<&(bool, Vec<Value>)> {
        self.validated.iter().find(|(k, _)| k == id).map(|(_, v)| v)
    }

    fn inputs(&mut self, id: &str) -> Result<bool, Exc> {
        if let Some((valid, _)) = self.get(id) {
            return Ok(*valid);
        }
        if !self.visiting.insert(id.to_string()) {
            return Err(Exc { kind: "RecursionError", message: "maximum recursion depth exceeded".into() });
        }
        let result = self.check(id);
        self.visiting.remove(id);
        let (valid, errors) = result?;
        self.set(id, (valid, errors));
        Ok(valid)
    }

    fn check(&mut self, id: &str) -> Result<(bool, Vec<Value>), Exc> {
        if !self.prompt[id].get("inputs").is_some_and(Value::is_object) {
            return Err(Exc { kind: "KeyError", message: "'inputs'".into() });
        }
        let node = self.graph.node(id).expect("graph holds every prompt node").clone();
        let reject = self.behaviour.reject.as_ref().filter(|r| r.node == id);
        let mut errors = Vec::new();
        let mut valid = true;
        for (name, value) in &node.inputs {
            if reject.is_some_and(|r| r.input == *name) {
                errors.push(self.not_in_list(&node, name, value));
                continue;
            }
            let Value::Array(a) = value else { continue };
            if a.len() != 2 {
                errors.push(json!({"type": "bad_linked_input", "message": "Bad linked input, must be a length-2 list of [node_id, slot_index]", "details": name, "extra_info": {"input_name": name, "input_config": null, "received_value": value}}));
                continue;
            }
            let from = match a[0].as_str().filter(|k| self.prompt.contains_key(*k)) {
                Some(from) => from.to_string(),
                None => return Err(Exc { kind: "KeyError", message: repr(&a[0]) }),
            };
            match self.inputs(&from) {
                Ok(true) => {}
                Ok(false) => valid = false,
                Err(e) => {
                    let reason = json!({"type": "exception_during_inner_validation", "message": "Exception when validating inner node", "details": e.message, "extra_info": {"input_name": name, "input_config": null, "exception_message": e.message, "exception_type": e.kind, "traceback": [TRACEBACK], "linked_node": value}});
                    self.set(&from, (false, vec![reason]));
                    valid = false;
                }
            }
        }
        if let Some(r) = reject.filter(|r| node.input(&r.input).is_none()) {
            errors.push(json!({"type": "required_input_missing", "message": "Required input is missing", "details": r.input, "extra_info": {"input_name": r.input}}));
        }
        Ok((valid && errors.is_empty(), errors))
    }

    fn not_in_list(&self, node: &Node, name: &str, value: &Value) -> Value {
        let known = super::object_info::input(self.table, &node.class_type, name);
        let options = match &self.behaviour.reject {
            Some(r) if !r.options.is_empty() => r.options.clone(),
            _ => known.as_ref().and_then(|(_, c)| c.clone()).unwrap_or_default(),
        };
        let (list_info, config) = if options.len() > 20 {
            (format!("(list of length {})", options.len()), Value::Null)
        } else {
            let config = known.map(|(entry, _)| entry).unwrap_or_else(|| json!([options, {}]));
            (repr_list(&options), config)
        };
        json!({"type": "value_not_in_list", "message": "Value not in list", "details": format!("{name}: '{}' not in {list_info}", py_str(value)), "extra_info": {"input_name": name, "input_config": config, "received_value": value}})
    }
}

/// Python's `repr` of a missing dict key.
fn repr(key: &Value) -> String {
    match key {
        Value::String(s) => repr_list(std::slice::from_ref(s)).trim_matches(['[', ']']).to_string(),
        other => py_str(other),
    }
}

pub(crate) fn validate(
    prompt: &Map<String, Value>,
    graph: &Graph,
    partial: Option<&Vec<Value>>,
    behaviour: &Behaviour,
    table: &Value,
) -> Verdict {
    let reject = |error: Value| Verdict::Reject { error, node_errors: json!({}) };
    let mut outputs = Vec::new();
    for node in &graph.nodes {
        if prompt[&node.id].get("class_type").is_none() {
            return reject(error(
                "invalid_prompt",
                "Cannot execute because a node is missing the class_type property.",
                &format!("Node ID '#{}'", node.id),
            ));
        }
        if behaviour.missing_classes.contains(&node.class_type) {
            return reject(error(
                "invalid_prompt",
                &format!("Cannot execute because node {} does not exist.", node.class_type),
                &format!("Node ID '#{}'", node.id),
            ));
        }
        if is_output(&node.class_type) && partial.is_none_or(|p| p.iter().any(|t| py_str(t) == node.id)) {
            outputs.push(node.id.clone());
        }
    }
    if outputs.is_empty() {
        return reject(error("prompt_no_outputs", "Prompt has no outputs", ""));
    }
    let mut v = Validator { prompt, graph, behaviour, table, validated: Vec::new(), visiting: HashSet::new() };
    let mut good = Vec::new();
    let mut failed: Vec<Vec<Value>> = Vec::new();
    let mut node_errors = Map::new();
    for o in &outputs {
        let (valid, reasons) = match v.inputs(o) {
            Ok(valid) => (valid, v.get(o).map(|r| r.1.clone()).unwrap_or_default()),
            Err(e) => {
                let reasons = vec![
                    json!({"type": "exception_during_validation", "message": "Exception when validating node", "details": e.message, "extra_info": {"exception_type": e.kind, "traceback": [TRACEBACK]}}),
                ];
                v.set(o, (false, reasons.clone()));
                (false, reasons)
            }
        };
        if valid {
            good.push(o.clone());
            continue;
        }
        failed.push(reasons);
        // Every node with errors of its own is listed against every failed output seen so far.
        for (id, (valid, reasons)) in &v.validated {
            if *valid || reasons.is_empty() {
                continue;
            }
            let entry = node_errors.entry(id.clone()).or_insert_with(|| {
                json!({"errors": reasons, "dependent_outputs": [], "class_type": graph.node(id).map(|n| n.class_type.clone())})
            });
            entry["dependent_outputs"].as_array_mut().unwrap().push(json!(o));
        }
    }
    if good.is_empty() {
        // Only the outputs' own errors make `details`: empty when the bad node is upstream of them.
        let details: Vec<String> = failed
            .iter()
            .flatten()
            .map(|e| format!("{}: {}", e["message"].as_str().unwrap_or(""), e["details"].as_str().unwrap_or("")))
            .collect();
        return Verdict::Reject {
            error: error("prompt_outputs_failed_validation", "Prompt outputs failed validation", &details.join("\n")),
            node_errors: Value::Object(node_errors),
        };
    }
    Verdict::Queue { outputs: good, node_errors: Value::Object(node_errors) }
}
