"""The rendered manifests run: the containers' own args, with the pod's paths and ports mapped to
temporary directories and free ports, started as the real processes.

* base: the ctr-sync sidecar fills the shared repository from a test HttpFS gateway, ctr-serve
  (``--no-demo``) becomes ready; every probe answers 200 on the port the manifest names; the
  admin endpoints answer only on the admin port, disabled by the placeholder token and enabled
  by a rotation of the mounted Secret, without a restart; the preStop command drains; SIGTERM
  stops both within the grace period.
* prod: the node syncer (the DaemonSet's args, ``--once``) writes the node repository, ctr-serve
  reads it through a read-only mount and follows a new version; the admin token is the mounted
  Secret's.
* prod-cache: nginx with the cache tier's own nginx.conf in front of the test HttpFS gateway: a
  second node syncer gets the package files from the cache, checksums.md5, manifest.json and the
  listings always from HttpFS.

What the pod adds and cannot be run here (the kubelet, a read-only root filesystem, the
network policy, the cgroup limits) is in docs/kubernetes.md.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from scoring.sync.sources import open_source

from ..fakes.cluster import HdfsCluster
from ..integration.server import free_port, wait_until
from ..readonly import read_only_mount_prefix
from .k8s import (
    container,
    container_port,
    env_values,
    expand,
    find,
    flag,
    pod_spec,
    replace_flag,
)
from .local_nginx import local_nginx_conf, nginx_binary

pytestmark = pytest.mark.integration

SCORE = {"context": {"user_id": "u1", "city": "bj"}, "ads": [{"features": {"ad_id": "a1"}}]}


@pytest.fixture(scope="module")
def warm_kernels(tmp_path_factory) -> None:
    """Compile the engine's kernels for the test model once, here, into Numba's on-disk cache:
    the worker processes of the ctr-serve instances below load them from there instead of each
    compiling them at once (on a cold cache about 50 s of one core here, against 100 s of both
    cores for two workers compiling side by side)."""
    from scoring import Engine, load_package

    from ..models import make_model

    Engine(load_package(make_model(tmp_path_factory.mktemp("warm") / "pkg", seed=1)))


# -- a pod's container, run here --------------------------------------------------------------

class Mapped:
    """A container's args with its mount paths moved under ``root`` and its container ports
    replaced by free ports (``ports``: containerPort -> local port)."""

    def __init__(self, docs, workload, cname: str, root: Path) -> None:
        self.c = container(workload, cname)
        self.env = env_values(docs, self.c)
        self.root = root
        self.mounts = {m["mountPath"]: root / m["name"] for m in self.c.get("volumeMounts", [])}
        for local in self.mounts.values():
            local.mkdir(parents=True, exist_ok=True)
        self.ports = {p["containerPort"]: free_port() for p in self.c.get("ports", [])}

    def path(self, pod_path: str) -> Path:
        """The local path of a path inside the pod (under the deepest mount holding it)."""
        best = max((mp for mp in self.mounts if pod_path == mp or pod_path.startswith(mp.rstrip("/") + "/")),
                   key=len, default=None)
        assert best is not None, f"{pod_path} is on no volume: a read-only root filesystem refuses writes"
        return self.mounts[best] / pod_path[len(best):].lstrip("/")

    def token_env(self) -> dict[str, str]:
        """The container's CTR_ADMIN_TOKEN_FILE, mapped onto the local copy of its volume."""
        return {"CTR_ADMIN_TOKEN_FILE": str(self.path(self.env["CTR_ADMIN_TOKEN_FILE"]))}

    def port(self, name_or_number) -> int:
        return self.ports[container_port(self.c, name_or_number)]

    def args(self, port_flags: dict[str, str]) -> list[str]:
        """The container's args, $(VAR)s expanded; mount paths and the named ports mapped."""
        out = expand(self.c["args"], self.env)
        for option, port_name in port_flags.items():
            number = container_port(self.c, port_name)
            assert flag(out, option) == str(number), f"{option} is not the container port {port_name!r}"
            out = replace_flag(out, option, str(self.port(port_name)))
        return [str(self.path(a)) if a.startswith("/") else a for a in out]


