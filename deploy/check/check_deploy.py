"""Validates everything under deploy/ (run through scripts/check-deploy.sh, which installs the tools).

  python check_deploy.py --repo REPO --kustomize "kubectl kustomize" --npm-dir DIR [--no-self-test]
  python check_deploy.py --repo REPO --kustomize "" --no-renderer-reason WHY --npm-dir DIR   # no kustomize

Kubernetes is validated in its committed renders (deploy/kubernetes/rendered/, render.py), so everything
but the drift check runs without kustomize. First every real file is checked; then, unless
--no-self-test, each mutation below is applied to a copy of deploy/ and must make the checks fail with
the expected message: a check that cannot fail is caught here, and a mutation whose text no longer exists
in its file fails too (so the list stays true). How each is checked (HOW) follows from its file unless a
sixth field names it:
  render  a source under kubernetes/ (not rendered/): the copy's renders are regenerated as by --render,
          then validated (kustomize needed);
  stale   a source changed without --render: only the drift check can see it (kustomize needed);
  drift   a committed render edited by hand, still valid: only the drift check can see it (kustomize needed);
  hidden  the copy as mutated, with kustomize hidden from the checks: a committed render, Nomad, systemd.
Without kustomize the cases that need it are skipped and counted; the rendered-file cases repeat each
Kubernetes source case on the committed renders, so the validation itself is still proven able to fail."""

import argparse
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import common
import render
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
    # A source changed without `--render`, and a render edited by hand: valid objects that only the drift
    # check (a renderer) can tell from the overlays.
    ("kubernetes", "kubernetes/overlays/dev/workers-patch.yaml", "      memory: 1Gi\n", "      memory: 2Gi\n", render.DRIFT, "stale"),
    ("kubernetes", "kubernetes/rendered/dev.yaml", "            memory: 1Gi\n", "            memory: 2Gi\n", render.DRIFT, "drift"),
    # The committed renders broken, checked with the renderer hidden: the validation alone refuses them.
    ("kubernetes", "kubernetes/rendered/dev.yaml", "\nkind: Namespace\n", "\nkind: [Namespace\n", "is not YAML"),
    ("kubernetes", "kubernetes/rendered/prod.yaml", "# GENERATED by `scripts/check-deploy.sh --render`", "# generated by hand", "generated-file header"),
    ("kubernetes", "kubernetes/rendered/prod.yaml", "livenessProbe:", "livenesProbe:", "livenesProbe"),
    ("kubernetes", "kubernetes/rendered/dev.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", "readOnlyRootFilesystem is not true"),
    ("kubernetes", "kubernetes/rendered/prod.yaml", "terminationGracePeriodSeconds: 3665", "terminationGracePeriodSeconds: 600", "terminationGracePeriodSeconds 600"),
    ("kubernetes", "kubernetes/rendered/prod.yaml", 'listen = "0.0.0.0:9100"', 'listen = "0.0.0.0:9101"', "http.listen port 9101"),
    ("kubernetes", "kubernetes/rendered/prod.yaml", "ainern2d_hub_desired_replicas{", "ainern2d_hub_desired_replica{", "ainern2d_hub_desired_replica,"),
    ("kubernetes", "kubernetes/rendered/prod.yaml", '(max(ainern2d_hub_desired_replicas{kind="lipsync"})', '(max(ainern2d_hub_desired_replicas{kind="lipsync"}', "is not PromQL"),
    ("kubernetes", "kubernetes/rendered/prod.yaml", 'ainern2d_hub_backlog{kind="llm"}) / 500', 'ainern2d_hub_backlog{kind="video"}) / 500', "for kind 'video'"),
    ("kubernetes", "kubernetes/rendered/prod.yaml", "  minReplicaCount: 1", "  minReplicaCont: 1", "minReplicaCont"),
    ("kubernetes", "kubernetes/rendered/prod.yaml", "    failureThreshold: 4", "    failureThreshold: four", "failureThreshold"),
    ("kubernetes", "kubernetes/rendered/prod.yaml", "  pollingInterval: 30", "  pollingInterval: \"30\"", "KEDA's ScaledObject schema"),
    ("kubernetes", "kubernetes/rendered/prod.yaml", "            nvidia.com/gpu: 1\n", "", "requests no nvidia.com/gpu"),
    ("kubernetes", "kubernetes/rendered/dev.yaml", "  name: ainern2d-worker-audio\n  namespace: ainern2d-dev\nspec:\n  maxUnavailable: 1\n  selector:\n    matchLabels:\n      ainern2d.io/kind: audio\n",
     "  name: ainern2d-worker-audio\n  namespace: ainern2d-dev\nspec:\n  maxUnavailable: 1\n  selector:\n    matchLabels:\n      ainern2d.io/kind: audi\n", "covered by 0 PodDisruptionBudgets"),
    ("kubernetes", "kubernetes/rendered/dev.yaml", "            memory: 1Gi\n", "            memory: 1Gi\n            nvidia.com/gpu: 1\n", "a mock worker requests a GPU"),
    ("kubernetes", "kubernetes/rendered/prod.yaml", "          terminationGracePeriodSeconds: 120\n", "", "liveness probe has no terminationGracePeriodSeconds"),
]
NEEDS_RENDERER = ("render", "stale", "drift")


