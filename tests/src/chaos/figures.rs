//! What a round counted, and the totals of a run.

use std::collections::BTreeMap;
use std::time::Duration;

/// What a round counted.
#[derive(Debug, Default, Clone)]
pub struct Figures {
    pub jobs: usize,
    /// Worker kills by the phase they landed in (`random`: no worker reached the phase in time; `skipped`:
    /// every worker it could have killed was down already).
    pub kills: BTreeMap<String, usize>,
    /// Other faults by type.
    pub faults: BTreeMap<String, usize>,
    pub succeeded: usize,
    pub failed: usize,
    pub dead_lettered: usize,
    /// Terminal events beyond the first per job (the same outcome re-announced).
    pub reannounced: usize,
    /// Jobs whose pipeline started again after their success was announced.
    pub reruns_after_success: usize,
    /// Dead letters beyond the first per job (a worker killed between the dead letter and its ack).
    pub duplicate_dead_letters: usize,
    /// Jobs that ended without a terminal status.
    pub lost: usize,
    /// Jobs with two different outcomes, or output objects that are not exactly the expected ones.
    pub duplicated: usize,
    /// Multipart uploads left open by killed workers that a later worker aborted (from the workers' logs).
    pub uploads_aborted: usize,
    /// Keys of multipart uploads whose id a worker could not find (its process died before the server's
    /// answer; the server does not list uploads), from the workers' logs.
    pub unresolved_uploads: Vec<String>,
    /// Uploads left open for that reason (not violations: no worker could find them on this server).
    pub uploads_unresolvable: usize,
    /// Processes that exited without being killed (restarted by the watchdog).
    pub unexpected_exits: Vec<String>,
    /// Submissions the hub did not answer 2xx at once (retried).
    pub submit_retries: usize,
    /// How the multipart check was made, or why it was not.
    pub multipart_check: String,
    pub settle: Duration,
    pub took: Duration,
}

impl Figures {
    pub fn add(&mut self, other: &Figures) {
        self.jobs += other.jobs;
        for (k, v) in &other.kills {
            *self.kills.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.faults {
            *self.faults.entry(k.clone()).or_default() += v;
        }
        self.succeeded += other.succeeded;
        self.failed += other.failed;
        self.dead_lettered += other.dead_lettered;
        self.reannounced += other.reannounced;
        self.reruns_after_success += other.reruns_after_success;
        self.duplicate_dead_letters += other.duplicate_dead_letters;
        self.uploads_aborted += other.uploads_aborted;
        self.uploads_unresolvable += other.uploads_unresolvable;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.unexpected_exits.extend(other.unexpected_exits.iter().cloned());
        self.submit_retries += other.submit_retries;
        self.settle += other.settle;
        self.took += other.took;
    }
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kills: usize = self.kills.iter().filter(|(k, _)| *k != "skipped").map(|(_, n)| n).sum();
        write!(
            f,
            "jobs {} (succeeded {}, failed {}, dead-lettered {}), kills {kills} {:?}, faults {:?}, re-announced {}, \
             reruns after success {}, duplicate dead letters {}, open uploads aborted {} (unresolvable {}), lost {}, duplicated {}, \
             submit retries {}, unexpected exits {}, settle {:.1}s, took {:.1}s",
            self.jobs,
            self.succeeded,
            self.failed,
            self.dead_lettered,
            self.kills,
            self.faults,
            self.reannounced,
            self.reruns_after_success,
            self.duplicate_dead_letters,
            self.uploads_aborted,
            self.uploads_unresolvable,
            self.lost,
            self.duplicated,
            self.submit_retries,
            self.unexpected_exits.len(),
            self.settle.as_secs_f64(),
            self.took.as_secs_f64()
        )
    }
}
