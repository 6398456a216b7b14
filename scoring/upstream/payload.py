"""What goes over the wire to TF Serving's REST predict API, apart from the transport.

``POST /v1/models/{m}[/versions/{v}|/labels/{l}]:predict`` takes ``{"signature_name": ...,
"instances": [...]}`` (row format; the ``inputs`` columnar format is an option) and answers
``{"predictions": [...]}`` (or ``"outputs"``); errors come as ``{"error": "..."}`` with a status.

Each feature group becomes an int64 id matrix ``[n_ads, max_len]`` named after the group (padded
with ``pad_id``) and an int64 ``{group}_len`` count of real ids per row; dense features a float
``[n_ads, dense_dim]`` tensor named ``dense`` (see :class:`~scoring.upstream.config.InputMapping`).
Ids are hashed per contract section 1 (by :class:`~scoring.engine.features.FeatureLayout`, which
also validates the request). TF's int64 is signed, so an id ``x >= 2**63`` is sent as its two's
complement ``x - 2**64``; the model reads the same 64 bits (``tf.bitcast`` to uint64 gives ``x``
back, and ``x % buckets`` needs that unsigned view).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import orjson

from ..engine.features import EncodedBatch
from .config import InputMapping


def to_int64(ids: np.ndarray) -> np.ndarray:
    """uint64 ids as TF's int64: the same bits, so ids >= 2**63 become ``id - 2**64``."""
    return np.ascontiguousarray(ids, dtype=np.uint64).view(np.int64)


def from_int64(ids: np.ndarray) -> np.ndarray:
    """The inverse of :func:`to_int64`."""
    return np.ascontiguousarray(ids, dtype=np.int64).view(np.uint64)


@dataclass
class _IdTensor:
    name: str
    ids: np.ndarray          # int64 [n, max_len], padded
    counts: np.ndarray       # int64 [n]
    counts_name: str | None


@dataclass
class RequestTensors:
    """One request as TF Serving input tensors, ready to be cut into sub-batches."""

    n: int
    id_tensors: list[_IdTensor]
    dense_name: str | None
    dense: np.ndarray | None

    def slice(self, i: int, j: int) -> dict[str, np.ndarray]:
        """Rows ``i:j``; id matrices trimmed to the longest row of the slice (at least 1)."""
        out: dict[str, np.ndarray] = {}
        for t in self.id_tensors:
            counts = t.counts[i:j]
            width = max(1, int(counts.max())) if j > i else 1
            out[t.name] = t.ids[i:j, :width]
            if t.counts_name:
                out[t.counts_name] = counts
        if self.dense_name is not None and self.dense is not None:
            out[self.dense_name] = self.dense[i:j]
        return out


