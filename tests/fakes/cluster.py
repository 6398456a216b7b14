"""A test HDFS "cluster": a namespace directory served by HttpFS gateways and/or NameNodes with a
DataNode, plus helpers to publish model versions into it the way a training job would."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from scoring.model.manifest import CHECKSUMS

from ..models import make_model
from .hdfs import FakeHdfsServer, closed_port

MODEL_PATH = "/models/ctr"


class HdfsCluster:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.servers: list[FakeHdfsServer] = []

    def _start(self, role: str, datanode: str = "") -> FakeHdfsServer:
        srv = FakeHdfsServer(self.root, role, datanode).start()
        self.servers.append(srv)
        return srv

    def httpfs(self, n: int = 1) -> list[FakeHdfsServer]:
        return [self._start("httpfs") for _ in range(n)]

    def webhdfs(self, n_namenodes: int = 2) -> tuple[list[FakeHdfsServer], FakeHdfsServer]:
        dn = self._start("datanode")
        return [self._start("namenode", dn.address) for _ in range(n_namenodes)], dn

    @staticmethod
    def url(scheme: str, servers: list[FakeHdfsServer] | list[str], path: str = MODEL_PATH) -> str:
        hosts = [s if isinstance(s, str) else s.address for s in servers]
        return f"{scheme}://{','.join(hosts)}{path}"

    def local(self, path: str = MODEL_PATH) -> Path:
        return self.root / path.strip("/")

    def publish(self, version: str, *, seed: int = 0, path: str = MODEL_PATH, **kw) -> Path:
        """Write a package version at ``path``: data files first, ``checksums.md5`` last, each
        replaced atomically, so a reader sees the old checksums until the new files are all there."""
        target = self.local(path)
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.root) as tmp:
            pkg = make_model(Path(tmp) / "pkg", seed=seed, version=version, **kw)
            new = {p.relative_to(pkg).as_posix() for p in pkg.rglob("*") if p.is_file()}
            for rel in sorted(new - {CHECKSUMS}):
                (target / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(pkg / rel, target / rel)
            for old in target.rglob("*"):
                if old.is_file() and old.relative_to(target).as_posix() not in new:
                    old.unlink()
            os.replace(pkg / CHECKSUMS, target / CHECKSUMS)
        return target

    def stop(self) -> None:
        for srv in self.servers:
            srv.stop()
        self.servers.clear()


def copy_package(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


__all__ = ["HdfsCluster", "MODEL_PATH", "closed_port", "copy_package"]
