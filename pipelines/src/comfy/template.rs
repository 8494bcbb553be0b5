//! ComfyUI workflow templates: an API-format workflow (`<name>.json`) with a sidecar (`<name>.toml`) that says
//! which node inputs the job's params fill, and within which limits. Loading checks the graph and every slot,
//! so a bad template stops the worker at start-up with the file and key named rather than failing jobs later;
//! [`Template::check_object_info`] checks the same against what a server has installed. Nothing here talks to
//! ComfyUI: filling a template is pure, and the client posts what [`Template::fill`] returns.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ainern2d_contract::{DowngradeProfile, VideoParams};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::PipelineError;

/// The slot names a sidecar may use, in the order [`Filled::ignored`] lists them.
pub const SLOT_NAMES: [&str; 11] =
    ["prompt", "negative_prompt", "seed", "steps", "cfg", "width", "height", "frames", "fps", "image", "prefix"];

fn is_text(name: &str) -> bool {
    matches!(name, "prompt" | "negative_prompt" | "image" | "prefix")
}

fn default_type(name: &str) -> SlotType {
    match name {
        _ if is_text(name) => SlotType::String,
        "cfg" | "fps" => SlotType::Float,
        _ => SlotType::Int,
    }
}

/// How a slot's value is written into the workflow's JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotType {
    Int,
    Float,
    String,
}

/// One node input that a param sets, as the sidecar's `[slots]` table declares it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slot {
    pub node: String,
    pub input: String,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub multiple_of: Option<u32>,
    /// With `multiple_of`: valid values are `offset + k × multiple_of` (Wan wants 4k+1 frames).
    pub offset: Option<u32>,
    /// Set at load: the sidecar's `type`, else text slots `string`, `cfg` and `fps` `float`, the rest `int`.
    #[serde(rename = "type")]
    ty: Option<SlotType>,
}

impl Slot {
    pub fn ty(&self) -> SlotType {
        self.ty.unwrap_or(SlotType::String)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Sidecar {
    #[serde(default)]
    description: String,
    output: String,
    #[serde(default)]
    slots: BTreeMap<String, Slot>,
}

#[derive(Debug, Clone)]
pub struct Template {
    pub name: String,
    pub description: String,
    /// The output node whose files are the result.
    pub output: String,
    workflow: Map<String, Value>,
    slots: BTreeMap<&'static str, Slot>,
}

/// Every template of the `comfyui.templates` directory, by name.
#[derive(Debug, Clone)]
pub struct Templates {
    by_name: BTreeMap<String, Template>,
}

/// What a job brings to a template.
#[derive(Debug, Clone, Copy)]
pub struct Fill<'a> {
    pub params: &'a VideoParams,
    /// The uploaded input image's name on the server (what `POST /upload/image` answered).
    pub image: Option<&'a str>,
    /// The output file prefix, unique per job; also the seed's source when the job gives none.
    pub prefix: &'a str,
    pub caps: Option<&'a DowngradeProfile>,
}

/// A workflow ready for `POST /prompt`, with the values it was filled with after caps and rounding.
#[derive(Debug, Clone, PartialEq)]
pub struct Filled {
    pub prompt: Value,
    pub width: u32,
    pub height: u32,
    pub frames: u32,
    pub fps: u32,
    pub steps: u32,
    /// Params the job gave that this template has no slot for.
    pub ignored: Vec<&'static str>,
}

impl Templates {
    /// Reads every `<name>.json` with its `<name>.toml`; other files (a README) are skipped.
    pub fn load_dir(dir: &Path) -> Result<Templates, String> {
        let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut pairs: BTreeMap<String, [Option<PathBuf>; 2]> = BTreeMap::new();
        for entry in entries {
            let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
            let which = match path.extension().and_then(|e| e.to_str()) {
                Some("json") => 0,
                Some("toml") => 1,
                _ => continue,
            };
            let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
                return Err(format!("{}: template names are [A-Za-z0-9._-]; rename the file", path.display()));
            }
            pairs.entry(name).or_default()[which] = Some(path);
        }
        let mut by_name = BTreeMap::new();
        for (name, pair) in pairs {
            match pair {
                [Some(json), Some(toml)] => {
                    by_name.insert(name.clone(), Template::load(&name, &json, &toml)?);
                }
                [Some(json), None] => {
                    return Err(format!("{}: no sidecar {name}.toml beside it (its slots and output)", json.display()));
                }
                [None, Some(toml)] => return Err(format!("{}: no workflow {name}.json beside it", toml.display())),
                [None, None] => {}
            }
        }
        if by_name.is_empty() {
            return Err(format!("{}: no templates (<name>.json with a <name>.toml sidecar)", dir.display()));
        }
        Ok(Templates { by_name })
    }

