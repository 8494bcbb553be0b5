#!/usr/bin/env bash
# Checks the Prometheus rules and the Grafana dashboard under deploy/:
#   - `promtool check config` (deploy/prometheus/prometheus.yml), `promtool check rules`, `promtool test rules`;
#   - every alert has a severity, a summary, a description and a runbook anchor that exists in
#     docs/OPERATIONS.md, and rules_test.yml has a case where it fires and one where it stays quiet;
#   - the dashboard parses, its panel ids are unique, its panels do not overlap, every target has an expr
#     that parses as PromQL (promtool), and every data source is the `datasource` variable, whose default
#     is the uid provisioned in deploy/grafana/provisioning/datasources/;
#   - the metric names the rules and the dashboard use (dcgm-exporter's DCGM_* left out), printed, and
#     written to FILE with `--list FILE`. tests/tests/observability.rs checks that a running worker and hub
#     export every one of them.
# promtool comes from Debian's `prometheus` package, unpacked into a tools directory (never installed as
# a service); PyYAML from `python3-yaml`. Both are fetched with apt when missing (root or sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh

LIST=""
while [ $# -gt 0 ]; do
  case "$1" in
    --list) LIST="$2"; shift 2 ;;
    *) echo "usage: $0 [--list FILE]" >&2; exit 2 ;;
  esac
done

TOOLS_DIR="${AINERN2D_TOOLS_DIR:-/var/tmp/ainern2d-tools}"

# promtool on PATH, in $PROMTOOL, or unpacked from the Debian package into $TOOLS_DIR/prometheus.
find_promtool() {
  if [ -n "${PROMTOOL:-}" ]; then echo "$PROMTOOL"; return; fi
  if command -v promtool >/dev/null; then command -v promtool; return; fi
  local unpacked="$TOOLS_DIR/prometheus/usr/bin/promtool"
  if [ ! -x "$unpacked" ]; then
    echo "promtool not found: unpacking it from Debian's prometheus package into $TOOLS_DIR/prometheus" >&2
    mkdir -p "$TOOLS_DIR/download"
    # `apt-get download` only fetches the .deb: no install, no service started.
    if ! (cd "$TOOLS_DIR/download" && apt-get download -q prometheus >/dev/null 2>&1); then
      as_root apt-get update -qq
      (cd "$TOOLS_DIR/download" && apt-get download -q prometheus >/dev/null)
    fi
    rm -rf "$TOOLS_DIR/prometheus.new"
    dpkg-deb -x "$(ls -t "$TOOLS_DIR"/download/prometheus_*.deb | head -n1)" "$TOOLS_DIR/prometheus.new"
    rm -rf "$TOOLS_DIR/prometheus"
    mv "$TOOLS_DIR/prometheus.new" "$TOOLS_DIR/prometheus"
  fi
  echo "$unpacked"
}

command -v python3 >/dev/null || { echo "installing python3"; apt_install python3; }
python3 -c 'import yaml' 2>/dev/null || { echo "installing python3-yaml"; apt_install python3-yaml; }
PROMTOOL_BIN=$(find_promtool)
"$PROMTOOL_BIN" --version 2>&1 | head -n1

"$PROMTOOL_BIN" check config deploy/prometheus/prometheus.yml
"$PROMTOOL_BIN" check rules deploy/prometheus/rules.yml
"$PROMTOOL_BIN" test rules deploy/prometheus/rules_test.yml

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

PROMTOOL_BIN="$PROMTOOL_BIN" WORK="$WORK" LIST="$LIST" python3 - <<'PY'
import json, os, re, subprocess, sys
import yaml

errors = []
def fail(msg):
    errors.append(msg)

RULES = "deploy/prometheus/rules.yml"
TESTS = "deploy/prometheus/rules_test.yml"
DASHBOARD = "deploy/grafana/ainern2d.json"
DATASOURCES = "deploy/grafana/provisioning/datasources"
DASH_PROVIDERS = "deploy/grafana/provisioning/dashboards"
RUNBOOK = "docs/OPERATIONS.md"
SEVERITIES = {"critical", "warning", "info"}

# --- metric names in a PromQL expression -------------------------------------------------------------
# Identifiers outside strings, label matchers, ranges and Grafana variables that are not functions,
# keywords or aggregation operators. `label_values(m, label)` (Grafana variable queries) keeps `m` only.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
            "bool", "offset", "inf", "nan", "sum", "min", "max", "avg", "count", "stddev", "stdvar",
            "topk", "bottomk", "quantile", "count_values", "group", "atan2"}
LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}

def skip_string(s, i):
    quote = s[i]; i += 1
    while i < len(s) and s[i] != quote:
        i += 2 if s[i] == "\\" else 1
    return i + 1

def skip_until(s, i, close):
    while i < len(s) and s[i] != close:
        i = skip_string(s, i) if s[i] in "\"'`" else i + 1
    return i + 1

