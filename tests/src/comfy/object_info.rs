//! A small `/object_info` table with the v0.8.0 definitions of the nodes the tests use. V1 nodes (`nodes.py`)
//! give combos as `[[choices...]]` and hidden inputs as plain strings; V3 nodes (`comfy_api`) give
//! `["COMBO", {"options": [...]}]`, hidden inputs as `["PROMPT"]`, and every `NodeInfoV1` field.

use serde_json::{Map, Value, json};

const SAMPLERS: &[&str] = &[
    "euler",
    "euler_cfg_pp",
    "euler_ancestral",
    "euler_ancestral_cfg_pp",
    "heun",
    "heunpp2",
    "dpm_2",
    "dpm_2_ancestral",
    "lms",
    "dpm_fast",
    "dpm_adaptive",
    "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde",
    "dpmpp_sde_gpu",
    "dpmpp_2m",
    "dpmpp_2m_cfg_pp",
    "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu",
    "dpmpp_3m_sde",
    "dpmpp_3m_sde_gpu",
    "ddpm",
    "lcm",
    "ipndm",
    "ipndm_v",
    "deis",
    "res_multistep",
    "ddim",
    "uni_pc",
    "uni_pc_bh2",
];
const SCHEDULERS: &[&str] = &[
    "simple",
    "sgm_uniform",
    "karras",
    "exponential",
    "ddim_uniform",
    "beta",
    "normal",
    "linear_quadratic",
    "kl_optimal",
];
const PREFIX_TOOLTIP: &str = "The prefix for the file to save. This may include formatting information such as %date:yyyy-MM-dd% or %Empty Latent Image.width% to include values from nodes.";

/// Input sections in declaration order: `input` keeps them in a map, `input_order` keeps the order.
type Sections = Vec<(&'static str, Vec<(&'static str, Value)>)>;

struct Node {
    name: &'static str,
    display: Option<&'static str>,
    category: &'static str,
    description: &'static str,
    module: &'static str,
    inputs: Sections,
    output: &'static [&'static str],
    output_tooltips: Option<&'static [&'static str]>,
    output_node: bool,
}

impl Node {
    fn info(self, v3: bool) -> Value {
        let mut input = Map::new();
        let mut order = Map::new();
        for (section, entries) in self.inputs {
            order.insert(section.into(), json!(entries.iter().map(|(k, _)| *k).collect::<Vec<_>>()));
            input.insert(section.into(), Value::Object(entries.into_iter().map(|(k, v)| (k.to_string(), v)).collect()));
        }
        let mut info = json!({
            "input": input, "input_order": order, "output": self.output,
            "output_is_list": vec![false; self.output.len()], "output_name": self.output, "name": self.name,
            "display_name": self.display, "description": self.description, "python_module": self.module,
            "category": self.category, "output_node": self.output_node,
        });
        if let Some(tips) = self.output_tooltips {
            info["output_tooltips"] = json!(tips);
        }
        if v3 {
            // `dataclasses.asdict(NodeInfoV1)`: every field, None included.
            info["output_tooltips"] = json!(vec![Value::Null; self.output.len()]);
            for (k, v) in [
                ("output_matchtypes", Value::Null),
                ("deprecated", false.into()),
                ("experimental", false.into()),
                ("api_node", false.into()),
            ] {
                info[k] = v;
            }
        }
        info
    }
}

fn v1(
    name: &'static str,
    display: &'static str,
    category: &'static str,
    inputs: Sections,
    output: &'static [&'static str],
) -> Node {
    Node {
        name,
        display: Some(display),
        category,
        description: "",
        module: "nodes",
        inputs,
        output,
        output_tooltips: None,
        output_node: false,
    }
}

fn int(default: i64, min: i64, max: u64) -> Value {
    json!(["INT", {"default": default, "min": min, "max": max, "step": 1}])
}

