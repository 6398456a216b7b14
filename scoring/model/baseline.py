"""The health baseline a package carries: DeepInsight's statistics on reference requests.

``health/baseline.json`` (optional; listed in ``checksums.md5`` like every file) holds, computed
on a reference set of score requests (the float64 reference forward, so it does not depend on the
engine): per hidden layer and neuron the mean, population standard deviation and zero share of
the post-ReLU output, the layer fluctuation (both forms) and a bootstrap band for it (the 0.5%
and 99.5% quantiles of F_l over ``resamples`` windows of ``window`` rows drawn with replacement:
the spread a healthy window of the size watched online shows); the pCTR histogram over 50
log-odds bins with its mean and expected AUC; and each group's absent share (rows where the group
is missing or empty). Definitions: :mod:`scoring.model.health`, docs/insight.md.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .checksums import format_checksums, md5_file, package_files
from .health import (
    LOGIT_BINS,
    LOGIT_RANGE,
    LayerMoments,
    expected_auc,
    logit_histogram,
    mean_abs_fluctuation,
    variance_components,
)
from .manifest import CHECKSUMS, PackageError
from .package import ModelPackage, load_package
from .reference import mlp_forward, mlp_input

BASELINE = "health/baseline.json"
REQUESTS = "health/requests.jsonl"  # the reference requests themselves (the guarded swap's)
MAX_REQUESTS = 2000                 # kept in the package: the guarded swap's sample size
MAX_REQUESTS_BYTES = 16 << 20
WINDOW = 20_000
RESAMPLES = 200
BAND = (0.005, 0.995)


def _absent(value: Any) -> bool:
    return value is None or (isinstance(value, list) and not value)


def compute_baseline(package: ModelPackage, requests: Iterable[Mapping[str, Any]], *,
                     window: int = WINDOW, resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """The baseline of ``package`` on ``requests`` (score bodies: ``context`` and ``ads``)."""
    m = package.manifest
    if m.graph is not None:
        raise PackageError(f"{m.name} {m.version}: a format 2 model graph; the health baseline "
                           "watches MLP packages (pooled groups -> ReLU MLP -> sigmoid)")
    rows, request_of_row, n_requests = [], [], 0
    absent = {g.name: 0 for g in m.groups}
    for i, req in enumerate(requests):
        n_requests += 1
        ctx = req.get("context") or {}
        for j, ad in enumerate(req.get("ads") or []):
            try:
                row = mlp_input(package, ctx, ad)
                if not np.isfinite(row).all():
                    raise ValueError("a dense value is not a finite number")
                rows.append(row)
                request_of_row.append(n_requests - 1)
                feats = ad.get("features") or {}
                for g in m.groups:
                    absent[g.name] += _absent((ctx if g.side == "context" else feats).get(g.name))
            except (ValueError, TypeError, AssertionError, AttributeError) as exc:
                raise PackageError(f"baseline: requests[{i}].ads[{j}] is not a valid score request "
                                   f"for this model (features: strings or ids in [0, 2**64); dense: "
                                   f"{m.dense_dim} numbers): {str(exc)[:120]}") from None
    if not rows:
        raise PackageError("baseline: the reference requests hold no ads")
    hidden: list[np.ndarray] = []
    p = mlp_forward(package, np.stack(rows), hidden)
    request_of_row = np.unique(request_of_row, return_inverse=True)[1]
    counts = _resample_counts(request_of_row, window, resamples, seed)
    layers = []
    for li, h in enumerate(hidden):
        moments = LayerMoments(h.shape[1])
        moments.add(h)
        within, between = variance_components(h, request_of_row)
        boot = _resampled_fluctuation(h, counts) if resamples else np.zeros(1)
        layers.append({
            "layer": li + 1, "width": int(h.shape[1]),
            "fluctuation": moments.fluctuation, "fluctuation_mad": mean_abs_fluctuation(h),
            "zero_share": float(moments.zero_share.mean()),
            "band": [float(np.quantile(boot, BAND[0])), float(np.quantile(boot, BAND[1]))],
            "neurons": {"mean": moments.mean.tolist(), "sigma": moments.sigma.tolist(),
                        "zero_share": moments.zero_share.tolist(),
                        "sigma_within": np.sqrt(within).tolist(),
                        "sigma_between": np.sqrt(between).tolist()}})
    return {
        "format": 1, "rows": len(rows), "requests": n_requests, "window": window,
        "resamples": resamples, "band_quantiles": list(BAND), "seed": seed,
        "layers": layers,
        "pctr": {"mean": float(p.mean()), "expected_auc": expected_auc(p),
                 "logit_bins": LOGIT_BINS, "logit_range": list(LOGIT_RANGE),
                 "histogram": logit_histogram(p).tolist()},
        "groups": {name: n / len(rows) for name, n in absent.items()},
    }


def _resample_counts(request_of_row: np.ndarray, window: int, resamples: int,
                     seed: int) -> np.ndarray:
    """How often each row appears in each of ``resamples`` windows of about ``window`` rows:
    [resamples, n_rows]. Whole requests are drawn with replacement (as many as make ``window``
    rows on average), not single rows: the ads of one request share its context, so rows are not
    independent, and a window's statistics vary as its requests do."""
    request_of_row = np.asarray(request_of_row)
    n_requests = int(request_of_row.max()) + 1 if request_of_row.size else 1
    k = max(1, round(window * n_requests / max(1, request_of_row.size)))
    rng = np.random.default_rng(seed)
    per_request = rng.multinomial(k, np.full(n_requests, 1.0 / n_requests), size=max(1, resamples))
    return per_request[:, request_of_row].astype(np.float64)


