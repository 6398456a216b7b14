"""The Kubernetes manifests in deploy/, checked offline: every kustomization renders with
``kubectl kustomize``, every object validates against the Kubernetes API schemas (strict: an
unknown field fails) and the ServiceMonitor against the Prometheus Operator CRD's schema,
checkov passes with only the skips the manifests declare (and each of them needed), and the
manifests agree with the service: ctr-serve's and ctr-sync's own argument parsers take the
containers' args, ports, probes, volumes, Services, NetworkPolicies and the HPA fit together.

tests/deploy/test_runtime.py runs the processes with the rendered args."""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shlex
import subprocess
from collections import Counter
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from scoring.model.demo import DEMO_NAME
from scoring.serving.cli import build_parser as serve_parser
from scoring.serving.metrics import Metrics
from scoring.serving.settings import Settings
from scoring.sync.cli import build_parser as sync_parser
from scoring.sync.sources import open_source
from scoring.upstream.config import NativeModel, load_models_config

from .k8s import (
    DEPLOY,
    NAMESPACE,
    OVERLAYS,
    ROOT,
    TARGETS,
    base_name,
    config_value,
    container,
    container_port,
    containers,
    covering_mount,
    cpu,
    env_values,
    expand,
    find,
    find_all,
    memory,
    name,
    pod_labels,
    pod_spec,
    selects,
    volume_of_mount,
    workloads,
)
from .local_nginx import local_nginx_conf, nginx_binary

SCHEMAS = Path(__file__).parent / "schemas"
# Kubernetes versions the objects must validate against: the oldest the manifests support
# (matchLabelKeys, unhealthyPodEvictionPolicy and ContainerResource HPA metrics need 1.30) and
# the newest kubernetes-validate ships.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
SERVE_IMAGE = "ctr-scoring"
SERVE_UID = 10001  # the Dockerfile's USER; checked against the Dockerfile below


def kinds(docs) -> Counter:
    return Counter((d["kind"], base_name(d)) for d in docs)


def serve_deployment(docs):
    return find(docs, "Deployment", "ctr-serve")


def parse_serve_args(docs, workload) -> tuple[argparse.Namespace, Settings]:
    """ctr-serve's container args through ctr-serve's own parser: the flags given, and the
    settings they make (validated by the service's settings model)."""
    c = container(workload, "ctr-serve")
    args = expand(c["args"], env_values(docs, c))
    assert args[0] == "ctr-serve", args
    ns = serve_parser().parse_args(args[1:])
    return ns, Settings(**{k: v for k, v in vars(ns).items() if v is not None})


def sync_containers(docs):
    """Every ctr-sync container (sidecar or node syncer) with its workload."""
    for w in workloads(docs):
        for c, init in containers(w):
            if not init and c.get("args", [None])[0] == "ctr-sync":
                yield w, c


def models_yaml(docs) -> str:
    return find(docs, "ConfigMap", "ctr-serve-config")["data"]["models.yaml"]


# -- 1. rendering ------------------------------------------------------------------------------

COMMON = Counter({("Namespace", NAMESPACE): 1, ("ServiceAccount", "ctr-serve"): 1,
                  ("ConfigMap", "ctr-serve-config"): 1, ("ConfigMap", "ctr-sync-config"): 1,
                  ("Deployment", "ctr-serve"): 1, ("Service", "ctr-serve"): 1,
                  ("Service", "ctr-serve-admin"): 1, ("NetworkPolicy", "ctr-serve"): 1})
NODE_SYNC = Counter({("DaemonSet", "ctr-sync-node"): 1, ("ServiceAccount", "ctr-sync-node"): 1,
                     ("Service", "ctr-sync-node"): 1, ("ServiceMonitor", "ctr-sync-node"): 1,
                     ("NetworkPolicy", "ctr-sync-node"): 1, ("ServiceMonitor", "ctr-serve"): 1,
                     ("HorizontalPodAutoscaler", "ctr-serve"): 1,
                     ("PodDisruptionBudget", "ctr-serve"): 1})
CACHE = Counter({("Deployment", "ctr-model-cache"): 1, ("Service", "ctr-model-cache"): 1,
                 ("ServiceAccount", "ctr-model-cache"): 1, ("NetworkPolicy", "ctr-model-cache"): 1,
                 ("ConfigMap", "ctr-model-cache-nginx"): 1})
