"""A real nginx (the Debian package) serving a directory on a free loopback port.

Everything it writes (pid, logs, temp files) stays in a temporary directory; ``master_process
off`` keeps it one process running as the current user, so it can read pytest's private temp
dirs. The access log records the bytes sent per request, for server-side counting.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

CONF = """daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 64; }}
http {{
    log_format bytes '$request_uri $status $body_bytes_sent';
    access_log {tmp}/access.log bytes;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    types {{ application/json json; application/octet-stream npy; text/plain md5; }}
    default_type application/octet-stream;
    sendfile on;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        disable_symlinks on;
        location / {{ }}
    }}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)


class Nginx:
    def __init__(self, root: Path, tmp: Path) -> None:
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed: apt-get install -y nginx (.ci/run does this)")
        self.root, self.tmp = Path(root), Path(tmp)
        self.tmp.mkdir(parents=True, exist_ok=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        conf = self.tmp / "nginx.conf"
        conf.write_text(CONF.format(tmp=self.tmp, port=self.port, root=self.root))
        self.proc = subprocess.Popen([binary, "-p", str(self.tmp), "-c", str(conf), "-e", str(self.tmp / "error.log")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.tmp / "error.log"
                raise RuntimeError(f"nginx exited: {self.proc.stderr.read().decode()} "
                                   f"{err.read_text() if err.exists() else ''}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def access_log(self) -> list[tuple[str, int, int]]:
        """(uri, status, body bytes) per request served so far."""
        path = self.tmp / "access.log"
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            uri, status, nbytes = line.rsplit(" ", 2)
            out.append((uri, int(status), int(nbytes)))
        return out

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