    pub fn get(&self, name: &str) -> Option<&Template> {
        self.by_name.get(name)
    }

    pub fn names(&self) -> Vec<&str> {
        self.by_name.keys().map(String::as_str).collect()
    }

    /// The job's `workflow` (callers pass `model` when it has none), else `comfyui.default_template`, else
    /// the only template.
    pub fn choose(&self, requested: Option<&str>, default: Option<&str>) -> Result<&Template, PipelineError> {
        let known = || self.names().join(", ");
        let (name, whose) = match (requested, default) {
            (Some(name), _) => (name, "workflow template"),
            (None, Some(name)) => (name, "comfyui.default_template"),
            (None, None) if self.by_name.len() == 1 => return Ok(self.by_name.values().next().expect("one")),
            (None, None) => {
                return Err(PipelineError::permanent(format!(
                    "the job names no workflow and there is no comfyui.default_template (known: {})",
                    known()
                )));
            }
        };
        self.get(name).ok_or_else(|| {
            PipelineError::permanent(format!("{whose} `{name}` is not in comfyui.templates (known: {})", known()))
        })
    }
}

impl Template {
    fn load(name: &str, json_path: &Path, toml_path: &Path) -> Result<Template, String> {
        let (jf, tf) = (json_path.display(), toml_path.display());
        let text = std::fs::read_to_string(json_path).map_err(|e| format!("{jf}: {e}"))?;
        let Value::Object(workflow) = serde_json::from_str(&text).map_err(|e| format!("{jf}: {e}"))? else {
            return Err(format!("{jf}: not an API-format workflow (an object of node id → {{class_type, inputs}})"));
        };
        check_graph(&workflow).map_err(|e| format!("{jf}: {e}"))?;
        let text = std::fs::read_to_string(toml_path).map_err(|e| format!("{tf}: {e}"))?;
        let sidecar: Sidecar = toml::from_str(&text).map_err(|e| format!("{tf}: {}", toml_error(&text, &e)))?;
        if !workflow.contains_key(&sidecar.output) {
            return Err(format!("{tf}: output: no node `{}` in {jf}", sidecar.output));
        }
        let mut slots = BTreeMap::new();
        for (key, mut slot) in sidecar.slots {
            let Some(name) = SLOT_NAMES.into_iter().find(|n| *n == key) else {
                return Err(format!("{tf}: slots.{key}: not a slot name (known: {})", SLOT_NAMES.join(", ")));
            };
            check_slot(name, &mut slot, &workflow).map_err(|e| format!("{tf}: slots.{key}: {e}"))?;
            slots.insert(name, slot);
        }
        let (name, description, output) = (name.to_string(), sidecar.description, sidecar.output);
        Ok(Template { name, description, output, workflow, slots })
    }

    /// The workflow as written, before any slot is set.
    pub fn workflow(&self) -> &Map<String, Value> {
        &self.workflow
    }

    pub fn slot(&self, name: &str) -> Option<&Slot> {
        self.slots.get(name)
    }

    /// Whether jobs must bring an input image (the template has an `image` slot).
    pub fn needs_image(&self) -> bool {
        self.slots.contains_key("image")
    }

    /// Checks the template against a server's `GET /object_info`: node classes installed, slot inputs declared
    /// with a compatible type and limits, literal combo values (model files) among the server's choices.
    pub fn check_object_info(&self, info: &Value) -> Result<(), String> {
        for (id, node) in &self.workflow {
            let class = node["class_type"].as_str().unwrap_or_default();
            let at = format!("template {}: node `{id}` ({class})", self.name);
            let Some(def) = info.get(class) else {
                return Err(format!("{at}: the server has no node class {class} (a custom node not installed?)"));
            };
            if *id == self.output && def.get("output_node") == Some(&Value::Bool(false)) {
                return Err(format!("{at}: the output node is not an output node on the server"));
            }
            for (input, value) in node["inputs"].as_object().into_iter().flatten() {
                let slot = self.slots.values().find(|s| s.node == *id && s.input == *input);
                let spec = ["required", "optional"].iter().find_map(|k| def["input"][k].get(input));
                match (slot, spec) {
                    (Some(_), None) => return Err(format!("{at}: the server's {class} has no input `{input}`")),
                    (Some(slot), Some(spec)) => {
                        check_spec(slot, spec).map_err(|e| format!("{at}: input `{input}`: {e}"))?;
                    }
                    (None, Some(spec)) => {
                        if let Some(choices) = combo(spec)
                            && !value.is_array()
                            && !choices.contains(value)
                        {
                            let shown: Vec<String> = choices.iter().take(8).map(Value::to_string).collect();
                            let more = if choices.len() > 8 { ", …" } else { "" };
                            return Err(format!(
                                "{at}: input `{input}`: {value} is not one of the server's choices ({}{more})",
                                shown.join(", ")
                            ));
                        }
                    }
                    // ComfyUI ignores inputs that a class does not declare.
                    (None, None) => {}
                }
            }
        }
        Ok(())
    }

