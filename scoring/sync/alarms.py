"""Alarms: what happens when a sync cycle fails after all its retries (and when it recovers).

An alarm is an ERROR log line, a metric, and, with ``--alarm-webhook URL``, a JSON POST such as::

    {"event": "ctr_sync_failed", "model": "ctr", "source": "httpfs://h1:14000,h2:14000/models/ctr",
     "repo": "/srv/models", "host": "web-17", "error": "emb/ad_id.npy: md5 mismatch ...",
     "consecutive_failures": 1, "attempts": 4, "live_version": "20261122.1", "time": 1763812345.1}

``ctr_sync_recovered`` is posted by the first good cycle after failures. A webhook that is down
is logged and never stops the syncer.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from typing import Any

import requests

from . import metrics

log = logging.getLogger(__name__)

FAILED = "ctr_sync_failed"
RECOVERED = "ctr_sync_recovered"


class Alarms:
    """Raises and clears alarms for one model."""

    def __init__(self, model: str, webhook: str | None = None, *, timeout: float = 5.0) -> None:
        if webhook is not None and not webhook.startswith(("http://", "https://")):
            raise ValueError(f"--alarm-webhook {webhook!r}: expected an http:// or https:// URL")
        self.model = model
        self.webhook = webhook
        self.timeout = timeout
        self.sent: list[dict[str, Any]] = []  # what was posted, for inspection

    def _event(self, event: str, fields: dict[str, Any]) -> dict[str, Any]:
        return {"event": event, "model": self.model, "host": socket.gethostname(),
                "time": round(time.time(), 3), **fields}

    def failed(self, **fields: Any) -> dict[str, Any]:
        payload = self._event(FAILED, fields)
        metrics.ALARMS.labels(self.model).inc()
        log.error("ALARM model %r: sync failed %d time(s) in a row, live version %r keeps serving: %s",
                  self.model, fields.get("consecutive_failures", 0), fields.get("live_version"),
                  fields.get("error"))
        self._post(payload)
        return payload

    def recovered(self, **fields: Any) -> dict[str, Any]:
        payload = self._event(RECOVERED, fields)
        log.warning("model %r: sync recovered after %d failed cycle(s)", self.model,
                    fields.get("after_failures", 0))
        self._post(payload)
        return payload

    def _post(self, payload: dict[str, Any]) -> None:
        self.sent.append(payload)
        if not self.webhook:
            return
        try:
            resp = requests.post(self.webhook, data=json.dumps(payload),
                                 headers={"Content-Type": "application/json"}, timeout=self.timeout)
            if resp.status_code >= 300:
                log.error("alarm webhook %s answered HTTP %d", self.webhook, resp.status_code)
        except requests.RequestException as exc:
            log.error("alarm webhook %s failed: %s", self.webhook, exc)