def metric_names(expr):
    expr = re.sub(r"label_values\(\s*([^,]*?)\s*,\s*[A-Za-z_][A-Za-z0-9_]*\s*\)", r"\1", expr)
    names, i, n = set(), 0, len(expr)
    while i < n:
        c = expr[i]
        if c in "\"'`":
            i = skip_string(expr, i)
        elif c == "#":
            i = skip_until(expr, i + 1, "\n")
        elif c == "{":
            i = skip_until(expr, i + 1, "}")
        elif c == "[":
            i = skip_until(expr, i + 1, "]")
        elif c == "$":
            i += 1
            if i < n and expr[i] == "{":
                i = skip_until(expr, i + 1, "}")
            while i < n and (expr[i].isalnum() or expr[i] == "_"):
                i += 1
        elif c.isdigit() or (c == "." and i + 1 < n and expr[i + 1].isdigit()):
            while i < n and (expr[i].isalnum() or expr[i] in "._"):
                i += 1
        elif c.isalpha() or c in "_:":
            j = i
            while j < n and (expr[j].isalnum() or expr[j] in "_:"):
                j += 1
            word, k = expr[i:j], j
            while k < n and expr[k].isspace():
                k += 1
            if word in LABEL_LISTS and k < n and expr[k] == "(":
                j = skip_until(expr, k + 1, ")")
            elif word in KEYWORDS or (k < n and expr[k] == "("):
                pass
            else:
                names.add(word)
            i = j
        else:
            i += 1
    return names

# --- rules ---------------------------------------------------------------------------------------------
def slug(heading):
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")

runbook_text = open(RUNBOOK, encoding="utf-8").read()
alerts_section = re.search(r"^## Alerts\n(.*?)(?=^## |\Z)", runbook_text, re.S | re.M)
if not alerts_section:
    fail(f"{RUNBOOK} has no `## Alerts` section")
anchors = {slug(h) for h in re.findall(r"^#{3,4} (.+)$", alerts_section.group(1) if alerts_section else "", re.M)}

rules = yaml.safe_load(open(RULES))
used = {}  # metric name -> where
alert_names = []
for group in rules["groups"]:
    for rule in group["rules"]:
        name = rule.get("alert") or rule.get("record")
        for m in metric_names(rule["expr"]):
            used.setdefault(m, f"{RULES}: {name}")
        if "alert" not in rule:
            continue
        alert_names.append(name)
        sev = rule.get("labels", {}).get("severity")
        if sev not in SEVERITIES:
            fail(f"{RULES}: {name}: severity {sev!r} is not one of {sorted(SEVERITIES)}")
        ann = rule.get("annotations", {})
        for key in ("summary", "description", "runbook"):
            if not str(ann.get(key, "")).strip():
                fail(f"{RULES}: {name}: no `{key}` annotation")
        rb = str(ann.get("runbook", ""))
        m = re.fullmatch(r"docs/OPERATIONS\.md#([\w-]+)", rb)
        if not m:
            fail(f"{RULES}: {name}: runbook {rb!r} is not docs/OPERATIONS.md#<anchor>")
        elif m.group(1) not in anchors:
            fail(f"{RULES}: {name}: runbook anchor #{m.group(1)} is not a heading of {RUNBOOK}'s Alerts section")
if len(set(alert_names)) != len(alert_names):
    fail(f"{RULES}: an alert name is used twice")