    /// The workflow with the job's params in its slots: downgrade caps first, then each value checked against
    /// its slot; a frame count that the template cannot take is rounded up to the next one it can.
    pub fn fill(&self, f: &Fill) -> Result<Filled, PipelineError> {
        let p = f.params;
        let (mut width, mut height, mut frames, mut steps) = (p.width, p.height, p.frames(), p.steps);
        let mut frames_cap = None;
        if let Some(caps) = f.caps {
            steps = caps.video_max_steps.map_or(steps, |m| steps.min(m));
            if let Some(m) = caps.video_max_frames.filter(|&m| frames > m) {
                (frames, frames_cap) = (m, Some(m));
            }
            if let Some(max) = caps.video_max_pixels.filter(|&max| u64::from(width) * u64::from(height) > max) {
                (width, height) = self.shrink(width, height, max);
            }
        }
        frames = self.round_frames(frames, frames_cap);
        // A retry has the same prefix, so it draws the same seed.
        let seed = p.seed.unwrap_or_else(|| self.derived_seed(f.prefix));
        // Through the shortest decimal, so cfg 6.1 is written as 6.1 and not 6.099999904632568.
        let cfg = p.cfg.map(|c| c.to_string().parse().unwrap_or(f64::from(c)));
        // (slot, the param named in errors, the value when the job gives one)
        let values = [
            ("prompt", "prompt", p.prompt.as_deref().map(Val::Text)),
            ("negative_prompt", "negative_prompt", p.negative_prompt.as_deref().map(Val::Text)),
            ("seed", "seed", Some(Val::Int(seed))),
            ("steps", "steps", Some(Val::Int(steps.into()))),
            ("cfg", "cfg", cfg.map(Val::Float)),
            ("width", "width", Some(Val::Int(width.into()))),
            ("height", "height", Some(Val::Int(height.into()))),
            ("frames", "duration_s", Some(Val::Int(frames.into()))),
            ("fps", "fps", Some(Val::Int(p.fps.into()))),
            ("image", "inputs.image", f.image.map(Val::Text)),
            ("prefix", "prefix", Some(Val::Text(f.prefix))),
        ];
        let mut prompt = Value::Object(self.workflow.clone());
        let mut ignored = Vec::new();
        for (name, param, value) in values {
            match (self.slots.get(name), value) {
                (Some(slot), Some(value)) => {
                    if let Some((v, shown)) = value.number() {
                        let shown =
                            if name == "frames" { format!("{shown} frames (fps × duration_s)") } else { shown };
                        self.check(slot, param, &shown, v)?;
                    }
                    prompt[slot.node.as_str()]["inputs"][slot.input.as_str()] = value.json(slot.ty());
                }
                (Some(_), None) if name == "image" => {
                    return Err(PipelineError::permanent(format!("the template {} needs inputs.image", self.name)));
                }
                // The template's own value stays.
                (Some(_), None) => {}
                // Width, height, frames, fps and steps are in every job, so only what the job chose is reported.
                (None, Some(_)) if matches!(name, "prompt" | "negative_prompt" | "cfg" | "image") => ignored.push(name),
                (None, Some(_)) if name == "seed" && p.seed.is_some() => ignored.push(name),
                (None, _) => {}
            }
        }
        Ok(Filled { prompt, width, height, frames, fps: p.fps, steps, ignored })
    }

