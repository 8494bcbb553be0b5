//! The checker: what a round must have left behind whatever its faults were. For every submitted job:
//! exactly one terminal status in the hub, and no two different outcomes in the events (on the tap or
//! in the hub's event log); for a succeeded job, exactly its expected objects under
//! `out/<job_id>/`, whose bytes hash to the sha256 in the hub and in every `succeeded` event (and in the
//! object's metadata); failures only the ones the round injected; the dead-letter queue only jobs that
//! ended `failed` or `dead_lettered`, each of those at least once; no incomplete multipart upload. The
//! driver checks the rest (queues empty, no scratch files, clean exits).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use ainern2d_contract::{Event, EventStatus, JobKind, OutputObject};

use super::figures::Figures;
use super::plan::{MockFailures, Plan};

#[derive(Debug, Clone)]
pub struct Submitted {
    pub id: String,
    pub kind: JobKind,
    pub body: Vec<u8>,
    /// When it is submitted, from the round's start.
    pub at: Duration,
    /// Not a valid job: published straight to its queue, must end `failed` (`invalid_field`).
    pub invalid: bool,
}

impl Submitted {
    pub fn output_names(&self) -> Vec<&'static str> {
        vec![match self.kind {
            JobKind::Llm => "completion.json",
            JobKind::Audio => "audio.wav",
            JobKind::Video => "video.mp4",
            JobKind::Lipsync => "lipsync.mp4",
        }]
    }
}

