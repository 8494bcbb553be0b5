"""Checks of deploy/kubernetes: the committed render of each overlay (rendered/<overlay>.yaml, written by
`scripts/check-deploy.sh --render`; render.py) is what is validated, so no kustomize is needed; with one,
each overlay is rendered again and a committed file that differs fails (drift). Every rendered object
validates against the Kubernetes OpenAPI schemas (strict: unknown fields fail) of the oldest and the
newest version we support, ScaledObjects against KEDA's CRD schema and a strict schema of the fields used;
then what the schemas cannot say: the worker's and hub's configs against their pods (ports, probes, drain
budget, volumes), the security contexts, selectors and budgets, network policies and the autoscaling
queries."""

import json
import re
import subprocess
from pathlib import Path, PurePosixPath

import jsonschema
import promql_parser
import referencing
import yaml

import common
import render

# The Kubernetes versions the manifests are checked against: k3s/k8s 1.29 (the oldest we claim) and the
# newest the schemas installed know.
VERSIONS = ("1.29.0", "1.37.0")
OVERLAYS = tuple(f"overlays/{name}" for name in render.OVERLAYS)
KINDS = ("llm", "audio", "lipsync", "video")
# After shutdown.grace_s the worker still stops cancelled jobs, sends its drained heartbeat, closes the
# broker session, stops a supervised ComfyUI, cleans up multipart uploads and its probes: up to ~45 s.
AFTER_GRACE_S = 60
PART_OF = ("app.kubernetes.io/part-of", "ainern2d")


class Schemas:
    """The strict OpenAPI-derived schemas that kubernetes-validate ships, loaded once per version."""

    def __init__(self, version):
        import kubernetes_validate

        root = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{version}-local-strict"
        if not root.is_dir():
            raise SystemExit(f"kubernetes-validate has no schemas for Kubernetes {version} ({root})")
        self.root = root
        self.version = version
        definitions = json.loads((root / "_definitions.json").read_text())
        self.registry = referencing.Resource.from_contents(definitions, default_specification=referencing.jsonschema.DRAFT202012) @ referencing.Registry()
        self.validators = {}

    def validate(self, doc):
        api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", doc.get("apiVersion", ""))
        name = f"{str(doc.get('kind', '')).lower()}-{api}.json"
        if name not in self.validators:
            path = self.root / name
            if not path.exists():
                return [f"no Kubernetes {self.version} schema for {doc.get('apiVersion')} {doc.get('kind')}"]
            schema = json.loads(path.read_text())
            registry = referencing.Resource.from_contents(schema, default_specification=referencing.jsonschema.DRAFT202012) @ self.registry
            self.validators[name] = jsonschema.Draft202012Validator(schema, registry=registry)
        return [
            f"Kubernetes {self.version} schema: {'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
            for e in self.validators[name].iter_errors(doc)
        ]