EXPECTED = {
    "base": COMMON + Counter({("Secret", "ctr-admin-token"): 1, ("ServiceMonitor", "ctr-serve"): 1}),
    "dev": COMMON + Counter({("Secret", "ctr-admin-token"): 1}),  # no HPA, PDB, ServiceMonitor
    "prod": COMMON + NODE_SYNC,  # the admin token Secret is managed outside git
    "prod-cache": COMMON + NODE_SYNC + CACHE,
}


@pytest.mark.parametrize("target", list(TARGETS))
def test_each_kustomization_renders_the_expected_objects(rendered, target):
    docs = rendered[target]
    assert kinds(docs) == EXPECTED[target]
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == NAMESPACE, (d["kind"], name(d))
        assert d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "ctr-scoring", name(d)


def test_objects_refer_to_the_generated_configmaps_by_their_hashed_names(rendered):
    for target, docs in rendered.items():
        names = {name(d) for d in find_all(docs, "ConfigMap")}
        for w in workloads(docs):
            for v in pod_spec(w).get("volumes", []):
                if "configMap" in v:
                    assert v["configMap"]["name"] in names, (target, v)
            for c, _ in containers(w):
                for e in c.get("env", []):
                    ref = e.get("valueFrom", {}).get("configMapKeyRef")
                    if ref:
                        config_value(docs, ref)  # exists, with that key


# -- 2. schemas ----------------------------------------------------------------------------------

def example_hpa() -> dict:
    return yaml.safe_load((DEPLOY / "components/autoscaling/hpa-inflight.example.yaml").read_text())


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("target", list(TARGETS))
def test_every_object_validates_against_the_kubernetes_schema(rendered, target, version):
    checked = 0
    for d in rendered[target]:
        if d["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: no schema in kubernetes-validate, checked below
        try:
            kubernetes_validate.validate(d, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{target}: {d['kind']} {name(d)} against Kubernetes {version}: {exc.message} "
                        f"at {'/'.join(map(str, exc.path))}")
        checked += 1
    assert checked == len(rendered[target]) - kinds(rendered[target])["ServiceMonitor", "ctr-serve"] \
        - kinds(rendered[target])["ServiceMonitor", "ctr-sync-node"]
    kubernetes_validate.validate(example_hpa(), version, strict=True)


def test_strict_validation_refuses_an_unknown_field(rendered):
    """The control: a misspelt field must fail, or the test above proves nothing."""
    bad = copy.deepcopy(serve_deployment(rendered["prod"]))
    pod_spec(bad)["containers"][0]["readinessProbe"]["periodSecond"] = 5  # sic
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[0], strict=True)


def servicemonitor_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / "servicemonitor-v1.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_servicemonitors_validate_against_the_prometheus_operator_schema(rendered):
    validator = servicemonitor_validator()
    monitors = [d for docs in rendered.values() for d in find_all(docs, "ServiceMonitor")]
    assert len(monitors) == 5  # base 1, prod 2, prod-cache 2
    for m in monitors:
        errors = sorted(validator.iter_errors(m), key=str)
        assert not errors, f"ServiceMonitor {name(m)}: {errors[0].message} at {list(errors[0].path)}"
    bad = copy.deepcopy(monitors[0])
    bad["spec"]["endpoints"][0]["intervall"] = "15s"
    assert not validator.is_valid(bad)
    bad = copy.deepcopy(monitors[0])
    bad["spec"]["endpoints"][0]["interval"] = "15 seconds"
    assert not validator.is_valid(bad)


# -- 3. checkov ------------------------------------------------------------------------------------

SKIP_ANNOTATION = re.compile(r"^checkov\.io/skip\d+$")