    fn check(&self, slot: &Slot, param: &str, shown: &str, v: f64) -> Result<(), PipelineError> {
        let fail = |what: String| {
            Err(PipelineError::permanent(format!("params.{param}: {shown} {what} (template {})", self.name)))
        };
        if let Some(max) = slot.max.filter(|&max| v > max) {
            return fail(format!("is above the template's maximum {max}"));
        }
        if let Some(min) = slot.min.filter(|&min| v < min) {
            return fail(format!("is below the template's minimum {min}"));
        }
        if let Some(m) = slot.multiple_of {
            let offset = slot.offset.unwrap_or(0);
            if v < f64::from(offset) || (v - f64::from(offset)) % f64::from(m) != 0.0 {
                return fail(match slot.offset {
                    Some(offset) => format!("is not a multiple of {m} plus {offset}"),
                    None => format!("is not a multiple of {m}"),
                });
            }
        }
        Ok(())
    }

    /// Scales width × height down to at most `max` pixels, keeping the aspect ratio, each side rounded down to
    /// its slot's `multiple_of` (2 without one: H.264 wants even sizes).
    fn shrink(&self, width: u32, height: u32, max: u64) -> (u32, u32) {
        let multiple = |n| self.slots.get(n).and_then(|s| s.multiple_of).unwrap_or(2);
        let (mw, mh) = (multiple("width"), multiple("height"));
        let scale = (max as f64 / (f64::from(width) * f64::from(height))).sqrt();
        let down = |v: u32, m: u32| ((f64::from(v) * scale) as u32 / m * m).max(m);
        let (mut w, mut h) = (down(width, mw), down(height, mh));
        // Only float rounding can leave the product a hair over.
        while u64::from(w) * u64::from(h) > max && (w > mw || h > mh) {
            if w > mw { w -= mw } else { h -= mh }
        }
        (w, h)
    }

    /// Up to the next count the frames slot takes; down instead when rounding up would pass a downgrade cap.
    fn round_frames(&self, frames: u32, cap: Option<u32>) -> u32 {
        let Some(slot) = self.slots.get("frames") else { return frames };
        let (m, offset) = (slot.multiple_of.unwrap_or(1), slot.offset.unwrap_or(0));
        if frames >= offset && (frames - offset).is_multiple_of(m) {
            return frames;
        }
        let up = if frames < offset { offset } else { offset + (frames - offset).div_ceil(m) * m };
        match cap {
            Some(cap) if up > cap && up - m >= offset.max(1) => up - m,
            _ => up,
        }
    }

    /// FNV-1a of the prefix, within the seed slot's limits, and below 2^53 without a max so that every JSON
    /// reader (JavaScript's included) keeps it exact.
    fn derived_seed(&self, prefix: &str) -> u64 {
        let hash =
            prefix.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        let slot = self.slots.get("seed");
        let lo = slot.and_then(|s| s.min).map_or(0, |v| v.max(0.0) as u64);
        let hi = slot.and_then(|s| s.max).map_or((1 << 53) - 1, |v| v as u64).max(lo);
        match (hi - lo).checked_add(1) {
            Some(n) => lo + hash % n,
            None => hash,
        }
    }
}

/// A param's value before it is written with its slot's type.
#[derive(Debug, Clone, Copy)]
enum Val<'a> {
    Int(u64),
    Float(f64),
    Text(&'a str),
}

impl Val<'_> {
    /// The value to check against a slot's limits, and as an error shows it.
    fn number(self) -> Option<(f64, String)> {
        match self {
            Val::Int(v) => Some((v as f64, v.to_string())),
            Val::Float(v) => Some((v, v.to_string())),
            Val::Text(_) => None,
        }
    }

    fn json(self, ty: SlotType) -> Value {
        match (self, ty) {
            (Val::Int(v), SlotType::Int) => Value::from(v),
            (Val::Int(v), SlotType::Float) => Value::from(v as f64),
            (Val::Float(v), SlotType::Int) => Value::from(v.round() as u64),
            (Val::Float(v), SlotType::Float) => Value::from(v),
            (Val::Int(v), SlotType::String) => Value::from(v.to_string()),
            (Val::Float(v), SlotType::String) => Value::from(v.to_string()),
            // Text slots are always strings (checked at load).
            (Val::Text(v), _) => Value::from(v),
        }
    }
}

