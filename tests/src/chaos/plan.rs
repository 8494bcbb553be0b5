//! A round's plan: everything a round does — its size, the workers' config, which faults hit when —
//! follows from its seed, so printing the seed is enough to replay it.

use std::fmt;
use std::time::Duration;

use super::rng::SplitMix64;

/// The stage of a job a worker is killed in, recognised from outside: the S3 traffic through the
/// worker's proxy, or the worker's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// A GET of an input object is on its way.
    Fetching,
    /// A progress event came from the pipeline.
    Inferring,
    /// A PUT (or a multipart request) of an output is on its way.
    Uploading,
    /// A part of a multipart upload is on its way: the upload is open on the server. Scheduled once in
    /// rounds with a multipart job (never picked at random), waiting as long as that job may take.
    UploadingPart,
    /// S3 has answered the output's PUT (or completed its multipart upload): the object is stored, no
    /// outcome is out yet.
    Publishing,
    /// The outcome event is out: the ack follows.
    Acking,
}

pub const PHASES: [Phase; 5] = [Phase::Fetching, Phase::Inferring, Phase::Uploading, Phase::Publishing, Phase::Acking];

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Fetching => "fetching",
            Phase::Inferring => "inferring",
            Phase::Uploading => "uploading",
            Phase::UploadingPart => "uploading-part",
            Phase::Publishing => "publishing",
            Phase::Acking => "acking",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum S3Fault {
    Blackhole,
    Latency(Duration),
    Reset { after_bytes: u64 },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// SIGKILL the first worker seen in `phase` (or, when none is within the trigger wait, the worker of
    /// `slot`), `jitter` after the trigger; start it again after `restart_after`.
    KillWorker { slot: usize, phase: Phase, jitter: Duration, restart_after: Duration },
    /// `rabbitmqctl stop`, then a start on the same data.
    BrokerRestart,
    /// SIGKILL of the broker's VM, then a start on the same data.
    BrokerCrash,
    /// SIGSTOP of the broker, SIGCONT after the duration.
    BrokerPause(Duration),
    /// The S3 proxies of every worker in this mode for the duration.
    S3 { fault: S3Fault, lasting: Duration },
    /// Postgres stopped (`immediate`: as a crash) and started again after `down_for`.
    PostgresRestart { immediate: bool, down_for: Duration },
    /// SIGKILL of the hub, started again after `down_for`.
    HubKill { down_for: Duration },
}

impl Fault {
    /// The label the figures count it under.
    pub fn label(&self) -> &'static str {
        match self {
            Fault::KillWorker { .. } => "worker-kill",
            Fault::BrokerRestart => "broker-restart",
            Fault::BrokerCrash => "broker-crash",
            Fault::BrokerPause(_) => "broker-pause",
            Fault::S3 { fault: S3Fault::Blackhole, .. } => "s3-blackhole",
            Fault::S3 { fault: S3Fault::Latency(_), .. } => "s3-latency",
            Fault::S3 { fault: S3Fault::Reset { .. }, .. } => "s3-reset",
            Fault::PostgresRestart { .. } => "postgres-restart",
            Fault::HubKill { .. } => "hub-kill",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Scheduled {
    /// From the round's first submission.
    pub at: Duration,
    pub fault: Fault,
}

/// The mock pipeline's injected failures in a round.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MockFailures {
    None,
    /// This fraction of jobs fails for good (`failed`, dead-lettered).
    Permanent(f64),
    /// This fraction fails its first attempt and is retried.
    FirstAttempt(f64),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub seed: u64,
    pub long: bool,
    pub replicas: usize,
    pub jobs: usize,
    /// Job submissions are spread over this long.
    pub submit_over: Duration,
    pub latency_ms: u64,
    pub upload_delay_ms: u64,
    /// `jobs.lease_after_s` (0: no leases) and `jobs.lease_ttl_s`.
    pub lease_after_s: u64,
    pub lease_ttl_s: u64,
    pub failures: MockFailures,
    /// One audio job large enough to be uploaded in parts.
    pub multipart: bool,
    /// One message that is not a valid job, published straight to a job queue.
    pub invalid_job: bool,
    pub faults: Vec<Scheduled>,
    /// How long a phase-triggered kill waits for its phase before it kills at random.
    pub trigger_wait: Duration,
    /// How long the system may take, once every fault is over, to bring every job to its end.
    pub settle_within: Duration,
}

pub const MAX_REPLICAS: usize = 3;

impl Plan {
    pub fn new(seed: u64, long: bool) -> Plan {
        let mut r = SplitMix64::new(seed);
        let replicas = r.range(2, MAX_REPLICAS as u64) as usize;
        let jobs = if long { r.range(30, 40) } else { r.range(16, 24) } as usize;
        let window = if long { Duration::from_secs(40) } else { Duration::from_secs(6) };
        // Submissions go on through the fault window, so late faults still find jobs in every phase.
        let submit_over = window;
        let latency_ms = r.range(100, 700);
        let upload_delay_ms = r.range(0, 300);
        let (lease_after_s, lease_ttl_s) = if r.chance(0.35) { (1, 3) } else { (0, 60) };
        let failures = match r.range(0, 9) {
            0..=2 => MockFailures::Permanent(0.15),
            3..=5 => MockFailures::FirstAttempt(0.2),
            _ => MockFailures::None,
        };
        let multipart = r.chance(0.5);
        let invalid_job = r.chance(0.4);
        let at = |r: &mut SplitMix64| r.millis(300, window.as_millis() as u64);
        let mut faults = Vec::new();
        let kills = if long { r.range(4, 10) } else { r.range(2, 4) };
        for _ in 0..kills {
            let fault = Fault::KillWorker {
                slot: r.range(0, replicas as u64 - 1) as usize,
                phase: *r.pick(&PHASES),
                jitter: r.millis(0, 15),
                restart_after: r.millis(0, 1500),
            };
            faults.push(Scheduled { at: at(&mut r), fault });
        }
        if multipart {
            let fault = Fault::KillWorker {
                slot: r.range(0, replicas as u64 - 1) as usize,
                phase: Phase::UploadingPart,
                jitter: r.millis(0, 15),
                restart_after: r.millis(0, 1500),
            };
            faults.push(Scheduled { at: r.millis(300, window.as_millis() as u64 / 2), fault });
        }
        if r.chance(if long { 0.5 } else { 0.35 }) {
            let fault = match r.range(0, 2) {
                0 => Fault::BrokerRestart,
                1 => Fault::BrokerCrash,
                _ => Fault::BrokerPause(if long { r.millis(3_000, 15_000) } else { r.millis(1_000, 3_000) }),
            };
            faults.push(Scheduled { at: at(&mut r), fault });
        }
        if r.chance(0.5) {
            let fault = match r.range(0, 2) {
                0 => S3Fault::Blackhole,
                1 => S3Fault::Latency(r.millis(50, 300)),
                _ => S3Fault::Reset { after_bytes: r.range(1, 64 * 1024) },
            };
            let lasting = if long { r.millis(5_000, 60_000) } else { r.millis(1_000, 4_000) };
            faults.push(Scheduled { at: at(&mut r), fault: Fault::S3 { fault, lasting } });
        }
        if r.chance(if long { 0.4 } else { 0.3 }) {
            let down_for = if long { r.millis(1_000, 10_000) } else { r.millis(200, 2_000) };
            faults.push(Scheduled {
                at: at(&mut r),
                fault: Fault::PostgresRestart { immediate: r.chance(0.5), down_for },
            });
        }
        if r.chance(if long { 0.5 } else { 0.35 }) {
            let down_for = if long { r.millis(1_000, 10_000) } else { r.millis(200, 2_000) };
            faults.push(Scheduled { at: at(&mut r), fault: Fault::HubKill { down_for } });
        }
        faults.sort_by_key(|s| s.at);
        Plan {
            seed,
            long,
            replicas,
            jobs,
            submit_over,
            latency_ms,
            upload_delay_ms,
            lease_after_s,
            lease_ttl_s,
            failures,
            multipart,
            invalid_job,
            faults,
            trigger_wait: if long { Duration::from_secs(8) } else { Duration::from_secs(3) },
            settle_within: if long { Duration::from_secs(300) } else { Duration::from_secs(120) },
        }
    }

