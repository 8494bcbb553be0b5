//! Output nodes: which classes are outputs, the files they write and the `ui` dict they return (§5 of the
//! protocol notes): `SaveImage` one PNG per batch item, `SaveAnimatedWEBP`/`SaveAnimatedPNG` one file
//! (`animated` when more than one frame), `SaveVideo`/`SaveWEBM` `images` + `animated:[true]`,
//! `PreviewImage` temp PNGs, `VHS_VideoCombine` `gifs`. The frame count comes from the upstream
//! `EmptyImage`-like node's `batch_size` (or a video latent's `length`).

use serde_json::{Value, json};

use super::behaviour::{Bytes, OutputFile};
use super::state::State;
use super::validate::{Graph, Node, link};

const OUTPUT_CLASSES: &[&str] =
    &["SaveImage", "PreviewImage", "SaveAnimatedWEBP", "SaveAnimatedPNG", "SaveVideo", "SaveWEBM", "VHS_VideoCombine"];

pub(crate) fn is_output(class: &str) -> bool {
    OUTPUT_CLASSES.contains(&class)
}

/// Progress ticks a node sends: a sampler's `steps`, VHS's frames; 0 for everything else.
pub(crate) fn ticks(graph: &Graph, node: &Node) -> u32 {
    match node.class_type.as_str() {
        "KSampler" | "KSamplerAdvanced" | "SamplerCustom" => {
            node.input("steps").and_then(Value::as_u64).map_or(20, |s| s as u32)
        }
        "VHS_VideoCombine" => frames(graph, node).0 as u32,
        _ => 0,
    }
}

fn int_input(node: &Node, name: &str) -> Option<u64> {
    node.input(name).and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f as u64)))
}

/// (frames, width, height) reaching `node`, following image/video/latent links upstream.
pub(crate) fn frames(graph: &Graph, node: &Node) -> (u64, u64, u64) {
    let mut current = node;
    for _ in 0..64 {
        let size = |n: &Node| (int_input(n, "width").unwrap_or(0), int_input(n, "height").unwrap_or(0));
        match current.class_type.as_str() {
            "EmptyImage" | "EmptyLatentImage" | "EmptySD3LatentImage" => {
                let (w, h) = size(current);
                return (int_input(current, "batch_size").unwrap_or(1).max(1), w, h);
            }
            c if current.input("length").is_some() && c != "VHS_VideoCombine" => {
                let (w, h) = size(current);
                return (int_input(current, "length").unwrap_or(1).max(1), w, h);
            }
            _ => {}
        }
        let upstream = ["images", "image", "video", "samples", "latent_image", "pixels"]
            .iter()
            .find_map(|name| current.input(name).and_then(link))
            .and_then(|(from, _)| graph.node(from));
        match upstream {
            Some(next) => current = next,
            None => break,
        }
    }
    (1, 0, 0)
}

/// A 1×1 PNG, for output nodes the behaviour gives no bytes for.
const PNG_1X1: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4, 0x89, 0x00, 0x00, 0x00, 0x0d, 0x49,
    0x44, 0x41, 0x54, 0x78, 0xda, 0x63, 0xf8, 0xcf, 0xc0, 0xf0, 0x1f, 0x00, 0x05, 0x00, 0x01, 0xff, 0x56, 0xc7, 0x2f,
    0x0d, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

fn placeholder(filename: &str) -> Bytes {
    if filename.ends_with(".png") {
        Bytes::from_static(PNG_1X1)
    } else {
        Bytes::from(format!("fake ComfyUI output {filename}\n"))
    }
}

/// A save error, raised in the node like ComfyUI's `Exception` (becomes `execution_error`).
pub(crate) struct SaveError(pub String);