def _id_matrices(ids: np.ndarray, keys: np.ndarray, lens: np.ndarray, n_rows: int,
                 n_slots: int, pad: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Run-length encoded ids (see scoring.engine.features) -> per slot, an int64 id matrix
    ``[n_rows, longest row]`` and the row counts. One scatter for all slots (few NumPy calls:
    this runs on every request)."""
    n_slots_ = max(1, n_slots)
    rows, slots = np.divmod(keys, n_slots_)
    counts = np.zeros((n_slots_, n_rows), dtype=np.int64)
    counts[slots, rows] = lens
    widths = counts.max(axis=1) if n_rows else np.zeros(n_slots_, dtype=np.int64)
    pad_u = np.array(pad, dtype=np.int64).view(np.uint64)
    mat = np.full((n_slots_, n_rows, max(1, int(widths.max()))), pad_u, dtype=np.uint64)
    if len(ids):
        entry = np.repeat(np.arange(len(keys)), lens)
        pos = np.arange(len(ids)) - (np.cumsum(lens) - lens)[entry]
        mat[slots[entry], rows[entry], pos] = ids
    signed = to_int64(mat)
    return [(signed[s, :, :max(1, int(widths[s]))], counts[s]) for s in range(n_slots)]


def request_tensors(batch: EncodedBatch, ctx_groups: Sequence[str], ad_groups: Sequence[str],
                    dense_dim: int, mapping: InputMapping) -> RequestTensors:
    """Build the input tensors of a hashed request; context ids are repeated on every row."""
    n = batch.n_ads
    tensors: list[_IdTensor] = []
    ctx = _id_matrices(batch.ctx_ids, batch.ctx_keys, batch.ctx_lens, 1, len(ctx_groups),
                       mapping.pad_id)
    for g, (mat, counts) in zip(ctx_groups, ctx):  # the same row for every ad: a broadcast view
        tensors.append(_IdTensor(mapping.tensor(g), np.broadcast_to(mat, (n, mat.shape[1])),
                                 np.broadcast_to(counts, (n,)), mapping.length_tensor(g)))
    ad = _id_matrices(batch.ad_ids, batch.ad_keys, batch.ad_lens, n, len(ad_groups),
                      mapping.pad_id)
    for g, (mat, counts) in zip(ad_groups, ad):
        tensors.append(_IdTensor(mapping.tensor(g), mat, counts, mapping.length_tensor(g)))
    dense = batch.dense if dense_dim else None
    return RequestTensors(n, tensors, mapping.dense if dense_dim else None, dense)


def predict_body(tensors: Mapping[str, np.ndarray], fmt: str, signature_name: str | None) -> bytes:
    """The JSON body of one ``:predict`` call, in row (``instances``) or columnar (``inputs``)
    format."""
    body: dict[str, Any] = {}
    if signature_name:
        body["signature_name"] = signature_name
    if fmt == "columnar":
        body["inputs"] = {k: v.tolist() for k, v in tensors.items()}
    else:
        names = list(tensors)
        columns = [tensors[k].tolist() for k in names]
        body["instances"] = [dict(zip(names, row)) for row in zip(*columns)]
    return orjson.dumps(body)


class BadResponse(ValueError):
    """A 200 answer that is not what TF Serving's predict API returns for our request."""


def parse_predictions(content: bytes, n: int, fmt: str, output: str | None,
                      outputs: tuple[str, ...] = ()) -> np.ndarray:
    """The ``n`` pCTRs in a predict response, or with ``outputs`` an ``[n, len(outputs)]``
    matrix of those outputs; raises :class:`BadResponse` on anything else."""
    if outputs:
        return np.stack([parse_predictions(content, n, fmt, name) for name in outputs], axis=1)
    try:
        doc = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        try:  # TF Serving writes NaN/Infinity tokens, which only a lenient parser takes
            doc = json.loads(content)
        except ValueError:
            raise BadResponse(f"malformed JSON ({exc})") from None
    key = "outputs" if fmt == "columnar" else "predictions"
    if not isinstance(doc, dict) or key not in doc:
        raise BadResponse(f"no {key!r} key in the response")
    values = doc[key]
    if isinstance(values, dict):  # columnar, several named outputs
        values = _named(values, output)
    if not isinstance(values, list) or len(values) != n:
        got = f"{len(values)} values" if isinstance(values, list) else type(values).__name__
        raise BadResponse(f"expected {n} predictions (one per ad), got {got}")
    out = np.empty(n, dtype=np.float64)
    for i, v in enumerate(values):
        if isinstance(v, dict):  # row format, several named outputs
            v = _named(v, output)
        if isinstance(v, list) and len(v) == 1:
            v = v[0]
        if type(v) not in (float, int) or not 0.0 <= v <= 1.0:  # also NaN
            raise BadResponse(f"prediction {i} is {str(v)[:40]}, expected one probability in [0, 1] "
                              "(output shape [n] or [n, 1])")
        out[i] = v
    return out


def _named(values: Mapping[str, Any], output: str | None) -> Any:
    if output is None:
        raise BadResponse(f"the model has several outputs {sorted(values)[:8]}; set inputs.output "
                          "to the one that holds the pCTR")
    if output not in values:
        raise BadResponse(f"output {output!r} is not in the response (outputs: {sorted(values)[:8]})")
    return values[output]