#[derive(Debug, Clone)]
pub struct Row {
    pub status: String,
    pub attempt: i32,
    pub outputs: Vec<OutputObject>,
    pub error_code: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Object {
    /// The `sha256` metadata the worker wrote.
    pub sha_meta: Option<String>,
    /// The sha256 of the bytes the server returns.
    pub sha_bytes: String,
}

pub struct Evidence {
    pub submitted: Vec<Submitted>,
    /// The hub's `jobs` rows by id.
    pub rows: HashMap<String, Row>,
    /// `(event_id, job_id, status)` of every terminal event in the hub's event log.
    pub hub_terminal: Vec<(String, String, String)>,
    /// Every event the tap saw, in order.
    pub tap: Vec<Event>,
    /// Every object under `out/`, by key.
    pub objects: BTreeMap<String, Object>,
    /// The job id of every message in the dead-letter queue.
    pub dead: Vec<String>,
    /// The incomplete multipart uploads of the bucket; `Err`: why they could not be looked for.
    pub multipart: Result<Uploads, String>,
    /// Keys of uploads a worker recorded, whose process died before the server's answer with the upload
    /// id, and which the worker could not look up (the server does not list uploads): one per record.
    pub unresolved_uploads: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Uploads {
    /// How they were looked for.
    pub how: String,
    /// Through `ListMultipartUploads` (which a worker can use too), not the server's directory.
    pub listed: bool,
    /// `(key, upload id)` of each one still open.
    pub left: Vec<(String, String)>,
}

const TERMINAL: [&str; 4] = ["succeeded", "failed", "cancelled", "dead_lettered"];

/// Every violation, each naming the job and what was wrong; fills the outcome figures.
pub fn check(plan: &Plan, ev: &Evidence, figures: &mut Figures) -> Vec<String> {
    let mut v = Vec::new();
    let submitted: BTreeSet<&str> = ev.submitted.iter().map(|j| j.id.as_str()).collect();

    let mut tap_terminal: HashMap<&str, Vec<&Event>> = HashMap::new();
    for e in ev.tap.iter().filter(|e| e.status.is_terminal()) {
        tap_terminal.entry(e.job_id.as_str()).or_default().push(e);
    }
    let mut hub_terminal: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    for (_, job, status) in &ev.hub_terminal {
        hub_terminal.entry(job.as_str()).or_default().insert(status.as_str());
    }
    let mut dead: HashMap<&str, usize> = HashMap::new();
    for id in &ev.dead {
        *dead.entry(id.as_str()).or_default() += 1;
    }
    let mut objects_of: HashMap<&str, Vec<(&str, &Object)>> = HashMap::new();
    for (key, object) in &ev.objects {
        let job = key.strip_prefix("out/").and_then(|k| k.split('/').next()).unwrap_or("");
        if !submitted.contains(job) {
            v.push(format!("object {key} belongs to no submitted job"));
        }
        objects_of.entry(job).or_default().push((key.as_str(), object));
    }

    for job in &ev.submitted {
        let id = job.id.as_str();
        let Some(row) = ev.rows.get(id) else {
            v.push(format!("{id}: lost — the hub has no row for it"));
            figures.lost += 1;
            continue;
        };
        if !TERMINAL.contains(&row.status.as_str()) {
            v.push(format!("{id}: lost — stuck at `{}` (attempt {})", row.status, row.attempt));
            figures.lost += 1;
            continue;
        }
        match row.status.as_str() {
            "succeeded" => figures.succeeded += 1,
            "failed" => figures.failed += 1,
            "dead_lettered" => figures.dead_lettered += 1,
            _ => {}
        }
        let mut duplicated = false;

        // The outcome in the events: one status, however often it was announced.
        let events = tap_terminal.get(id).cloned().unwrap_or_default();
        let statuses: BTreeSet<&str> = events.iter().map(|e| e.status.as_str()).collect();
        if statuses.len() > 1 {
            let ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
            v.push(format!("{id}: two different outcomes on the events exchange: {statuses:?} ({ids:?})"));
            duplicated = true;
        } else if events.is_empty() {
            v.push(format!("{id}: the hub says `{}` but no terminal event was published", row.status));
        } else if !statuses.contains(row.status.as_str()) {
            v.push(format!("{id}: the hub says `{}`, the events say {statuses:?}", row.status));
        }
        figures.reannounced += events.len().saturating_sub(1);
        // A pipeline started again after the job's success was out: the replay check did not find the
        // outputs (or two deliveries ran at once). The mock writes the same bytes again, so the objects
        // check cannot see it; a pipeline whose output differs run to run would replace an announced one.
        if let Some(first) = events.iter().filter(|e| e.status == EventStatus::Succeeded).map(|e| e.emitted_at).min()
            && ev.tap.iter().any(|e| e.job_id == id && e.status == EventStatus::Running && e.emitted_at > first)
        {
            figures.reruns_after_success += 1;
        }
        if let Some(hub) = hub_terminal.get(id)
            && hub.len() > 1
        {
            v.push(format!("{id}: the hub's event log holds two different outcomes: {hub:?}"));
            duplicated = true;
        }

        // The outcome is one the round can explain.
        let code = row.error_code.as_deref().unwrap_or("");
        let explained = match (row.status.as_str(), job.invalid) {
            ("failed", true) => code == "invalid_field",
            (_, true) => false,
            ("succeeded", false) => true,
            ("failed", false) => matches!(plan.failures, MockFailures::Permanent(_)) && code == "pipeline_failed",
            // Retries can run out while S3 is down; nothing else in a round makes a job give up.
            ("dead_lettered", false) => plan.has_s3_fault() && code == "retries_exhausted",
            _ => false,
        };
        if !explained {
            v.push(format!("{id}: ended `{}` with error `{code}`, which nothing in this round explains", row.status));
        }

        // Its objects.
        let objects = objects_of.get(id).cloned().unwrap_or_default();
        if row.status == "succeeded" {
            let expected: BTreeSet<String> = job.output_names().iter().map(|n| format!("out/{id}/{n}")).collect();
            let found: BTreeSet<String> = objects.iter().map(|(k, _)| k.to_string()).collect();
            if found != expected {
                v.push(format!("{id}: succeeded with objects {found:?}, expected exactly {expected:?}"));
                duplicated |= found.len() > expected.len();
            }
            for (key, object) in &objects {
                let name = key.rsplit('/').next().unwrap_or("");
                let Some(out) = row.outputs.iter().find(|o| o.name == name) else {
                    v.push(format!("{id}: the hub's outputs do not name {key}"));
                    continue;
                };
                if object.sha_bytes != out.sha256 {
                    v.push(format!("{id}: {key} hashes to {} but the hub says {}", object.sha_bytes, out.sha256));
                }
                if object.sha_meta.as_deref() != Some(out.sha256.as_str()) {
                    v.push(format!(
                        "{id}: {key} carries sha256 metadata {:?}, the hub says {}",
                        object.sha_meta, out.sha256
                    ));
                }
                for e in &events {
                    for o in e.outputs.iter().filter(|o| o.name == name) {
                        if o.sha256 != object.sha_bytes {
                            v.push(format!(
                                "{id}: event {} announces {key} as {}, its bytes hash to {}",
                                e.event_id, o.sha256, object.sha_bytes
                            ));
                        }
                    }
                }
            }
        } else if !objects.is_empty() {
            // A job that gave up with its object stored (an upload answered too late) leaves it behind;
            // a job that failed for good never produced one.
            if row.status == "failed" {
                v.push(format!("{id}: failed, yet left objects {objects:?}"));
            }
        }
        if duplicated {
            figures.duplicated += 1;
        }

        // The dead-letter queue.
        let copies = dead.get(id).copied().unwrap_or(0);
        let should = matches!(row.status.as_str(), "failed" | "dead_lettered");
        if should && copies == 0 {
            v.push(format!("{id}: ended `{}` but is not in the dead-letter queue", row.status));
        }
        if !should && copies > 0 {
            v.push(format!("{id}: in the dead-letter queue ({copies}×) but ended `{}`", row.status));
        }
        figures.duplicate_dead_letters += copies.saturating_sub(1);
    }
    for id in dead.keys().filter(|id| !submitted.contains(**id)) {
        v.push(format!("the dead-letter queue holds {id}, which was never submitted"));
    }

    match &ev.multipart {
        Ok(uploads) => {
            figures.multipart_check = uploads.how.clone();
            let mut unresolved = ev.unresolved_uploads.clone();
            for (key, id) in &uploads.left {
                // Killed between asking for an upload and learning its id, on a server whose uploads a
                // worker cannot list: a worker reported that record, and nothing could find the upload.
                // Each report explains one upload of its key.
                if let Some(i) = unresolved.iter().position(|k| k == key)
                    && !uploads.listed
                {
                    unresolved.swap_remove(i);
                    figures.uploads_unresolvable += 1;
                    continue;
                }
                v.push(format!("incomplete multipart upload left behind: {key} (upload {id})"));
            }
        }
        Err(why) => figures.multipart_check = format!("skipped: {why}"),
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "aa";

    fn output(id: &str) -> OutputObject {
        OutputObject {
            name: "completion.json".into(),
            bucket: "b".into(),
            key: format!("out/{id}/completion.json"),
            size: 2,
            sha256: SHA.into(),
            content_type: "application/json".into(),
            presigned_url: None,
        }
    }

    fn submitted(id: &str) -> Submitted {
        Submitted { id: id.into(), kind: JobKind::Llm, body: Vec::new(), at: Duration::ZERO, invalid: false }
    }

    fn event(id: &str, attempt: u32, status: EventStatus) -> Event {
        let mut e = Event::new(id, Some(JobKind::Llm), attempt, "w", status, 0);
        if status == EventStatus::Succeeded {
            e.outputs = vec![output(id)];
        }
        e
    }

    /// `ok-0` succeeded (stored, announced twice under one id), `gone-1` failed for good (dead-lettered).
    fn clean() -> (Plan, Evidence) {
        let mut plan = Plan::new(1, false);
        plan.failures = MockFailures::Permanent(0.1);
        let row = |status: &str, outputs, code: Option<&str>| Row {
            status: status.into(),
            attempt: 1,
            outputs,
            error_code: code.map(str::to_owned),
        };
        let ok = event("ok-0", 1, EventStatus::Succeeded);
        let evidence = Evidence {
            submitted: vec![submitted("ok-0"), submitted("gone-1")],
            rows: HashMap::from([
                ("ok-0".to_string(), row("succeeded", vec![output("ok-0")], None)),
                ("gone-1".to_string(), row("failed", vec![], Some("pipeline_failed"))),
            ]),
            hub_terminal: vec![
                ("ok-0/1/succeeded".into(), "ok-0".into(), "succeeded".into()),
                ("gone-1/1/failed".into(), "gone-1".into(), "failed".into()),
            ],
            tap: vec![ok.clone(), ok, event("gone-1", 1, EventStatus::Failed)],
            objects: BTreeMap::from([(
                "out/ok-0/completion.json".to_string(),
                Object { sha_meta: Some(SHA.into()), sha_bytes: SHA.into() },
            )]),
            dead: vec!["gone-1".into()],
            multipart: Ok(Uploads { how: "directory".into(), listed: false, left: vec![] }),
            unresolved_uploads: vec![],
        };
        (plan, evidence)
    }

    fn violations(plan: &Plan, ev: &Evidence) -> (Vec<String>, Figures) {
        let mut figures = Figures::default();
        let v = check(plan, ev, &mut figures);
        (v, figures)
    }

    #[test]
    fn a_clean_round_passes_and_counts_the_re_announce() {
        let (plan, ev) = clean();
        let (v, f) = violations(&plan, &ev);
        assert!(v.is_empty(), "{v:#?}");
        assert_eq!((f.succeeded, f.failed, f.reannounced, f.lost, f.duplicated), (1, 1, 1, 0, 0));
    }

    #[test]
    fn an_upload_no_worker_could_find_on_an_unlisted_server_is_counted_not_failed() {
        let (plan, mut ev) = clean();
        let left = vec![("out/ok-0/completion.json".into(), "u".into())];
        ev.multipart = Ok(Uploads { how: "dir".into(), listed: false, left });
        ev.unresolved_uploads.push("out/ok-0/completion.json".into());
        let (v, f) = violations(&plan, &ev);
        assert!(v.is_empty(), "{v:#?}");
        assert_eq!(f.uploads_unresolvable, 1);
    }

    #[test]
    fn every_kind_of_damage_is_reported() {
        type Damage = Box<dyn Fn(&mut Evidence)>;
        let cases: Vec<(&str, Damage)> = vec![
            ("lost — stuck", Box::new(|ev| ev.rows.get_mut("ok-0").unwrap().status = "running".into())),
            ("lost — the hub has no row", Box::new(|ev| drop(ev.rows.remove("gone-1")))),
            ("two different outcomes", Box::new(|ev| ev.tap.push(event("ok-0", 2, EventStatus::DeadLettered)))),
            (
                "event log holds two different outcomes",
                Box::new(|ev| ev.hub_terminal.push(("ok-0/2/failed".into(), "ok-0".into(), "failed".into()))),
            ),
            ("hashes to", Box::new(|ev| ev.objects.values_mut().for_each(|o| o.sha_bytes = "bb".into()))),
            ("carries sha256 metadata", Box::new(|ev| ev.objects.values_mut().for_each(|o| o.sha_meta = None))),
            (
                "expected exactly",
                Box::new(|ev| {
                    let extra = Object { sha_meta: None, sha_bytes: "cc".into() };
                    ev.objects.insert("out/ok-0/completion.json.2".into(), extra);
                }),
            ),
            ("expected exactly", Box::new(|ev| ev.objects.clear())),
            ("belongs to no submitted job", Box::new(|ev| drop(ev.submitted.remove(0)))),
            ("not in the dead-letter queue", Box::new(|ev| ev.dead.clear())),
            ("in the dead-letter queue (1×) but ended", Box::new(|ev| ev.dead.push("ok-0".into()))),
            ("never submitted", Box::new(|ev| ev.dead.push("stranger".into()))),
            ("nothing in this round explains", Box::new(|ev| ev.rows.get_mut("gone-1").unwrap().error_code = None)),
            ("no terminal event", Box::new(|ev| ev.tap.retain(|e| e.job_id != "gone-1"))),
            (
                "incomplete multipart upload",
                Box::new(|ev| {
                    let left = vec![("out/ok-0/completion.json".into(), "u".into())];
                    ev.multipart = Ok(Uploads { how: "dir".into(), listed: false, left });
                }),
            ),
            (
                // Two open uploads of a key, one record the worker could not resolve.
                "incomplete multipart upload",
                Box::new(|ev| {
                    let left = vec![("k".into(), "u1".into()), ("k".into(), "u2".into())];
                    ev.multipart = Ok(Uploads { how: "dir".into(), listed: false, left });
                    ev.unresolved_uploads.push("k".into());
                }),
            ),
            (
                // A listed server: the worker could have found it.
                "incomplete multipart upload",
                Box::new(|ev| {
                    let left = vec![("k".into(), "u".into())];
                    ev.multipart = Ok(Uploads { how: "list".into(), listed: true, left });
                    ev.unresolved_uploads.push("k".into());
                }),
            ),
        ];
        for (expected, damage) in cases {
            let (plan, mut ev) = clean();
            damage(&mut ev);
            let (v, _) = violations(&plan, &ev);
            assert!(v.iter().any(|v| v.contains(expected)), "`{expected}` not reported: {v:#?}");
        }
        // A permanent failure in a round that injected none is not explained either.
        let (mut plan, ev) = clean();
        plan.failures = MockFailures::None;
        let (v, _) = violations(&plan, &ev);
        assert!(v.iter().any(|v| v.contains("gone-1") && v.contains("explains")), "{v:#?}");
    }
}
