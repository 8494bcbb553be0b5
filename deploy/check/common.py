"""What the deployment checks share: the error list, TOML helpers, and the metric names the programs
register (read from their sources, so a query naming a metric nobody exports fails here)."""

import re
import tomllib
from pathlib import Path


class Problems:
    """Collects every problem of a run; each names the file (or rendered object) it is about."""

    def __init__(self):
        self.items = []
        # (program, TOML text, environment overrides, where): every config a manifest gives a program,
        # for the programs' own parsers when built binaries are at hand (check_with_binaries).
        self.configs = []

    def add(self, where, what):
        self.items.append(f"{where}: {what}")

    def extend(self, other):
        self.items.extend(other.items)

    def __bool__(self):
        return bool(self.items)


def parse_toml(text, where, problems):
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        problems.add(where, f"invalid TOML: {e}")
        return None


def dig(table, dotted, default=None):
    """`dig(cfg, "shutdown.grace_s")`: a nested key of a parsed TOML table."""
    node = table
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def listen_port(listen, where, problems):
    match = re.fullmatch(r"(?:\[[0-9a-fA-F:.]+\]|[0-9.]+):(\d+)", str(listen))
    if not match:
        problems.add(where, f"http.listen {listen!r} is not ADDRESS:PORT")
        return None
    return int(match.group(1))


# The defaults of the keys the checks read, as worker/src/config.rs and hub/src/config.rs define them.
WORKER_DEFAULTS = {"http.listen": "0.0.0.0:9100", "shutdown.grace_s": 30, "jobs.backend": "mock"}
HUB_DEFAULTS = {"http.listen": "0.0.0.0:9200", "policy.backlog.threshold": 2000, "policy.backlog.per_replica": 500}

# The environment overrides the checks understand (AINERN2D_<PROGRAM>_<SECTION>__<KEY>).
def env_key(prefix, name):
    """`env_key("AINERN2D_WORKER_", "AINERN2D_WORKER_SHUTDOWN__GRACE_S")` -> "shutdown.grace_s"."""
    if not name.startswith(prefix):
        return None
    return name[len(prefix):].lower().replace("__", ".")


def effective(cfg, key, defaults, env=None, prefix=None):
    """A config key's value: the environment override, else the TOML, else the program's default."""
    if env and prefix:
        for name, value in env.items():
            if env_key(prefix, name) == key:
                return value
    value = dig(cfg or {}, key)
    return defaults.get(key) if value is None else value


def registered_metrics(repo, problems):
    """Every metric name hub/src/metrics.rs and worker/src/metrics.rs register, with the suffixes the
    OpenMetrics encoder adds (counters `_total`, histograms `_bucket`, `_sum`, `_count`)."""
    names = set()
    for rel in ("hub/src/metrics.rs", "worker/src/metrics.rs"):
        path = Path(repo) / rel
        try:
            text = path.read_text()
        except OSError as e:
            problems.add(rel, f"cannot read it for the metric names: {e}")
            continue
        prefixes = re.findall(r'Registry::with_prefix\(\s*"([a-z0-9_]+)"\s*\)', text)
        if len(prefixes) != 1:
            problems.add(rel, f"expected one Registry::with_prefix(...), found {len(prefixes)}")
            continue
        found = re.findall(r'\.register(?:_with_unit)?\(\s*"([a-z0-9_]+)"', text)
        if not found:
            problems.add(rel, "no registry.register(\"...\") calls found")
        for name in found:
            full = f"{prefixes[0]}_{name}"
            names.update({full, f"{full}_total", f"{full}_bucket", f"{full}_sum", f"{full}_count"})
    return names


METRIC_TOKEN = re.compile(r"\bainern2d_(?:hub|worker)_[a-z0-9_]+\b")


def metric_tokens(text):
    return set(METRIC_TOKEN.findall(text))


def find_binaries(repo):
    """A directory holding built ainern2d-worker and ainern2d-hub, if any (never built here)."""
    import os
    candidates = [os.environ.get("AINERN2D_DEPLOY_BIN_DIR")]
    for base in (os.environ.get("CARGO_TARGET_DIR"), str(Path(repo) / "target"), "/var/tmp/ainern2d-target"):
        if base:
            candidates += [f"{base}/release", f"{base}/debug"]
    for c in candidates:
        if c and all((Path(c) / b).is_file() for b in ("ainern2d-worker", "ainern2d-hub")):
            return Path(c)
    return None


def check_with_binaries(bins, problems):
    """Each collected config through its program's own loader (`--print-config`: the TOML, the
    environment overrides and the validation that names a bad key), with no other environment."""
    import subprocess
    import tempfile
    seen = set()
    for program, text, env, where in problems.configs:
        key = (program, text, tuple(sorted(env.items())))
        if key in seen:
            continue
        seen.add(key)
        with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
            f.write(text)
            f.flush()
            result = subprocess.run([str(bins / f"ainern2d-{program}"), "--config", f.name, "--print-config", "run"],
                                    env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            problems.add(where, f"ainern2d-{program} refuses it: {' '.join(result.stderr.split())[-400:]}")
    return len(seen)
