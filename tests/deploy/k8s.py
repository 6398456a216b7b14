"""Reading rendered Kubernetes objects: finding them, their pods, containers, ports, env, args."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
# What `kubectl kustomize` renders in these tests: the base (per-pod sync, not applied on its
# own) and every overlay.
TARGETS = {
    "base": DEPLOY / "base",
    "dev": DEPLOY / "overlays" / "dev",
    "prod": DEPLOY / "overlays" / "prod",
    "prod-cache": DEPLOY / "overlays" / "prod-cache",
}
OVERLAYS = ("dev", "prod", "prod-cache")
WORKLOADS = ("Deployment", "DaemonSet", "StatefulSet")
NAMESPACE = "ctr-scoring"
HASH_SUFFIX = re.compile(r"-[a-z0-9]{10}$")  # kustomize's generator hash (configMapGenerator)

Obj = dict[str, Any]


def name(obj: Obj) -> str:
    return obj["metadata"]["name"]


def base_name(obj: Obj) -> str:
    """The name without the hash kustomize appends to generated ConfigMaps."""
    n = name(obj)
    return HASH_SUFFIX.sub("", n) if obj["kind"] in ("ConfigMap", "Secret") else n


def find(docs: list[Obj], kind: str, wanted: str) -> Obj:
    hits = [d for d in docs if d["kind"] == kind and (name(d) == wanted or base_name(d) == wanted)]
    assert len(hits) == 1, f"expected one {kind} {wanted!r}, found {len(hits)}"
    return hits[0]


def find_all(docs: list[Obj], kind: str) -> list[Obj]:
    return [d for d in docs if d["kind"] == kind]


def workloads(docs: list[Obj]) -> list[Obj]:
    return [d for d in docs if d["kind"] in WORKLOADS]


def pod_spec(workload: Obj) -> Obj:
    return workload["spec"]["template"]["spec"]


def pod_labels(workload: Obj) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"].get("labels", {})


def containers(workload: Obj, *, init: bool = True) -> Iterator[tuple[Obj, bool]]:
    """(container, is_init) for every container of the pod template."""
    spec = pod_spec(workload)
    if init:
        for c in spec.get("initContainers", []):
            yield c, True
    for c in spec["containers"]:
        yield c, False


def container(workload: Obj, cname: str) -> Obj:
    hits = [c for c, _ in containers(workload) if c["name"] == cname]
    assert len(hits) == 1, f"{name(workload)}: expected one container {cname!r}"
    return hits[0]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector (matchLabels / matchExpressions, or a plain map) against labels."""
    match = selector.get("matchLabels", selector if "matchExpressions" not in selector else {})
    if any(labels.get(k) != v for k, v in match.items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def container_port(c: Obj, port: int | str) -> int:
    """A probe's or Service's port (a number or a port name) as the container's port number."""
    if isinstance(port, int):
        return port
    hits = [p["containerPort"] for p in c.get("ports", []) if p.get("name") == port]
    assert hits, f"container {c['name']!r} has no port named {port!r}"
    return hits[0]


def config_value(docs: list[Obj], ref: Obj) -> str:
    cm = find(docs, "ConfigMap", ref["name"])
    assert name(cm) == ref["name"], f"reference to {ref['name']!r} but the ConfigMap is {name(cm)!r}"
    return cm["data"][ref["key"]]


def env_values(docs: list[Obj], c: Obj) -> dict[str, str]:
    """The container's environment as the kubelet sets it, for values and ConfigMap keys (Secrets
    are named, not read: they are not in git for prod)."""
    out: dict[str, str] = {}
    for e in c.get("env", []):
        if "value" in e:
            out[e["name"]] = e["value"]
        elif "configMapKeyRef" in e.get("valueFrom", {}):
            out[e["name"]] = config_value(docs, e["valueFrom"]["configMapKeyRef"])
    return out


_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion in command and args: defined variables are replaced."""
    return [_VAR.sub(lambda m: env.get(m.group(1), m.group(0)), a) for a in args]


def cpu(quantity: str | int | float) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


_BYTES = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "k": 10**3, "M": 10**6, "G": 10**9}


def memory(quantity: str | int) -> int:
    text = str(quantity)
    for suffix, factor in sorted(_BYTES.items(), key=lambda kv: -len(kv[0])):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


def volume_of_mount(workload: Obj, c: Obj, path: str) -> tuple[Obj, Obj]:
    """(volumeMount, volume) of the mount at exactly ``path``."""
    mounts = [m for m in c.get("volumeMounts", []) if m["mountPath"] == path]
    assert len(mounts) == 1, f"{c['name']}: nothing (or several) mounted at {path}"
    vols = [v for v in pod_spec(workload).get("volumes", []) if v["name"] == mounts[0]["name"]]
    assert len(vols) == 1, f"{c['name']}: the volume {mounts[0]['name']!r} is not declared"
    return mounts[0], vols[0]


def covering_mount(c: Obj, path: str) -> Obj | None:
    """The volumeMount whose mountPath holds ``path`` (the deepest one), if any."""
    best = None
    for m in c.get("volumeMounts", []):
        mp = m["mountPath"].rstrip("/")
        if path == mp or path.startswith(mp + "/"):
            if best is None or len(mp) > len(best["mountPath"].rstrip("/")):
                best = m
    return best


def flag(args: list[str], option: str) -> str | None:
    """The value after ``option`` in an argument list (``--opt value`` or ``--opt=value``)."""
    for i, a in enumerate(args):
        if a == option and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(option + "="):
            return a.split("=", 1)[1]
    return None


def replace_flag(args: list[str], option: str, value: str) -> list[str]:
    out = list(args)
    for i, a in enumerate(out):
        if a == option:
            out[i + 1] = value
            return out
    raise AssertionError(f"{option} not in {args}")
