"""Checks of deploy/systemd: `systemd-analyze verify` (systemd's own parser: unknown keys, bad values,
missing executables) on each unit and instance with its drop-ins, inside a scratch root that holds the
host's system units, our units and stand-ins for the binaries, so nothing has to be installed or booted;
any line it prints fails. Then what systemd cannot know: the example configs against the units (drain
budget, writable paths, ports), the signal, restart policy, hardening and GPU access."""

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import common

INSTANCES = ("llm", "audio", "lipsync", "video")
AFTER_GRACE_S = 60
HARDENING = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes"}


def parse_unit(paths):
    """Key -> list of values over a unit file and its drop-ins, in order (an empty value resets)."""
    keys = {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            line = line.strip()
            if not line or line.startswith(("#", ";", "[")) or "=" not in line:
                continue
            key, value = (part.strip() for part in line.split("=", 1))
            keys[key] = [] if value == "" else keys.get(key, []) + [value]
    return keys


def seconds(value):
    match = re.fullmatch(r"(\d+)(s|min|m|h)?", value.strip())
    if not match:
        return None
    return int(match.group(1)) * {"s": 1, None: 1, "min": 60, "m": 60, "h": 3600}[match.group(2)]


def verify(root, units, problems):
    """systemd-analyze verify each unit name in a scratch root; every line it prints is a problem."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        problems.add("deploy/systemd", "systemd-analyze is missing (Debian: apt-get install systemd)")
        return
    with tempfile.TemporaryDirectory(prefix="ainern2d-units-") as scratch:
        scratch = Path(scratch)
        system = scratch / "usr/lib/systemd/system"
        system.parent.mkdir(parents=True)
        host = Path("/usr/lib/systemd/system")
        if host.is_dir():
            shutil.copytree(host, system, symlinks=True)
        else:
            system.mkdir()
        etc = scratch / "etc/systemd/system"
        etc.mkdir(parents=True)
        for item in Path(root).iterdir():
            if item.suffix == ".service":
                shutil.copy(item, etc / item.name)
            elif item.name.endswith(".service.d"):
                shutil.copytree(item, etc / item.name)
        # Stand-ins for the executables (verify checks that ExecStart= names one).
        for unit in etc.glob("*.service"):
            for value in parse_unit([unit]).get("ExecStart", []):
                binary = scratch / value.lstrip("-@:+!").split()[0].lstrip("/")
                binary.parent.mkdir(parents=True, exist_ok=True)
                binary.write_text("#!/bin/sh\n")
                binary.chmod(0o755)
        for name in units:
            result = subprocess.run([analyze, "verify", f"--root={scratch}", name], capture_output=True, text=True)
            output = (result.stdout + result.stderr).strip().replace(str(scratch), "")
            if result.returncode != 0 or output:
                problems.add(f"deploy/systemd: {name}", f"systemd-analyze verify: {output or f'exit {result.returncode}'}")


def check(root, problems):
    root = Path(root)
    hub_unit = root / "ainern2d-hub.service"
    template = root / "ainern2d-worker@.service"
    for path in (hub_unit, template):
        if not path.exists():
            problems.add(path, "missing")
            return
    verify(root, ["ainern2d-hub.service"] + [f"ainern2d-worker@{i}.service" for i in INSTANCES], problems)
    hub = parse_unit([hub_unit])
    common_checks("ainern2d-hub.service", hub, "on-failure", problems)
    hub_cfg_path = root / "etc/hub.toml"
    if hub_cfg_path.exists():
        cfg = common.parse_toml(hub_cfg_path.read_text(), hub_cfg_path, problems)
        env = dict(v.split("=", 1) for v in hub.get("Environment", []) if "=" in v)
        problems.configs.append(("hub", hub_cfg_path.read_text(), {}, hub_cfg_path))
        token = env.get("AINERN2D_HUB_API__ADMIN_TOKEN_FILE") or common.dig(cfg or {}, "api.admin_token_file")
        if not token:
            problems.add("ainern2d-hub.service", "no admin token file (every POST would be 401)")
        elif token.startswith("%d/") and not any(v.startswith(token[3:] + ":") for v in hub.get("LoadCredential", [])):
            problems.add("ainern2d-hub.service", f"{token} names a credential that LoadCredential= does not load")
    else:
        problems.add(hub_cfg_path, "missing")
    ports = {}
    for instance in INSTANCES:
        name = f"ainern2d-worker@{instance}.service"
        dropins = sorted((root / f"{name}.d").glob("*.conf")) if (root / f"{name}.d").is_dir() else []
        unit = {k: [v.replace("%i", instance) for v in vs] for k, vs in parse_unit([template, *dropins]).items()}
        # always: a recycling worker exits 0 and must be started again.
        common_checks(name, unit, "always", problems)
        if unit.get("KillMode", ["control-group"])[-1] != "mixed":
            problems.add(name, "KillMode is not mixed: SIGTERM would reach a supervised ComfyUI during the drain")
        if unit.get("DevicePolicy", [""])[-1] != "closed" or not any("nvidia" in v for v in unit.get("DeviceAllow", [])):
            problems.add(name, "no DevicePolicy=closed with DeviceAllow= for the NVIDIA devices")
        if unit.get("PrivateDevices", ["no"])[-1] == "yes":
            problems.add(name, "PrivateDevices=yes hides /dev/nvidia*")
        cfg_path = root / f"etc/worker-{instance}.toml"
        if not cfg_path.exists():
            problems.add(cfg_path, "missing: the example config of that instance")
            continue
        cfg = common.parse_toml(cfg_path.read_text(), cfg_path, problems)
        if cfg is None:
            continue
        env = dict(v.split("=", 1) for v in unit.get("Environment", []) if "=" in v)
        env = {k: v.replace("%H", "host") for k, v in env.items()}
        problems.configs.append(("worker", cfg_path.read_text(), env, f"{cfg_path} (as {name})"))
        get = lambda key: common.effective(cfg, key, common.WORKER_DEFAULTS, env, "AINERN2D_WORKER_")
        if common.dig(cfg, "jobs.kinds") != [instance]:
            problems.add(cfg_path, f"serves {common.dig(cfg, 'jobs.kinds')}, its instance is {instance!r}")
        grace = int(get("shutdown.grace_s"))
        stop = seconds(unit.get("TimeoutStopSec", ["90"])[-1])
        if stop is None or stop < grace + AFTER_GRACE_S:
            problems.add(name, f"TimeoutStopSec {unit.get('TimeoutStopSec', ['90'])[-1]} < shutdown.grace_s {grace} + {AFTER_GRACE_S}: systemd would SIGKILL a draining worker")
        longest = common.dig(cfg, f"jobs.max_runtime_s.{instance}")
        if longest is not None and grace < longest:
            problems.add(cfg_path, f"shutdown.grace_s {grace} is shorter than the longest job ({longest})")
        writable = [p for v in unit.get("ReadWritePaths", []) for p in v.split()]
        writable += ["/var/lib/" + p for v in unit.get("StateDirectory", []) for p in v.split()]
        writable += ["/var/cache/" + p for v in unit.get("CacheDirectory", []) for p in v.split()]
        scratch = str(get("scratch_dir") or "")
        if not any(scratch == w or scratch.startswith(w.rstrip("/") + "/") for w in writable):
            problems.add(name, f"scratch_dir {scratch!r} is not writable under ProtectSystem=strict (writable: {writable})")
        port = common.listen_port(get("http.listen"), cfg_path, problems)
        if port in ports:
            problems.add(cfg_path, f"http.listen port {port} is also {ports[port]}'s: instances share a host")
        ports[port] = instance


def common_checks(name, unit, restart, problems):
    user = unit.get("User", ["root"])[-1]
    if user in ("root", "0"):
        problems.add(name, "runs as root (User=)")
    if unit.get("KillSignal", ["SIGTERM"])[-1] != "SIGTERM":
        problems.add(name, f"KillSignal={unit['KillSignal'][-1]}, not SIGTERM (the drain signal)")
    if "KillSignal" not in unit:
        problems.add(name, "KillSignal= is not set explicitly")
    if unit.get("Restart", ["no"])[-1] != restart:
        problems.add(name, f"Restart= is not {restart}")
    if not unit.get("EnvironmentFile"):
        problems.add(name, "no EnvironmentFile= (the secrets)")
    for key, value in HARDENING.items():
        if unit.get(key, [""])[-1] != value:
            problems.add(name, f"{key}= is not {value}")
    if unit.get("CapabilityBoundingSet", None) not in ([],):
        problems.add(name, "CapabilityBoundingSet= is not empty")