    pub fn has_s3_fault(&self) -> bool {
        self.faults.iter().any(|s| matches!(s.fault, Fault::S3 { .. }))
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::KillWorker { slot, phase, jitter, restart_after } => write!(
                f,
                "kill -9 a worker {} (else slot {slot}) +{}ms, restart after {}ms",
                phase.name(),
                jitter.as_millis(),
                restart_after.as_millis()
            ),
            Fault::BrokerRestart => write!(f, "broker restart"),
            Fault::BrokerCrash => write!(f, "broker kill -9 + start"),
            Fault::BrokerPause(d) => write!(f, "broker SIGSTOP for {}ms", d.as_millis()),
            Fault::S3 { fault, lasting } => {
                let what = match fault {
                    S3Fault::Blackhole => "blackhole".to_string(),
                    S3Fault::Latency(d) => format!("latency {}ms per chunk", d.as_millis()),
                    S3Fault::Reset { after_bytes } => format!("reset after {after_bytes} bytes"),
                };
                write!(f, "S3 {what} for {}ms", lasting.as_millis())
            }
            Fault::PostgresRestart { immediate, down_for } => write!(
                f,
                "postgres {} stop, start after {}ms",
                if *immediate { "immediate" } else { "fast" },
                down_for.as_millis()
            ),
            Fault::HubKill { down_for } => write!(f, "hub kill -9, start after {}ms", down_for.as_millis()),
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {:#018x}: {} workers, {} jobs over {}ms, mock latency {}ms, upload delay {}ms, leases {}, \
             failures {:?}, multipart {}, invalid job {}",
            self.seed,
            self.replicas,
            self.jobs,
            self.submit_over.as_millis(),
            self.latency_ms,
            self.upload_delay_ms,
            if self.lease_after_s > 0 {
                format!("after {}s ttl {}s", self.lease_after_s, self.lease_ttl_s)
            } else {
                "off".into()
            },
            self.failures,
            self.multipart,
            self.invalid_job
        )?;
        for s in &self.faults {
            writeln!(f, "  at {:>6}ms  {}", s.at.as_millis(), s.fault)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_one_plan() {
        for seed in 0..200 {
            let plan = Plan::new(seed, false);
            assert_eq!(plan, Plan::new(seed, false));
            assert!((2..=MAX_REPLICAS).contains(&plan.replicas));
            assert!(plan.faults.iter().filter(|s| matches!(s.fault, Fault::KillWorker { .. })).count() >= 2);
            assert!(plan.faults.windows(2).all(|w| w[0].at <= w[1].at));
        }
    }
}