def env_for(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without CTR_* variables, plus ``extra``. The container's env
    is not copied: CTR_ADMIN_TOKEN_FILE comes in ``extra`` (mapped, :meth:`Mapped.token_env`),
    and NUMBA_CACHE_DIR (an emptyDir in the pod) stays this process's, where warm_kernels
    compiled the kernels."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTR_")}
    env.update({"NUMBA_NUM_THREADS": "1", **extra})
    return env


def start(argv: list[str], log: Path, env: dict[str, str], prefix: list[str] = ()) -> subprocess.Popen:
    return subprocess.Popen([*prefix, *argv], env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(proc: subprocess.Popen, timeout: float) -> float:
    """SIGTERM, as the kubelet sends it; seconds until the process exited."""
    if proc.poll() is not None:
        return 0.0
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        raise AssertionError(f"still running {timeout:.0f}s after SIGTERM (the kubelet kills it then)")
    return time.monotonic() - t0


def status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.TransportError:
        return None


def on_every_worker(check, tries: int = 8):
    """``check()`` true on ``tries`` new connections in a row. With --workers N each worker
    process answers /readyz for itself (it loads the models on its own): one 200 does not mean
    the next connection, taken by another worker, finds the model loaded."""
    return lambda: all(check() for _ in range(tries))


def serve_command(args: list[str]) -> list[str]:
    assert args[0] == "ctr-serve"
    return [sys.executable, "-m", "scoring", *args[1:]]


def sync_command(args: list[str]) -> list[str]:
    assert args[0] == "ctr-sync"
    return [sys.executable, "-m", "model_sync", *args[1:]]


def probe_budget(c: dict) -> float:
    p = c["startupProbe"]
    return p["periodSeconds"] * p["failureThreshold"]


def write_config(docs, workload, mapped: Mapped) -> None:
    """The ConfigMap volumes' files, as the kubelet projects them."""
    for m in mapped.c.get("volumeMounts", []):
        vol = next(v for v in pod_spec(workload)["volumes"] if v["name"] == m["name"])
        if "configMap" in vol:
            cm = find(docs, "ConfigMap", vol["configMap"]["name"])
            for item in vol["configMap"].get("items") or [{"key": k, "path": k} for k in cm["data"]]:
                (mapped.mounts[m["mountPath"]] / item["path"]).write_text(cm["data"][item["key"]])


def secret_token(docs) -> str:
    return base64.b64decode(find(docs, "Secret", "ctr-admin-token")["data"]["token"]).decode()


def write_secret(workload, mapped: Mapped, data: dict[str, str]) -> None:
    """The Secret volumes' files as the kubelet projects them, and updates them on a rotation:
    the items in a new timestamped directory, the ``..data`` symlink swapped to it in one
    rename, each item a symlink through ``..data`` (so a reader sees the old or the new value,
    never half of one). ``data``: the Secret's values (prod's is not in git)."""
    for m in mapped.c.get("volumeMounts", []):
        vol = next(v for v in pod_spec(workload)["volumes"] if v["name"] == m["name"])
        if "secret" not in vol:
            continue
        assert "subPath" not in m  # the kubelet never updates a subPath mount
        root = mapped.mounts[m["mountPath"]]
        old = os.readlink(root / "..data") if (root / "..data").is_symlink() else None
        version = root / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns()}"
        version.mkdir()
        for item in vol["secret"].get("items") or [{"key": k, "path": k} for k in data]:
            f = version / item["path"]
            f.write_text(data[item["key"]])
            f.chmod(item.get("mode", vol["secret"].get("defaultMode", 0o644)))
            if not (root / item["path"]).is_symlink():
                (root / item["path"]).symlink_to(Path("..data") / item["path"])
        (root / "..data_tmp").symlink_to(version.name)
        (root / "..data_tmp").rename(root / "..data")
        if old:
            shutil.rmtree(root / old)


# -- base: sidecar + ctr-serve --------------------------------------------------------------------