def run_checkov(checkov: str, directory: Path, frameworks: list[str]) -> dict[str, dict]:
    # JSON with the passed and skipped checks too (--quiet would leave them out); no download
    # of Prisma Cloud's guideline links (offline).
    r = subprocess.run([checkov, "-d", str(directory), "--framework", *frameworks, "--compact",
                        "--skip-download", "-o", "json"],
                       capture_output=True, text=True, timeout=300)
    try:
        out = json.loads(r.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"checkov exited {r.returncode} without a JSON report:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    reports = out if isinstance(out, list) else [out]
    by_type = {rep["check_type"]: rep for rep in reports if "check_type" in rep}
    return {"returncode": r.returncode, **by_type}


def strip_skips(doc: dict) -> dict:
    doc = copy.deepcopy(doc)
    annotations = doc["metadata"].get("annotations", {})
    for key in [k for k in annotations if SKIP_ANNOTATION.match(k)]:
        del annotations[key]
    return doc


@pytest.fixture(scope="module")
def checkov_reports(checkov, rendered, rendered_text, tmp_path_factory):
    """checkov over the rendered overlays (Kubernetes checks and secrets), once as they are and
    once with the skip annotations removed; and the secrets checks over the deploy/ sources."""
    as_is = tmp_path_factory.mktemp("checkov-rendered")
    stripped = tmp_path_factory.mktemp("checkov-stripped")
    for overlay in OVERLAYS:
        (as_is / f"{overlay}.yaml").write_text(rendered_text[overlay])
        (stripped / f"{overlay}.yaml").write_text(
            yaml.safe_dump_all([strip_skips(d) for d in rendered[overlay]], sort_keys=False))
    return {"as_is": run_checkov(checkov, as_is, ["kubernetes", "secrets"]),
            "stripped": run_checkov(checkov, stripped, ["kubernetes"]),
            "sources": run_checkov(checkov, DEPLOY, ["secrets"])}


def findings(report: dict, kind: str) -> set[tuple[str, str, str]]:
    return {(Path(c["file_path"]).stem, c["resource"], c["check_id"])
            for c in report["results"][f"{kind}_checks"]}


def test_checkov_passes_on_every_overlay(checkov_reports):
    report = checkov_reports["as_is"]
    k8s = report["kubernetes"]
    assert not k8s["results"]["failed_checks"], "\n".join(
        f"{c['check_id']} {c['check_name']}: {c['resource']} ({c['file_path']})"
        for c in k8s["results"]["failed_checks"])
    assert k8s["summary"]["resource_count"] >= 40 and k8s["summary"]["passed"] > 400
    assert {Path(c["file_path"]).stem for c in k8s["results"]["passed_checks"]} == set(OVERLAYS)
    # the graph check that every pod has a NetworkPolicy ran, and passed
    assert any(c["check_id"] == "CKV2_K8S_6" for c in k8s["results"]["passed_checks"])
    # the admin token is a file, not an environment variable: CKV_K8S_35 passes, unskipped
    secrets_as_files = {Path(c["file_path"]).stem for c in k8s["results"]["passed_checks"]
                        if c["check_id"] == "CKV_K8S_35" and c["resource"].startswith("Deployment.")
                        and c["resource"].endswith(".ctr-serve")}
    assert secrets_as_files == set(OVERLAYS)
    assert not any(c["check_id"] == "CKV_K8S_35" for c in k8s["results"]["skipped_checks"])
    secrets = report.get("secrets", {"results": {"failed_checks": []}})
    assert not secrets["results"]["failed_checks"], secrets["results"]["failed_checks"]
    assert report["returncode"] == 0


def test_every_checkov_skip_is_needed_and_explained(checkov_reports, rendered):
    """Without the skip annotations, exactly the skipped checks fail: no skip hides nothing,
    and nothing fails that is not skipped. Each skip has a reason, and the manifest source
    says the same in a ``checkov:skip=`` comment."""
    skipped = findings(checkov_reports["as_is"]["kubernetes"], "skipped")
    assert skipped, "the manifests declare skips: checkov did not see them"
    assert findings(checkov_reports["stripped"]["kubernetes"], "failed") == skipped
    sources = "\n".join(p.read_text() for p in DEPLOY.rglob("*.yaml"))
    commented = set(re.findall(r"checkov:skip=(CKV[0-9A-Z_,]+)", sources))
    commented = {i for group in commented for i in group.split(",")}
    for overlay in OVERLAYS:
        for d in rendered[overlay]:
            for key, value in d["metadata"].get("annotations", {}).items():
                if SKIP_ANNOTATION.match(key):
                    check, _, reason = value.partition("=")
                    assert re.fullmatch(r"CKV2?_K8S_\d+", check) and len(reason) > 30, value
                    assert check in commented, f"{check}: no checkov:skip comment in deploy/"


def test_no_secret_in_the_sources(checkov_reports):
    report = checkov_reports["sources"]
    assert report["returncode"] == 0
    if "secrets" in report:
        assert not report["secrets"]["results"]["failed_checks"]


# -- 5. the containers against the service's own parsers -----------------------------------------

@pytest.mark.parametrize("target", list(TARGETS))
def test_ctr_serve_args_parse_and_fit_the_container(rendered, target):
    docs = rendered[target]
    w = serve_deployment(docs)
    c = container(w, "ctr-serve")
    flags, s = parse_serve_args(docs, w)
    res = c["resources"]
    # one worker per core, Guaranteed QoS
    assert s.workers == cpu(res["limits"]["cpu"]) == cpu(res["requests"]["cpu"])
    assert s.host == "0.0.0.0"
    assert s.port == container_port(c, "http") and s.admin_port == container_port(c, "admin")
    assert s.log_format == "json"
    # the repository, the models config and the drain file are where the volumes are
    repo_mount, repo_vol = volume_of_mount(w, c, str(s.model_repo))
    config_mount, config_vol = volume_of_mount(w, c, str(s.models_config.parent))
    assert config_mount.get("readOnly") and s.models_config.name in {
        i["path"] for i in config_vol["configMap"]["items"]}
    drain_mount, drain_vol = volume_of_mount(w, c, str(s.drain_file.parent))
    assert "emptyDir" in drain_vol and not drain_mount.get("readOnly")
    env = {e["name"]: e for e in c["env"]}
    # in-process sync would start with CTR_SYNC_SOURCE: the syncer is a container of its own
    assert not any(e.startswith("CTR_SYNC_") for e in env)
    numba = covering_mount(c, env["NUMBA_CACHE_DIR"]["value"])
    assert numba is not None and not numba.get("readOnly")
    tmp = covering_mount(c, "/tmp")  # Prometheus multi-process files, health windows
    assert tmp is not None and tmp["mountPath"] == "/tmp" and not tmp.get("readOnly")
    if target == "dev":
        assert flags.demo_on_empty is None and s.demo_on_empty and "emptyDir" in repo_vol  # the demo
    else:
        assert flags.demo_on_empty is False and not s.demo_on_empty  # --no-demo: a syncer fills it
    if target.startswith("prod"):
        assert repo_mount.get("readOnly") and repo_vol["hostPath"]["type"] == "DirectoryOrCreate"
    else:
        assert not repo_mount.get("readOnly") and "emptyDir" in repo_vol


ADMIN_SECRET = "ctr-admin-token"


@pytest.mark.parametrize("target", list(TARGETS))
def test_ctr_serve_reads_the_admin_token_from_the_mounted_secret(rendered, target, monkeypatch):
    """CTR_ADMIN_TOKEN_FILE names the file the Secret volume projects (mountPath + item path),
    the mount is read-only and whole (no subPath: the kubelet never updates a subPath, and the
    file is read at each admin request so that a rotation applies without a restart), uid 10001
    can read it, and no container takes a Secret through its environment (checkov CKV_K8S_35)."""
    docs = rendered[target]
    for w in workloads(docs):
        for c, _ in containers(w):
            where = f"{target}: {name(w)}/{c['name']}"
            assert not any(e["name"] == "CTR_ADMIN_TOKEN" or "secretKeyRef" in e.get("valueFrom", {})
                           for e in c.get("env", [])), where
            assert not any("secretRef" in e for e in c.get("envFrom", [])), where
    w = serve_deployment(docs)
    c = container(w, "ctr-serve")
    env = {e["name"]: e for e in c["env"]}
    path = env["CTR_ADMIN_TOKEN_FILE"]["value"]
    # the variable is the settings field ctr-serve reads (pydantic-settings, prefix CTR_)
    for key in [k for k in os.environ if k.startswith("CTR_")]:
        monkeypatch.delenv(key)
    for key, value in env_values(docs, c).items():
        monkeypatch.setenv(key, value)
    _, s = parse_serve_args(docs, w)
    assert s.admin_token_file == Path(path) and s.admin_token is None
    mount = covering_mount(c, path)
    assert mount is not None, f"{path} is on no volume"
    assert mount.get("readOnly") is True and "subPath" not in mount and "subPathExpr" not in mount
    # a directory of its own: not inside or over another mount (/etc/ctr is the models config)
    mount_dir = mount["mountPath"].rstrip("/")
    for other in c["volumeMounts"]:
        if other is not mount:
            o = other["mountPath"].rstrip("/")
            assert not (o.startswith(mount_dir + "/") or mount_dir.startswith(o + "/") or o == mount_dir), other
    _, vol = volume_of_mount(w, c, mount["mountPath"])
    secret = vol["secret"]
    assert secret["secretName"] == ADMIN_SECRET
    assert not secret.get("optional")  # a pod without the Secret waits for it, not crash-loops
    relative = path[len(mount_dir) + 1:]
    items = [i for i in secret["items"] if i["path"] == relative]
    assert [i["key"] for i in items] == ["token"], secret["items"]
    # readable by the container's user: the kubelet gives the files to the pod's fsGroup
    # (root:fsGroup); nobody else
    mode = items[0].get("mode", secret.get("defaultMode", 0o644))
    pod_sc = pod_spec(w)["securityContext"]
    assert pod_sc["fsGroup"] == pod_sc["runAsGroup"] == c["securityContext"]["runAsGroup"] == SERVE_UID
    assert mode & 0o040 and not mode & 0o007, oct(mode)
    if target in ("base", "dev"):  # the placeholder, rendered with the key the volume projects
        assert "token" in find(docs, "Secret", secret["secretName"])["data"]
        assert name(find(docs, "Secret", secret["secretName"])) == ADMIN_SECRET  # no hash suffix
    else:  # managed outside git: the pods name it, the overlay does not render it
        assert not find_all(docs, "Secret")


@pytest.mark.parametrize("target", ["base", "prod", "prod-cache"])
def test_ctr_sync_args_parse_and_fit_the_container(rendered, target):
    docs = rendered[target]
    syncers = list(sync_containers(docs))
    assert [name(w) for w, _ in syncers] == (["ctr-serve"] if target == "base" else ["ctr-sync-node"])
    native = [m.name for m in load_models_config_text(models_yaml(docs)).native]
    for w, c in syncers:
        args = expand(c["args"], env_values(docs, c))
        assert not any("$(" in a for a in args), args  # every variable defined
        ns = sync_parser().parse_args(args[1:])
        source = open_source(ns.source)  # a URL ctr-sync accepts
        assert ns.model in native  # the model ctr-serve waits for
        assert ns.low_priority and ns.metrics_host == "0.0.0.0"
        assert ns.metrics_port == container_port(c, "sync-metrics")
        mount, vol = volume_of_mount(w, c, ns.repo)
        assert not mount.get("readOnly")
        if target == "base":
            assert "emptyDir" in vol and vol["name"] == volume_of_mount(
                w, container(w, "ctr-serve"), "/models")[1]["name"]  # the volume both share
        else:
            assert vol["hostPath"]["path"] == "/var/lib/ctr-scoring/models"
        if target == "prod-cache":
            cache = find(docs, "Service", "ctr-model-cache")
            assert source.hosts == (f"ctr-model-cache:{cache['spec']['ports'][0]['port']}",)
            conf = find(docs, "ConfigMap", "ctr-model-cache-nginx")["data"]["nginx.conf"]
            lock = re.search(r"proxy_cache_lock_timeout (\d+)s;", conf)
            assert lock and ns.timeout > int(lock.group(1)), "ctr-sync gives up before the lock"
        else:
            assert source.scheme == "httpfs"


def load_models_config_text(text: str):
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as fh:
        fh.write(text)
        fh.flush()
        return load_models_config(fh.name)


@pytest.mark.parametrize("target", list(TARGETS))
def test_models_config_loads_with_the_service_parser(rendered, target):
    config = load_models_config_text(models_yaml(rendered[target]))
    assert [type(m) for m in config.native] == [NativeModel]
    expected = DEMO_NAME if target == "dev" else "ctr"  # dev: the demo model ctr-serve writes
    assert config.native[0].name == config.default == expected


# -- security, resources, probes ---------------------------------------------------------------

def dockerfile_user() -> int:
    users = re.findall(r"^USER\s+(\d+)", (ROOT / "Dockerfile").read_text(), re.M)
    return int(users[-1])


@pytest.mark.parametrize("target", list(TARGETS))
def test_every_container_is_locked_down(rendered, target):
    docs = rendered[target]
    assert dockerfile_user() == SERVE_UID
    accounts = {name(a): a for a in find_all(docs, "ServiceAccount")}
    for w in workloads(docs):
        spec = pod_spec(w)
        assert spec["automountServiceAccountToken"] is False
        assert accounts[spec["serviceAccountName"]]["automountServiceAccountToken"] is False
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
        for c, init in containers(w):
            sc = c["securityContext"]
            where = f"{target}: {name(w)}/{c['name']}"
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc.get("privileged") is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert not any("hostPort" in p for p in c.get("ports", [])), where
            if init and c["name"] == "prepare-repo":
                # the one exception: chown the hostPath repository once, then exit
                assert sc["runAsUser"] == 0 and sc["capabilities"]["add"] == ["CHOWN"], where
                assert c["command"][-1] == f"chown {SERVE_UID}:{SERVE_UID} /models", where
                continue
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] >= 10000, where
            assert not sc["capabilities"].get("add"), where
            if c["image"].split("@")[0].rsplit(":", 1)[0].endswith(SERVE_IMAGE):
                assert sc["runAsUser"] == SERVE_UID == spec["securityContext"]["runAsUser"], where