def load_rendered(root, name, problems):
    """The committed render of overlays/<name>: (its objects or None when unreadable, its body text after
    the header or None, its first line)."""
    path = render.rendered_path(root, name)
    where = f"rendered/{name}.yaml"
    if not path.is_file():
        problems.add(where, f"missing: generate it with `{render.FIX}` and commit it")
        return None, None, ""
    text = path.read_text()
    body, wrong = render.split(text, name)
    if wrong:
        problems.add(where, wrong)
    try:
        docs = [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as e:
        problems.add(where, f"is not YAML: {' '.join(str(e).split())}")
        return None, body, text.split("\n", 1)[0]
    for i, d in enumerate(docs):
        if not isinstance(d, dict) or not isinstance(d.get("metadata"), dict):
            problems.add(where, f"document {i + 1} is not a Kubernetes object")
            return None, body, text.split("\n", 1)[0]
    return docs, body, text.split("\n", 1)[0]


def strays(root, problems):
    """An overlay without a committed render, or a render without an overlay, would go unchecked."""
    known = set(render.OVERLAYS)
    for d in sorted(p for p in (root / "overlays").iterdir() if p.is_dir()) if (root / "overlays").is_dir() else []:
        if d.name not in known:
            problems.add(f"overlays/{d.name}", "an overlay that OVERLAYS in deploy/check/render.py does not list: it is neither rendered nor validated")
    for f in sorted((root / "rendered").iterdir()) if (root / "rendered").is_dir() else []:
        if f.suffix != ".yaml" or f.stem not in known:
            problems.add(f"rendered/{f.name}", "no overlay renders it (OVERLAYS in deploy/check/render.py): a stale render")


def name_of(doc):
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def check(root, repo, kustomize, npm_dir, schemas, metrics, problems):
    """root: the deploy/kubernetes directory; repo: the repository (for the hub's base config)."""
    root = Path(root)
    strict_so = jsonschema.Draft202012Validator(json.loads((Path(__file__).parent / "scaledobject.schema.json").read_text()))
    scaled = []
    hub_policy = hub_backlog_policy(root, problems)
    strays(root, problems)
    fresh = render.render_all(kustomize, root) if kustomize else {}
    for name in render.OVERLAYS:
        overlay = f"rendered/{name}.yaml"
        docs, body, first = load_rendered(root, name, problems)
        if kustomize:
            out, err = fresh[name]
            if err is not None:
                problems.add(root / "overlays" / name, f"kustomize build failed: {err}")
            elif body is not None:
                wrong = render.drift(kustomize, name, body, first, out)
                if wrong:
                    problems.add(overlay, wrong)
        if not docs:
            if docs is not None:
                problems.add(overlay, "holds no objects")
            continue
        names = [name_of(d) for d in docs]
        for dup in sorted({n for n in names if names.count(n) > 1}):
            problems.add(overlay, f"{dup} is rendered twice")
        for doc in docs:
            where = f"{overlay}: {name_of(doc)}"
            if doc.get("kind") == "ScaledObject":
                for e in strict_so.iter_errors(doc):
                    problems.add(where, f"ScaledObject schema (deploy/check): {'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}")
                scaled.append({"where": where, "object": doc})
                continue
            for s in schemas:
                for e in s.validate(doc):
                    problems.add(where, e)
        try:
            Invariants(overlay, docs, metrics, hub_policy, problems).run()
        except (KeyError, TypeError, AttributeError, IndexError, ValueError) as e:
            # A hand-edited render can lack what kustomize always writes; the schemas name the cause.
            problems.add(overlay, f"the invariants could not be checked ({type(e).__name__}: {e}): an object lacks a field they read")
    if scaled:
        keda_schema(scaled, npm_dir, problems)
    elif not problems:
        problems.add("deploy/kubernetes", "no overlay renders a ScaledObject")


def hub_backlog_policy(root, problems):
    """The hub's policy.backlog threshold and per_replica, from the base hub.toml."""
    path = root / "base/hub/hub.toml"
    cfg = common.parse_toml(path.read_text(), path, problems) if path.exists() else None
    if cfg is None:
        problems.add(path, "missing or invalid: the ScaledObject queries are checked against it")
        return None
    return tuple(common.effective(cfg, k, common.HUB_DEFAULTS) for k in ("policy.backlog.threshold", "policy.backlog.per_replica"))


def keda_schema(scaled, npm_dir, problems):
    script = Path(__file__).parent / "keda_validate.mjs"
    result = subprocess.run(["node", str(script), str(npm_dir)], input=json.dumps(scaled), capture_output=True, text=True)
    if result.returncode != 0:
        lines = [l for l in result.stdout.splitlines() if not l.startswith("checked ")]
        for line in lines or [result.stderr.strip()[-2000:]]:
            problems.add("deploy/kubernetes", line)


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def probe_port(container, probe):
    port = (probe or {}).get("httpGet", {}).get("port")
    for p in container.get("ports", []):
        if port in (p.get("name"), p.get("containerPort")):
            return p.get("containerPort")
    return None


def prestop_seconds(container):
    hook = container.get("lifecycle", {}).get("preStop")
    if not hook:
        return None
    if "sleep" in hook:
        return int(hook["sleep"].get("seconds", 0))
    command = hook.get("exec", {}).get("command", [])
    if len(command) == 2 and PurePosixPath(command[0]).name == "sleep" and command[1].isdigit():
        return int(command[1])
    return 0


def mount_for(container, volumes, path):
    """The volume a path of the container lies on (the longest mountPath that contains it)."""
    best = None
    for m in container.get("volumeMounts", []):
        mp = m.get("mountPath", "")
        if path == mp or path.startswith(mp.rstrip("/") + "/"):
            if best is None or len(mp) > len(best[0].get("mountPath", "")):
                best = (m, volumes.get(m.get("name"), {}))
    return best


class Invariants:
    def __init__(self, overlay, docs, metrics, hub_policy, problems):
        self.overlay = overlay
        self.docs = docs
        self.metrics = metrics
        self.hub_policy = hub_policy
        self.p = problems
        self.by_kind = {}
        for d in docs:
            self.by_kind.setdefault(d.get("kind"), []).append(d)

    def add(self, doc, what):
        self.p.add(f"{self.overlay}: {name_of(doc)}", what)

    def objects(self, kind):
        return self.by_kind.get(kind, [])

    def find(self, kind, name):
        return next((d for d in self.objects(kind) if d["metadata"]["name"] == name), None)

    def run(self):
        deployments = self.objects("Deployment")
        ours = [d for d in deployments if d["metadata"].get("labels", {}).get(PART_OF[0]) == PART_OF[1]]
        components = {d["metadata"]["labels"].get("app.kubernetes.io/component") for d in ours}
        if components != {"hub", "worker"}:
            self.p.add(self.overlay, f"expected hub and worker Deployments, found components {sorted(filter(None, components))}")
        workers = [d for d in ours if d["metadata"]["labels"].get("app.kubernetes.io/component") == "worker"]
        kinds = sorted(d["spec"]["template"]["metadata"]["labels"].get("ainern2d.io/kind", "?") for d in workers)
        if kinds != sorted(KINDS):
            self.p.add(self.overlay, f"expected one worker Deployment per kind {sorted(KINDS)}, found {kinds}")
        restricted = {
            n["metadata"]["name"] for n in self.objects("Namespace")
            if n["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce") == "restricted"
        }
        for d in deployments:
            self.selector(d)
            if d in ours or d["metadata"].get("namespace") in restricted:
                self.restricted(d)
        for d in ours:
            self.ours(d)
        for d in workers:
            self.worker(d)
        for d in ours:
            if d["metadata"]["labels"].get("app.kubernetes.io/component") == "hub":
                self.hub(d)
        self.budgets(ours)
        self.policies(ours)
        self.scaling(workers)
        self.secrets(deployments)

    def selector(self, d):
        sel = d["spec"].get("selector", {}).get("matchLabels", {})
        labels = d["spec"]["template"]["metadata"].get("labels", {})
        if not selects(sel, labels):
            self.add(d, f"selector {sel} does not match its pod labels {labels}")
        for other in self.objects("Deployment"):
            if other is not d and selects(sel, other["spec"]["template"]["metadata"].get("labels", {})):
                self.add(d, f"its selector also matches the pods of {name_of(other)}: they would fight over them")

    def restricted(self, d):
        """The "restricted" Pod Security Standard, the parts that apply to these pods."""
        spec = d["spec"]["template"]["spec"]
        pod = spec.get("securityContext", {})
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(key):
                self.add(d, f"{key} is set")
        if any("hostPath" in v for v in spec.get("volumes", [])):
            self.add(d, "a hostPath volume")
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            sc = c.get("securityContext", {})
            what = f"container {c['name']}"
            if not (sc.get("runAsNonRoot", pod.get("runAsNonRoot")) is True):
                self.add(d, f"{what}: runAsNonRoot is not true")
            if sc.get("runAsUser", pod.get("runAsUser")) == 0:
                self.add(d, f"{what}: runs as uid 0")
            if sc.get("allowPrivilegeEscalation") is not False:
                self.add(d, f"{what}: allowPrivilegeEscalation is not false")
            if sc.get("privileged"):
                self.add(d, f"{what}: privileged")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                self.add(d, f"{what}: capabilities do not drop ALL")
            if sc.get("capabilities", {}).get("add"):
                self.add(d, f"{what}: adds capabilities")
            seccomp = sc.get("seccompProfile", pod.get("seccompProfile", {})).get("type")
            if seccomp not in ("RuntimeDefault", "Localhost"):
                self.add(d, f"{what}: seccompProfile is {seccomp!r}, not RuntimeDefault")

    def ours(self, d):
        spec = d["spec"]["template"]["spec"]
        if spec.get("automountServiceAccountToken") is not False:
            self.add(d, "automountServiceAccountToken is not false (it never calls the API)")
        for c in spec["containers"]:
            sc = c.get("securityContext", {})
            if sc.get("readOnlyRootFilesystem") is not True:
                self.add(d, f"container {c['name']}: readOnlyRootFilesystem is not true")
            if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/health":
                self.add(d, f"container {c['name']}: the liveness probe is not GET /health")
            if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/ready":
                self.add(d, f"container {c['name']}: the readiness probe is not GET /ready")
            for probe in ("livenessProbe", "readinessProbe"):
                if c.get(probe) and probe_port(c, c[probe]) is None:
                    self.add(d, f"container {c['name']}: {probe} names a port the container does not declare")
            if prestop_seconds(c) is None:
                self.add(d, f"container {c['name']}: no preStop hook")
        annotations = d["spec"]["template"]["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") == "true":
            ports = {str(p.get("containerPort")) for c in spec["containers"] for p in c.get("ports", [])}
            if annotations.get("prometheus.io/port") not in ports:
                self.add(d, f"prometheus.io/port {annotations.get('prometheus.io/port')} is no container port {sorted(ports)}")

    def config(self, d, container, env_name, defaults, prefix):
        """The program's TOML (the ConfigMap mounted where its config variable points) and its env."""
        env = {e["name"]: e.get("value") for e in container.get("env", []) if "value" in e}
        path = env.get(env_name)
        if not path:
            self.add(d, f"container {container['name']}: {env_name} is not set")
            return None, env
        volumes = {v["name"]: v for v in d["spec"]["template"]["spec"].get("volumes", [])}
        found = mount_for(container, volumes, path)
        if not found or "configMap" not in found[1]:
            self.add(d, f"{env_name}={path} is on no ConfigMap volume")
            return None, env
        mount, volume = found
        cm = self.find("ConfigMap", volume["configMap"]["name"])
        key = str(PurePosixPath(path).relative_to(mount["mountPath"]))
        if cm is None or key not in cm.get("data", {}):
            self.add(d, f"{env_name}={path}: ConfigMap {volume['configMap']['name']} with key {key} is not rendered")
            return None, env
        where = f"{self.overlay}: ConfigMap/{cm['metadata']['name']} {key}"
        program = "worker" if prefix == "AINERN2D_WORKER_" else "hub"
        overrides = {k: v for k, v in env.items() if k.startswith(prefix) and k != env_name and v is not None}
        self.p.configs.append((program, cm["data"][key], overrides, where))
        cfg = common.parse_toml(cm["data"][key], where, self.p)
        if cfg is not None:
            text = cm["data"][key]
            if re.search(r"secret_access_key|access_key_id", text) or re.search(r"amqps?://[^:/@\s]+:[^@\s]+@", text):
                self.p.add(where, "holds a credential: it belongs in a Secret")
            port = common.listen_port(common.effective(cfg, "http.listen", defaults, env, prefix), where, self.p)
            declared = {p.get("containerPort") for p in container.get("ports", [])}
            if port is not None and port not in declared:
                self.add(d, f"http.listen port {port} (config) is not a container port {sorted(declared)}")
            for probe in ("livenessProbe", "readinessProbe"):
                if container.get(probe) and probe_port(container, container[probe]) not in (None, port):
                    self.add(d, f"{probe} checks port {probe_port(container, container[probe])}, the config listens on {port}")
        return cfg, env

    def worker(self, d):
        spec = d["spec"]["template"]["spec"]
        kind = d["spec"]["template"]["metadata"]["labels"].get("ainern2d.io/kind")
        c = spec["containers"][0]
        cfg, env = self.config(d, c, "AINERN2D_WORKER_CONFIG", common.WORKER_DEFAULTS, "AINERN2D_WORKER_")
        if cfg is None:
            return
        get = lambda key: common.effective(cfg, key, common.WORKER_DEFAULTS, env, "AINERN2D_WORKER_")
        if common.dig(cfg, "jobs.kinds") != [kind]:
            self.add(d, f"its config serves {common.dig(cfg, 'jobs.kinds')}, the Deployment is labelled kind {kind!r}")
        backend = common.dig(cfg, f"jobs.backends.{kind}") or get("jobs.backend")
        grace = int(get("shutdown.grace_s"))
        pre = prestop_seconds(c) or 0
        budget = spec.get("terminationGracePeriodSeconds", 30)
        if budget < pre + grace + AFTER_GRACE_S:
            self.add(d, f"terminationGracePeriodSeconds {budget} < preStop {pre} + shutdown.grace_s {grace} + {AFTER_GRACE_S}: the kubelet would SIGKILL a draining worker")
        longest = common.dig(cfg, f"jobs.max_runtime_s.{kind}")
        if longest is not None and grace < longest:
            self.add(d, f"shutdown.grace_s {grace} is shorter than the longest job (jobs.max_runtime_s.{kind} {longest})")
        restart_budget = c.get("livenessProbe", {}).get("terminationGracePeriodSeconds")
        if restart_budget is None or restart_budget > 300:
            self.add(d, "the liveness probe has no terminationGracePeriodSeconds of at most 300: a stalled worker's restart would wait for the whole drain budget")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        writable = lambda path: (m := mount_for(c, volumes, path)) and not m[0].get("readOnly") and "emptyDir" in m[1]
        scratch = str(get("scratch_dir") or "")
        if not scratch or not writable(scratch):
            self.add(d, f"scratch_dir {scratch!r} is not on a writable emptyDir (the root filesystem is read-only)")
        if not writable("/tmp"):
            self.add(d, "/tmp is not a writable emptyDir")
        gpu = c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
        if backend == "mock" and gpu:
            self.add(d, "a mock worker requests a GPU")
        if backend in ("inference", "comfyui") and not gpu:
            self.add(d, f"a worker on the {backend} backend requests no nvidia.com/gpu")
        if backend == "inference":
            manifest = common.dig(cfg, "models.manifest")
            if not manifest:
                self.add(d, "jobs.backend inference needs models.manifest")
            elif not mount_for(c, volumes, manifest):
                self.add(d, f"models.manifest {manifest} is on no volume")
        if backend == "comfyui":
            comfy = cfg.get("comfyui") or {}
            if not str(comfy.get("url", "")).startswith("http"):
                self.add(d, "jobs.backend comfyui needs comfyui.url")
            for key in ("templates",):
                if comfy.get(key) and not mount_for(c, volumes, comfy[key]):
                    self.add(d, f"comfyui.{key} {comfy[key]} is on no volume")

    def hub(self, d):
        c = d["spec"]["template"]["spec"]["containers"][0]
        cfg, env = self.config(d, c, "AINERN2D_HUB_CONFIG", common.HUB_DEFAULTS, "AINERN2D_HUB_")
        if cfg is None:
            return
        token = common.effective(cfg, "api.admin_token_file", {}, env, "AINERN2D_HUB_")
        volumes = {v["name"]: v for v in d["spec"]["template"]["spec"].get("volumes", [])}
        found = mount_for(c, volumes, token) if token else None
        if not found or "secret" not in found[1]:
            self.add(d, f"api.admin_token_file {token!r} is on no Secret volume (without a token every POST is 401)")
        services = [s for s in self.objects("Service") if selects(s["spec"].get("selector", {}), d["spec"]["template"]["metadata"]["labels"])]
        if not services:
            self.add(d, "no Service selects the hub")
        names = {p.get("name"): p.get("containerPort") for p in c.get("ports", [])}
        for s in services:
            for port in s["spec"].get("ports", []):
                target = port.get("targetPort", port.get("port"))
                if target not in names and target not in names.values():
                    self.p.add(f"{self.overlay}: {name_of(s)}", f"targetPort {target} is no port of the hub container")

    def budgets(self, ours):
        pdbs = self.objects("PodDisruptionBudget")
        for d in ours:
            labels = d["spec"]["template"]["metadata"]["labels"]
            matching = [p for p in pdbs if selects(p["spec"].get("selector", {}).get("matchLabels", {}), labels)]
            if len(matching) != 1:
                self.add(d, f"its pods are covered by {len(matching)} PodDisruptionBudgets (one expected: with two, evictions fail)")

    def policies(self, ours):
        policies = self.objects("NetworkPolicy")
        our_labels = [d["spec"]["template"]["metadata"]["labels"] for d in ours]
        for d, labels in zip(ours, our_labels):
            matching = [p for p in policies if selects(p["spec"].get("podSelector", {}).get("matchLabels", {}), labels)]
            types = {t for p in matching for t in p["spec"].get("policyTypes", [])}
            if not {"Ingress", "Egress"} <= types:
                self.add(d, f"NetworkPolicies cover {sorted(types) or 'nothing'} of its pods, not Ingress and Egress")
            ports = {port.get("port") for p in matching for rule in p["spec"].get("egress", []) for port in rule.get("ports", [])}
            if 53 not in ports:
                self.add(d, "its NetworkPolicies allow no DNS (port 53)")
        for p in policies:
            for rule in p["spec"].get("egress", []):
                for peer in rule.get("to", []):
                    sel = peer.get("podSelector", {}).get("matchLabels", {})
                    if any(k.startswith("ainern2d.io/") for k in sel) or any(selects(sel, l) for l in our_labels):
                        self.p.add(f"{self.overlay}: {name_of(p)}", f"an egress peer selects {sel}: that is one of ours, not a service we call")

    def scaling(self, workers):
        objects = self.objects("ScaledObject")
        if not objects:
            for d in workers:
                if d["spec"].get("replicas") is None:
                    self.add(d, "no ScaledObject and no replicas")
            return
        for d in workers:
            mine = [s for s in objects if s["spec"]["scaleTargetRef"]["name"] == d["metadata"]["name"]]
            if len(mine) != 1:
                self.add(d, f"{len(mine)} ScaledObjects target it (one expected)")
            if d["spec"].get("replicas") is not None:
                self.add(d, "sets replicas while a ScaledObject scales it (every apply would reset the count)")
        for s in objects:
            where = f"{self.overlay}: {name_of(s)}"
            target = self.find("Deployment", s["spec"]["scaleTargetRef"]["name"])
            if target is None:
                self.p.add(where, f"scaleTargetRef {s['spec']['scaleTargetRef']['name']} is no rendered Deployment")
                continue
            kind = target["spec"]["template"]["metadata"]["labels"].get("ainern2d.io/kind")
            if s["spec"].get("minReplicaCount", 0) > s["spec"].get("maxReplicaCount", 100):
                self.p.add(where, "minReplicaCount above maxReplicaCount")
            for t in s["spec"].get("triggers", []):
                self.query(where, t.get("metadata", {}), kind)

    def query(self, where, meta, kind):
        query = meta.get("query", "")
        try:
            ast = promql_parser.parse(query)
        except ValueError as e:
            self.p.add(where, f"the query is not PromQL ({e}): {query}")
            return
        selectors, numbers = [], []
        walk(ast, selectors, numbers)
        for sel in selectors:
            if sel.name not in self.metrics:
                self.p.add(where, f"the query reads {sel.name}, which neither hub/src/metrics.rs nor worker/src/metrics.rs registers")
            labels = {m.name: m.value for m in sel.matchers.matchers}
            if labels.get("kind") != kind:
                self.p.add(where, f"{sel.name} is read for kind {labels.get('kind')!r}, the target Deployment serves {kind!r}")
        if not selectors:
            self.p.add(where, "the query reads no metric")
        if meta.get("threshold") != "1":
            self.p.add(where, f"threshold {meta.get('threshold')!r}: with the replica-count query it must be \"1\"")
        if self.hub_policy and not set(self.hub_policy) <= set(numbers):
            self.p.add(where, f"the query's numbers {sorted(set(numbers))} do not include the hub's policy.backlog threshold and per_replica {list(self.hub_policy)}")

    def secrets(self, deployments):
        for d in deployments:
            for c in d["spec"]["template"]["spec"]["containers"]:
                for e in c.get("env", []):
                    ref = e.get("valueFrom", {}).get("secretKeyRef")
                    if not ref:
                        continue
                    secret = self.find("Secret", ref["name"])
                    # A Secret the overlay does not render is the operator's (README.md lists them).
                    if secret is not None and ref["key"] not in {**secret.get("data", {}), **secret.get("stringData", {})}:
                        self.add(d, f"{e['name']} reads key {ref['key']} of Secret {ref['name']}, which has no such key")


def walk(node, selectors, numbers):
    """The vector selectors and number literals of a parsed PromQL expression."""
    kind = type(node).__name__
    if kind == "VectorSelector":
        selectors.append(node)
        return
    if kind == "NumberLiteral":
        numbers.append(node.val)
        return
    for attr in ("expr", "lhs", "rhs", "args", "param", "vector_selector"):
        child = getattr(node, attr, None)
        if child is None:
            continue
        for item in child if isinstance(child, (list, tuple)) else [child]:
            walk(item, selectors, numbers)