/// The table; `input_files` are the top-level files of the input folder (`LoadImage`'s choices).
pub(crate) fn table(input_files: Vec<String>) -> Value {
    let v3_hidden = || ("hidden", vec![("prompt", json!(["PROMPT"])), ("extra_pnginfo", json!(["EXTRA_PNGINFO"]))]);
    let ksampler = Node {
        description: "Uses the provided model, positive and negative conditioning to denoise the latent image.",
        output_tooltips: Some(&["The denoised latent."]),
        ..v1(
            "KSampler",
            "KSampler",
            "sampling",
            vec![(
                "required",
                vec![
                    ("model", json!(["MODEL", {"tooltip": "The model used for denoising the input latent."}])),
                    (
                        "seed",
                        json!(["INT", {"default": 0, "min": 0, "max": u64::MAX, "control_after_generate": true, "tooltip": "The random seed used for creating the noise."}]),
                    ),
                    (
                        "steps",
                        json!(["INT", {"default": 20, "min": 1, "max": 10000, "tooltip": "The number of steps used in the denoising process."}]),
                    ),
                    (
                        "cfg",
                        json!(["FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01, "tooltip": "The Classifier-Free Guidance scale balances creativity and adherence to the prompt. Higher values result in images more closely matching the prompt however too high values will negatively impact quality."}]),
                    ),
                    (
                        "sampler_name",
                        json!([SAMPLERS, {"tooltip": "The algorithm used when sampling, this can affect the quality, speed, and style of the generated output."}]),
                    ),
                    (
                        "scheduler",
                        json!([SCHEDULERS, {"tooltip": "The scheduler controls how noise is gradually removed to form the image."}]),
                    ),
                    (
                        "positive",
                        json!(["CONDITIONING", {"tooltip": "The conditioning describing the attributes you want to include in the image."}]),
                    ),
                    (
                        "negative",
                        json!(["CONDITIONING", {"tooltip": "The conditioning describing the attributes you want to exclude from the image."}]),
                    ),
                    ("latent_image", json!(["LATENT", {"tooltip": "The latent image to denoise."}])),
                    (
                        "denoise",
                        json!(["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "The amount of denoising applied, lower values will maintain the structure of the initial image allowing for image to image sampling."}]),
                    ),
                ],
            )],
            &["LATENT"],
        )
    };
    let clip_text = Node {
        description: "Encodes a text prompt using a CLIP model into an embedding that can be used to guide the diffusion model towards generating specific images.",
        output_tooltips: Some(&["A conditioning containing the embedded text used to guide the diffusion model."]),
        ..v1(
            "CLIPTextEncode",
            "CLIP Text Encode (Prompt)",
            "conditioning",
            vec![(
                "required",
                vec![
                    (
                        "text",
                        json!(["STRING", {"multiline": true, "dynamicPrompts": true, "tooltip": "The text to be encoded."}]),
                    ),
                    ("clip", json!(["CLIP", {"tooltip": "The CLIP model used for encoding the text."}])),
                ],
            )],
            &["CONDITIONING"],
        )
    };
    let empty_image = v1(
        "EmptyImage",
        "EmptyImage",
        "image",
        vec![(
            "required",
            vec![
                ("width", int(512, 1, 16384)),
                ("height", int(512, 1, 16384)),
                ("batch_size", json!(["INT", {"default": 1, "min": 1, "max": 4096}])),
                ("color", json!(["INT", {"default": 0, "min": 0, "max": 0xFF_FFFF, "step": 1, "display": "color"}])),
            ],
        )],
        &["IMAGE"],
    );
    let image_scale = v1(
        "ImageScale",
        "Upscale Image",
        "image/upscaling",
        vec![(
            "required",
            vec![
                ("image", json!(["IMAGE"])),
                ("upscale_method", json!([["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]])),
                ("width", int(512, 0, 16384)),
                ("height", int(512, 0, 16384)),
                ("crop", json!([["disabled", "center"]])),
            ],
        )],
        &["IMAGE"],
    );
    let load_image = v1(
        "LoadImage",
        "Load Image",
        "image",
        vec![("required", vec![("image", json!([input_files, {"image_upload": true}]))])],
        &["IMAGE", "MASK"],
    );
    let save_image = Node {
        description: "Saves the input images to your ComfyUI output directory.",
        output_node: true,
        ..v1(
            "SaveImage",
            "Save Image",
            "image",
            vec![
                (
                    "required",
                    vec![
                        ("images", json!(["IMAGE", {"tooltip": "The images to save."}])),
                        ("filename_prefix", json!(["STRING", {"default": "ComfyUI", "tooltip": PREFIX_TOOLTIP}])),
                    ],
                ),
                ("hidden", vec![("prompt", json!("PROMPT")), ("extra_pnginfo", json!("EXTRA_PNGINFO"))]),
            ],
            &[],
        )
    };
    let create_video = Node {
        display: Some("Create Video"),
        description: "Create a video from images.",
        module: "comfy_extras.nodes_video",
        ..v1(
            "CreateVideo",
            "",
            "image/video",
            vec![
                (
                    "required",
                    vec![
                        ("images", json!(["IMAGE", {"tooltip": "The images to create a video from."}])),
                        ("fps", json!(["FLOAT", {"default": 30.0, "min": 1.0, "max": 120.0, "step": 1.0}])),
                    ],
                ),
                ("optional", vec![("audio", json!(["AUDIO", {"tooltip": "The audio to add to the video."}]))]),
            ],
            &["VIDEO"],
        )
    };
    let save_video = Node {
        display: Some("Save Video"),
        description: "Saves the input images to your ComfyUI output directory.",
        module: "comfy_extras.nodes_video",
        output_node: true,
        ..v1(
            "SaveVideo",
            "",
            "image/video",
            vec![
                (
                    "required",
                    vec![
                        ("video", json!(["VIDEO", {"tooltip": "The video to save."}])),
                        (
                            "filename_prefix",
                            json!(["STRING", {"tooltip": PREFIX_TOOLTIP, "default": "video/ComfyUI", "multiline": false}]),
                        ),
                        (
                            "format",
                            json!(["COMBO", {"tooltip": "The format to save the video as.", "default": "auto", "multiselect": false, "options": ["auto", "mp4"]}]),
                        ),
                        (
                            "codec",
                            json!(["COMBO", {"tooltip": "The codec to use for the video.", "default": "auto", "multiselect": false, "options": ["auto", "h264"]}]),
                        ),
                    ],
                ),
                v3_hidden(),
            ],
            &[],
        )
    };
    let save_webp = Node {
        display: None,
        module: "comfy_extras.nodes_images",
        output_node: true,
        ..v1(
            "SaveAnimatedWEBP",
            "",
            "image/animation",
            vec![
                (
                    "required",
                    vec![
                        ("images", json!(["IMAGE", {}])),
                        ("filename_prefix", json!(["STRING", {"default": "ComfyUI", "multiline": false}])),
                        ("fps", json!(["FLOAT", {"default": 6.0, "min": 0.01, "max": 1000.0, "step": 0.01}])),
                        ("lossless", json!(["BOOLEAN", {"default": true}])),
                        ("quality", json!(["INT", {"default": 80, "min": 0, "max": 100}])),
                        (
                            "method",
                            json!(["COMBO", {"multiselect": false, "options": ["default", "fastest", "slowest"]}]),
                        ),
                    ],
                ),
                v3_hidden(),
            ],
            &[],
        )
    };
    let mut out = Map::new();
    for (node, v3) in [
        (empty_image, false),
        (image_scale, false),
        (load_image, false),
        (save_image, false),
        (ksampler, false),
        (clip_text, false),
        (create_video, true),
        (save_video, true),
        (save_webp, true),
    ] {
        out.insert(node.name.into(), node.info(v3));
    }
    Value::Object(out)
}

/// An input's `[type, options]` entry and its combo choices (`None` when it is not a combo).
pub(crate) fn input(table: &Value, class: &str, name: &str) -> Option<(Value, Option<Vec<String>>)> {
    let inputs = &table[class]["input"];
    let entry = ["required", "optional"].iter().find_map(|cat| inputs[cat].get(name))?.clone();
    let strings = |v: &Value| v.as_array().map(|a| a.iter().map(super::pyjson::py_str).collect());
    let choices = if entry[0].is_array() {
        strings(&entry[0])
    } else if entry[0] == "COMBO" {
        strings(&entry[1]["options"])
    } else {
        None
    };
    Some((entry, choices))
}