def _resampled_fluctuation(h: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """F_l of each resampled window, from weighted sums (two matrix products, not a copy of
    every window): population std per neuron = sqrt(E[h^2] - E[h]^2) over the window."""
    out = np.empty(counts.shape[0])
    for r0 in range(0, counts.shape[0], 32):
        c = counts[r0:r0 + 32]
        total = c.sum(axis=1, keepdims=True)
        mean = c @ h / total
        var = np.maximum(c @ (h * h) / total - mean * mean, 0.0)
        out[r0:r0 + 32] = np.sqrt(var).mean(axis=1)
    return out


def read_requests(path: str | os.PathLike) -> list[dict]:
    """Score bodies from a JSONL file, one per line; a bad line is named."""
    out = []
    with open(path, "rb") as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line.decode("utf-8"))
            except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
                raise PackageError(f"{Path(path).name}:{i}: not JSON ({str(exc)[:120]})") from None
            if not isinstance(doc, dict) or not isinstance(doc.get("ads"), list) or not isinstance(
                    doc.get("context") or {}, dict):
                raise PackageError(f"{Path(path).name}:{i}: expected a score body with an \"ads\" "
                                   "list (and a \"context\" object)")
            out.append(doc)
    return out


def write_baseline(package_dir: str | os.PathLike, baseline: Mapping[str, Any],
                   requests: Sequence[Mapping[str, Any]] | None = None) -> ModelPackage:
    """Add (or replace) the package's baseline and rewrite ``checksums.md5``; the package is
    loaded back with full validation. Its identity (the md5 of ``checksums.md5``) changes.
    ``requests``: the reference requests, kept as ``health/requests.jsonl`` (the last
    ``MAX_REQUESTS`` that fit in ``MAX_REQUESTS_BYTES``) for the guarded swap."""
    root = Path(package_dir)
    pkg = load_package(root)  # a valid package first, and a valid baseline for it: nothing on
    check_baseline(json.loads(json.dumps(baseline)), [w.shape[1] for w in pkg.weights[:-1]])  # disk changes otherwise
    path = root / BASELINE
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, (json.dumps(baseline, separators=(",", ":")) + "\n").encode())
    if requests is not None:
        lines, size = [], 0
        for req in list(requests)[-MAX_REQUESTS:][::-1]:
            line = json.dumps({"context": req.get("context") or {}, "ads": req.get("ads") or []},
                              separators=(",", ":")).encode() + b"\n"
            if size + len(line) > MAX_REQUESTS_BYTES:
                break
            lines.append(line)
            size += len(line)
        _write_atomic(root / REQUESTS, b"".join(lines[::-1]))
    sums = {name: md5_file(root / name) for name in package_files(root)}
    (root / CHECKSUMS).write_text(format_checksums(sums), encoding="utf-8")
    return load_package(root)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def reference_requests(package: ModelPackage) -> list[dict] | None:
    """The package's reference requests (``health/requests.jsonl``), or None without them.
    A file that is listed but unreadable or malformed gives PackageError naming the line."""
    if REQUESTS not in package.checksums:
        return None
    from .manifest import read_small_file

    data = read_small_file(package.path / REQUESTS, MAX_REQUESTS_BYTES,
                           f"{REQUESTS}: listed in {CHECKSUMS} but missing",
                           f"{REQUESTS}: larger than {MAX_REQUESTS_BYTES} bytes")
    out = []
    for i, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line.decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            raise PackageError(f"{REQUESTS}:{i}: not JSON ({str(exc)[:120]})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("ads"), list) or not isinstance(
                doc.get("context") or {}, dict):
            raise PackageError(f"{REQUESTS}:{i}: expected a score body with an \"ads\" list")
        out.append(doc)
    return out


