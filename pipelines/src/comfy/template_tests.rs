//! `template` tests: the committed examples, broken templates written to a temporary directory (each error names
//! the file and the key), filling with caps and rounding, and the `/object_info` check on a hand-written answer.

use serde_json::json;

use super::*;
use crate::error::PipelineErrorKind;

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/comfyui")
}

fn examples() -> Templates {
    Templates::load_dir(&examples_dir()).unwrap()
}

fn params(width: u32, height: u32, fps: u32, duration_s: f64, steps: u32) -> VideoParams {
    VideoParams {
        prompt: None,
        width,
        height,
        fps,
        duration_s,
        steps,
        seed: None,
        model: None,
        workflow: None,
        negative_prompt: None,
        cfg: None,
    }
}

fn fill<'a>(p: &'a VideoParams, caps: Option<&'a DowngradeProfile>) -> Fill<'a> {
    Fill { params: p, image: Some("in.png"), prefix: "jobs/j1/video", caps }
}

const JSON: &str = r#"{
  "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 8, "color": 0}},
  "2": {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["1", 0], "filename_prefix": "x", "fps": 8.0},
        "_meta": {"title": "Save"}}
}"#;

const TOML: &str = r#"output = "2"
[slots]
width = { node = "1", input = "width" }
prefix = { node = "2", input = "filename_prefix" }
"#;

/// Loads a directory holding these files; errors come back with the directory left out of the paths (`<dir>` alone).
fn load(files: &[(&str, &str)]) -> Result<Templates, String> {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let shown = dir.path().display().to_string();
    Templates::load_dir(dir.path()).map_err(|e| e.replace(&format!("{shown}/"), "").replace(&shown, "<dir>"))
}

fn load_err(json: &str, toml: &str) -> String {
    load(&[("t.json", json), ("t.toml", toml)]).unwrap_err()
}

#[test]
fn the_examples_load() {
    let t = examples();
    assert_eq!(t.names(), ["animated-webp", "empty-video", "wan-i2v"]);
    let wan = t.get("wan-i2v").unwrap();
    assert_eq!((wan.description.as_str(), wan.output.as_str()), ("Wan 2.1 image to video, 480p", "14"));
    assert!(wan.needs_image());
    assert_eq!(wan.slot("frames").map(|s| (s.multiple_of, s.offset)), Some((Some(4), Some(1))));
    assert_eq!(wan.slot("cfg").map(Slot::ty), Some(SlotType::Float));
    assert!(!t.get("empty-video").unwrap().needs_image());
    assert!(load(&[("t.json", JSON), ("t.toml", TOML), ("README.md", "# not a template")]).is_ok());
}