def how_of(mutation):
    if len(mutation) > 5:
        return mutation[5]
    rel = mutation[1]
    if rel.startswith("kubernetes/") and not rel.startswith("kubernetes/rendered/"):
        return "render"
    return "hidden"


def run_checks(deploy, repo, args, areas, schemas, kustomize, problems=None):
    """kustomize: the renderer for the drift check, or None to validate the committed renders only."""
    problems = problems if problems is not None else common.Problems()
    metrics = common.registered_metrics(repo, problems)
    if "kubernetes" in areas:
        k8s.check(deploy / "kubernetes", repo, kustomize, args.npm_dir, schemas, metrics, problems)
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
    failures, skipped = [], []
    with tempfile.TemporaryDirectory(prefix="ainern2d-deploy-selftest-") as tmp:
        copy = Path(tmp) / "repo"
        for rel in ("hub/src/metrics.rs", "worker/src/metrics.rs"):
            (copy / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(repo / rel, copy / rel)
        for mutation in MUTATIONS:
            area, rel, old, new, expect = mutation[:5]
            how = how_of(mutation)
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
            if how in NEEDS_RENDERER and not args.kustomize:
                skipped.append(f"{rel} ({how})")
                continue
            path.write_text(text.replace(old, new, 1))
            problems = common.Problems()
            if how == "render":
                # What `--render` would commit after this edit (a failed build is reported as such).
                problems.items.extend(render.write_all(args.kustomize, deploy / "kubernetes")[1])
            kustomize = args.kustomize if how in ("stale", "drift") else None
            run_checks(deploy, copy, args, {area}, schemas, kustomize, problems)
            caught = [item for item in problems.items if expect in item]
            if not caught:
                seen = "; ".join(i.split("\n", 1)[0] for i in problems.items[:3]) or "no problem at all"
                failures.append(f"mutation of {rel} ({old!r} -> {new!r}, {how}) was not caught as {expect!r}; got: {seen}")
            else:
                shown = caught[0].split("\n", 1)[0].replace(str(copy) + "/", "")
                tag = {"render": " [rendered again]", "stale": " [not rendered]", "drift": " [drift]"}.get(how, "")
                if how == "hidden" and area == "kubernetes":
                    tag = " [renderer hidden]"
                print(f"  refused {rel}{tag}: {shown if len(shown) < 220 else shown[:217] + '...'}")
    return failures, skipped


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--kustomize", required=True, help='e.g. "kubectl kustomize" or "kustomize build"; "" for none')
    parser.add_argument("--no-renderer-reason", default="no kubectl or kustomize")
    parser.add_argument("--npm-dir", type=Path, required=True)
    parser.add_argument("--no-self-test", action="store_true")
    args = parser.parse_args()
    args.kustomize = shlex.split(args.kustomize) or None
    repo = args.repo.resolve()
    if args.kustomize:
        drift = f"identical to a fresh render ({render.renderer_version(args.kustomize)})"
    else:
        drift = f"drift check SKIPPED ({args.no_renderer_reason})"
        print(f"check-deploy: drift check SKIPPED: {args.no_renderer_reason}. The committed renders "
              f"deploy/kubernetes/rendered/*.yaml are validated in full, but whether they still match the overlays "
              f"is not checked here; install kubectl or a kustomize v5 binary to check it.")
    schemas = [k8s.Schemas(v) for v in k8s.VERSIONS]
    started = time.monotonic()
    problems = run_checks(repo / "deploy", repo, args, {"kubernetes", "nomad", "systemd", "metrics"}, schemas, args.kustomize)
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
    print(f"deploy/: every file valid ({time.monotonic() - started:.1f} s): the committed renders of "
          f"{', '.join(k8s.OVERLAYS)} ({drift}) against Kubernetes {' and '.join(k8s.VERSIONS)} schemas, KEDA's "
          f"and our ScaledObject schemas, PromQL and metric names; Nomad jobs; systemd units{programs}")
    if args.no_self_test:
        return 0
    started = time.monotonic()
    failures, skipped = self_test(repo, args, schemas)
    if failures:
        print("the validator's self-test failed: a broken file went through")
        for f in failures:
            print(f"  FAIL {f}")
        return 1
    ran = len(MUTATIONS) - len(skipped)
    print(f"self-test: all {ran} deliberately broken copies were refused ({time.monotonic() - started:.1f} s)")
    if skipped:
        modes = {"render": "Kubernetes source edits rendered again", "stale": "source edit not rendered (drift)",
                 "drift": "render edited by hand (drift)"}
        counts = ", ".join(f"{sum(1 for s in skipped if s.endswith(f'({m})'))} {what}" for m, what in modes.items())
        print(f"self-test: {len(skipped)} more that need kustomize SKIPPED ({args.no_renderer_reason}): {counts}; "
              f"the Kubernetes validation is proven by the {sum(1 for m in MUTATIONS if m[1].startswith('kubernetes/rendered/') and how_of(m) == 'hidden')} "
              f"broken committed renders above")
    return 0


if __name__ == "__main__":
    sys.exit(main())
