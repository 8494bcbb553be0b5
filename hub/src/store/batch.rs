//! The part of applying a batch that does not depend on the database: which of the recorded events are new,
//! and what the status machine makes of them, in arrival order, over the rows loaded for their jobs. Both
//! stores load rows, call `plan`, and write back what it says.

use std::collections::{HashMap, HashSet};

use ainern2d_contract::{Event, Heartbeat};
use chrono::{DateTime, Utc};

use super::{BatchStats, Finished};
use crate::status::{JobState, JobStatus, Transition, transition};

/// The columns of a job row that events move.
#[derive(Debug, Clone, Default)]
pub(crate) struct JobRecord {
    pub kind: Option<String>,
    pub status: Option<JobStatus>,
    pub attempt: u32,
    pub worker_id: Option<String>,
    pub submitted_at: Option<DateTime<Utc>>,
    pub accepted_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub progress: Option<serde_json::Value>,
    pub outputs: Option<serde_json::Value>,
    pub error: Option<serde_json::Value>,
    pub timings_ms: Option<serde_json::Value>,
    pub downgrade: Option<String>,
}

impl JobRecord {
    /// The status to write (a row is only written after an event moved it, so it always has one).
    pub fn status_str(&self) -> &'static str {
        self.status.unwrap_or(JobStatus::Queued).as_str()
    }
}

/// What a batch does to the job rows.
#[derive(Debug, Default)]
pub(crate) struct Plan<'a> {
    pub stats: BatchStats,
    /// Events recorded but not applied.
    pub ignored: Vec<&'a str>,
    /// Rows to write back, by job id.
    pub changed: Vec<(String, JobRecord)>,
    pub finished: Vec<Finished>,
}

/// The events of the batch that the store had not recorded before (`fresh` holds the ids its insert
/// accepted), in arrival order, once each: the same event may appear twice in a batch when a redelivery
/// races the original.
pub(crate) fn new_events<'a>(events: &'a [Event], fresh: &HashSet<String>) -> Vec<&'a Event> {
    let mut seen = HashSet::new();
    events.iter().filter(|e| fresh.contains(&e.event_id) && seen.insert(e.event_id.as_str())).collect()
}

/// The ids of the jobs the events touch, sorted (the order rows are locked in), once each.
pub(crate) fn touched_jobs<'a>(events: &[&'a Event]) -> Vec<&'a str> {
    let mut ids: Vec<&str> = events.iter().map(|e| e.job_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Runs the status machine over `new_events` in arrival order, starting from the `rows` loaded for their jobs.
/// `total` is the number of events in the batch, duplicates included.
pub(crate) fn plan<'a>(total: usize, new_events: &[&'a Event], mut rows: HashMap<String, JobRecord>) -> Plan<'a> {
    let mut out = Plan::default();
    out.stats.duplicates = (total - new_events.len()) as u64;
    let mut touched = HashSet::new();
    for e in new_events {
        let row = rows.entry(e.job_id.clone()).or_default();
        let current = row.status.map(|status| JobState { status, attempt: row.attempt });
        match transition(current, e.status, e.attempt) {
            Transition::Ignore(_) => {
                out.stats.ignored += 1;
                out.ignored.push(e.event_id.as_str());
                continue;
            }
            Transition::Progress => {}
            Transition::Advance(status) => {
                row.status = Some(status);
                row.attempt = e.attempt;
                match status {
                    JobStatus::Accepted => row.accepted_at = row.accepted_at.or(Some(e.emitted_at)),
                    JobStatus::Running => row.started_at = row.started_at.or(Some(e.emitted_at)),
                    s if s.is_terminal() => {
                        row.finished_at = Some(e.emitted_at);
                        row.outputs = Some(serde_json::to_value(&e.outputs).expect("outputs serialize"));
                        row.timings_ms = Some(serde_json::to_value(&e.timings_ms).expect("timings serialize"));
                        let e2e = row.submitted_at.map(|s| (e.emitted_at - s).num_milliseconds() as f64 / 1e3);
                        out.finished.push(Finished { job_id: e.job_id.clone(), status, e2e_s: e2e });
                    }
                    _ => {}
                }
                if e.error.is_some() {
                    row.error = Some(serde_json::to_value(&e.error).expect("errors serialize"));
                }
            }
        }
        out.stats.applied += 1;
        touched.insert(e.job_id.as_str());
        row.kind = row.kind.take().or(e.kind.map(|k| k.as_str().to_string()));
        row.worker_id = Some(e.worker_id.clone());
        if e.progress.is_some() {
            row.progress = Some(serde_json::to_value(&e.progress).expect("progress serializes"));
        }
        if e.downgrade.is_some() {
            row.downgrade = e.downgrade.clone();
        }
    }
    out.changed = rows.into_iter().filter(|(id, _)| touched.contains(id.as_str())).collect();
    out.changed.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// A heartbeat's columns as both stores write them.