# Each alert: a case in rules_test.yml where it fires and one where it does not.
tests = yaml.safe_load(open(TESTS))
fires, quiet = set(), set()
for t in tests["tests"]:
    for case in t.get("alert_rule_test", []):
        (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
for name in alert_names:
    if name not in fires:
        fail(f"{TESTS}: no case where {name} fires")
    if name not in quiet:
        fail(f"{TESTS}: no case where {name} stays quiet")
for name in (fires | quiet) - set(alert_names):
    fail(f"{TESTS}: tests an alert rules.yml does not have: {name}")

# --- Grafana --------------------------------------------------------------------------------------------
provisioned = []
for f in sorted(os.listdir(DATASOURCES)):
    for ds in (yaml.safe_load(open(os.path.join(DATASOURCES, f))) or {}).get("datasources", []):
        if ds.get("type") == "prometheus":
            provisioned.append(ds.get("uid"))
if len(provisioned) != 1 or not provisioned[0]:
    fail(f"{DATASOURCES}: expected one Prometheus data source with a uid, found {provisioned}")
for f in sorted(os.listdir(DASH_PROVIDERS)):
    for p in (yaml.safe_load(open(os.path.join(DASH_PROVIDERS, f))) or {}).get("providers", []):
        if p.get("type") != "file" or not p.get("options", {}).get("path"):
            fail(f"{DASH_PROVIDERS}/{f}: provider {p.get('name')!r} is not a file provider with options.path")

try:
    dash = json.load(open(DASHBOARD))
except ValueError as e:
    print(f"error: {DASHBOARD} does not parse: {e}", file=sys.stderr)
    sys.exit(1)

DS_REF = {"type": "prometheus", "uid": "${datasource}"}
variables = dash.get("templating", {}).get("list", [])
ds_vars = [v for v in variables if v.get("type") == "datasource" and v.get("name") == "datasource"]
if len(ds_vars) != 1 or ds_vars[0].get("query") != "prometheus":
    fail(f"{DASHBOARD}: needs one `datasource` variable of Prometheus data sources")
elif provisioned and ds_vars[0].get("current", {}).get("value") != provisioned[0]:
    fail(f"{DASHBOARD}: the `datasource` variable defaults to {ds_vars[0].get('current', {}).get('value')!r}, "
         f"not the provisioned uid {provisioned[0]!r}")

exprs = []  # (where, expr)
for v in variables:
    if v.get("type") != "query":
        continue
    if v.get("datasource") != DS_REF:
        fail(f"{DASHBOARD}: variable {v.get('name')}: data source {v.get('datasource')} is not {DS_REF}")
    q = v.get("query")
    q = q.get("query") if isinstance(q, dict) else q
    if not q:
        fail(f"{DASHBOARD}: variable {v.get('name')} has no query")
    else:
        exprs.append((f"variable {v['name']}", q))

def all_panels(panels):
    for p in panels:
        yield p
        yield from all_panels(p.get("panels", []))

ids, boxes = {}, []
for p in all_panels(dash.get("panels", [])):
    pid, title = p.get("id"), p.get("title", "?")
    if not isinstance(pid, int):
        fail(f"{DASHBOARD}: panel {title!r} has no integer id")
    elif pid in ids:
        fail(f"{DASHBOARD}: panel id {pid} is used by {ids[pid]!r} and {title!r}")
    else:
        ids[pid] = title
    g = p.get("gridPos", {})
    if not all(isinstance(g.get(k), int) for k in "xywh") or g["x"] + g["w"] > 24:
        fail(f"{DASHBOARD}: panel {title!r} has a bad gridPos {g}")
    else:
        for other, og in boxes:
            if g["x"] < og["x"] + og["w"] and og["x"] < g["x"] + g["w"] and g["y"] < og["y"] + og["h"] and og["y"] < g["y"] + g["h"]:
                fail(f"{DASHBOARD}: panels {other!r} and {title!r} overlap")
        boxes.append((title, g))
    if p.get("type") == "row":
        continue
    if p.get("datasource") != DS_REF:
        fail(f"{DASHBOARD}: panel {title!r}: data source {p.get('datasource')} is not {DS_REF}")
    targets = p.get("targets") or []
    if not targets:
        fail(f"{DASHBOARD}: panel {title!r} has no targets")
    refs = [t.get("refId") for t in targets]
    if len(set(refs)) != len(refs) or not all(refs):
        fail(f"{DASHBOARD}: panel {title!r}: refIds {refs} are not unique and set")
    for t in targets:
        if t.get("datasource") != DS_REF:
            fail(f"{DASHBOARD}: panel {title!r} target {t.get('refId')}: data source {t.get('datasource')} is not {DS_REF}")
        if not str(t.get("expr", "")).strip():
            fail(f"{DASHBOARD}: panel {title!r} target {t.get('refId')} has no expr")
        else:
            exprs.append((f"panel {pid} {title!r} {t.get('refId')}", t["expr"]))

# Every panel query must parse: as recording rules, with Grafana's variables given values, for promtool.
def concrete(expr):
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h")
    return re.sub(r"\$\{?\w+\}?", ".*", expr)
check = {"groups": [{"name": "dashboard", "rules": [
    {"record": f"dashboard_query_{i}", "expr": concrete(e)}
    for i, (where, e) in enumerate(exprs) if not where.startswith("variable")]}]}
check_path = os.path.join(os.environ["WORK"], "dashboard-queries.yml")
yaml.safe_dump(check, open(check_path, "w"))
r = subprocess.run([os.environ["PROMTOOL_BIN"], "check", "rules", check_path], capture_output=True, text=True)
if r.returncode != 0:
    numbered = "\n".join(f"  dashboard_query_{i}: {where}" for i, (where, _) in enumerate(exprs))
    fail(f"{DASHBOARD}: a panel query does not parse:\n{r.stdout}{r.stderr}{numbered}")

for where, e in exprs:
    for m in metric_names(e):
        used.setdefault(m, f"{DASHBOARD}: {where}")

# --- the list --------------------------------------------------------------------------------------------
names = sorted(m for m in used if not m.startswith("DCGM_"))
for m in names:
    if not re.fullmatch(r"ainern2d_(worker|hub)_[a-z0-9_]+", m):
        fail(f"{used[m]}: {m!r} is not an ainern2d_worker_* / ainern2d_hub_* metric (a typo, or a function this "
             "check does not know?)")
if errors:
    print("\n".join(f"error: {e}" for e in errors), file=sys.stderr)
    sys.exit(1)
print(f"{len(alert_names)} alerts, each with a runbook and a firing and a quiet test case")
print(f"dashboard: {len(ids)} panels, {len(exprs)} queries, data source {provisioned[0]}")
print(f"{len(names)} metric names used (DCGM_* left out):")
for m in names:
    print(f"  {m}")
if os.environ.get("LIST"):
    with open(os.environ["LIST"], "w") as f:
        f.write("".join(m + "\n" for m in names))
PY
echo "observability checks passed"
