//! The fleet policy of seed 001 §8 as a pure engine over time series: samples in, decisions out. No clock
//! and no I/O, so every rule is tested with synthetic traces.
//!
//! - GPU utilisation above `gpu.high_pct` sustained for `gpu.sustain_s` on a worker → downgrade it; cleared
//!   after utilisation stays below `gpu.clear_pct` for `gpu.clear_sustain_s` (hysteresis), and not
//!   downgraded again within `gpu.cooldown_s` of a clear (no flapping).
//! - Backlog above `backlog.threshold` for `backlog.sustain_s` → scale-out signal with a desired replica count.
//! - Success rate below `success.min_rate` over `success.window_s` → alert.
//! - End-to-end P95 above `latency.p95_max_s` over `latency.window_s` → alert.

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GpuRule {
    pub high_pct: f64,
    pub sustain_s: i64,
    pub clear_pct: f64,
    pub clear_sustain_s: i64,
    pub cooldown_s: i64,
    /// A gap between samples longer than this restarts the sustain window (no data is not "still hot").
    pub max_gap_s: i64,
    /// The downgrade profile (by name, from the hub config) sent to the worker.
    pub profile: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BacklogRule {
    pub threshold: u64,
    pub sustain_s: i64,
    pub clear_sustain_s: i64,
    /// Desired replicas = ceil(backlog / per_replica), never below the current count + 1 while firing.
    pub per_replica: u64,
    pub max_gap_s: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SuccessRule {
    pub min_rate: f64,
    pub window_s: i64,
    pub min_samples: usize,
    /// Resolved once the rate is back above `min_rate + resolve_margin`.
    pub resolve_margin: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LatencyRule {
    pub p95_max_s: f64,
    pub window_s: i64,
    pub min_samples: usize,
    /// Resolved once P95 is back below `p95_max_s * resolve_ratio`.
    pub resolve_ratio: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    pub gpu: GpuRule,
    pub backlog: BacklogRule,
    pub success: SuccessRule,
    pub latency: LatencyRule,
}

impl Default for GpuRule {
    fn default() -> Self {
        GpuRule {
            high_pct: 92.0,
            sustain_s: 15 * 60,
            clear_pct: 80.0,
            clear_sustain_s: 10 * 60,
            cooldown_s: 10 * 60,
            max_gap_s: 120,
            profile: "gpu-hot".into(),
        }
    }
}

impl Default for BacklogRule {
    fn default() -> Self {
        BacklogRule { threshold: 2_000, sustain_s: 10 * 60, clear_sustain_s: 5 * 60, per_replica: 500, max_gap_s: 120 }
    }
}

impl Default for SuccessRule {
    fn default() -> Self {
        SuccessRule { min_rate: 0.95, window_s: 15 * 60, min_samples: 20, resolve_margin: 0.01 }
    }
}

impl Default for LatencyRule {
    fn default() -> Self {
        LatencyRule { p95_max_s: 180.0, window_s: 15 * 60, min_samples: 20, resolve_ratio: 0.9 }
    }
}

impl PolicyConfig {
    pub fn validate(&self) -> Result<(), String> {
        let bad = |k: &str, why: &str| Err(format!("config key `policy.{k}`: {why}"));
        if !(0.0..=100.0).contains(&self.gpu.high_pct) || self.gpu.clear_pct >= self.gpu.high_pct {
            return bad("gpu.clear_pct", "must be below gpu.high_pct (hysteresis), both within 0..=100");
        }
        for (k, v) in [
            ("gpu.sustain_s", self.gpu.sustain_s),
            ("gpu.clear_sustain_s", self.gpu.clear_sustain_s),
            ("backlog.sustain_s", self.backlog.sustain_s),
            ("success.window_s", self.success.window_s),
            ("latency.window_s", self.latency.window_s),
        ] {
            if v <= 0 {
                return bad(k, "must be above 0");
            }
        }
        if self.backlog.per_replica == 0 {
            return bad("backlog.per_replica", "must be above 0");
        }
        if !(0.0..=1.0).contains(&self.success.min_rate) {
            return bad("success.min_rate", "must be within 0..=1");
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    Downgrade { worker_id: String, profile: String, reason: String },
    ClearDowngrade { worker_id: String, reason: String },
    ScaleOut { kind: String, backlog: u64, desired_replicas: u64, reason: String },
    ScaleOutCleared { kind: String, reason: String },
    Alert { rule: String, firing: bool, reason: String },
}

/// How long a condition has held, restarted by a false sample or a gap in the data.
#[derive(Debug, Default, Clone)]
struct Sustain {
    since: Option<DateTime<Utc>>,
    last: Option<DateTime<Utc>>,
}

impl Sustain {
    fn update(&mut self, t: DateTime<Utc>, holds: bool, max_gap: Duration) -> Duration {
        if self.last.is_some_and(|last| t - last > max_gap) {
            self.since = None;
        }
        self.last = Some(t);
        if holds {
            t - *self.since.get_or_insert(t)
        } else {
            self.since = None;
            Duration::zero()
        }
    }
}

#[derive(Debug, Default)]
struct WorkerGpu {
    high: Sustain,
    low: Sustain,
    downgraded: bool,
    cleared_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Default)]
struct KindBacklog {
    high: Sustain,
    low: Sustain,
    firing: bool,
}

#[derive(Debug, Default)]
pub struct Policy {
    cfg: PolicyConfig,
    gpus: BTreeMap<String, WorkerGpu>,
    backlogs: BTreeMap<String, KindBacklog>,
    outcomes: VecDeque<(DateTime<Utc>, bool)>,
    latencies: VecDeque<(DateTime<Utc>, f64)>,
    success_firing: bool,
    latency_firing: bool,
}

fn secs(s: i64) -> Duration {
    Duration::seconds(s)
}

impl Policy {
    pub fn new(cfg: PolicyConfig) -> Self {
        Policy { cfg, ..Policy::default() }
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.cfg
    }

    pub fn downgraded(&self, worker_id: &str) -> bool {
        self.gpus.get(worker_id).is_some_and(|w| w.downgraded)
    }

    /// A worker's GPU utilisation (the busiest of its GPUs), in percent.
    pub fn gpu_sample(&mut self, t: DateTime<Utc>, worker_id: &str, util_pct: f64) -> Option<Decision> {
        let rule = &self.cfg.gpu;
        let w = self.gpus.entry(worker_id.to_string()).or_default();
        let gap = secs(rule.max_gap_s);
        let hot = w.high.update(t, util_pct > rule.high_pct, gap);
        let cool = w.low.update(t, util_pct < rule.clear_pct, gap);
        if !w.downgraded && hot >= secs(rule.sustain_s) {
            if w.cleared_at.is_some_and(|c| t - c < secs(rule.cooldown_s)) {
                return None;
            }
            w.downgraded = true;
            return Some(Decision::Downgrade {
                worker_id: worker_id.into(),
                profile: rule.profile.clone(),
                reason: format!(
                    "GPU utilisation above {}% for {} min (now {util_pct:.0}%)",
                    rule.high_pct,
                    hot.num_seconds() / 60
                ),
            });
        }
        if w.downgraded && cool >= secs(rule.clear_sustain_s) {
            w.downgraded = false;
            w.cleared_at = Some(t);
            w.high = Sustain::default();
            return Some(Decision::ClearDowngrade {
                worker_id: worker_id.into(),
                reason: format!("GPU utilisation below {}% for {} min", rule.clear_pct, cool.num_seconds() / 60),
            });
        }
        None
    }

    /// Ready + unacked messages of a kind's queue, and the workers currently serving it.
    pub fn backlog_sample(&mut self, t: DateTime<Utc>, kind: &str, backlog: u64, replicas: u64) -> Option<Decision> {
        let rule = &self.cfg.backlog;
        let k = self.backlogs.entry(kind.to_string()).or_default();
        let gap = secs(rule.max_gap_s);
        let high = k.high.update(t, backlog > rule.threshold, gap);
        let low = k.low.update(t, backlog <= rule.threshold, gap);
        if !k.firing && high >= secs(rule.sustain_s) {
            k.firing = true;
            let desired = backlog.div_ceil(rule.per_replica).max(replicas + 1);
            return Some(Decision::ScaleOut {
                kind: kind.into(),
                backlog,
                desired_replicas: desired,
                reason: format!(
                    "{kind} backlog above {} for {} min (now {backlog})",
                    rule.threshold,
                    high.num_seconds() / 60
                ),
            });
        }
        if k.firing && low >= secs(rule.clear_sustain_s) {
            k.firing = false;
            return Some(Decision::ScaleOutCleared {
                kind: kind.into(),
                reason: format!("{kind} backlog at or below {} for {} min", rule.threshold, low.num_seconds() / 60),
            });
        }
        None
    }

    /// Desired replicas for a kind right now (for the autoscaler gauge): current while quiet.
    pub fn desired_replicas(&self, kind: &str, backlog: u64, replicas: u64) -> u64 {
        match self.backlogs.get(kind) {
            Some(k) if k.firing => backlog.div_ceil(self.cfg.backlog.per_replica).max(replicas + 1),
            _ => replicas,
        }
    }

    /// A finished job: whether it succeeded and its end-to-end latency.
    pub fn outcome(&mut self, t: DateTime<Utc>, succeeded: bool, e2e_s: Option<f64>) -> Vec<Decision> {
        let mut out = Vec::new();
        let s = self.cfg.success.clone();
        self.outcomes.push_back((t, succeeded));
        while self.outcomes.front().is_some_and(|(at, _)| t - *at > secs(s.window_s)) {
            self.outcomes.pop_front();
        }
        if self.outcomes.len() >= s.min_samples {
            let ok = self.outcomes.iter().filter(|(_, ok)| *ok).count();
            let rate = ok as f64 / self.outcomes.len() as f64;
            let window = format!("{} jobs in the last {} min", self.outcomes.len(), s.window_s / 60);
            if !self.success_firing && rate < s.min_rate {
                self.success_firing = true;
                out.push(Decision::Alert {
                    rule: "success_rate".into(),
                    firing: true,
                    reason: format!("success rate {:.1}% below {:.1}% ({window})", rate * 100.0, s.min_rate * 100.0),
                });
            } else if self.success_firing && rate >= s.min_rate + s.resolve_margin {
                self.success_firing = false;
                out.push(Decision::Alert {
                    rule: "success_rate".into(),
                    firing: false,
                    reason: format!("success rate back at {:.1}% ({window})", rate * 100.0),
                });
            }
        }
        if let Some(latency) = e2e_s {
            let l = self.cfg.latency.clone();
            self.latencies.push_back((t, latency));
            while self.latencies.front().is_some_and(|(at, _)| t - *at > secs(l.window_s)) {
                self.latencies.pop_front();
            }
            if self.latencies.len() >= l.min_samples {
                let mut v: Vec<f64> = self.latencies.iter().map(|(_, s)| *s).collect();
                v.sort_by(f64::total_cmp);
                let p95 = v[((v.len() as f64 * 0.95).ceil() as usize).saturating_sub(1)];
                if !self.latency_firing && p95 > l.p95_max_s {
                    self.latency_firing = true;
                    out.push(Decision::Alert {
                        rule: "e2e_p95".into(),
                        firing: true,
                        reason: format!("end-to-end P95 {p95:.0} s above {:.0} s", l.p95_max_s),
                    });
                } else if self.latency_firing && p95 <= l.p95_max_s * l.resolve_ratio {
                    self.latency_firing = false;
                    out.push(Decision::Alert {
                        rule: "e2e_p95".into(),
                        firing: false,
                        reason: format!("end-to-end P95 back at {p95:.0} s"),
                    });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        "2026-11-22T00:00:00Z".parse().unwrap()
    }

    /// Feeds `(minutes, pct)` segments sampled every 30 s; returns the decisions with their minute.
    fn gpu_trace(policy: &mut Policy, segments: &[(i64, f64)]) -> Vec<(f64, Decision)> {
        let mut t = t0();
        let mut out = Vec::new();
        for (minutes, pct) in segments {
            for _ in 0..minutes * 2 {
                if let Some(d) = policy.gpu_sample(t, "w1", *pct) {
                    out.push(((t - t0()).num_seconds() as f64 / 60.0, d));
                }
                t += Duration::seconds(30);
            }
        }
        out
    }

    fn kinds(ds: &[(f64, Decision)]) -> Vec<&'static str> {
        ds.iter()
            .map(|(_, d)| match d {
                Decision::Downgrade { .. } => "downgrade",
                Decision::ClearDowngrade { .. } => "clear",
                Decision::ScaleOut { .. } => "scale_out",
                Decision::ScaleOutCleared { .. } => "scale_in",
                Decision::Alert { firing: true, .. } => "alert",
                Decision::Alert { firing: false, .. } => "resolved",
            })
            .collect()
    }

    #[test]
    fn gpu_traces() {
        type Trace<'a> = (&'a str, &'a [(i64, f64)], &'a [&'a str]);
        let table: &[Trace] = &[
            ("93% for 14 min", &[(14, 93.0)], &[]),
            ("93% for 16 min", &[(16, 93.0)], &["downgrade"]),
            ("exactly 92% is not above", &[(30, 92.0)], &[]),
            ("hot then cool for the clear window", &[(16, 93.0), (11, 70.0)], &["downgrade", "clear"]),
            ("cool for less than the clear window", &[(16, 93.0), (9, 70.0)], &["downgrade"]),
            ("between the thresholds keeps the downgrade", &[(16, 93.0), (30, 85.0)], &["downgrade"]),
            (
                "oscillation around 92% every 2 min",
                &[
                    (2, 93.0),
                    (2, 91.0),
                    (2, 93.0),
                    (2, 91.0),
                    (2, 93.0),
                    (2, 91.0),
                    (2, 93.0),
                    (2, 91.0),
                    (2, 93.0),
                    (2, 91.0),
                ],
                &[],
            ),
            (
                "hot again after a clear: a new full window is needed",
                &[(16, 93.0), (11, 70.0), (14, 95.0)],
                &["downgrade", "clear"],
            ),
            (
                "hot again for a full window",
                &[(16, 93.0), (11, 70.0), (16, 95.0)],
                &["downgrade", "clear", "downgrade"],
            ),
        ];
        for (name, segments, expected) in table {
            let mut policy = Policy::new(PolicyConfig::default());
            let got = gpu_trace(&mut policy, segments);
            assert_eq!(kinds(&got), *expected, "{name}: {got:?}");
        }
    }

    #[test]
    fn the_cooldown_holds_a_new_downgrade_back() {
        let mut cfg = PolicyConfig::default();
        cfg.gpu.cooldown_s = 30 * 60;
        let mut policy = Policy::new(cfg);
        // Cleared at minute 26; hot again from 27: the window is full at 42, but the cooldown lasts until 56.
        let got = gpu_trace(&mut policy, &[(16, 93.0), (11, 70.0), (40, 95.0)]);
        assert_eq!(kinds(&got), ["downgrade", "clear", "downgrade"]);
        assert_eq!(got[2].0, 56.0);
    }

    #[test]
    fn downgrade_fires_at_fifteen_minutes() {
        let mut policy = Policy::new(PolicyConfig::default());
        let got = gpu_trace(&mut policy, &[(16, 93.0)]);
        assert_eq!(got[0].0, 15.0);
    }

    #[test]
    fn a_gap_in_the_data_restarts_the_window() {
        let mut policy = Policy::new(PolicyConfig::default());
        let mut t = t0();
        for _ in 0..10 {
            // 10 min of samples, then a 5 min hole, then 10 more: never 15 min of continuous evidence.
            assert_eq!(policy.gpu_sample(t, "w1", 99.0), None);
            t += Duration::minutes(1);
        }
        t += Duration::minutes(5);
        for _ in 0..10 {
            assert_eq!(policy.gpu_sample(t, "w1", 99.0), None);
            t += Duration::minutes(1);
        }
    }

    #[test]
    fn backlog_traces() {
        let run = |segments: &[(i64, u64)]| {
            let mut policy = Policy::new(PolicyConfig::default());
            let mut t = t0();
            let mut out = Vec::new();
            for (minutes, depth) in segments {
                for _ in 0..minutes * 2 {
                    if let Some(d) = policy.backlog_sample(t, "video", *depth, 2) {
                        out.push((0.0, d));
                    }
                    t += Duration::seconds(30);
                }
            }
            out
        };
        assert!(run(&[(9, 2_500)]).is_empty());
        let fired = run(&[(11, 2_500)]);
        assert_eq!(kinds(&fired), ["scale_out"]);
        let Decision::ScaleOut { desired_replicas, .. } = &fired[0].1 else { unreachable!() };
        assert_eq!(*desired_replicas, 5); // ceil(2500 / 500)
        assert_eq!(kinds(&run(&[(11, 2_500), (6, 100)])), ["scale_out", "scale_in"]);
        assert!(run(&[(5, 2_500), (1, 1_000), (5, 2_500), (1, 1_000), (5, 2_500)]).is_empty(), "no flapping");
    }

    #[test]
    fn success_rate_alert() {
        let mut policy = Policy::new(PolicyConfig::default());
        let mut t = t0();
        let mut decisions = Vec::new();
        // 30 jobs at 100%, then failures push the rate under 95%, then successes bring it back.
        for ok in
            std::iter::repeat_n(true, 30).chain(std::iter::repeat_n(false, 3)).chain(std::iter::repeat_n(true, 60))
        {
            for d in policy.outcome(t, ok, None) {
                decisions.push((0.0, d));
            }
            t += Duration::seconds(5);
        }
        assert_eq!(kinds(&decisions), ["alert", "resolved"]);
        // Too few samples never alert.
        let mut quiet = Policy::new(PolicyConfig::default());
        assert!((0..10).flat_map(|i| quiet.outcome(t0() + Duration::seconds(i), false, None)).next().is_none());
    }

    #[test]
    fn latency_p95_alert() {
        let mut policy = Policy::new(PolicyConfig::default());
        let mut t = t0();
        let mut decisions = Vec::new();
        let latencies =
            std::iter::repeat_n(60.0, 40).chain(std::iter::repeat_n(400.0, 10)).chain(std::iter::repeat_n(30.0, 400));
        for l in latencies {
            for d in policy.outcome(t, true, Some(l)) {
                decisions.push((0.0, d));
            }
            t += Duration::seconds(3);
        }
        assert_eq!(kinds(&decisions), ["alert", "resolved"]);
    }

    #[test]
    fn config_validation_names_the_key() {
        let mut cfg = PolicyConfig::default();
        cfg.gpu.clear_pct = 95.0;
        assert!(cfg.validate().unwrap_err().contains("policy.gpu.clear_pct"));
    }
}