/// `folder_paths.get_save_image_path`: (subfolder, base name) of a prefix, with `%width%`-style variables.
fn split_prefix(prefix: &str, width: u64, height: u64) -> Result<(String, String), SaveError> {
    let now = chrono::Local::now();
    let mut p = prefix.to_string();
    if p.contains('%') {
        for (var, value) in [
            ("%width%", width.to_string()),
            ("%height%", height.to_string()),
            ("%year%", now.format("%Y").to_string()),
            ("%month%", now.format("%m").to_string()),
            ("%day%", now.format("%d").to_string()),
            ("%hour%", now.format("%H").to_string()),
            ("%minute%", now.format("%M").to_string()),
            ("%second%", now.format("%S").to_string()),
        ] {
            p = p.replace(var, &value);
        }
    }
    let escape = || {
        SaveError(format!(
            "**** ERROR: Saving image outside the output folder is not allowed.\n full_output_folder: /{p}\n         output_dir: /ComfyUI/output\n         commonpath: /"
        ))
    };
    if p.starts_with('/') {
        return Err(escape());
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(escape());
                }
            }
            other => parts.push(other),
        }
    }
    let name = parts.pop().unwrap_or(".").to_string();
    Ok((parts.join("/"), name))
}

impl State {
    fn names_in(&self, kind: &str, subfolder: &str) -> impl Iterator<Item = &str> {
        self.files.keys().filter(move |(t, s, _)| t == kind && s == subfolder).map(|(_, _, n)| n.as_str())
    }

    /// ComfyUI's counter: one more than the highest `<name>_<digits>_...` in the folder.
    fn counter(&self, kind: &str, subfolder: &str, name: &str) -> u64 {
        let prefix = format!("{name}_");
        let max = self
            .names_in(kind, subfolder)
            .filter(|f| f.len() > name.len() && f[..=name.len()].eq_ignore_ascii_case(&prefix))
            .map(|f| f[name.len() + 1..].split('_').next().and_then(|d| d.parse::<u64>().ok()).unwrap_or(0))
            .max();
        max.map_or(1, |m| m + 1)
    }

    /// VHS's counter: `<name>_(\d+)\D*\..+`.
    fn vhs_counter(&self, subfolder: &str, name: &str) -> u64 {
        let prefix = format!("{}_", name.to_lowercase());
        let max = self
            .names_in("output", subfolder)
            .filter_map(|f| {
                let rest = f.to_lowercase().strip_prefix(&prefix)?.to_string();
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                // `\D*\..+` after the digits: a dot before any further digit, with something after it.
                let tail = &rest[digits.len()..];
                let before_digit = &tail[..tail.find(|c: char| c.is_ascii_digit()).unwrap_or(tail.len())];
                let dotted = before_digit.char_indices().any(|(i, c)| c == '.' && i + 1 < tail.len());
                if digits.is_empty() || !dotted { None } else { digits.parse::<u64>().ok() }
            })
            .max();
        max.map_or(1, |m| m + 1)
    }

    fn write(&mut self, kind: &str, subfolder: &str, filename: &str, content: &Bytes) -> Value {
        self.files.insert((kind.into(), subfolder.into(), filename.into()), content.clone());
        json!({"filename": filename, "subfolder": subfolder, "type": kind})
    }

