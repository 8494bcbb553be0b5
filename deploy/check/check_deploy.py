"""Validates everything under deploy/ (run through scripts/check-deploy.sh, which installs the tools).

  python check_deploy.py --repo REPO --kustomize "kubectl kustomize" --npm-dir DIR [--no-self-test]

First every real file is checked; then, unless --no-self-test, each mutation below is applied to a copy
of deploy/ and must make the checks fail with the expected message: a check that cannot fail is caught
here, and a mutation whose text no longer exists in its file fails too (so the list stays true)."""

import argparse
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import common
import k8s
import nomad
import systemd

# (area, file under deploy/, text, replacement, a substring the resulting problem must contain)
MUTATIONS = [
    ("kubernetes", "kubernetes/base/hub/deployment.yaml", "livenessProbe:", "livenesProbe:", "livenesProbe"),
    ("kubernetes", "kubernetes/base/worker/deployment.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", "readOnlyRootFilesystem is not true"),
    ("kubernetes", "kubernetes/base/worker-video/deployment-patch.yaml", "terminationGracePeriodSeconds: 3665", "terminationGracePeriodSeconds: 600", "terminationGracePeriodSeconds 600"),
    ("kubernetes", "kubernetes/base/worker-llm/worker.toml", 'listen = "0.0.0.0:9100"', 'listen = "0.0.0.0:9101"', "http.listen port 9101"),
    ("kubernetes", "kubernetes/base/worker-audio/kustomization.yaml", "ainern2d_hub_desired_replicas{", "ainern2d_hub_desired_replica{", "ainern2d_hub_desired_replica,"),
    ("kubernetes", "kubernetes/base/worker-lipsync/kustomization.yaml", '(max(ainern2d_hub_desired_replicas{kind="lipsync"})', '(max(ainern2d_hub_desired_replicas{kind="lipsync"}', "is not PromQL"),
    ("kubernetes", "kubernetes/base/worker-llm/kustomization.yaml", 'ainern2d_hub_backlog{kind="llm"}) / 500', 'ainern2d_hub_backlog{kind="video"}) / 500', "for kind 'video'"),
    ("kubernetes", "kubernetes/base/worker/scaledobject.yaml", "  minReplicaCount: 1", "  minReplicaCont: 1", "minReplicaCont"),
    ("kubernetes", "kubernetes/base/worker/scaledobject.yaml", "    failureThreshold: 4", "    failureThreshold: four", "failureThreshold"),
    ("kubernetes", "kubernetes/base/worker/scaledobject.yaml", "  pollingInterval: 30", "  pollingInterval: \"30\"", "KEDA's ScaledObject schema"),
    ("kubernetes", "kubernetes/base/worker-llm/deployment-patch.yaml", "              nvidia.com/gpu: 1\n", "", "requests no nvidia.com/gpu"),
    ("kubernetes", "kubernetes/base/kustomization.yaml", "  - worker-video\n", "  - worker-vidoe\n", "kustomize build failed"),
    ("kubernetes", "kubernetes/base/worker/kustomization.yaml", "  - pdb.yaml\n", "", "covered by 0 PodDisruptionBudgets"),
    ("kubernetes", "kubernetes/overlays/dev/workers-patch.yaml", "      memory: 1Gi\n", "      memory: 1Gi\n      nvidia.com/gpu: 1\n", "a mock worker requests a GPU"),
    ("nomad", "nomad/ainern2d-worker.nomad.hcl", 'kill_timeout = "660s"', 'kill_timeout = "60s"', "kill_timeout 60s"),
    ("nomad", "nomad/ainern2d-worker.nomad.hcl", '      kill_signal  = "SIGTERM"', '      kill_signall = "SIGTERM"', "`kill_signall`"),
    ("nomad", "nomad/ainern2d-worker.nomad.hcl", 'device "nvidia/gpu"', 'device "nvidia/gpuu"', "no nvidia/gpu device"),
    ("nomad", "nomad/ainern2d-hub.nomad.hcl", "        path     = \"/ready\"", "        path     = \"/readyz\"", "not /health and /ready"),
    ("nomad", "nomad/ainern2d-hub.nomad.hcl", "  type        = \"service\"\n", "  type        = \"service\"\n  }\n", "not valid HCL2"),
    ("systemd", "systemd/ainern2d-worker@video.service.d/stop-timeout.conf", "TimeoutStopSec=3660", "TimeoutStopSec=60", "TimeoutStopSec 60"),
    ("systemd", "systemd/ainern2d-worker@.service", "\nProtectSystem=strict\n", "\nProtectSytem=strict\n", "Unknown key"),
    ("systemd", "systemd/ainern2d-hub.service", "KillSignal=SIGTERM", "KillSignal=SIGKILL", "not SIGTERM"),
    ("systemd", "systemd/ainern2d-hub.service", "Restart=on-failure", "Restart=on-fialure", "systemd-analyze verify"),
    ("systemd", "systemd/ainern2d-worker@.service", "Restart=always", "Restart=on-failure", "Restart= is not always"),
    ("nomad", "nomad/ainern2d-worker.nomad.hcl", 'mode     = "delay"', 'mode     = "fail"', "no restart"),
    ("kubernetes", "kubernetes/base/worker/deployment.yaml", "            terminationGracePeriodSeconds: 120\n", "", "liveness probe has no terminationGracePeriodSeconds"),
]


