//! The versioned wire contract between the control plane, the workers and the hub.
//!
//! Every message that crosses RabbitMQ is defined here as a Rust type: jobs (`ainern2d.job.v1`), events
//! (`ainern2d.event.v1`), heartbeats (`ainern2d.heartbeat.v1`) and control commands (`ainern2d.control.v1`),
//! together with their validation (errors name the bad field) and the names of the broker topology.
//! JSON Schema files in `schemas/` are generated from these types.
//!
//! This crate must not know about I/O: no async runtime, no broker client, no storage. It is pure data and
//! pure functions so that every program (and every test) can depend on it cheaply.

mod control;
mod error;
mod event;
mod heartbeat;
mod job;
pub mod schema;
pub mod topology;

pub use control::{CONTROL_SCHEMA, Control, ControlCommand, DowngradeProfile};
pub use error::{ContractError, ErrorCode};
pub use event::{EVENT_SCHEMA, ErrorInfo, Event, EventStatus, Execution, OutputObject, Progress};
pub use heartbeat::{
    BackendDevice, BackendProcess, BackendStatus, GpuStats, HEARTBEAT_SCHEMA, Heartbeat, SlotUsage, WorkerState,
};
pub use job::{
    AudioFormat, AudioParams, InputRef, JOB_SCHEMA, Job, JobKind, JobSpec, LipsyncParams, LlmParams, OutputLocation,
    Speaker, VideoParams, parse_job,
};