@pytest.mark.parametrize("target", list(TARGETS))
def test_every_container_has_guaranteed_resources_and_probes_on_its_ports(rendered, target):
    for w in workloads(rendered[target]):
        for c, init in containers(w):
            where = f"{target}: {name(w)}/{c['name']}"
            req, lim = c["resources"]["requests"], c["resources"]["limits"]
            assert set(req) == set(lim) == {"cpu", "memory"}, where
            assert cpu(req["cpu"]) == cpu(lim["cpu"]) > 0, where  # Guaranteed QoS
            assert memory(req["memory"]) == memory(lim["memory"]) > 0, where
            if init:
                continue
            assert c["imagePullPolicy"] in ("Always", "IfNotPresent"), where
            for probe in ("readinessProbe", "livenessProbe"):
                assert probe in c, f"{where}: no {probe}"
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if probe in c:
                    port = container_port(c, c[probe]["httpGet"]["port"])
                    assert port in {p["containerPort"] for p in c["ports"]}, where
    c = container(serve_deployment(rendered[target]), "ctr-serve")
    assert c["startupProbe"]["httpGet"] == c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    # the first start: imports, binding, the demo model in dev (5 s), on a busy node
    startup = c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"]
    assert startup >= 120
    memory_bytes = memory(c["resources"]["limits"]["memory"])
    assert memory_bytes >= (1.5 if target == "dev" else 2) * (1 << 30)


