//! The alert rules (`deploy/prometheus/rules.yml`) and the dashboard (`deploy/grafana/ainern2d.json`)
//! against what the programs really export: a worker and a hub run jobs (a success from a warm model, a
//! model load that evicts another, a corrupt model, a retried job held by a lease, an invalid message),
//! then every metric name the two files use must have samples on one of the two `/metrics`, and every
//! label value they match exactly (`stage="total"`) must be among those samples. The names are read from
//! the files here, so a renamed metric or a typo in a query fails this test. dcgm-exporter's `DCGM_*`
//! series are not ours and are left out; the workers' NVML gauges (`ainern2d_worker_gpu_*`) have samples
//! only where there is a GPU, so here they are taken from the worker's own registry with one GPU's
//! figures set by hand.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use ainern2d_contract::{EventStatus, JobKind};
use ainern2d_tests::comfy::{Behaviour, FakeComfy};
use ainern2d_tests::*;

const T: Duration = Duration::from_secs(60);
const RULES: &str = "deploy/prometheus/rules.yml";
const DASHBOARD: &str = "deploy/grafana/ainern2d.json";

/// A series selector found in a query: the metric name and its `label="value"` matchers.
#[derive(Debug)]
struct Selector {
    name: String,
    exact: Vec<(String, String)>,
}

/// Words that are PromQL, not metrics: aggregation operators, set and comparison keywords, literals.
const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
    "atan2",
];
/// Keywords followed by a list of label names.
const LABEL_LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':'
}

/// The index after the string literal starting at `i`.
fn skip_string(s: &[u8], mut i: usize) -> usize {
    let quote = s[i];
    i += 1;
    while i < s.len() && s[i] != quote {
        i += if s[i] == b'\\' { 2 } else { 1 };
    }
    i + 1
}

/// The index after the first `close` from `i` on, outside string literals.
fn skip_until(s: &[u8], mut i: usize, close: u8) -> usize {
    while i < s.len() && s[i] != close {
        i = if matches!(s[i], b'"' | b'\'' | b'`') { skip_string(s, i) } else { i + 1 };
    }
    i + 1
}

/// The `label="value"` matchers of a `{...}` whose content starts at `i`; other operators are skipped.
fn exact_matchers(s: &[u8], mut i: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    loop {
        while i < s.len() && (s[i].is_ascii_whitespace() || s[i] == b',') {
            i += 1;
        }
        if i >= s.len() || s[i] == b'}' {
            return out;
        }
        let start = i;
        while i < s.len() && is_word(s[i]) {
            i += 1;
        }
        let label = String::from_utf8_lossy(&s[start..i]).into_owned();
        while i < s.len() && s[i].is_ascii_whitespace() {
            i += 1;
        }
        let op_start = i;
        while i < s.len() && matches!(s[i], b'=' | b'!' | b'~') {
            i += 1;
        }
        let op = &s[op_start..i];
        while i < s.len() && s[i].is_ascii_whitespace() {
            i += 1;
        }
        assert!(i < s.len() && matches!(s[i], b'"' | b'\''), "a matcher of {label} without a quoted value");
        let end = skip_string(s, i);
        let value = String::from_utf8_lossy(&s[i + 1..end - 1]).replace("\\\"", "\"");
        if op == b"=" && !value.contains('$') {
            out.push((label, value));
        }
        i = end;
    }
}

/// Every series selector of a PromQL expression (Grafana's `$variables` skipped). A Grafana variable
/// query `label_values(selector, label)` counts its selector only.
fn selectors(expr: &str) -> Vec<Selector> {
    let expr = match expr.trim().strip_prefix("label_values(") {
        Some(inner) => inner.rfind(',').map_or("", |cut| &inner[..cut]),
        None => expr,
    };
    let s = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if matches!(c, b'"' | b'\'' | b'`') {
            i = skip_string(s, i);
        } else if c == b'#' {
            i = skip_until(s, i, b'\n');
        } else if c == b'{' {
            i = skip_until(s, i + 1, b'}');
        } else if c == b'[' {
            i = skip_until(s, i + 1, b']');
        } else if c == b'$' {
            i += 1;
            if i < s.len() && s[i] == b'{' {
                i = skip_until(s, i + 1, b'}');
            }
            while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == b'_') {
                i += 1;
            }
        } else if c.is_ascii_digit() || (c == b'.' && s.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == b'.' || s[i] == b'_') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let mut j = i;
            while j < s.len() && is_word(s[j]) {
                j += 1;
            }
            let word = &expr[i..j];
            let mut k = j;
            while k < s.len() && s[k].is_ascii_whitespace() {
                k += 1;
            }
            let paren = s.get(k) == Some(&b'(');
            if LABEL_LISTS.contains(&word) && paren {
                j = skip_until(s, k + 1, b')');
            } else if !KEYWORDS.contains(&word) && !paren {
                let exact = if s.get(k) == Some(&b'{') { exact_matchers(s, k + 1) } else { Vec::new() };
                out.push(Selector { name: word.to_string(), exact });
            }
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