def test_base_pod_syncs_serves_answers_its_probes_and_drains(rendered, tmp_path, warm_kernels):
    docs = rendered["base"]
    deployment = find(docs, "Deployment", "ctr-serve")
    cluster = HdfsCluster(tmp_path / "hdfs")
    procs: list[subprocess.Popen] = []
    try:
        (gateway,) = cluster.httpfs(1)
        sync = Mapped(docs, deployment, "ctr-sync", tmp_path / "pod")
        serve = Mapped(docs, deployment, "ctr-serve", tmp_path / "pod")
        assert sync.path("/models") == serve.path("/models")  # one emptyDir, both containers
        write_config(docs, deployment, serve)

        sync_args = sync.args({"--metrics-port": "sync-metrics"})
        source = open_source(flag(sync_args, "--source"))
        cluster.publish("v1", seed=1, path=source.path, name=flag(sync_args, "--model"))
        sync_args = replace_flag(sync_args, "--source", f"httpfs://{gateway.address}{source.path}")
        procs.append(start(sync_command(sync_args), tmp_path / "sync.log", env_for({})))
        token = secret_token(docs)  # the placeholder: empty, admin endpoints disabled
        write_secret(deployment, serve, {"token": token})
        procs.append(start(serve_command(serve.args({"--port": "http", "--admin-port": "admin"})),
                           tmp_path / "serve.log", env_for(serve.token_env())))
        logs = lambda: "\n".join(p.read_text(errors="replace")[-4000:]  # noqa: E731
                                 for p in (tmp_path / "sync.log", tmp_path / "serve.log") if p.exists())

        def url(m: Mapped, probe: dict) -> str:
            return f"http://127.0.0.1:{m.port(probe['httpGet']['port'])}{probe['httpGet']['path']}"

        # the sidecar's probes
        for probe in ("readinessProbe", "livenessProbe"):
            wait_until(lambda: status(url(sync, sync.c[probe])) == 200, f"sidecar {probe}", 60, logs)
        metrics = httpx.get(url(sync, sync.c["livenessProbe"])).text
        assert "ctr_sync_cycles_total" in metrics
        # ctr-serve: started within the startup probe's budget, then ready once the sidecar
        # installed the model, live all along
        budget = probe_budget(serve.c)
        wait_until(lambda: status(url(serve, serve.c["startupProbe"])) == 200, "startup probe", budget, logs)
        wait_until(on_every_worker(lambda: status(url(serve, serve.c["readinessProbe"])) == 200),
                   "readiness", budget, logs)
        assert status(url(serve, serve.c["livenessProbe"])) == 200
        assert (sync.path("/models") / "ctr" / "v1" / "checksums.md5").exists()

        http = f"http://127.0.0.1:{serve.port('http')}"
        admin = f"http://127.0.0.1:{serve.port('admin')}"
        r = httpx.post(f"{http}/v1/score", json=SCORE, timeout=30)
        assert r.status_code == 200 and r.json()["model"] == "ctr" and r.json()["version"] == "v1", r.text
        # admin endpoints: refused on the main port; on the admin port disabled by the empty
        # placeholder token
        r = httpx.post(f"{http}/v1/models/ctr/reload", timeout=30)
        assert r.status_code == 403 and "admin port" in r.json()["error"], r.text
        r = httpx.post(f"{admin}/v1/models/ctr/reload", timeout=30)
        assert r.status_code == 403 and "disabled" in r.json()["error"], r.text
        for path in ("/healthz", "/readyz", "/metrics"):
            assert status(admin + path) == 200, path
        # the Secret gets a token (kubectl create secret ... | kubectl apply): the kubelet
        # updates the volume, and every worker takes it at the next admin request, no restart
        write_secret(deployment, serve, {"token": "rotated-admin-token"})

        def reload(token: str) -> int:
            return httpx.post(f"{admin}/v1/models/ctr/reload", timeout=30,
                              headers={"Authorization": f"Bearer {token}"}).status_code

        assert [reload("rotated-admin-token") for _ in range(6)] == [200] * 6  # both workers
        assert reload("wrong") == 401

        # preStop, its paths mapped and without the wait: readiness off, liveness and scoring on
        hook = serve.c["lifecycle"]["preStop"]["exec"]["command"]
        drain = flag(serve.c["args"], "--drain-file")
        script = re.sub(r"sleep \d+", "sleep 0", hook[2].replace(drain, str(serve.path(drain))))
        assert script != hook[2]
        subprocess.run([*hook[:2], script], check=True, timeout=10)
        r = httpx.get(url(serve, serve.c["readinessProbe"]), timeout=10)
        assert r.status_code == 503 and r.json()["draining"] is True, r.text
        assert status(url(serve, serve.c["livenessProbe"])) == 200
        assert httpx.post(f"{http}/v1/score", json=SCORE, timeout=30).status_code == 200

        # SIGTERM: ctr-serve stops within what the grace period leaves after preStop
        sleep = int(re.search(r"sleep (\d+)", hook[2]).group(1))
        grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
        assert stop(procs[1], grace - sleep) < grace - sleep
        assert stop(procs[0], grace) < grace
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
        cluster.stop()