def run_checks(deploy, repo, args, areas, schemas):
    problems = common.Problems()
    metrics = common.registered_metrics(repo, problems)
    if "kubernetes" in areas:
        k8s.check(deploy / "kubernetes", repo, args.kustomize, args.npm_dir, schemas, metrics, problems)
    if "nomad" in areas:
        nomad.check(deploy / "nomad", problems)
    if "systemd" in areas:
        systemd.check(deploy / "systemd", problems)
    if "metrics" in areas:
        for path in sorted(p for p in deploy.rglob("*") if p.is_file() and p.suffix in (".yaml", ".hcl", ".md", ".toml")):
            for name in sorted(common.metric_tokens(path.read_text()) - metrics):
                problems.add(path.relative_to(deploy.parent), f"names the metric {name}, which neither hub/src/metrics.rs nor worker/src/metrics.rs registers")
    return problems


def self_test(repo, args, schemas):
    failures = []
    with tempfile.TemporaryDirectory(prefix="ainern2d-deploy-selftest-") as tmp:
        copy = Path(tmp) / "repo"
        for rel in ("hub/src/metrics.rs", "worker/src/metrics.rs"):
            (copy / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(repo / rel, copy / rel)
        for area, rel, old, new, expect in MUTATIONS:
            deploy = copy / "deploy"
            if deploy.exists():
                shutil.rmtree(deploy)
            shutil.copytree(repo / "deploy", deploy)
            path = deploy / rel
            text = path.read_text()
            at = text.find(old)
            line = text[text.rfind("\n", 0, at) + 1:at].strip() if at >= 0 else ""
            if at < 0 or line.startswith(("#", "//")):
                failures.append(f"mutation of {rel}: {old!r} is not in the file outside a comment; update MUTATIONS")
                continue
            path.write_text(text.replace(old, new, 1))
            problems = run_checks(deploy, copy, args, {area}, schemas)
            caught = [item for item in problems.items if expect in item]
            if not caught:
                seen = "; ".join(problems.items[:3]) or "no problem at all"
                failures.append(f"mutation of {rel} ({old!r} -> {new!r}) was not caught as {expect!r}; got: {seen}")
            else:
                shown = caught[0].replace(str(copy) + "/", "")
                print(f"  refused {rel}: {shown if len(shown) < 220 else shown[:217] + '...'}")
    return failures


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--kustomize", required=True, help='e.g. "kubectl kustomize" or "kustomize build"')
    parser.add_argument("--npm-dir", type=Path, required=True)
    parser.add_argument("--no-self-test", action="store_true")
    args = parser.parse_args()
    args.kustomize = shlex.split(args.kustomize)
    repo = args.repo.resolve()
    schemas = [k8s.Schemas(v) for v in k8s.VERSIONS]
    started = time.monotonic()
    problems = run_checks(repo / "deploy", repo, args, {"kubernetes", "nomad", "systemd", "metrics"}, schemas)
    bins = common.find_binaries(repo)
    if bins:
        count = common.check_with_binaries(bins, problems)
        programs = f"; {count} configs accepted by the built programs in {bins} (--print-config)"
    else:
        programs = "; no built ainern2d-worker/ainern2d-hub found, so the programs' own config parsers were not run"
    if problems:
        print(f"deploy/ has {len(problems.items)} problem(s):")
        for item in problems.items:
            print(f"  FAIL {item}")
        return 1
    print(f"deploy/: every file valid ({time.monotonic() - started:.1f} s): kustomize builds of "
          f"{', '.join(k8s.OVERLAYS)} against Kubernetes {' and '.join(k8s.VERSIONS)} schemas, KEDA's and our "
          f"ScaledObject schemas, PromQL and metric names; Nomad jobs; systemd units{programs}")
    if args.no_self_test:
        return 0
    started = time.monotonic()
    failures = self_test(repo, args, schemas)
    if failures:
        print("the validator's self-test failed: a broken file went through")
        for f in failures:
            print(f"  FAIL {f}")
        return 1
    print(f"self-test: all {len(MUTATIONS)} deliberately broken copies were refused ({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
