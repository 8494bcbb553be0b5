"""Checks of deploy/nomad without a Nomad binary: each job parses as HCL2 (python-hcl2), uses only the
job-spec attributes listed below in the blocks they belong to (a typo fails; the list covers what these
jobs use, not all of Nomad), and holds what Nomad cannot check for us: the rendered config of each task
against its ports, its kill_timeout against the worker's drain, its Consul checks, its GPU."""

import re
from pathlib import Path

import hcl2
from hcl2.utils import SerializationOptions

import common

# Block -> the attributes and sub-blocks allowed in it (the Nomad job specification, for what we use).
SPEC = {
    "job": {"datacenters", "type", "region", "namespace", "priority", "constraint", "group", "update", "meta"},
    "group": {"count", "network", "update", "shutdown_delay", "service", "task", "ephemeral_disk", "volume",
              "constraint", "restart", "reschedule", "meta"},
    "network": {"port", "mode"},
    "port": {"to", "static"},
    "update": {"max_parallel", "health_check", "min_healthy_time", "healthy_deadline", "progress_deadline",
               "auto_revert", "canary", "stagger"},
    "ephemeral_disk": {"size", "sticky", "migrate"},
    "volume": {"type", "source", "read_only"},
    "service": {"name", "port", "tags", "check", "provider"},
    "check": {"name", "type", "path", "interval", "timeout", "check_restart", "port"},
    "check_restart": {"limit", "grace", "ignore_warnings"},
    "task": {"driver", "user", "config", "kill_signal", "kill_timeout", "env", "template", "resources",
             "volume_mount", "restart", "meta", "shutdown_delay"},
    "config": {"image", "args", "ports", "runtime", "readonly_rootfs", "cap_drop", "security_opt", "mount"},
    "mount": {"type", "target", "source", "readonly", "tmpfs_options"},
    "tmpfs_options": {"size", "mode"},
    "env": None,  # any variable name
    "template": {"destination", "data", "env", "change_mode", "perms", "uid", "gid", "left_delimiter", "right_delimiter"},
    "resources": {"cpu", "memory", "memory_max", "device"},
    "device": {"count", "constraint"},
    "volume_mount": {"volume", "destination", "read_only"},
    "constraint": {"attribute", "value", "operator"},
    "restart": {"attempts", "interval", "delay", "mode"},
    "meta": None,
}
# Blocks that carry a label (`group "llm" { ... }`).
LABELLED = {"job", "group", "port", "task", "volume", "device"}
KINDS = ("llm", "audio", "lipsync", "video")
AFTER_GRACE_S = 60


def load(path, problems):
    options = SerializationOptions(with_comments=False, explicit_blocks=True, preserve_heredocs=False,
                                   strip_string_quotes=True)
    try:
        with open(path) as f:
            return hcl2.load(f, serialization_options=options)
    except Exception as e:  # python-hcl2 raises lark's errors, whose classes vary by version
        problems.add(path, f"not valid HCL2: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        return None


def blocks(node, name):
    """The blocks called `name` in a parsed body: [(label or None, body)]."""
    out = []
    for item in node.get(name, []) if isinstance(node.get(name), list) else []:
        if not isinstance(item, dict):
            continue
        if name in LABELLED and len(item) == 1 and "__is_block__" not in item:
            (label, body), = item.items()
            out.append((label.strip('"'), body))
        else:
            out.append((None, item))
    return out


def strict(where, name, body, problems):
    allowed = SPEC.get(name)
    for key, value in body.items():
        if key == "__is_block__":
            continue
        if allowed is not None and key not in allowed:
            problems.add(where, f"`{key}` is not an attribute or block of `{name}` here")
            continue
        if key in SPEC and isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for label, sub in blocks(body, key):
                strict(f"{where} > {key}{' ' + label if label else ''}", key, sub, problems)


def duration_s(text, where, problems):
    match = re.fullmatch(r"(\d+)(s|m|h)", str(text))
    if not match:
        problems.add(where, f"duration {text!r} is not N s/m/h")
        return None
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2)]


def render(data, where, problems):
    """A template's text as consul-template would render it with every Consul KV key missing: each
    `{{ keyOrDefault "k" "d" }}` becomes d. Anything else between braces is refused in a config file."""
    # python-hcl2 hands heredocs and strings back with their quotes escaped.
    data = re.sub(r'\\(["\\])', r"\1", data)
    text = re.sub(r'\{\{\s*keyOrDefault\s+"[^"]*"\s+"([^"]*)"\s*\}\}', r"\1", data)
    if "{{" in text:
        problems.add(where, "a config template uses more than keyOrDefault: it cannot be checked")
    return text


def check(root, problems):
    root = Path(root)
    jobs = {}
    for path in sorted(root.glob("*.nomad.hcl")):
        parsed = load(path, problems)
        if parsed is None:
            continue
        for label, job in blocks(parsed, "job"):
            strict(f"{path.name}: job {label}", "job", job, problems)
            jobs[label] = (path.name, job)
    if set(jobs) != {"ainern2d-hub", "ainern2d-worker"}:
        problems.add(root, f"expected the jobs ainern2d-hub and ainern2d-worker, found {sorted(jobs)}")
    for label, (file, job) in jobs.items():
        groups = blocks(job, "group")
        if label == "ainern2d-worker" and sorted(g for g, _ in groups) != sorted(KINDS):
            problems.add(file, f"expected one group per kind {sorted(KINDS)}, found {sorted(g for g, _ in groups)}")
        for group, body in groups:
            check_group(f"{file}: group {group}", label, group, body, problems)


