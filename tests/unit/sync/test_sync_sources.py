"""Source URLs, WebHDFS error bodies, and CTR_SYNC_* settings."""

from __future__ import annotations

import json

import pytest
import requests

from scoring.sync.background import config_from_env
from scoring.sync.sources import SourceURLError, open_source
from scoring.sync.sources.http import HttpSource
from scoring.sync.sources.httpfs import HttpFsSource
from scoring.sync.sources.local import LocalSource
from scoring.sync.sources.rest import remote_exception, response_error
from scoring.sync.sources.webhdfs import WebHdfsSource


def test_webhdfs_and_httpfs_urls():
    s = open_source("webhdfs://nn1:9870,nn2/models/ctr/")
    assert isinstance(s, WebHdfsSource) and s.hosts == ("nn1:9870", "nn2:9870") and s.path == "/models/ctr"
    h = open_source("httpfs://h1,h2:14001,[::1]/models/ctr?user.name=etl")
    assert isinstance(h, HttpFsSource) and h.hosts == ("h1:14000", "h2:14001", "[::1]:14000")
    assert h.user == "etl"
    assert "user.name=etl" in h._url("h1:14000", "emb/a b.npy", "OPEN", offset=5)
    assert "/webhdfs/v1/models/ctr/emb/a%20b.npy?op=OPEN&offset=5" in h._url("h1:14000", "emb/a b.npy", "OPEN",
                                                                              offset=5)
    assert open_source("swebhdfs://nn1/m", user="u").describe() == "swebhdfs://nn1:9870/m"


def test_http_and_file_urls():
    s = open_source("https://cdn.example.com:8443/exports/ctr/")
    assert isinstance(s, HttpSource) and s.base_url == "https://cdn.example.com:8443/exports/ctr"
    f = open_source("file:///data/models/ctr")
    assert isinstance(f, LocalSource) and f.path == "/data/models/ctr"


@pytest.mark.parametrize("url, message", [
    ("hdfs://nn1:8020/models/ctr", "unsupported scheme 'hdfs'"),
    ("/models/ctr", "expected a URL"),
    ("webhdfs:///models/ctr", "no host"),
    ("webhdfs://nn1,nn1/models/ctr", "listed twice"),
    ("webhdfs://us:pw@nn1/models/ctr", "credentials"),
    ("webhdfs://nn 1/models/ctr", "is not a host"),
    ("httpfs://h1/models/../etc", "'.' or '..'"),
    ("httpfs://h1/models/ctr?doas=root", "unknown query parameter 'doas'"),
    ("http://host", "absolute path"),
    ("file://host/x", "three slashes"),
])
def test_bad_urls_say_what_is_wrong(url, message):
    with pytest.raises(SourceURLError, match=message.replace("(", r"\(").replace(".", r"\.")):
        open_source(url)


def _response(status: int, body: bytes) -> requests.Response:
    import io

    import urllib3

    resp = requests.Response()
    resp.status_code = status
    resp.reason = "Forbidden"
    resp.raw = urllib3.HTTPResponse(body=io.BytesIO(body), preload_content=False)
    return resp


def rex(name: str, message: str, java: str = "") -> bytes:
    return json.dumps({"RemoteException": {"exception": name, "javaClassName": java or f"x.{name}",
                                           "message": message}}).encode()


def test_remote_exception_bodies_become_clear_errors():
    assert remote_exception(rex("FileNotFoundException", "File does not exist: /a")) == \
        ("FileNotFoundException", "File does not exist: /a")
    assert remote_exception(b"<html>oops</html>") is None
    standby = response_error(_response(403, rex("StandbyException", "Operation category READ is not "
                                                "supported in state standby")), "nn1:9870", "OPEN /m")
    assert standby.retriable and "nn1:9870: HTTP 403 StandbyException: Operation category READ" in str(standby)
    denied = response_error(_response(403, rex("AccessControlException", "Permission denied: user=x")),
                            "nn1:9870", "OPEN /m")
    assert not denied.retriable and "permission denied" in str(denied)
    assert response_error(_response(403, rex("RetriableException", "busy")), "h", "x").retriable
    assert response_error(_response(503, b"upstream down"), "h", "x").retriable
    missing = response_error(_response(404, rex("FileNotFoundException", "File does not exist: /m")), "h", "x")
    assert not missing.retriable and "check the --source path" in str(missing)


def test_config_from_env(tmp_path):
    assert config_from_env(tmp_path, {}) is None
    cfg = config_from_env(tmp_path, {"CTR_SYNC_SOURCE": "httpfs://h1,h2/models/ctr", "CTR_SYNC_INTERVAL": "5",
                                     "CTR_SYNC_RATE_LIMIT": "20M", "CTR_SYNC_KEEP": "2"})
    assert cfg.model == "ctr" and cfg.interval == 5.0 and cfg.rate_limit == 20 * 2**20 and cfg.keep == 2
    assert config_from_env(tmp_path, {"CTR_SYNC_SOURCE": "file:///m/x", "CTR_SYNC_RATE_LIMIT": "0"}).rate_limit is None
    with pytest.raises(ValueError, match="CTR_SYNC_INTERVAL='soon'"):
        config_from_env(tmp_path, {"CTR_SYNC_SOURCE": "file:///m/x", "CTR_SYNC_INTERVAL": "soon"})
    with pytest.raises(ValueError, match="keep must be >= 1"):
        config_from_env(tmp_path, {"CTR_SYNC_SOURCE": "file:///m/x", "CTR_SYNC_KEEP": "0"})


def test_a_content_length_that_is_not_a_number_is_a_source_error():
    import io

    import pytest
    import requests

    from scoring.sync.sources.base import SourceError
    from scoring.sync.sources.rest import as_download

    resp = requests.Response()
    resp.status_code = 200
    resp.headers["Content-Length"] = "12abc"
    resp.raw = io.BytesIO(b"hello")
    with pytest.raises(SourceError, match="Content-Length is not a number"):
        with as_download(resp, 0, "h1:14000", "OPEN /m/x.npy"):
            pass
