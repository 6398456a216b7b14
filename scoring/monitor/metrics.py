"""Prometheus metrics of model health and the guarded swap (on the service's registry).

Window gauges are set by the worker that closes the window (``mostrecent`` across worker
processes); counters add up over workers.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge


class HealthMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        labels = ["model", "version"]
        self.sampled = Counter("ctr_health_sampled_requests", "Score requests sampled for model "
                               "health", ["model"], registry=r)
        self.dropped = Counter("ctr_health_dropped_samples", "Sampled requests dropped because the "
                               "health queue was full", registry=r)
        self.windows = Counter("ctr_health_windows", "Health windows closed", labels, registry=r)
        g = dict(registry=r, multiprocess_mode="mostrecent")
        self.fluctuation = Gauge("ctr_health_fluctuation", "Layer fluctuation F_l (mean over "
                                 "neurons of the std of the post-ReLU output), last window",
                                 labels + ["layer"], **g)
        self.fluctuation_ratio = Gauge("ctr_health_fluctuation_ratio", "F_l over its baseline, "
                                       "last window", labels + ["layer"], **g)
        self.zero_share = Gauge("ctr_health_zero_share", "Share of zero (dead) neuron outputs of "
                                "a layer, last window", labels + ["layer"], **g)
        self.mean_shift = Gauge("ctr_health_mean_shift", "D_l: RMS over neurons of the mean's "
                                "shift from the baseline in baseline sigmas, last window",
                                labels + ["layer"], **g)
        self.psi = Gauge("ctr_health_pctr_psi", "PSI of the pCTR histogram against the baseline, "
                         "last window", labels, **g)
        self.auc = Gauge("ctr_health_expected_auc", "Label-free expected AUC of the pCTRs, last "
                         "window", labels, **g)
        self.pctr_mean = Gauge("ctr_health_pctr_mean", "Mean pCTR, last window", labels, **g)
        self.absent = Gauge("ctr_health_group_absent_share", "Share of rows without a feature "
                            "group, last window", labels + ["group"], **g)
        self.out_of_band = Gauge("ctr_health_out_of_band", "Windows in a row a statistic has been out of "
                                 "its band (0: back in band)", labels + ["statistic"], **g)
        self.alarms = Counter("ctr_health_alarms", "Health alarms raised (a statistic out of its "
                              "band for several windows in a row)", labels + ["statistic"], registry=r)
        self.gate = Counter("ctr_gate_decisions", "Guarded-swap decisions by result (passed, "
                            "held, forced)", ["model", "result"], registry=r)
        self.gate_seconds = Gauge("ctr_gate_seconds", "Time the last guarded-swap check took",
                                  ["model"], **g)
        self.held = Gauge("ctr_model_held", "1 for a version the guarded swap holds back",
                          labels, **g)
        self._series: dict[tuple[str, str], set] = {}  # (model, version) -> (metric, labels)

    def forget(self, model: str, version: str) -> None:
        """Remove every series of a model version no longer watched."""
        for metric, labels in self._series.pop((model, version), set()):
            try:
                metric.remove(*labels)
            except KeyError:
                pass

    def child(self, metric: Any, *labels: str) -> Any:
        self._series.setdefault((labels[0], labels[1]), set()).add((metric, labels))
        return metric.labels(*labels)

    def window(self, model: str, version: str, s: dict[str, Any], streaks: dict[str, int],
               cleared: set[str]) -> None:
        self.child(self.windows, model, version).inc()
        for layer in s["layers"]:
            key = (model, version, str(layer["layer"]))
            self.child(self.fluctuation, *key).set(layer["fluctuation"])
            self.child(self.zero_share, *key).set(layer["zero_share"])
            if layer.get("fluctuation_ratio") is not None:
                self.child(self.fluctuation_ratio, *key).set(layer["fluctuation_ratio"])
            if layer.get("mean_shift") is not None:
                self.child(self.mean_shift, *key).set(layer["mean_shift"])
        if s.get("pctr_psi") is not None:
            self.child(self.psi, model, version).set(s["pctr_psi"])
        self.child(self.auc, model, version).set(s["expected_auc"])
        self.child(self.pctr_mean, model, version).set(s["pctr_mean"])
        for group, share in s["groups"].items():
            if share is not None:
                self.child(self.absent, model, version, group).set(share)
        for stat in s.get("out_of_band", {}):
            self.child(self.out_of_band, model, version, stat).set(streaks.get(stat, 0))
        for stat in cleared:
            self.child(self.out_of_band, model, version, stat).set(0)