@pytest.mark.parametrize("target", list(TARGETS))
def test_dockerfile_and_manifests_agree(rendered, target):
    """The image's user, port and kernel directories are the ones the manifests name."""
    text = (ROOT / "Dockerfile").read_text()
    image_env = dict(re.findall(r"\b(NUMBA_CACHE_DIR|CTR_KERNEL_CACHE)=(\S+)", text))
    c = container(serve_deployment(rendered[target]), "ctr-serve")
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["NUMBA_CACHE_DIR"] == image_env["NUMBA_CACHE_DIR"]
    assert env["CTR_KERNEL_CACHE"] == image_env["CTR_KERNEL_CACHE"]
    assert f"ctr-kernels build {image_env['CTR_KERNEL_CACHE']}" in text  # the image builds them
    # ctr-serve copies the kernels into NUMBA_CACHE_DIR: it must be writable (an emptyDir)
    mount = covering_mount(c, env["NUMBA_CACHE_DIR"])
    assert mount is not None and not mount.get("readOnly")
    assert f"EXPOSE {container_port(c, 'http')}" in text


@pytest.mark.parametrize("target", list(TARGETS))
def test_draining_before_sigterm(rendered, target):
    """preStop creates the drain file (/readyz answers 503 from then on) and waits for the
    endpoints to drop the pod; the grace period covers that, uvicorn's graceful shutdown of
    in-flight requests and stopping the app's threads."""
    docs = rendered[target]
    w = serve_deployment(docs)
    c = container(w, "ctr-serve")
    _, s = parse_serve_args(docs, w)
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["/bin/sh", "-c"]
    m = re.fullmatch(r"touch (\S+) && sleep (\d+)", command[2])
    assert m and Path(m.group(1)) == s.drain_file, command
    sleep = int(m.group(2))
    ready = c["readinessProbe"]
    assert sleep >= ready["periodSeconds"] * ready["failureThreshold"] + 5
    source = (ROOT / "scoring/serving/cli.py").read_text()
    graceful = re.findall(r"timeout_graceful_shutdown=(\d+)", source)
    assert graceful, "uvicorn's graceful shutdown timeout is no longer set in scoring/serving/cli.py"
    assert pod_spec(w)["terminationGracePeriodSeconds"] >= sleep + max(map(int, graceful)) + 10


