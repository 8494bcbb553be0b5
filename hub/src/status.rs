//! Job status as a small pure state machine: which events may move a job, and which are ignored because
//! they are duplicates, late (`progress` after `succeeded`) or from an older attempt.

use ainern2d_contract::EventStatus;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Accepted,
    Running,
    Retrying,
    Succeeded,
    Failed,
    Cancelled,
    DeadLettered,
}

impl JobStatus {
    pub const ALL: [JobStatus; 8] = [
        JobStatus::Queued,
        JobStatus::Accepted,
        JobStatus::Running,
        JobStatus::Retrying,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Cancelled,
        JobStatus::DeadLettered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Accepted => "accepted",
            JobStatus::Running => "running",
            JobStatus::Retrying => "retrying",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::DeadLettered => "dead_lettered",
        }
    }

    pub fn parse(s: &str) -> Option<JobStatus> {
        JobStatus::ALL.into_iter().find(|j| j.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled | JobStatus::DeadLettered)
    }

    /// Order within one attempt.
    fn rank(self) -> u8 {
        match self {
            JobStatus::Queued => 0,
            JobStatus::Accepted => 1,
            JobStatus::Running => 2,
            JobStatus::Retrying => 3,
            _ => 4,
        }
    }

    /// The status an event announces (`progress` means running).
    pub fn of_event(status: EventStatus) -> JobStatus {
        match status {
            EventStatus::Accepted => JobStatus::Accepted,
            EventStatus::Running | EventStatus::Progress => JobStatus::Running,
            EventStatus::Retrying => JobStatus::Retrying,
            EventStatus::Succeeded => JobStatus::Succeeded,
            EventStatus::Failed => JobStatus::Failed,
            EventStatus::Cancelled => JobStatus::Cancelled,
            EventStatus::DeadLettered => JobStatus::DeadLettered,
        }
    }
}

/// Where a job stands, as far as ordering is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobState {
    pub status: JobStatus,
    pub attempt: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Move the job to this status (and this attempt).
    Advance(JobStatus),
    /// Same status; record the event's progress only.
    Progress,
    /// Keep the job as it is (the event is still logged).
    Ignore(&'static str),
}

/// What an event does to a job. Pure: the same inputs always give the same answer, so replays and
/// reorderings of the same events converge on the same row.
pub fn transition(current: Option<JobState>, event: EventStatus, attempt: u32) -> Transition {
    let next = JobStatus::of_event(event);
    let Some(current) = current else { return Transition::Advance(next) };
    if current.status.is_terminal() {
        return Transition::Ignore("the job has already ended");
    }
    if attempt < current.attempt {
        return Transition::Ignore("event of an older attempt");
    }
    if attempt > current.attempt {
        return Transition::Advance(next);
    }
    match next.rank().cmp(&current.status.rank()) {
        std::cmp::Ordering::Greater => Transition::Advance(next),
        std::cmp::Ordering::Equal if event == EventStatus::Progress => Transition::Progress,
        _ => Transition::Ignore("stale event for this attempt"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use EventStatus as E;
    use JobStatus as J;

    fn st(status: JobStatus, attempt: u32) -> Option<JobState> {
        Some(JobState { status, attempt })
    }

    #[test]
    fn table() {
        let cases: &[(Option<JobState>, EventStatus, u32, Transition)] = &[
            (None, E::Running, 1, Transition::Advance(J::Running)),
            (None, E::Succeeded, 1, Transition::Advance(J::Succeeded)),
            (st(J::Queued, 1), E::Accepted, 1, Transition::Advance(J::Accepted)),
            (st(J::Accepted, 1), E::Running, 1, Transition::Advance(J::Running)),
            (st(J::Accepted, 1), E::Progress, 1, Transition::Advance(J::Running)),
            (st(J::Running, 1), E::Progress, 1, Transition::Progress),
            (st(J::Running, 1), E::Accepted, 1, Transition::Ignore("stale event for this attempt")),
            (st(J::Running, 1), E::Running, 1, Transition::Ignore("stale event for this attempt")),
            (st(J::Running, 1), E::Succeeded, 1, Transition::Advance(J::Succeeded)),
            (st(J::Succeeded, 1), E::Progress, 1, Transition::Ignore("the job has already ended")),
            (st(J::Succeeded, 1), E::Failed, 1, Transition::Ignore("the job has already ended")),
            (st(J::Succeeded, 1), E::Running, 2, Transition::Ignore("the job has already ended")),
            (st(J::Running, 1), E::Retrying, 1, Transition::Advance(J::Retrying)),
            (st(J::Retrying, 1), E::Running, 2, Transition::Advance(J::Running)),
            (st(J::Running, 2), E::Progress, 1, Transition::Ignore("event of an older attempt")),
            (st(J::Running, 2), E::Retrying, 1, Transition::Ignore("event of an older attempt")),
            (st(J::Retrying, 2), E::DeadLettered, 3, Transition::Advance(J::DeadLettered)),
            (st(J::Queued, 1), E::Cancelled, 1, Transition::Advance(J::Cancelled)),
        ];
        for (current, event, attempt, expected) in cases {
            assert_eq!(transition(*current, *event, *attempt), *expected, "{current:?} + {event:?}@{attempt}");
        }
    }

    /// Every permutation of a run's events ends in the same final status.
    #[test]
    fn reordering_converges() {
        let events = [(E::Running, 1), (E::Progress, 1), (E::Retrying, 1), (E::Running, 2), (E::Succeeded, 2)];
        // All 120 orders of the five events.
        let mut orders: Vec<Vec<usize>> = vec![vec![]];
        for _ in 0..events.len() {
            let mut next = Vec::new();
            for o in &orders {
                for i in (0..events.len()).filter(|i| !o.contains(i)) {
                    next.push([o.clone(), vec![i]].concat());
                }
            }
            orders = next;
        }
        assert_eq!(orders.len(), 120);
        for order in orders {
            let mut state = st(J::Queued, 1);
            for i in &order {
                let (event, attempt) = events[*i];
                if let Transition::Advance(status) = transition(state, event, attempt) {
                    state = Some(JobState { status, attempt });
                }
            }
            assert_eq!(state, st(J::Succeeded, 2), "order {order:?}");
        }
    }
}