/// The `expr` of every rule in rules.yml. Written as `|` blocks (the file says so), read here without a
/// YAML library; a rule whose expr is written otherwise fails the test rather than going unchecked.
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut exprs = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if let Some(rest) = line.trim_start().strip_prefix("expr:") {
            assert!(
                matches!(rest.trim(), "|" | "|-"),
                "{RULES}:{}: write `expr` as a `|` block (tests/tests/observability.rs reads it): {line}",
                i + 1
            );
            let mut block = String::new();
            i += 1;
            while i < lines.len() && (lines[i].trim().is_empty() || indent(lines[i]) > indent(line)) {
                block.push_str(lines[i].trim());
                block.push('\n');
                i += 1;
            }
            exprs.push(block);
            continue;
        }
        i += 1;
    }
    let rules = lines
        .iter()
        .filter(|l| l.trim_start().starts_with("- alert:") || l.trim_start().starts_with("- record:"))
        .count();
    assert!(rules > 0 && exprs.len() == rules, "{RULES}: {rules} rules but {} exprs read", exprs.len());
    exprs
}

/// Every query of the dashboard: panel targets (rows' panels too) and query variables.
fn dashboard_exprs(json: &serde_json::Value) -> Vec<(String, String)> {
    fn walk(panels: &serde_json::Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?");
            let targets = p["targets"].as_array().map(Vec::as_slice).unwrap_or_default();
            assert!(p["type"] == "row" || !targets.is_empty(), "{DASHBOARD}: panel {title:?} has no targets");
            for t in targets {
                let expr = t["expr"].as_str().unwrap_or_default();
                assert!(!expr.trim().is_empty(), "{DASHBOARD}: panel {title:?} has a target without expr");
                out.push((format!("panel {title:?}"), expr.to_string()));
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&json["panels"], &mut out);
    for v in json["templating"]["list"].as_array().into_iter().flatten().filter(|v| v["type"] == "query") {
        let q = v["query"]["query"].as_str().or(v["query"].as_str()).unwrap_or_default();
        out.push((format!("variable {}", v["name"]), q.to_string()));
    }
    out
}

/// Where a metric is used first, and each exact matcher on it with where it is used first.
type Uses = (String, BTreeMap<(String, String), String>);

/// The workers' NVML gauges: samples only on a machine with a GPU.
const GPU_ONLY: &str = "ainern2d_worker_gpu_";

/// The worker's metrics as a machine with one GPU would render them.
fn one_gpu() -> String {
    use ainern2d_worker::metrics::{GpuLabels, Metrics};
    let m = Metrics::new();
    let gpu = GpuLabels { gpu: "0".into(), uuid: "GPU-0".into() };
    m.gpu_utilization.get_or_create(&gpu).set(0.5);
    m.gpu_memory_used.get_or_create(&gpu).set(1 << 30);
    m.gpu_memory_total.get_or_create(&gpu).set(80 << 30);
    m.render()
}

/// What the rules and the dashboard use, by metric name, DCGM_* left out.
fn used_metrics() -> BTreeMap<String, Uses> {
    let root = repo_root();
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    let mut queries: Vec<(String, String)> = rule_exprs(&read(RULES)).into_iter().map(|e| (RULES.into(), e)).collect();
    let dashboard: serde_json::Value = serde_json::from_str(&read(DASHBOARD)).expect("the dashboard parses");
    let panel_queries = dashboard_exprs(&dashboard);
    assert!(panel_queries.len() > 10, "{DASHBOARD}: only {} queries found", panel_queries.len());
    queries.extend(panel_queries.into_iter().map(|(w, e)| (format!("{DASHBOARD} {w}"), e)));
    let mut used: BTreeMap<String, Uses> = BTreeMap::new();
    for (place, expr) in &queries {
        for s in selectors(expr) {
            if s.name.starts_with("DCGM_") {
                continue;
            }
            let entry = used.entry(s.name).or_insert_with(|| (place.clone(), BTreeMap::new()));
            for matcher in s.exact {
                entry.1.entry(matcher).or_insert_with(|| place.clone());
            }
        }
    }
    used
}

/// Sample names of a Prometheus text exposition, each with the label sets of its samples.
fn exported(text: &str) -> BTreeMap<String, Vec<BTreeMap<String, String>>> {
    let mut out: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let mut labels = BTreeMap::new();
        if line[end..].starts_with('{') {
            let s = line.as_bytes();
            let mut i = end + 1;
            while i < s.len() && s[i] != b'}' {
                let eq = line[i..].find('=').map(|p| i + p).expect("a label has a value");
                let close = skip_string(s, eq + 1);
                let name = line[i..eq].trim_start_matches(',').trim().to_string();
                labels.insert(name, line[eq + 2..close - 1].replace("\\\"", "\""));
                i = close;
                while i < s.len() && s[i] == b',' {
                    i += 1;
                }
            }
        }
        out.entry(line[..end].to_string()).or_default().push(labels);
    }
    out
}