/// Nodes are `{class_type, inputs, _meta}`; a list input is a link `[node_id, output_index]`, as ComfyUI reads it.
fn check_graph(nodes: &Map<String, Value>) -> Result<(), String> {
    if nodes.is_empty() {
        return Err("no nodes".into());
    }
    for (id, node) in nodes {
        let (Some(_), Some(inputs)) = (node["class_type"].as_str(), node["inputs"].as_object()) else {
            return Err(format!("node `{id}`: needs a string class_type and an object inputs (is it API format?)"));
        };
        if let Some(key) = node.as_object().into_iter().flatten().map(|(k, _)| k).find(|k| !is_node_key(k)) {
            return Err(format!("node `{id}`: unknown key `{key}` (nodes have class_type, inputs, _meta)"));
        }
        for (input, value) in inputs {
            let Value::Array(link) = value else { continue };
            match link.as_slice() {
                [Value::String(to), Value::Number(n)] if n.is_u64() => {
                    if !nodes.contains_key(to) {
                        return Err(format!("node `{id}`: inputs.{input} links to missing node `{to}`"));
                    }
                }
                _ => return Err(format!("node `{id}`: inputs.{input} is a list but not a link [node_id, index]")),
            }
        }
    }
    Ok(())
}

fn is_node_key(key: &str) -> bool {
    matches!(key, "class_type" | "inputs" | "_meta")
}

fn check_slot(name: &str, slot: &mut Slot, nodes: &Map<String, Value>) -> Result<(), String> {
    let ty = *slot.ty.get_or_insert(default_type(name));
    if is_text(name) && ty != SlotType::String {
        return Err(format!("{name} is text, so its type must be \"string\""));
    }
    let (node, input) = (&slot.node, &slot.input);
    let inputs = nodes.get(node).ok_or_else(|| format!("no node `{node}` in the workflow"))?;
    let value = inputs["inputs"].get(input).ok_or_else(|| format!("node `{node}` has no input `{input}`"))?;
    match (value, ty) {
        (Value::Array(_), _) => return Err(format!("node `{node}` input `{input}` is a link; a slot sets a value")),
        (Value::Number(_), SlotType::Int | SlotType::Float) | (Value::String(_), SlotType::String) => {}
        _ => {
            let want = if ty == SlotType::String { "a string" } else { "a number" };
            return Err(format!("node `{node}` input `{input}` is {value}, not {want} as the slot's type says"));
        }
    }
    let numeric = slot.min.is_some() || slot.max.is_some() || slot.multiple_of.is_some();
    if ty == SlotType::String && numeric {
        return Err("min, max and multiple_of apply to numbers only".into());
    }
    if slot.multiple_of == Some(0) {
        return Err("multiple_of must be at least 1".into());
    }
    if slot.offset.is_some() && slot.multiple_of.is_none() {
        return Err("offset needs multiple_of".into());
    }
    if let Some((min, max)) = slot.min.zip(slot.max).filter(|(min, max)| min > max) {
        return Err(format!("min {min} is above max {max}"));
    }
    Ok(())
}

/// A slot against the server's declaration of its input: `["INT", {"min", "max", …}]`, a combo, `["STRING"]`.
fn check_spec(slot: &Slot, spec: &Value) -> Result<(), String> {
    let kind = spec.get(0).and_then(Value::as_str).unwrap_or_default();
    let numeric = matches!(kind, "INT" | "FLOAT");
    if numeric && slot.ty() == SlotType::String {
        return Err(format!("the server takes {kind} here and the slot writes a string"));
    }
    if kind == "STRING" && slot.ty() != SlotType::String {
        return Err("the server takes a STRING here and the slot writes a number".into());
    }
    let limit = |key: &str| spec.get(1).and_then(|o| o.get(key)).and_then(Value::as_f64).filter(|_| numeric);
    if let Some((min, server)) = slot.min.zip(limit("min")).filter(|(min, server)| min < server) {
        return Err(format!("the slot's min {min} is below the server's {server}"));
    }
    if let Some((max, server)) = slot.max.zip(limit("max")).filter(|(max, server)| max > server) {
        return Err(format!("the slot's max {max} is above the server's {server}"));
    }
    Ok(())
}

/// A combo's choices in either form: `[[choices…], {…}]` (classic nodes) or `["COMBO", {"options": […]}]`.
fn combo(spec: &Value) -> Option<&Vec<Value>> {
    match spec.get(0)? {
        Value::Array(choices) => Some(choices),
        Value::String(kind) if kind == "COMBO" => spec.get(1)?.get("options")?.as_array(),
        _ => None,
    }
}

/// A TOML error on one line: `line N: message` (toml's own rendering draws a multi-line snippet).
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => format!("line {}: {}", text[..span.start].matches('\n').count() + 1, e.message()),
        None => e.message().to_string(),
    }
}

#[cfg(test)]
#[path = "template_tests.rs"]
mod tests;