# -- prod: node syncer + read-only pods --------------------------------------------------------

def test_prod_node_syncer_fills_the_repository_pods_read_only(rendered, tmp_path, warm_kernels):
    docs = rendered["prod"]
    deployment = find(docs, "Deployment", "ctr-serve")
    daemonset = find(docs, "DaemonSet", "ctr-sync-node")
    cluster = HdfsCluster(tmp_path / "hdfs")
    server = None
    try:
        (gateway,) = cluster.httpfs(1)
        node = tmp_path / "node"  # the hostPath both mount
        syncer = Mapped(docs, daemonset, "ctr-sync", node)
        serve = Mapped(docs, deployment, "ctr-serve", tmp_path / "pod")
        serve.mounts["/models"] = syncer.path("/models")
        write_config(docs, deployment, serve)
        sync_args = syncer.args({"--metrics-port": "sync-metrics"})
        source = open_source(flag(sync_args, "--source"))
        sync_args = replace_flag(sync_args, "--source", f"httpfs://{gateway.address}{source.path}")

        def node_sync() -> None:
            r = subprocess.run([*sync_command(sync_args), "--once"], env=env_for({}), capture_output=True,
                               text=True, timeout=120)
            assert r.returncode == 0, r.stdout + r.stderr

        cluster.publish("v1", seed=1, path=source.path, name=flag(sync_args, "--model"))
        node_sync()
        repo = syncer.path("/models")
        assert (repo / "ctr" / "v1").is_dir()
        prefix = read_only_mount_prefix(repo) or []  # EROFS for ctr-serve, when the kernel allows
        log = tmp_path / "serve.log"
        write_secret(deployment, serve, {"token": "the-secret-managed-outside-git"})
        server = start(serve_command(serve.args({"--port": "http", "--admin-port": "admin"})), log,
                       env_for(serve.token_env()), prefix)
        http = f"http://127.0.0.1:{serve.port('http')}"
        ready = serve.c["readinessProbe"]["httpGet"]["path"]
        wait_until(on_every_worker(lambda: status(http + ready) == 200), "ready", probe_budget(serve.c),
                   lambda: log.read_text(errors="replace")[-4000:])
        model = httpx.get(f"{http}/v1/models/ctr", timeout=10).json()
        assert model["version"] == "v1"
        if prefix:
            assert "repository_read_only" in model, model

        # a new export: the node syncer installs it, the pods follow without writing
        cluster.publish("v2", seed=1, path=source.path, name=flag(sync_args, "--model"))
        node_sync()

        def serves_v2() -> bool:
            return httpx.get(f"{http}/v1/models/ctr", timeout=10).json()["version"] == "v2"

        wait_until(on_every_worker(serves_v2), "the pods serve v2", 60,
                   lambda: log.read_text(errors="replace")[-4000:])
        r = httpx.post(f"{http}/v1/score", json=SCORE, timeout=30)
        assert r.status_code == 200 and r.json()["version"] == "v2", r.text
        # the admin port takes the token of the Secret managed outside git
        r = httpx.post(f"http://127.0.0.1:{serve.port('admin')}/v1/models/ctr/reload", timeout=30,
                       headers={"Authorization": "Bearer the-secret-managed-outside-git"})
        assert r.status_code == 200, r.text
    finally:
        if server is not None:
            stop(server, pod_spec(deployment)["terminationGracePeriodSeconds"])
        cluster.stop()