async fn scrape(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.unwrap().text().await.unwrap()
}

/// What the rules and the dashboard use that neither program exports: missing names, then exact label
/// values no sample carries.
fn missing(used: &BTreeMap<String, Uses>, have: &BTreeMap<String, Vec<BTreeMap<String, String>>>) -> Vec<String> {
    let mut out = Vec::new();
    for (name, (place, exact)) in used {
        let Some(samples) = have.get(name) else {
            out.push(format!("{name} (used in {place}) has no samples"));
            continue;
        };
        for ((label, value), place) in exact {
            if !samples.iter().any(|l| l.get(label) == Some(value)) {
                out.push(format!("{name}{{{label}=\"{value}\"}} (used in {place}) has no such sample"));
            }
        }
    }
    out
}

/// A manifest of three local models: `good` (warm) and `other` each take 2 MB of a 3 MB budget, so loading
/// one evicts the other; `corrupt` fails to load.
fn manifest(dir: &Path) -> std::path::PathBuf {
    let out = std::process::Command::new(binary("ainern2d-worker"))
        .args(["models", "tiny"])
        .arg(dir.join("tiny"))
        .output()
        .unwrap();
    assert!(out.status.success(), "models tiny: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(dir.join("corrupt.gguf"), b"GGUF but not really").unwrap();
    let path = dir.join("models.toml");
    std::fs::write(
        &path,
        r#"default_llm = "good"
warm = ["good"]
cache_dir = "cache"
device = "cpu"
[budget]
cpu_mb = 3
[models.good]
kind = "llm"
format = "gguf"
source = "tiny/tiny-llama.gguf"
tokenizer = "tiny/tokenizer.json"
memory_mb = 2
[models.other]
kind = "llm"
format = "gguf"
source = "tiny/tiny-llama.gguf"
tokenizer = "tiny/tokenizer.json"
memory_mb = 2
[models.corrupt]
kind = "llm"
format = "gguf"
source = "corrupt.gguf"
tokenizer = "tiny/tokenizer.json"
"#,
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_the_alert_rules_and_the_dashboard_use_is_exported() {
    let used = used_metrics();
    for known in ["ainern2d_worker_jobs_total", "ainern2d_hub_backlog", "ainern2d_worker_model_cache_hits_total"] {
        assert!(used.contains_key(known), "the query parser missed {known}: {:?}", used.keys());
    }

    let s = Bed::new("obs").await;
    let schema = s.prefix.replace('-', "_");
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest(dir.path());
    let comfy = FakeComfy::start(Behaviour::default()).await;
    let hub_conf = hub_config(&amqp_url(), &s.prefix, &schema, free_port(), "[alerts]\nsample_interval_ms = 200\n");
    let mut hub = Worker::spawn_bin("ainern2d-hub", &hub_conf);
    hub.wait_ready().await;
    // llm in process (the model cache), audio on the mock (failing each job's first attempt, then slow
    // enough to be leased), video on ComfyUI (the backend gauge).
    let extra = format!(
        "[jobs]\nkinds = [\"llm\", \"audio\", \"video\"]\nlease_after_s = 1\nlease_ttl_s = 3\n\
         [jobs.backends]\nllm = \"inference\"\nvideo = \"comfyui\"\n\
         [comfyui]\nurl = \"{}\"\ntemplates = \"{}\"\n\
         [models]\nmanifest = \"{}\"\n\
         [mock]\nlatency_ms = 1500\nfailure_rate = 1.0\nfault_attempts = 1\n",
        comfy.url(),
        repo_root().join("examples/comfyui").display(),
        manifest.display()
    );
    let w = s.worker(&extra).await;

    let mut tap = EventTap::new(&s.channel, &s.prefix).await;
    let llm = |model: &str| serde_json::json!({"prompt": "hello", "model": model, "max_tokens": 8, "seed": 1});
    for (id, model, want) in [
        ("obs-good", "good", EventStatus::Succeeded),
        ("obs-other", "other", EventStatus::Succeeded),
        ("obs-corrupt", "corrupt", EventStatus::Failed),
    ] {
        s.submit_with(JobKind::Llm, id, llm(model)).await;
        let event = tap.terminal(id, T).await;
        assert_eq!(event.status, want, "{id}: {event:?}\n{}", w.logs());
    }
    s.submit(JobKind::Audio, "obs-audio").await;
    let event = tap.terminal("obs-audio", T).await;
    assert_eq!((event.status, event.attempt), (EventStatus::Succeeded, 2), "{event:?}\n{}", w.logs());
    let invalid = job(JobKind::Llm, "obs-invalid", serde_json::json!({"max_tokens": "many"}), serde_json::json!({}));
    publish_job(&s.channel, &s.prefix, JobKind::Llm, &invalid).await;
    assert_eq!(tap.terminal("obs-invalid", T).await.status, EventStatus::Failed);

    // The hub samples the backlog and ingests the events on its own schedule: wait for what it exports.
    let deadline = Instant::now() + Duration::from_secs(30);
    let problems = loop {
        let mut have = exported(&scrape(w.http_port).await);
        // Without a GPU the NVML gauges have no samples: the worker's registry with one GPU set by hand.
        for (name, samples) in exported(&one_gpu()) {
            if name.starts_with(GPU_ONLY) {
                have.entry(name).or_default().extend(samples);
            }
        }
        for (name, samples) in exported(&scrape(hub.http_port).await) {
            have.entry(name).or_default().extend(samples);
        }
        let problems = missing(&used, &have);
        if problems.is_empty() || Instant::now() > deadline {
            break problems;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        problems.is_empty(),
        "{RULES} and {DASHBOARD} use what neither the worker nor the hub exports:\n  {}\n\
         worker /metrics:\n{}\nhub /metrics:\n{}",
        problems.join("\n  "),
        scrape(w.http_port).await,
        scrape(hub.http_port).await
    );
    eprintln!("{} metric names of {RULES} and {DASHBOARD} exported: {:?}", used.len(), used.keys());

    drop(w);
    hub.kill9();
    let _ = s.channel.queue_delete(format!("{}.hub.events", s.prefix).as_str().into(), Default::default()).await;
    s.cleanup().await;
    drop_schema(&schema).await;
}

#[test]
fn the_query_parser_finds_metrics_and_leaves_out_promql() {
    let found = selectors(
        r#"1 - (sum by (kind, le) (rate(a_total{outcome=~"x|y", stage="total"}[5m])) or on (kind) vector(0))
           / ignoring (le) group_left (kind) b_count{kind=~"$kind"} offset 5m > bool 0.5e3 unless c # d_comment
           and label_replace(e, "cause", "broker", "", "") and sum without (instance) (f[$__rate_interval])"#,
    );
    let names: Vec<&str> = found.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["a_total", "b_count", "c", "e", "f"]);
    assert_eq!(found[0].exact, [("stage".to_string(), "total".to_string())]);
    assert!(found[1].exact.is_empty(), "a matcher on a Grafana variable is not an exact value");
    let var: Vec<String> =
        selectors("label_values(ainern2d_worker_jobs_total, kind)").into_iter().map(|s| s.name).collect();
    assert_eq!(var, ["ainern2d_worker_jobs_total"]);
    let have = exported("# TYPE m counter\nm_total{kind=\"llm\",stage=\"a \\\"b\\\"\"} 1\nplain 2\n# EOF\n");
    assert_eq!(have["m_total"][0]["stage"], "a \"b\"");
    assert_eq!(have["m_total"][0]["kind"], "llm");
    assert!(have["plain"][0].is_empty());
}
