"""The cache tier's nginx.conf, run here: the real nginx with what only exists in the pod made
local."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ..fakes.nginx import nginx_binary as _nginx_binary


def nginx_binary() -> str:
    """The distribution's nginx; the test fails (not skips) without it."""
    binary = _nginx_binary()
    if binary is None:
        pytest.fail("nginx is not installed: apt-get install nginx (.ci/run does this)", pytrace=False)
    return binary


def local_nginx_conf(conf: str, tmp: Path, *, port: int, upstream: str, valid: str | None = None) -> Path:
    """The cache tier's nginx.conf with what only exists in the pod made local: the listen port,
    the HttpFS upstreams, the emptyDir paths and stdout; one process (master_process off), so it
    runs as the current user. Every rewrite must apply, or the test would run another config."""
    (tmp / "cache").mkdir(parents=True, exist_ok=True)  # the emptyDir at /var/cache/nginx
    rewrites = [
        (r"(?<![\w/])/tmp/", f"{tmp}/"),  # first: the paths below are under tmp
        (r"listen \d+;", f"listen 127.0.0.1:{port};"),
        (r"(upstream httpfs \{\n)(?:\s*server [^\n]+\n)+", rf"\g<1>        server {upstream};\n"),
        (r"/var/cache/nginx/", f"{tmp}/cache/"),
        (r"/dev/stdout", f"{tmp}/access.log"),
        (r"daemon off;", "daemon off;\nmaster_process off;"),
    ]
    if valid:
        rewrites.append((r"proxy_cache_valid 200 \w+;", f"proxy_cache_valid 200 {valid};"))
    for pattern, replacement in rewrites:
        conf, n = re.subn(pattern, replacement, conf)
        assert n, f"nginx.conf: nothing matches {pattern!r}"
    path = tmp / "nginx.conf"
    path.write_text(conf)
    return path
