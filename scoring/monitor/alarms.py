"""When a window's statistic is out of its band, and the alarm after ``windows`` in a row.

An alarm is an ERROR log line, a metric (``ctr_health_alarms_total``) and, with a webhook
configured (``CTR_ALARM_WEBHOOK``, else the model syncer's ``CTR_SYNC_ALARM_WEBHOOK``), a JSON POST::

    {"event": "ctr_model_health", "model": "ctr", "version": "20261201", "statistic":
     "zero_share:layer2", "value": 0.61, "limit": "<= 0.19", "windows": 3, "host": ..., "time": ...}

The post runs on its own short-lived thread: a slow webhook never holds the monitor.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

EVENT = "ctr_model_health"


@dataclass(frozen=True)
class Rules:
    """Bands of the window statistics (docs/insight.md), defaults beside each."""

    windows: int = 3             # consecutive windows out of band before the alarm
    zero_share_rise: float = 0.05  # dead-neuron share of a layer over its baseline
    mean_shift: float = 1.0      # D_l: RMS over neurons of the mean's shift, in baseline sigmas
    psi: float = 0.2             # pCTR PSI against the baseline histogram
    expected_auc_drop: float = 0.05
    group_absent_rise: float = 0.10  # a group's absent share over its baseline

    def violations(self, s: dict[str, Any]) -> dict[str, tuple[float, str]]:
        """Statistic -> (value, limit) for each statistic of summary ``s`` out of its band."""
        out: dict[str, tuple[float, str]] = {}
        for layer in s["layers"]:
            key = f"layer{layer['layer']}"
            band = layer.get("band")
            f = layer["fluctuation"]
            if band is not None and not band[0] <= f <= band[1]:
                out[f"fluctuation:{key}"] = (f, f"in [{band[0]:.4g}, {band[1]:.4g}]")
            base = layer.get("zero_share_base")
            if base is not None and layer["zero_share"] > base + self.zero_share_rise:
                out[f"zero_share:{key}"] = (layer["zero_share"], f"<= {base + self.zero_share_rise:.4g}")
            shift = layer.get("mean_shift")
            if shift is not None and shift > self.mean_shift:
                out[f"mean_shift:{key}"] = (shift, f"<= {self.mean_shift:g}")
        value = s.get("pctr_psi")
        if value is not None and value > self.psi:
            out["pctr_psi"] = (value, f"<= {self.psi:g}")
        base_auc = s.get("expected_auc_base")
        auc = s.get("expected_auc")
        if base_auc is not None and auc == auc and auc < base_auc - self.expected_auc_drop:
            out["expected_auc"] = (auc, f">= {base_auc - self.expected_auc_drop:.4g}")
        for group, share in (s.get("groups") or {}).items():
            base = (s.get("groups_base") or {}).get(group)
            if share is not None and base is not None and share > base + self.group_absent_rise:
                out[f"group_absent:{group}"] = (share, f"<= {base + self.group_absent_rise:.4g}")
        if s.get("nonfinite"):
            out["nonfinite"] = (float(s["nonfinite"]), "0")
        return out


def update_streaks(streaks: dict[str, int], violations: dict[str, Any], windows: int) -> list[str]:
    """Count each statistic's windows out of band in a row; returns those reaching ``windows``
    now (an alarm fires once per streak)."""
    fired = [k for k in violations if streaks.get(k, 0) + 1 == windows]
    for k in list(streaks):
        if k not in violations:
            del streaks[k]
    for k in violations:
        streaks[k] = streaks.get(k, 0) + 1
    return fired


class Webhook:
    """Posts alarm events as JSON; failures are logged, never raised."""

    def __init__(self, url: str | None, timeout: float = 5.0) -> None:
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError(f"alarm webhook {url!r}: expected an http:// or https:// URL")
        self.url = url
        self.timeout = timeout

    def event(self, **fields: Any) -> dict[str, Any]:
        payload = {"event": EVENT, "host": socket.gethostname(), "time": round(time.time(), 3),
                   **fields}
        if self.url:
            threading.Thread(target=self._post, args=(payload,), daemon=True,
                             name="health-alarm-webhook").start()
        return payload

    def _post(self, payload: dict[str, Any]) -> None:
        req = urllib.request.Request(self.url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                if resp.status >= 300:
                    log.error("alarm webhook %s answered HTTP %d", self.url, resp.status)
        except Exception as exc:  # noqa: BLE001 - a webhook that is down never stops the monitor
            log.error("alarm webhook %s failed: %s", self.url, exc)