    /// Runs an output node: writes its files and returns its `ui`.
    pub(crate) fn save(&mut self, graph: &Graph, node: &Node) -> Result<Value, SaveError> {
        let content = match self.behaviour.outputs.get(&node.id) {
            Some(OutputFile::Bytes(b)) => Some(b.clone()),
            Some(OutputFile::Path(p)) => Some(Bytes::from(
                std::fs::read(p).map_err(|e| SaveError(format!("cannot read output file {}: {e}", p.display())))?,
            )),
            None => None,
        };
        let bytes = |name: &str| content.clone().unwrap_or_else(|| placeholder(name));
        let (count, width, height) = frames(graph, node);
        let text = |name: &str, default: &str| node.input(name).and_then(Value::as_str).unwrap_or(default).to_string();
        let class = node.class_type.as_str();
        let prefix = match class {
            "SaveVideo" => text("filename_prefix", "video/ComfyUI"),
            "VHS_VideoCombine" => text("filename_prefix", "AnimateDiff"),
            "PreviewImage" => {
                let suffix: String = uuid::Uuid::new_v4()
                    .simple()
                    .to_string()
                    .chars()
                    .filter(char::is_ascii_alphabetic)
                    .take(5)
                    .collect();
                format!("ComfyUI_temp_{suffix:a<5}")
            }
            _ => text("filename_prefix", "ComfyUI"),
        };
        let (subfolder, name) = split_prefix(&prefix, width, height)?;
        let ui = match class {
            "SaveImage" | "PreviewImage" => {
                let kind = if class == "PreviewImage" { "temp" } else { "output" };
                let first = self.counter(kind, &subfolder, &name);
                let mut images = Vec::new();
                for batch in 0..count {
                    let counter = first + batch;
                    let file = format!("{}_{counter:05}_.png", name.replace("%batch_num%", &batch.to_string()));
                    images.push(self.write(kind, &subfolder, &file, &bytes(&file)));
                }
                json!({"images": images})
            }
            "SaveAnimatedWEBP" | "SaveAnimatedPNG" => {
                let ext = if class == "SaveAnimatedPNG" { "png" } else { "webp" };
                let file = format!("{name}_{:05}_.{ext}", self.counter("output", &subfolder, &name));
                let image = self.write("output", &subfolder, &file, &bytes(&file));
                if count > 1 { json!({"images": [image], "animated": [true]}) } else { json!({"images": [image]}) }
            }
            "SaveVideo" | "SaveWEBM" => {
                let ext = if class == "SaveWEBM" { "webm" } else { "mp4" };
                let file = format!("{name}_{:05}_.{ext}", self.counter("output", &subfolder, &name));
                json!({"images": [self.write("output", &subfolder, &file, &bytes(&file))], "animated": [true]})
            }
            _ => {
                // VHS_VideoCombine: `gifs`, and a first-frame PNG named in `workflow`.
                let format = text("format", "image/gif");
                let ext = format.rsplit(['-', '/']).next().unwrap_or("gif").to_string();
                let kind = if node.input("save_output") == Some(&Value::Bool(false)) { "temp" } else { "output" };
                let counter = self.vhs_counter(&subfolder, &name);
                let file = format!("{name}_{counter:05}.{ext}");
                let png = format!("{name}_{counter:05}.png");
                self.write(kind, &subfolder, &png, &placeholder(&png));
                self.write(kind, &subfolder, &file, &bytes(&file));
                let dir = if subfolder.is_empty() { String::new() } else { format!("{subfolder}/") };
                let frame_rate = node.input("frame_rate").cloned().unwrap_or(json!(8.0));
                json!({"gifs": [{"filename": file, "subfolder": subfolder, "type": kind, "format": format, "frame_rate": frame_rate, "workflow": png, "fullpath": format!("/ComfyUI/{kind}/{dir}{file}")}]})
            }
        };
        self.ui_cache.insert(node.id.clone(), ui.clone());
        Ok(ui)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_split_like_comfyui() {
        let split = |p| split_prefix(p, 0, 0).ok();
        assert_eq!(split("video/ComfyUI"), Some(("video".into(), "ComfyUI".into())));
        assert_eq!(split("a/./b//c"), Some(("a/b".into(), "c".into())));
        assert_eq!(split("ComfyUI"), Some(("".into(), "ComfyUI".into())));
        assert!(split("../x").is_none());
        assert!(split("/etc/x").is_none());
    }

    #[test]
    fn counters_continue_from_existing_files() {
        let mut st = State::new(Default::default());
        let b = Bytes::from_static(b"x");
        assert_eq!(st.counter("output", "", "ComfyUI"), 1);
        st.write("output", "", "ComfyUI_00007_.png", &b);
        st.write("output", "", "Other_00009_.png", &b);
        assert_eq!(st.counter("output", "", "ComfyUI"), 8);
        st.write("output", "v", "clip_00003.mp4", &b);
        assert_eq!(st.vhs_counter("v", "clip"), 4);
    }
}