# -- prod-cache: nginx from the cache tier in front of HttpFS -----------------------------------

def test_cache_tier_serves_package_files_from_the_cache_and_the_version_fresh(rendered, tmp_path):
    docs = rendered["prod-cache"]
    daemonset = find(docs, "DaemonSet", "ctr-sync-node")
    conf = find(docs, "ConfigMap", "ctr-model-cache-nginx")["data"]["nginx.conf"]
    cluster = HdfsCluster(tmp_path / "hdfs")
    nginx = None
    try:
        (gateway,) = cluster.httpfs(1)
        port = free_port()
        # entries valid 60 s here (5 min in the pod): the whole test runs within them
        path = local_nginx_conf(conf, tmp_path / "nginx", port=port, upstream=gateway.address, valid="60s")
        nginx = subprocess.Popen([nginx_binary(), "-c", str(path), "-e", str(tmp_path / "nginx" / "error.log")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_until(lambda: status(f"http://127.0.0.1:{port}/nginx-healthz") == 200, "nginx", 10)

        syncer = Mapped(docs, daemonset, "ctr-sync", tmp_path / "nodes")
        args = syncer.args({"--metrics-port": "sync-metrics"})
        source = open_source(flag(args, "--source"))
        assert source.hosts == ("ctr-model-cache:14000",)  # the cache Service, as rendered
        args = replace_flag(args, "--source", f"httpfs://127.0.0.1:{port}{source.path}")
        model = flag(args, "--model")
        package = cluster.publish("v1", seed=1, path=source.path, name=model)
        files = sorted(p.relative_to(package).as_posix() for p in package.rglob("*") if p.is_file())

        def node_sync(node: str, *extra: str) -> subprocess.CompletedProcess:
            a = replace_flag(args, "--repo", str(tmp_path / node))
            return subprocess.run([*sync_command(a), "--once", *extra], env=env_for({}),
                                  capture_output=True, text=True, timeout=120)

        def opened() -> Counter:
            return Counter(p[len(source.path) + 1:] for _, p, _ in gateway.served.ops("OPEN"))

        def listed() -> int:
            return len(gateway.served.ops("LISTSTATUS"))

        r = node_sync("node-a")
        assert r.returncode == 0, r.stdout + r.stderr
        first_opened, first_listed = opened(), listed()
        assert set(first_opened) == set(files) and all(n == 1 for n in first_opened.values())

        r = node_sync("node-b")  # another node, same version
        assert r.returncode == 0, r.stdout + r.stderr
        assert (tmp_path / "node-b" / model / "v1").is_dir()
        fresh = {"checksums.md5", "manifest.json"}
        again = {f: n - first_opened[f] for f, n in opened().items() if n > first_opened[f]}
        assert again == {f: 1 for f in fresh}  # the rest came from the cache
        assert listed() == 2 * first_listed > 0  # sizes: never from the cache
        log = (tmp_path / "nginx" / "access.log").read_text().splitlines()
        prefix = f"/webhdfs/v1{source.path}/"
        hits = {line.split('"')[1].split()[1].split("?")[0].removeprefix(prefix)
                for line in log if "cache=HIT" in line}
        assert hits == set(files) - fresh

        # An export rewrites the package in place: the node that polls next sees the new
        # checksums.md5 at once; a file still cached from v1 fails its md5, and nothing is
        # installed until the entry expires (docs/kubernetes.md#the-cache-tier).
        cluster.publish("v2", seed=2, path=source.path, name=model)
        r = node_sync("node-a", "--retries", "0")
        assert r.returncode == 1 and "md5 mismatch" in r.stderr, r.stdout + r.stderr
        assert sorted(p.name for p in (tmp_path / "node-a" / model).iterdir() if not p.name.startswith(".")) == ["v1"]
    finally:
        if nginx is not None:
            nginx.terminate()
            nginx.wait(10)
        cluster.stop()
