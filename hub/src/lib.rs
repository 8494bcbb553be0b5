//! The ainern2d hub: the system of record for jobs and workers. It consumes the workers' events into
//! Postgres, keeps the worker registry, and enforces the fleet policy.
//!
//! The hub must never link inference code (candle, ort, FFmpeg); it knows the contract, the broker and the
//! database.

pub mod db;
pub mod policy;
pub mod status;
