//! What the fake does, set at start and changeable while it runs (`FakeComfy::set_behaviour`). Every field
//! has a default that gives a plain, fast, successful ComfyUI on CPU.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

pub use axum::body::Bytes;

/// The tips text ComfyUI (v0.3.42+) appends to the message of an out-of-memory exception.
pub const OOM_TIPS: &str = "This error means you ran out of memory on your GPU.\n\nTIPS: If the workflow worked before you might have accidentally set the batch_size to a large number.";

/// A point in a run: node `node`, after `step` progress ticks of it (0: right after its `executing`).
/// Nodes without a progress bar only have step 0, and a step past a node's last tick is never reached.
/// Faults fire every time a prompt reaches the point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct At {
    pub node: String,
    pub step: u32,
}

impl At {
    pub fn new(node: &str, step: u32) -> At {
        At { node: node.into(), step }
    }
}

/// A runtime exception in a node: the prompt ends with `execution_error` (order B).
#[derive(Clone, Debug)]
pub struct Failure {
    pub at: At,
    /// `full_type_name` of the Python exception, e.g. `torch.OutOfMemoryError`, `RuntimeError`.
    pub exception_type: String,
    /// Sent as is: ComfyUI's own form is `"<str(ex)>\n<tips>"`, which `Failure::exception` and `Failure::oom` build.
    pub exception_message: String,
    pub traceback: Vec<String>,
}

impl Failure {
    /// An ordinary exception: ComfyUI sends `"<message>\n"` (the tips are empty).
    pub fn exception(at: At, exception_type: &str, message: &str) -> Failure {
        Failure {
            at,
            exception_type: exception_type.into(),
            exception_message: format!("{message}\n"),
            traceback: default_traceback(),
        }
    }

    /// A CUDA out-of-memory error as current PyTorch with ComfyUI's `cudaMallocAsync` allocator reports it.
    pub fn oom(at: At) -> Failure {
        Failure {
            at,
            exception_type: "torch.OutOfMemoryError".into(),
            exception_message: format!("Allocation on device \n{OOM_TIPS}"),
            traceback: default_traceback(),
        }
    }
}

fn default_traceback() -> Vec<String> {
    vec![
        "  File \"/ComfyUI/execution.py\", line 510, in execute\n    output_data, output_ui, has_subgraph, has_pending_tasks = await get_output_data(prompt_id, unique_id, obj, input_data_all, execution_block_cb=execution_block_cb, pre_execute_cb=pre_execute_cb, v3_data=v3_data)\n".into(),
        "  File \"/ComfyUI/execution.py\", line 324, in get_output_data\n    return_values = await _async_map_node_over_list(prompt_id, unique_id, obj, input_data_all, obj.FUNCTION, allow_interrupt=True, execution_block_cb=execution_block_cb, pre_execute_cb=pre_execute_cb, v3_data=v3_data)\n".into(),
    ]
}

/// Make validation fail at one input of one node, as ComfyUI does for an unknown model file or image name:
/// `value_not_in_list` when the input is present, `required_input_missing` when it is not. Outputs that do
/// not depend on the node still run (200 with `node_errors`); when none is left the answer is 400
/// `prompt_outputs_failed_validation`.
#[derive(Clone, Debug)]
pub struct Reject {
    pub node: String,
    pub input: String,
    /// The allowed values quoted in the error; empty takes the choices from the fake's `/object_info`.
    pub options: Vec<String>,
}

impl Reject {
    pub fn new(node: &str, input: &str) -> Reject {
        Reject { node: node.into(), input: input.into(), options: Vec::new() }
    }
}

/// The content of the file(s) an output node writes.
#[derive(Clone, Debug)]
pub enum OutputFile {
    Bytes(Bytes),
    /// Read when the node runs.
    Path(PathBuf),
}

impl OutputFile {
    pub fn bytes(b: impl Into<Bytes>) -> OutputFile {
        OutputFile::Bytes(b.into())
    }

    pub fn path(p: impl Into<PathBuf>) -> OutputFile {
        OutputFile::Path(p.into())
    }
}

/// How `GET /view` sends a file.
#[derive(Clone, Debug)]
pub struct View {
    /// Bytes per body chunk, and the pause before each chunk (a slow server or network).
    pub chunk: usize,
    pub delay: Duration,
    /// Serve this many bytes: the file, then zeros (an oversized output without holding it in memory).
    pub inflate_to: Option<u64>,
    /// Send `Content-Length` (true, as aiohttp's FileResponse does) or a chunked body without a length.
    pub content_length: bool,
}

impl Default for View {
    fn default() -> View {
        View { chunk: 64 * 1024, delay: Duration::ZERO, inflate_to: None, content_length: true }
    }
}

/// The one device `GET /system_stats` reports.
#[derive(Clone, Debug, Default)]
pub enum Device {
    /// `--cpu`: `{"name":"cpu","type":"cpu","index":null}` with the system RAM as its memory.
    #[default]
    Cpu,
    Cuda {
        name: String,
        vram_total: u64,
        vram_free: u64,
        torch_vram_total: u64,
        torch_vram_free: u64,
    },
}

impl Device {
    /// An idle H200 as ComfyUI names it (`cuda:0 <name> : <allocator>`).
    pub fn h200() -> Device {
        Device::Cuda {
            name: "cuda:0 NVIDIA H200 : cudaMallocAsync".into(),
            vram_total: 150_110_011_392,
            vram_free: 149_480_406_016,
            torch_vram_total: 0,
            torch_vram_free: 0,
        }
    }
}

/// Everything the fake can be told. `Behaviour::default()` runs every prompt successfully and at once.
#[derive(Clone, Debug, Default)]
pub struct Behaviour {
    /// Pause before each progress tick of a KSampler-like node (its `steps` input gives the tick count).
    pub step_delay: Duration,
    /// Node ids whose outputs count as cached: listed in `execution_cached`; an intermediate one is never
    /// visited, a cached output node sends `executed` (its earlier ui) but no `executing`.
    pub cached: Vec<String>,
    /// A binary preview frame with every progress tick (type 1 JPEG, or type 4 to clients that sent the
    /// `supports_preview_metadata` feature flag).
    pub previews: bool,
    /// Runtime exception (order B).
    pub fail: Option<Failure>,
    /// Set the interrupt flag here as another client's `POST /interrupt` would; it is honoured at the next
    /// tick or node start (order C).
    pub interrupt_at: Option<At>,
    /// Stop here forever: no more messages, the prompt stays running, `/interrupt` is not honoured.
    /// `FakeComfy::restart` ends it.
    pub hang_at: Option<At>,
    /// Drop every WebSocket here (no close frame) and go on running into history.
    pub close_websockets_at: Option<At>,
    /// Restart here: queue, history and this prompt are forgotten and every WebSocket drops.
    pub restart_at: Option<At>,
    /// Validation failure for `POST /prompt`.
    pub reject: Option<Reject>,
    /// Class types that "do not exist" (a custom node that is not installed): 400 `invalid_prompt`.
    pub missing_classes: Vec<String>,
    /// The bytes each output node (by node id) writes; nodes not listed write a small placeholder (a 1×1
    /// PNG for `.png`, a short text otherwise).
    pub outputs: HashMap<String, OutputFile>,
    pub view: View,
    pub device: Device,
    /// A wedged server (its event loop blocked, or the process stopped): HTTP requests are accepted and
    /// never answered, WebSockets stay open and silent.
    pub wedged: bool,
}