# -- Services, monitors, policies, autoscaling fit the pods ----------------------------------------

def pods_selected(docs, selector) -> list:
    return [w for w in workloads(docs) if selects(selector, pod_labels(w))]


@pytest.mark.parametrize("target", list(TARGETS))
def test_services_and_servicemonitors_reach_named_container_ports(rendered, target):
    docs = rendered[target]
    for svc in find_all(docs, "Service"):
        pods = pods_selected(docs, svc["spec"]["selector"])
        assert pods, f"Service {name(svc)} selects no pods"
        for port in svc["spec"]["ports"]:
            for w in pods:  # a named targetPort must exist in every selected pod
                assert any(p.get("name") == port["targetPort"]
                           for c, _ in containers(w, init=False) for p in c.get("ports", [])), \
                    f"{target}: Service {name(svc)} port {port['name']}: no container port " \
                    f"{port['targetPort']!r} in {name(w)}"
    assert find(docs, "Service", "ctr-serve")["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    admin = find(docs, "Service", "ctr-serve-admin")["spec"]
    assert admin["clusterIP"] == "None" and "admin" in {p["name"] for p in admin["ports"]}
    for sm in find_all(docs, "ServiceMonitor"):
        services = [s for s in find_all(docs, "Service")
                    if selects(sm["spec"]["selector"], s["metadata"].get("labels", {}))]
        for ep in sm["spec"]["endpoints"]:
            assert any(p["name"] == ep["port"] for s in services for p in s["spec"]["ports"]), \
                f"{target}: ServiceMonitor {name(sm)} scrapes port {ep['port']!r}: no selected Service has it"
            assert ep["path"] == "/metrics"


@pytest.mark.parametrize("target", list(TARGETS))
def test_network_policies_admit_every_container_port_and_only_those(rendered, target):
    docs = rendered[target]
    policies = find_all(docs, "NetworkPolicy")
    for w in workloads(docs):
        mine = [p for p in policies if selects(p["spec"]["podSelector"], pod_labels(w))]
        assert mine, f"{target}: no NetworkPolicy selects {name(w)}"
        admitted = {port["port"] for p in mine for rule in p["spec"].get("ingress", [])
                    for port in rule.get("ports", [])}
        ports = {p["containerPort"] for c, _ in containers(w, init=False) for p in c.get("ports", [])}
        assert ports <= admitted, f"{target}: {name(w)}: ports {ports - admitted} admitted by no rule"
        stale = admitted - ports
        assert not stale or (name(w) == "ctr-serve" and stale == {9400}), (name(w), stale)
    serve = find(docs, "NetworkPolicy", "ctr-serve")["spec"]["ingress"]
    admin_rules = [r for r in serve if {p["port"] for p in r["ports"]} == {8081}]
    assert [r["from"] for r in admin_rules] == [
        [{"namespaceSelector": {"matchLabels": {"ctr-scoring/ops": "true"}}}]]


@pytest.mark.parametrize("target", ["prod", "prod-cache"])
def test_prod_scales_with_the_hpa_and_drains_one_pod_at_a_time(rendered, target):
    docs = rendered[target]
    deployment = serve_deployment(docs)
    assert "replicas" not in deployment["spec"]  # an apply must not reset the HPA's count
    hpa = find(docs, "HorizontalPodAutoscaler", "ctr-serve")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", "ctr-serve")
    metric = hpa["spec"]["metrics"][0]["containerResource"]
    container(deployment, metric["container"])
    assert metric["name"] == "cpu"
    pdb = find(docs, "PodDisruptionBudget", "ctr-serve")
    assert selects(pdb["spec"]["selector"], pod_labels(deployment))
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]
    spread = pod_spec(deployment)["topologySpreadConstraints"]
    assert {t["topologyKey"] for t in spread} == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    assert all(selects(t["labelSelector"], pod_labels(deployment)) for t in spread)
    assert {t["topologyKey"]: t["whenUnsatisfiable"] for t in spread}["kubernetes.io/hostname"] == "ScheduleAnyway"