#[test]
fn each_broken_template_names_its_file_and_key() {
    let dangling = JSON.replace(r#"["1", 0]"#, r#"["7", 0]"#);
    let not_a_link = JSON.replace(r#"["1", 0]"#, r#"["1"]"#);
    let cases = [
        (load(&[("t.json", JSON)]).unwrap_err(), "t.json: no sidecar t.toml beside it (its slots and output)"),
        (load(&[("t.toml", TOML)]).unwrap_err(), "t.toml: no workflow t.json beside it"),
        (load(&[("t t.json", JSON)]).unwrap_err(), "t t.json: template names are [A-Za-z0-9._-]; rename the file"),
        (load(&[]).unwrap_err(), "<dir>: no templates (<name>.json with a <name>.toml sidecar)"),
        (
            load_err(JSON, &TOML.replace(r#"node = "1""#, r#"node = "9""#)),
            "t.toml: slots.width: no node `9` in the workflow",
        ),
        (
            load_err(JSON, &TOML.replace(r#"input = "width""#, r#"input = "widht""#)),
            "t.toml: slots.width: node `1` has no input `widht`",
        ),
        (load_err(JSON, &TOML.replace("output = \"2\"", "output = \"5\"")), "t.toml: output: no node `5` in t.json"),
        (load_err(&dangling, TOML), "t.json: node `2`: inputs.images links to missing node `7`"),
        (load_err(&not_a_link, TOML), "t.json: node `2`: inputs.images is a list but not a link [node_id, index]"),
        (
            load_err(r#"{"nodes": [], "links": []}"#, TOML),
            "t.json: node `links`: needs a string class_type and an object inputs (is it API format?)",
        ),
        (load_err("[]", TOML), "t.json: not an API-format workflow (an object of node id → {class_type, inputs})"),
        (
            load_err(&JSON.replace(r#""_meta""#, r#""meta""#), TOML),
            "t.json: node `2`: unknown key `meta` (nodes have class_type, inputs, _meta)",
        ),
        (
            load_err(JSON, &TOML.replace(r#"input = "width" }"#, r#"input = "width", maxx = 3 }"#)),
            "t.toml: line 3: unknown field `maxx`, expected one of `node`, `input`, `min`, `max`, `multiple_of`, \
             `offset`, `type`",
        ),
        (
            load_err(JSON, &TOML.replace(r#"input = "width" }"#, r#"input = "width", offset = 1 }"#)),
            "t.toml: slots.width: offset needs multiple_of",
        ),
        (
            load_err(JSON, &TOML.replace(r#"input = "width" }"#, r#"input = "width", min = 9, max = 3 }"#)),
            "t.toml: slots.width: min 9 is above max 3",
        ),
        (
            load_err(JSON, &TOML.replace(r#"input = "width" }"#, r#"input = "width", multiple_of = 0 }"#)),
            "t.toml: slots.width: multiple_of must be at least 1",
        ),
        (
            load_err(JSON, &TOML.replace(r#"node = "1", input = "width""#, r#"node = "2", input = "images""#)),
            "t.toml: slots.width: node `2` input `images` is a link; a slot sets a value",
        ),
        (
            load_err(JSON, &TOML.replace(r#"node = "1", input = "width""#, r#"node = "2", input = "filename_prefix""#)),
            "t.toml: slots.width: node `2` input `filename_prefix` is \"x\", not a number as the slot's type says",
        ),
        (
            load_err(JSON, &TOML.replace(r#"filename_prefix" }"#, r#"filename_prefix", type = "int" }"#)),
            "t.toml: slots.prefix: prefix is text, so its type must be \"string\"",
        ),
    ];
    for (got, want) in cases {
        assert_eq!(got, want);
    }
    let unknown = load_err(JSON, &TOML.replace("width =", "stepz ="));
    assert_eq!(
        unknown,
        "t.toml: slots.stepz: not a slot name (known: prompt, negative_prompt, seed, steps, cfg, width, height, \
         frames, fps, image, prefix)"
    );
}

/// One node with an input for every slot, so that every written value can be compared at once.
const ALL_JSON: &str = r#"{
  "1": {"class_type": "Everything", "inputs": {"prompt": "p", "negative": "n", "seed": 0, "steps": 1, "cfg": 1.0,
        "width": 8, "height": 8, "length": 1, "fps": 1.0, "image": "i", "prefix": "x"}},
  "2": {"class_type": "Save", "inputs": {"video": ["1", 0]}}
}"#;

const ALL_TOML: &str = r#"output = "2"
[slots]
prompt = { node = "1", input = "prompt" }
negative_prompt = { node = "1", input = "negative" }
seed = { node = "1", input = "seed" }
steps = { node = "1", input = "steps" }
cfg = { node = "1", input = "cfg" }
width = { node = "1", input = "width" }
height = { node = "1", input = "height" }
frames = { node = "1", input = "length" }
fps = { node = "1", input = "fps" }
image = { node = "1", input = "image" }
prefix = { node = "1", input = "prefix" }
"#;

fn all_params() -> VideoParams {
    VideoParams {
        prompt: Some("a cat".into()),
        negative_prompt: Some("blur".into()),
        seed: Some(u64::MAX),
        cfg: Some(6.1),
        ..params(320, 240, 12, 2.0, 25)
    }
}

#[test]
fn fill_sets_every_slot_with_its_type() {
    let t = load(&[("all.json", ALL_JSON), ("all.toml", ALL_TOML)]).unwrap();
    let p = all_params();
    let f = Fill { image: Some("up.png"), ..fill(&p, None) };
    let filled = t.get("all").unwrap().fill(&f).unwrap();
    let want = json!({"prompt": "a cat", "negative": "blur", "seed": u64::MAX, "steps": 25, "cfg": 6.1,
        "width": 320, "height": 240, "length": 24, "fps": 12.0, "image": "up.png", "prefix": "jobs/j1/video"});
    assert_eq!(filled.prompt["1"]["inputs"], want);
    assert_eq!(filled.prompt["2"], json!({"class_type": "Save", "inputs": {"video": ["1", 0]}}), "links untouched");
    let inputs = &filled.prompt["1"]["inputs"];
    assert!(inputs["steps"].is_u64() && inputs["length"].is_u64() && inputs["fps"].is_f64() && inputs["cfg"].is_f64());
    assert!(serde_json::to_string(&filled.prompt).unwrap().contains(r#""seed":18446744073709551615"#), "exact u64");
    let got = (filled.width, filled.height, filled.frames, filled.fps, filled.steps);
    assert_eq!(got, (320, 240, 24, 12, 25));
    assert!(filled.ignored.is_empty());

    let typed = ALL_TOML
        .replace(r#"input = "steps" }"#, r#"input = "steps", type = "float" }"#)
        .replace(r#"input = "seed" }"#, r#"input = "seed", type = "string" }"#)
        .replace(r#"input = "fps" }"#, r#"input = "fps", type = "int" }"#);
    let t = load(&[("all.json", &ALL_JSON.replace(r#""seed": 0"#, r#""seed": "0""#)), ("all.toml", &typed)]).unwrap();
    let inputs = t.get("all").unwrap().fill(&f).unwrap().prompt["1"]["inputs"].clone();
    assert_eq!(
        (&inputs["steps"], &inputs["seed"], &inputs["fps"]),
        (&json!(25.0), &json!("18446744073709551615"), &json!(12))
    );
    assert!(inputs["steps"].is_f64() && inputs["fps"].is_u64());
}

#[test]
fn caps_cut_steps_pixels_and_frames() {
    let t = examples();
    let wan = t.get("wan-i2v").unwrap();
    let caps = DowngradeProfile {
        video_max_steps: Some(10),
        video_max_pixels: Some(640 * 360),
        video_max_frames: Some(48),
        ..Default::default()
    };
    let p = params(1280, 720, 16, 5.0, 30);
    let filled = wan.fill(&fill(&p, Some(&caps))).unwrap();
    // 640 × 360 halves each side; 360 is not a multiple of 16, so 352. 48 frames is not 4k+1 and 49 would pass
    // the cap, so 45.
    assert_eq!((filled.steps, filled.width, filled.height, filled.frames), (10, 640, 352, 45));
    let nodes = &filled.prompt;
    assert_eq!((&nodes["11"]["inputs"]["steps"], &nodes["9"]["inputs"]["length"]), (&json!(10), &json!(45)));
    assert_eq!((&nodes["9"]["inputs"]["width"], &nodes["9"]["inputs"]["height"]), (&json!(640), &json!(352)));

    let empty = t.get("empty-video").unwrap();
    let caps = DowngradeProfile { video_max_pixels: Some(1280 * 720), video_max_frames: Some(100), ..caps };
    let filled = empty.fill(&fill(&params(1920, 1080, 24, 10.0, 20), Some(&caps))).unwrap();
    assert_eq!((filled.width, filled.height, filled.frames, filled.steps), (1280, 720, 100, 10));
    // Portrait, and a pixel cap that no exact scale meets: both sides come down, even, under the cap.
    let caps = DowngradeProfile { video_max_pixels: Some(100_000), ..Default::default() };
    let filled = empty.fill(&fill(&params(720, 1280, 24, 1.0, 20), Some(&caps))).unwrap();
    assert_eq!((filled.width, filled.height), (236, 420));
    let (ratio, was) = (f64::from(filled.width) / f64::from(filled.height), 720.0 / 1280.0);
    assert!((ratio - was).abs() < 0.01 && filled.width * filled.height <= 100_000, "{ratio} vs {was}");
    // Under the caps nothing changes.
    let filled = empty.fill(&fill(&params(320, 240, 24, 1.0, 20), Some(&caps))).unwrap();
    assert_eq!((filled.width, filled.height, filled.frames, filled.steps), (320, 240, 24, 20));
}

#[test]
fn frames_round_up_to_what_the_template_takes() {
    let t = examples();
    let wan = t.get("wan-i2v").unwrap();
    for (fps, duration_s, frames) in [(16, 3.0, 49), (16, 49.0 / 16.0, 49), (16, 0.05, 1), (24, 2.0, 49), (16, 5.0, 81)]
    {
        let filled = wan.fill(&fill(&params(832, 480, fps, duration_s, 20), None)).unwrap();
        assert_eq!(filled.frames, frames, "{fps} fps × {duration_s} s");
        assert_eq!(filled.prompt["9"]["inputs"]["length"], json!(frames));
        assert_eq!(filled.prompt["13"]["inputs"]["fps"], json!(f64::from(fps)));
    }
}

#[test]
fn out_of_range_params_are_named() {
    let t = examples();
    let (wan, empty) = (t.get("wan-i2v").unwrap(), t.get("empty-video").unwrap());
    let err = |t: &Template, p: VideoParams| {
        let e = t.fill(&fill(&p, None)).unwrap_err();
        assert_eq!(e.kind, PipelineErrorKind::Permanent);
        e.message
    };
    assert_eq!(
        err(wan, params(832, 480, 16, 3.0, 80)),
        "params.steps: 80 is above the template's maximum 40 (template wan-i2v)"
    );
    assert_eq!(err(wan, params(850, 480, 16, 3.0, 20)), "params.width: 850 is not a multiple of 16 (template wan-i2v)");
    assert_eq!(
        err(wan, params(832, 1296, 16, 3.0, 20)),
        "params.height: 1296 is above the template's maximum 1280 (template wan-i2v)"
    );
    assert_eq!(
        err(wan, VideoParams { cfg: Some(13.5), ..params(832, 480, 16, 3.0, 20) }),
        "params.cfg: 13.5 is above the template's maximum 12 (template wan-i2v)"
    );
    assert_eq!(
        err(empty, params(320, 240, 24, 20.0, 20)),
        "params.duration_s: 480 frames (fps × duration_s) is above the template's maximum 240 (template empty-video)"
    );
}

#[test]
fn an_image_template_without_an_image_fails() {
    let t = examples();
    let p = params(832, 480, 16, 3.0, 20);
    let e = t.get("wan-i2v").unwrap().fill(&Fill { image: None, ..fill(&p, None) }).unwrap_err();
    assert_eq!((e.kind, e.message.as_str()), (PipelineErrorKind::Permanent, "the template wan-i2v needs inputs.image"));
    let filled = t.get("wan-i2v").unwrap().fill(&fill(&p, None)).unwrap();
    assert_eq!(filled.prompt["5"]["inputs"]["image"], json!("in.png"));
    assert_eq!(filled.prompt["14"]["inputs"]["filename_prefix"], json!("jobs/j1/video"));
}

#[test]
fn params_without_a_slot_are_listed_as_ignored() {
    let t = examples();
    let empty = t.get("empty-video").unwrap();
    let p = VideoParams { seed: Some(7), ..all_params() };
    let filled = empty.fill(&fill(&p, None)).unwrap();
    assert_eq!(filled.ignored, ["prompt", "negative_prompt", "seed", "cfg", "image"]);
    let bare = params(320, 240, 24, 1.0, 20);
    let filled = empty.fill(&Fill { image: None, ..fill(&bare, None) }).unwrap();
    assert!(filled.ignored.is_empty(), "{:?}", filled.ignored);
    let nodes = &filled.prompt;
    assert_eq!(nodes["1"]["inputs"], json!({"width": 320, "height": 240, "batch_size": 24, "color": 3368601}));
    assert_eq!((&nodes["2"]["inputs"]["fps"], &nodes["3"]["inputs"]["format"]), (&json!(24.0), &json!("mp4")));
}

#[test]
fn a_missing_seed_is_derived_from_the_prefix() {
    let t = examples();
    let wan = t.get("wan-i2v").unwrap();
    let p = params(832, 480, 16, 3.0, 20);
    let seed = |prefix: &str| {
        let filled = wan.fill(&Fill { prefix, ..fill(&p, None) }).unwrap();
        filled.prompt["11"]["inputs"]["seed"].as_u64().unwrap()
    };
    assert_eq!(seed("jobs/a/video"), seed("jobs/a/video"), "a retry draws the same seed");
    assert_ne!(seed("jobs/a/video"), seed("jobs/b/video"));
    assert!(seed("jobs/a/video") < 1 << 53);
    let given = VideoParams { seed: Some(12345), ..p.clone() };
    assert_eq!(wan.fill(&fill(&given, None)).unwrap().prompt["11"]["inputs"]["seed"], json!(12345));
    let toml = ALL_TOML.replace(r#"input = "seed" }"#, r#"input = "seed", min = 10, max = 20 }"#);
    let all = load(&[("all.json", ALL_JSON), ("all.toml", &toml)]).unwrap();
    for prefix in ["a", "b", "c", "d", "e"] {
        let p = VideoParams { seed: None, ..all_params() };
        let s = all.get("all").unwrap().fill(&Fill { prefix, ..fill(&p, None) }).unwrap().prompt["1"]["inputs"]["seed"]
            .as_u64()
            .unwrap();
        assert!((10..=20).contains(&s), "{s}");
    }
}

#[test]
fn choose_takes_the_job_then_the_default_then_the_only_one() {
    let t = examples();
    assert_eq!(t.choose(Some("wan-i2v"), Some("empty-video")).unwrap().name, "wan-i2v");
    assert_eq!(t.choose(None, Some("empty-video")).unwrap().name, "empty-video");
    let known = "(known: animated-webp, empty-video, wan-i2v)";
    let e = t.choose(Some("ghost"), None).unwrap_err();
    assert_eq!(e.message, format!("workflow template `ghost` is not in comfyui.templates {known}"));
    let e = t.choose(None, Some("gone")).unwrap_err();
    assert_eq!(e.message, format!("comfyui.default_template `gone` is not in comfyui.templates {known}"));
    let e = t.choose(None, None).unwrap_err();
    assert_eq!(e.message, format!("the job names no workflow and there is no comfyui.default_template {known}"));
    let one = load(&[("t.json", JSON), ("t.toml", TOML)]).unwrap();
    assert_eq!(one.choose(None, None).unwrap().name, "t");
}

/// What `GET /object_info` says of the nodes the model-free examples use (v0.8.0 shapes, trimmed): EmptyImage and
/// ImageScale are classic nodes (a combo is its list of choices), the video and WebP nodes are V3 (`COMBO`).
fn object_info() -> Value {
    json!({
        "EmptyImage": {"output_node": false, "input": {"required": {
            "width": ["INT", {"default": 512, "min": 1, "max": 16384, "step": 1}],
            "height": ["INT", {"default": 512, "min": 1, "max": 16384, "step": 1}],
            "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}],
            "color": ["INT", {"default": 0, "min": 0, "max": 16777215, "display": "color"}]}}},
        "ImageScale": {"output_node": false, "input": {"required": {
            "image": ["IMAGE"],
            "upscale_method": [["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]],
            "width": ["INT", {"default": 512, "min": 0, "max": 16384}],
            "height": ["INT", {"default": 512, "min": 0, "max": 16384}],
            "crop": [["disabled", "center"]]}}},
        "SaveAnimatedWEBP": {"output_node": true, "input": {"required": {
            "images": ["IMAGE"],
            "filename_prefix": ["STRING", {"default": "ComfyUI"}],
            "fps": ["FLOAT", {"default": 6.0, "min": 0.01, "max": 1000.0}],
            "lossless": ["BOOLEAN", {"default": true}],
            "quality": ["INT", {"default": 80, "min": 0, "max": 100}],
            "method": ["COMBO", {"multiselect": false, "options": ["default", "fastest", "slowest"]}]},
            "hidden": {"prompt": ["PROMPT"]}}},
        "CreateVideo": {"output_node": false, "input": {
            "required": {"images": ["IMAGE"], "fps": ["FLOAT", {"default": 30.0, "min": 1.0, "max": 120.0}]},
            "optional": {"audio": ["AUDIO"]}}},
        "SaveVideo": {"output_node": true, "input": {"required": {
            "video": ["VIDEO"],
            "filename_prefix": ["STRING", {"default": "video/ComfyUI"}],
            "format": ["COMBO", {"options": ["auto", "mp4"], "default": "auto"}],
            "codec": ["COMBO", {"options": ["auto", "h264"], "default": "auto"}]}}}
    })
}

#[test]
fn object_info_checks_classes_inputs_limits_and_combos() {
    let t = examples();
    let (empty, webp) = (t.get("empty-video").unwrap(), t.get("animated-webp").unwrap());
    empty.check_object_info(&object_info()).unwrap();
    webp.check_object_info(&object_info()).unwrap();
    let broken = |edit: &dyn Fn(&mut Value), t: &Template| {
        let mut info = object_info();
        edit(&mut info);
        t.check_object_info(&info).unwrap_err()
    };
    let cases = [
        (
            broken(&|i| _ = i.as_object_mut().unwrap().remove("CreateVideo"), empty),
            "template empty-video: node `2` (CreateVideo): the server has no node class CreateVideo (a custom node \
             not installed?)",
        ),
        (
            broken(&|i| i["EmptyImage"]["input"]["required"]["width"][1]["max"] = json!(1000), empty),
            "template empty-video: node `1` (EmptyImage): input `width`: the slot's max 1920 is above the server's 1000",
        ),
        (
            broken(&|i| i["ImageScale"]["input"]["required"]["width"][1]["min"] = json!(32), webp),
            "template animated-webp: node `2` (ImageScale): input `width`: the slot's min 16 is below the server's 32",
        ),
        (
            broken(&|i| i["SaveVideo"]["input"]["required"]["format"][1]["options"] = json!(["auto"]), empty),
            "template empty-video: node `3` (SaveVideo): input `format`: \"mp4\" is not one of the server's choices \
             (\"auto\")",
        ),
        (
            broken(&|i| i["ImageScale"]["input"]["required"]["upscale_method"] = json!([["nearest-exact"]]), webp),
            "template animated-webp: node `2` (ImageScale): input `upscale_method`: \"bilinear\" is not one of the \
             server's choices (\"nearest-exact\")",
        ),
        (
            broken(
                &|i| {
                    let required = i["CreateVideo"]["input"]["required"].as_object_mut().unwrap();
                    let fps = required.remove("fps").unwrap();
                    required.insert("frame_rate".into(), fps);
                },
                empty,
            ),
            "template empty-video: node `2` (CreateVideo): the server's CreateVideo has no input `fps`",
        ),
        (
            broken(&|i| i["SaveVideo"]["input"]["required"]["filename_prefix"] = json!(["INT", {}]), empty),
            "template empty-video: node `3` (SaveVideo): input `filename_prefix`: the server takes INT here and the \
             slot writes a string",
        ),
        (
            broken(&|i| i["SaveVideo"]["output_node"] = json!(false), empty),
            "template empty-video: node `3` (SaveVideo): the output node is not an output node on the server",
        ),
    ];
    for (got, want) in cases {
        assert_eq!(got, want);
    }
}
