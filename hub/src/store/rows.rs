//! Rows to typed structs, once for both stores: each store says how to read an integer and a time from its
//! rows (Postgres: `INTEGER` and `timestamptz`; SQLite: `INTEGER` and epoch microseconds), the rest is shared.

use chrono::{DateTime, Utc};

use super::batch::JobRecord;
use super::{DecisionRow, JobEventRow, JobRow, WorkerRow};
use crate::status::JobStatus;

pub(crate) trait Columns {
    fn text(&self, column: &str) -> String;
    fn text_opt(&self, column: &str) -> Option<String>;
    fn flag(&self, column: &str) -> bool;
    fn json(&self, column: &str) -> serde_json::Value;
    fn json_opt(&self, column: &str) -> Option<serde_json::Value>;
    fn int(&self, column: &str) -> i64;
    fn time_opt(&self, column: &str) -> Option<DateTime<Utc>>;

    fn time(&self, column: &str) -> DateTime<Utc> {
        self.time_opt(column).unwrap_or_default()
    }
}

/// The `Columns` methods whose column types decode the same way in both databases.
macro_rules! columns_by_get {
    () => {
        fn text(&self, column: &str) -> String {
            sqlx::Row::get(self, column)
        }
        fn text_opt(&self, column: &str) -> Option<String> {
            sqlx::Row::get(self, column)
        }
        fn flag(&self, column: &str) -> bool {
            sqlx::Row::get(self, column)
        }
        fn json(&self, column: &str) -> serde_json::Value {
            sqlx::Row::get(self, column)
        }
        fn json_opt(&self, column: &str) -> Option<serde_json::Value> {
            sqlx::Row::get(self, column)
        }
    };
}
pub(crate) use columns_by_get;

pub(crate) fn job_row(r: &impl Columns) -> JobRow {
    JobRow {
        job_id: r.text("job_id"),
        kind: r.text_opt("kind"),
        status: r.text("status"),
        attempt: r.int("attempt") as i32,
        worker_id: r.text_opt("worker_id"),
        submitted_at: r.time_opt("submitted_at"),
        accepted_at: r.time_opt("accepted_at"),
        started_at: r.time_opt("started_at"),
        finished_at: r.time_opt("finished_at"),
        updated_at: r.time_opt("updated_at"),
        progress: r.json_opt("progress"),
        outputs: r.json_opt("outputs"),
        error: r.json_opt("error"),
        timings_ms: r.json_opt("timings_ms"),
        downgrade: r.text_opt("downgrade"),
    }
}

/// A row as the batch planner needs it (an unknown status reads as `queued`).
pub(crate) fn job_record(r: &impl Columns) -> (String, JobRecord) {
    let record = JobRecord {
        kind: r.text_opt("kind"),
        status: Some(JobStatus::parse(&r.text("status")).unwrap_or(JobStatus::Queued)),
        attempt: r.int("attempt") as u32,
        worker_id: r.text_opt("worker_id"),
        submitted_at: r.time_opt("submitted_at"),
        accepted_at: r.time_opt("accepted_at"),
        started_at: r.time_opt("started_at"),
        finished_at: r.time_opt("finished_at"),
        progress: r.json_opt("progress"),
        outputs: r.json_opt("outputs"),
        error: r.json_opt("error"),
        timings_ms: r.json_opt("timings_ms"),
        downgrade: r.text_opt("downgrade"),
    };
    (r.text("job_id"), record)
}

pub(crate) fn event_row(r: &impl Columns) -> JobEventRow {
    JobEventRow {
        event_id: r.text("event_id"),
        status: r.text("status"),
        body: r.json("body"),
        applied: r.flag("applied"),
    }
}

pub(crate) fn worker_row(r: &impl Columns) -> WorkerRow {
    WorkerRow {
        worker_id: r.text("worker_id"),
        host: r.text("host"),
        version: r.text("version"),
        state: r.text("state"),
        lost: r.flag("lost"),
        last_heartbeat_at: r.time("last_heartbeat_at"),
        slots: r.json("slots"),
        models_loaded: r.json("models_loaded"),
        gpus: r.json("gpus"),
        downgrade: r.text_opt("downgrade"),
    }
}

pub(crate) fn decision_row(r: &impl Columns) -> DecisionRow {
    DecisionRow {
        decided_at: r.time("decided_at"),
        subject: r.text("subject"),
        decision: r.json("decision"),
        reason: r.text("reason"),
    }
}