def test_the_in_flight_example_uses_a_metric_the_service_exports():
    hpa = example_hpa()
    pods = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert len(pods) == 1
    exported = {m.name for m in Metrics().registry.collect()}
    assert pods[0]["metric"]["name"] in exported
    text = (DEPLOY / "components/autoscaling/hpa-inflight.example.yaml").read_text()
    assert f"seriesQuery: '{pods[0]['metric']['name']}{{" in text


def test_dev_is_one_pod_writing_the_demo_model(rendered):
    docs = rendered["dev"]
    deployment = serve_deployment(docs)
    assert deployment["spec"]["replicas"] == 1
    assert [c["name"] for c, _ in containers(deployment)] == ["ctr-serve"]
    assert "--no-demo" not in container(deployment, "ctr-serve")["args"]


@pytest.mark.parametrize("target", ["prod", "prod-cache"])
def test_prod_pods_read_the_repository_the_node_syncer_writes(rendered, target):
    docs = rendered[target]
    deployment = serve_deployment(docs)
    daemonset = find(docs, "DaemonSet", "ctr-sync-node")
    assert [c["name"] for c, _ in containers(deployment)] == ["ctr-serve"]  # no sidecar
    serve_mount, serve_vol = volume_of_mount(deployment, container(deployment, "ctr-serve"), "/models")
    sync_mount, sync_vol = volume_of_mount(daemonset, container(daemonset, "ctr-sync"), "/models")
    init_mount, init_vol = volume_of_mount(daemonset, container(daemonset, "prepare-repo"), "/models")
    assert serve_vol["hostPath"] == sync_vol["hostPath"] == init_vol["hostPath"]
    assert serve_mount["readOnly"] is True and not sync_mount.get("readOnly")
    # pods only where a node syncer runs
    assert pod_spec(deployment)["nodeSelector"] == pod_spec(daemonset)["nodeSelector"]
    ns = find(docs, "Namespace", NAMESPACE)
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"  # hostPath
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/warn"] == "restricted"