pub(crate) struct WorkerColumns {
    pub state: String,
    pub slots: serde_json::Value,
    pub models_loaded: serde_json::Value,
    pub gpus: serde_json::Value,
}

impl WorkerColumns {
    pub fn of(hb: &Heartbeat) -> WorkerColumns {
        WorkerColumns {
            state: serde_json::to_value(hb.state).expect("state serializes").as_str().unwrap_or("unknown").to_string(),
            slots: serde_json::to_value(&hb.slots).expect("slots serialize"),
            models_loaded: serde_json::to_value(&hb.models_loaded).expect("models serialize"),
            gpus: serde_json::to_value(&hb.gpus).expect("gpus serialize"),
        }
    }
}

#[cfg(test)]
mod tests {
    use ainern2d_contract::{EventStatus, JobKind};

    use super::*;

    fn ev(job: &str, attempt: u32, status: EventStatus, seq: u32) -> Event {
        Event::new(job, Some(JobKind::Llm), attempt, "w", status, seq)
    }

    #[test]
    fn new_events_keeps_the_first_of_each_fresh_id() {
        let a = ev("j", 1, EventStatus::Running, 0);
        let b = ev("j", 1, EventStatus::Progress, 1);
        let events = [a.clone(), b.clone(), a.clone()];
        let fresh: HashSet<String> = [a.event_id.clone()].into();
        let picked = new_events(&events, &fresh);
        assert_eq!(picked.iter().map(|e| e.event_id.as_str()).collect::<Vec<_>>(), [a.event_id.as_str()]);
    }

    #[test]
    fn plan_applies_in_order_and_ignores_what_would_move_back() {
        let events = [
            ev("a", 1, EventStatus::Running, 0),
            ev("a", 1, EventStatus::Succeeded, 2),
            ev("a", 1, EventStatus::Progress, 1),
            ev("b", 2, EventStatus::Running, 0),
            ev("b", 1, EventStatus::Retrying, 3),
        ];
        let refs: Vec<&Event> = events.iter().collect();
        let p = plan(6, &refs, HashMap::new());
        assert_eq!(p.stats, BatchStats { applied: 3, ignored: 2, duplicates: 1, heartbeats: 0 });
        assert_eq!(p.ignored, ["a/1/1", "b/1/retrying"]);
        let rows: HashMap<_, _> = p.changed.into_iter().collect();
        assert_eq!((rows["a"].status, rows["a"].attempt), (Some(JobStatus::Succeeded), 1));
        assert_eq!((rows["b"].status, rows["b"].attempt), (Some(JobStatus::Running), 2));
        assert_eq!(p.finished.len(), 1);
    }

    #[test]
    fn rows_only_touched_by_ignored_events_are_not_written() {
        let done = JobRecord { status: Some(JobStatus::Succeeded), attempt: 1, ..Default::default() };
        let late = [ev("a", 1, EventStatus::Progress, 5)];
        let p = plan(1, &[&late[0]], [("a".to_string(), done)].into());
        assert!(p.changed.is_empty());
        assert_eq!(p.stats.ignored, 1);
    }
}
