"""HttpFS: HDFS's HTTP gateway (``httpfs://h1:14000,h2:14000/path``).

HttpFS speaks the WebHDFS REST API on port 14000, but streams file bytes itself instead of
redirecting to a DataNode, so one firewall opening to the gateways is enough. A pool of gateways
is the usual deployment; the syncer picks one at random per cycle and fails over on errors.
"""

from __future__ import annotations

from .webhdfs import WebHdfsSource


class HttpFsSource(WebHdfsSource):
    """A model package directory in HDFS, read through HttpFS gateways."""

    scheme = "httpfs"
    default_port = 14000