def test_the_cache_tier_does_not_restart_the_serving_pods(rendered):
    """Switching the node syncers to the cache changes their source only: the ctr-serve pod
    template (and so its pods) is the same in prod and prod-cache."""
    assert serve_deployment(rendered["prod"]) == serve_deployment(rendered["prod-cache"])
    prod = find(rendered["prod"], "DaemonSet", "ctr-sync-node")
    cached = find(rendered["prod-cache"], "DaemonSet", "ctr-sync-node")
    assert prod != cached


def test_prod_has_no_secret_value_in_git(rendered):
    assert not find_all(rendered["prod"], "Secret") and not find_all(rendered["prod-cache"], "Secret")
    # the placeholder elsewhere is empty: admin endpoints disabled until a real token is set
    for target in ("base", "dev"):
        assert find(rendered[target], "Secret", "ctr-admin-token")["data"] == {"token": ""}


def test_nginx_conf_of_the_cache_tier_is_valid(rendered, tmp_path):
    """``nginx -t`` on the rendered nginx.conf, with its paths and upstreams made local."""
    conf = find(rendered["prod-cache"], "ConfigMap", "ctr-model-cache-nginx")["data"]["nginx.conf"]
    binary = nginx_binary()
    path = local_nginx_conf(conf, tmp_path, port=1, upstream="127.0.0.1:2")
    r = subprocess.run([binary, "-t", "-c", str(path), "-e", "stderr"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    deployment = find(rendered["prod-cache"], "Deployment", "ctr-model-cache")
    c = container(deployment, "nginx")
    assert shlex.join(c["command"]) == "nginx -c /etc/nginx/ctr/nginx.conf -e stderr"
    assert volume_of_mount(deployment, c, "/etc/nginx/ctr")[1]["configMap"]["name"] == name(
        find(rendered["prod-cache"], "ConfigMap", "ctr-model-cache-nginx"))
    # what nginx writes is on the emptyDirs: the cache and /tmp
    cache_dir = re.search(r"proxy_cache_path (\S+)", conf).group(1)
    assert covering_mount(c, cache_dir)["mountPath"] == "/var/cache/nginx"
    for path in re.findall(r"(?:_temp_path|^pid) (\S+);", conf, re.M):
        assert covering_mount(c, path)["mountPath"] == "/tmp", path
    assert f"listen {container_port(c, 'http')};" in conf