def check_group(where, job, group, body, problems):
    ports = {}
    for _, net in blocks(body, "network"):
        for name, port in blocks(net, "port"):
            ports[name] = port.get("to")
    services = [s for _, s in blocks(body, "service")]
    paths = {c.get("path") for s in services for _, c in blocks(s, "check") if c.get("type") == "http"}
    if not {"/health", "/ready"} <= paths:
        problems.add(where, f"Consul HTTP checks cover {sorted(p for p in paths if p)}, not /health and /ready")
    for s in services:
        if s.get("port") not in ports:
            problems.add(where, f"service {s.get('name')} registers port {s.get('port')!r}, which the group's network does not define")
    tasks = blocks(body, "task")
    if len(tasks) != 1:
        problems.add(where, f"expected one task, found {len(tasks)}")
    for name, task in tasks:
        check_task(f"{where} > task {name}", job, group, task, ports, body, problems)


def check_task(where, job, group, task, ports, group_body, problems):
    config = (blocks(task, "config") or [(None, {})])[0][1]
    if task.get("driver") != "docker" or not config.get("image"):
        problems.add(where, "expected the docker driver with an image")
    if str(task.get("user", "0")).split(":")[0] in ("0", "root"):
        problems.add(where, "runs as root (set user)")
    if config.get("readonly_rootfs") is not True:
        problems.add(where, "readonly_rootfs is not true")
    if [c.lower() for c in config.get("cap_drop", [])] != ["all"]:
        problems.add(where, "cap_drop is not [\"ALL\"]")
    if "no-new-privileges" not in config.get("security_opt", []):
        problems.add(where, "security_opt lacks no-new-privileges")
    for p in config.get("ports", []):
        if p not in ports:
            problems.add(where, f"config.ports names {p!r}, which the group's network does not define")
    if task.get("kill_signal") != "SIGTERM":
        problems.add(where, f"kill_signal is {task.get('kill_signal')!r}, not SIGTERM (the worker's drain signal)")
    kill = duration_s(task.get("kill_timeout", "5s"), where, problems)
    env = {}
    for _, e in blocks(task, "env"):
        env.update({k: v for k, v in e.items() if k != "__is_block__"})
    program = "WORKER" if job == "ainern2d-worker" else "HUB"
    config_path = env.get(f"AINERN2D_{program}_CONFIG")
    templates = {t.get("destination"): t for _, t in blocks(task, "template")}
    rendered = None
    for dest, t in templates.items():
        if config_path and "/" + str(dest).lstrip("/") == config_path:
            text = render(str(t.get("data", "")), f"{where} > template {dest}", problems)
            rendered = common.parse_toml(text, f"{where} > template {dest}", problems)
            problems.configs.append((program.lower(), text, {}, f"{where} > template {dest}"))
    if rendered is None:
        problems.add(where, f"no template renders AINERN2D_{program}_CONFIG ({config_path!r}) as TOML")
        return
    if not any(t.get("env") is True for t in templates.values()):
        problems.add(where, "no template delivers the secrets as environment (env = true)")
    defaults = common.WORKER_DEFAULTS if program == "WORKER" else common.HUB_DEFAULTS
    port = common.listen_port(common.effective(rendered, "http.listen", defaults), where, problems)
    if port is not None and port not in ports.values():
        problems.add(where, f"http.listen port {port} is not the `to` of any group port {ports}")
    if program == "WORKER":
        if common.dig(rendered, "jobs.kinds") != [group]:
            problems.add(where, f"its config serves {common.dig(rendered, 'jobs.kinds')}, the group is {group!r}")
        grace = int(common.effective(rendered, "shutdown.grace_s", defaults))
        if kill is not None and kill < grace + AFTER_GRACE_S:
            problems.add(where, f"kill_timeout {kill}s < shutdown.grace_s {grace} + {AFTER_GRACE_S}: Nomad would SIGKILL a draining worker")
        longest = common.dig(rendered, f"jobs.max_runtime_s.{group}")
        if longest is not None and grace < longest:
            problems.add(where, f"shutdown.grace_s {grace} is shorter than the longest job ({longest})")
        devices = [d for _, r in blocks(task, "resources") for label, d in blocks(r, "device") if label == "nvidia/gpu"]
        if not devices or int(devices[0].get("count", 1)) < 1:
            problems.add(where, "resources ask for no nvidia/gpu device")
        scratch = str(rendered.get("scratch_dir", ""))
        if not scratch.startswith("/alloc/data/"):
            problems.add(where, f"scratch_dir {scratch!r} is not under /alloc/data (it must outlive a task restart)")
        modes = [r.get("mode") for _, r in blocks(group_body, "restart")]
        if modes != ["delay"]:
            problems.add(where, "no restart { mode = \"delay\" }: a recycling worker exits 0, and the default policy would fail the allocation after 2 restarts")
    elif "shutdown_delay" not in group_body:
        problems.add(where, "the hub's group has no shutdown_delay (Consul still routes to it while it stops)")
