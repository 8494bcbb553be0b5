//! Chaos rounds: the real worker and hub binaries (several worker replicas) against a private RabbitMQ
//! node, a private Postgres and the S3 server behind a fault-injecting proxy. A round submits a batch
//! of jobs of every kind, kills workers in chosen phases of a job and hits the broker, S3, Postgres and
//! the hub at moments its seed chooses, lets the system settle and checks that nothing was lost or done
//! twice. `tests/tests/chaos.rs` runs the rounds.
//!
//! - [`rng`] the seeded PRNG, [`plan`] what a seed makes of a round;
//! - [`proxy`] the S3 fault proxy, [`pg`] the private Postgres, [`tap`] an event tap that survives the
//!   broker;
//! - [`round`] the driver (processes, faults, settling, evidence), [`check`] the checker, [`figures`]
//!   what a round counted.

pub mod check;
pub mod figures;
pub mod pg;
pub mod plan;
pub mod proxy;
pub mod rng;
pub mod round;
pub mod tap;