def check_baseline(doc: Any, widths: Sequence[int]) -> dict:
    """Validate a parsed baseline against the model's hidden widths; PackageError names the field."""
    def bad(what: str) -> PackageError:
        return PackageError(f"{BASELINE}: {what}")

    if not isinstance(doc, dict) or doc.get("format") != 1:
        raise bad("expected a JSON object with \"format\": 1")
    layers = doc.get("layers")
    if not isinstance(layers, list) or len(layers) != len(widths):
        raise bad(f"layers must list the model's {len(widths)} hidden layers")
    for i, (layer, width) in enumerate(zip(layers, widths)):
        neurons = layer.get("neurons") if isinstance(layer, dict) else None
        if not isinstance(neurons, dict):
            raise bad(f"layers[{i}].neurons must be an object")
        for key in ("mean", "sigma", "zero_share"):
            values = neurons.get(key)
            if not isinstance(values, list) or len(values) != width or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
                    for v in values):
                raise bad(f"layers[{i}].neurons.{key} must be {width} finite numbers")
        for key in ("sigma_within", "sigma_between"):  # optional: older baselines lack them
            values = neurons.get(key)
            if values is not None and (not isinstance(values, list) or len(values) != width or
                                       not all(_number(v) and v >= 0 for v in values)):
                raise bad(f"layers[{i}].neurons.{key} must be {width} finite numbers >= 0")
        band = layer.get("band")
        if not (isinstance(band, list) and len(band) == 2 and all(_number(v) for v in band)
                and band[0] <= band[1]):
            raise bad(f"layers[{i}].band must be [low, high]")
        for key in ("fluctuation", "zero_share"):
            if not _number(layer.get(key)) or layer[key] < 0:
                raise bad(f"layers[{i}].{key} must be a finite number >= 0")
    for key in ("rows", "window"):
        if not (isinstance(doc.get(key), int) and not isinstance(doc.get(key), bool) and doc[key] > 0):
            raise bad(f"{key} must be a positive integer")
    pctr = doc.get("pctr")
    hist = pctr.get("histogram") if isinstance(pctr, dict) else None
    if not isinstance(hist, list) or len(hist) != LOGIT_BINS or not all(
            _number(v) and v >= 0 for v in hist) or not sum(hist) > 0:
        raise bad(f"pctr.histogram must hold {LOGIT_BINS} counts (not all zero)")
    if pctr.get("expected_auc") is not None and not _number(pctr.get("expected_auc")):
        raise bad("pctr.expected_auc must be a number or null")
    groups = doc.get("groups")
    if not isinstance(groups, dict) or not all(
            isinstance(k, str) and (v is None or (_number(v) and 0 <= v <= 1)) for k, v in groups.items()):
        raise bad("groups must map each group to its absent share (a number in [0, 1])")
    return doc


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and bool(np.isfinite(v))
