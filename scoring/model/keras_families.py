"""The seed's model families in Keras 3 (TensorFlow backend), and their exporter to format 2.

The seed's teams train in TensorFlow. :func:`build_keras_family` builds each family from
standard Keras layers (``Embedding``, ``Dense``, ``Concatenate``, ``Add``) and a few small
layers of ours (:func:`layers`): ``HashRows`` (the contract's ``id % rows`` on int64 ids read
as unsigned, so the model takes the same int64 tensors TF Serving gets from the service),
``Pool`` (sum / mean / sqrtn / weighted_sum over the real ids, the serving value where a row has
none), ``FM2``, ``Cross`` (DCN-v2, full or low rank) and ``Wide`` (one weight per id, summed).
Its inputs are TF Serving's: per group ``<group>`` int64 ``[n, max_len]`` and ``<group>_len``
int64 ``[n]`` (plus ``<group>_w`` float32 ``[n, max_len]`` for a weighted group) and ``dense``.

:func:`export_keras` reads the layers' weights by name into the family's arrays and writes the
package (:func:`scoring.model.families.write_family`); the tests compare the engine with the
model's own ``predict()``, and the TF Serving double serves the same model as a SavedModel.
Needs the ``keras`` extra (``tensorflow-cpu``, ``keras``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .export import Group
from .families import MULTI_HEAD, POSITION, FamilyArrays, deep_inputs, write_family

_LAYERS: dict[str, Any] = {}


@dataclass
class KerasFamilySpec:
    family: str
    groups: list[tuple[str, str, int, int, str]]   # (name, side, rows, dim, pooling)
    dense_dim: int = 0
    hidden: tuple[int, ...] = (64, 32)
    cross_layers: int = 2
    rank: int | None = None
    wide_rows: int = 1000
    wide_groups: list[str] = field(default_factory=list)
    serving_values: dict[str, Any] = field(default_factory=dict)


def layers() -> dict[str, Any]:
    """The small custom layers (defined on first use: TensorFlow is an optional extra)."""
    if _LAYERS:
        return _LAYERS
    import keras
    import tensorflow as tf

    @keras.saving.register_keras_serializable("ctr")
    class HashRows(keras.layers.Layer):
        """int64 ids (two's complement of the contract's uint64 ids) -> table rows."""

        def __init__(self, rows: int, **kw):
            super().__init__(**kw)
            self.rows = int(rows)

        def call(self, ids):
            u = tf.bitcast(tf.cast(ids, tf.int64), tf.uint64)
            return tf.cast(tf.math.floormod(u, tf.constant(self.rows, tf.uint64)), tf.int64)

        def get_config(self):
            return {**super().get_config(), "rows": self.rows}

    @keras.saving.register_keras_serializable("ctr")
    class Pool(keras.layers.Layer):
        """Rows [n, L, d] of a group's ids -> [n, d]; ``serving`` [d] or None where a row has none."""

        def __init__(self, mode: str, **kw):
            super().__init__(**kw)
            self.mode = mode

        def call(self, emb, lens, weights=None, serving=None):
            L = tf.shape(emb)[1]
            mask = tf.cast(tf.sequence_mask(lens, L), emb.dtype)
            if weights is not None:
                mask = mask * weights
            total = tf.reduce_sum(emb * mask[:, :, None], axis=1)
            count = tf.cast(lens, emb.dtype)[:, None]
            if self.mode == "mean":
                total = total / tf.maximum(count, 1.0)
            elif self.mode == "sqrtn":
                total = total / tf.sqrt(tf.maximum(count, 1.0))
            if serving is not None:  # [n, 1, d]: the serving value's row
                total = tf.where(count > 0, total, serving[:, 0, :])
            return total

        def get_config(self):
            return {**super().get_config(), "mode": self.mode}

    @keras.saving.register_keras_serializable("ctr")
    class FM2(keras.layers.Layer):
        """Field-level second-order FM over same-dim field vectors: [n, 1]."""

        def call(self, fields):
            stack = tf.stack(fields, axis=1)
            s = tf.reduce_sum(stack, axis=1)
            q = tf.reduce_sum(stack * stack, axis=1)
            return 0.5 * tf.reduce_sum(s * s - q, axis=1, keepdims=True)

    @keras.saving.register_keras_serializable("ctr")
    class Cross(keras.layers.Layer):
        """One DCN-v2 layer: ``x0 * (x @ W + b) + x``; ``W = u @ v`` when ``rank`` is set."""

        def __init__(self, rank: int | None = None, **kw):
            super().__init__(**kw)
            self.rank = rank

        def build(self, shapes):
            d = int(shapes[0][-1])
            if self.rank:
                self.u = self.add_weight(shape=(d, self.rank), initializer="glorot_uniform", name="u")
                self.v = self.add_weight(shape=(self.rank, d), initializer="glorot_uniform", name="v")
            else:
                self.w = self.add_weight(shape=(d, d), initializer="glorot_uniform", name="w")
            self.b = self.add_weight(shape=(d,), initializer="zeros", name="b")

        def call(self, inputs):
            x0, x = inputs
            z = tf.matmul(tf.matmul(x, self.u), self.v) if self.rank else tf.matmul(x, self.w)
            return x0 * (z + self.b) + x

        def get_config(self):
            return {**super().get_config(), "rank": self.rank}

    @keras.saving.register_keras_serializable("ctr")
    class ConstRows(keras.layers.Layer):
        """One table row per example (a serving value's row): [n, 1] int64 from any [n] input."""

        def __init__(self, row: int, **kw):
            super().__init__(**kw)
            self.row = int(row)

        def call(self, like):
            return tf.fill([tf.shape(like)[0], 1], tf.constant(self.row, tf.int64))

        def get_config(self):
            return {**super().get_config(), "row": self.row}

    _LAYERS.update(HashRows=HashRows, Pool=Pool, FM2=FM2, Cross=Cross, ConstRows=ConstRows)
    return _LAYERS


def build_keras_family(spec: KerasFamilySpec, seed: int = 0):
    """A Keras model of ``spec.family`` taking TF Serving's tensors, outputs by name."""
    import keras

    from .reference import value_ids

    def feature_id(value: Any, _where: str) -> int:
        return value_ids([value])[0]

    L = layers()
    keras.utils.set_random_seed(seed)
    inputs, fields, rows_of = {}, {}, {}
    for name, _, rows, dim, pooling in spec.groups:
        ids = keras.Input(shape=(None,), dtype="int64", name=name)
        lens = keras.Input(shape=(), dtype="int64", name=f"{name}_len")
        inputs[name], inputs[f"{name}_len"] = ids, lens
        r = L["HashRows"](rows, name=f"hash_{name}")(ids)
        rows_of[name] = ids
        emb_layer = keras.layers.Embedding(rows, dim, name=f"emb_{name}",
                                           embeddings_initializer=keras.initializers.RandomNormal(stddev=0.3))
        emb = emb_layer(r)
        weights = None
        if pooling == "weighted_sum":
            weights = keras.Input(shape=(None,), dtype="float32", name=f"{name}_w")
            inputs[f"{name}_w"] = weights
        serving = None
        if name in spec.serving_values:
            sid = feature_id(spec.serving_values[name], name)
            serving = emb_layer(L["ConstRows"](sid % rows, name=f"serve_{name}")(lens))
        fields[name] = L["Pool"](pooling, name=f"pool_{name}")(emb, lens, weights, serving)
    dense = None
    if spec.dense_dim:
        dense = keras.Input(shape=(spec.dense_dim,), dtype="float32", name="dense")
        inputs["dense"] = dense
    groups = [Group(g[0], g[1], np.zeros((1, g[3]), np.float32)) for g in spec.groups]
    x_names = [n for n in deep_inputs(spec.family, groups, 0)]
    x = keras.layers.Concatenate(name="x")([fields[n] for n in x_names] + ([dense] if dense is not None else []))
    wide_groups = spec.wide_groups or ([POSITION] if spec.family in MULTI_HEAD else [g[0] for g in spec.groups])
    wide_emb = keras.layers.Embedding(spec.wide_rows, 1, name="wide",
                                      embeddings_initializer=keras.initializers.RandomNormal(stddev=0.1))
    parts = []
    for name in wide_groups:
        r = L["HashRows"](spec.wide_rows, name=f"wide_hash_{name}")(rows_of[name])
        serving = None
        if name in spec.serving_values:
            sid = feature_id(spec.serving_values[name], name)
            serving = wide_emb(L["ConstRows"](sid % spec.wide_rows, name=f"wide_serve_{name}")(
                inputs[f"{name}_len"]))
        parts.append(L["Pool"]("sum", name=f"wide_pool_{name}")(wide_emb(r), inputs[f"{name}_len"],
                                                               None, serving))
    wide = keras.layers.Add(name="wide_sum")(parts) if len(parts) > 1 else parts[0]

    def tower(name: str, h, sizes: Sequence[int], last_relu: bool):
        for i, n in enumerate(sizes):
            act = "relu" if i < len(sizes) - 1 or last_relu else None
            h = keras.layers.Dense(n, activation=act, name=f"{name}_{i}")(h)
        return h

    f = spec.family
    outputs = {}
    if f == "wdl":
        outputs["pctr"] = keras.layers.Activation("sigmoid", name="pctr")(
            keras.layers.Add()([tower("deep", x, [*spec.hidden, 1], False), wide]))
    elif f == "deepfm":
        fm = L["FM2"](name="fm")([fields[g[0]] for g in spec.groups])
        outputs["pctr"] = keras.layers.Activation("sigmoid", name="pctr")(
            keras.layers.Add()([tower("deep", x, [*spec.hidden, 1], False), fm, wide]))
    elif f in ("dcn", "dcn_lowrank"):
        xl = x
        for i in range(spec.cross_layers):
            xl = L["Cross"](spec.rank if f == "dcn_lowrank" else None, name=f"cross_{i}")([x, xl])
        both = keras.layers.Concatenate(name="both")([xl, tower("deep", x, list(spec.hidden), True)])
        outputs["pctr"] = keras.layers.Activation("sigmoid", name="pctr")(tower("logit", both, [1], False))
    elif f == "mtl":
        bottom = tower("bottom", x, list(spec.hidden), True)
        outputs["pctr"] = keras.layers.Activation("sigmoid", name="pctr")(
            keras.layers.Add()([tower("ctr", bottom, [1], False), wide]))
        outputs["pcvr"] = keras.layers.Activation("sigmoid", name="pcvr")(tower("cvr", bottom, [1], False))
    elif f == "esmm":
        pctr = keras.layers.Activation("sigmoid", name="pctr")(
            keras.layers.Add()([tower("ctr", x, [*spec.hidden, 1], False), wide]))
        pcvr = keras.layers.Activation("sigmoid", name="pcvr")(tower("cvr", x, [*spec.hidden, 1], False))
        outputs.update(pctr=pctr, pcvr=pcvr,
                       pctcvr=keras.layers.Multiply(name="pctcvr")([pctr, pcvr]))
    else:
        raise ValueError(f"unknown family {f!r}")
    return keras.Model(inputs=inputs, outputs=outputs, name=f"ctr_{f}")


def family_arrays_keras(model, spec: KerasFamilySpec) -> FamilyArrays:
    """The Keras model's weights as the family's arrays (read by layer name)."""
    names = {layer.name for layer in model.layers}

    def table(name: str, rows: int, dim: int) -> np.ndarray:  # unused by the net: zeros
        if f"emb_{name}" not in names:
            return np.zeros((rows, dim), np.float32)
        return np.asarray(model.get_layer(f"emb_{name}").get_weights()[0], np.float32)

    groups = [Group(name, side, table(name, rows, dim), pooling)
              for name, side, rows, dim, pooling in spec.groups]
    wide_groups = spec.wide_groups or ([POSITION] if spec.family in MULTI_HEAD else [g[0] for g in spec.groups])
    names = {layer.name for layer in model.layers}
    wide = (np.asarray(model.get_layer("wide").get_weights()[0], np.float32) if "wide" in names
            else None)  # DCN has no wide part
    fa = FamilyArrays(spec.family, groups, dense_dim=spec.dense_dim, wide=wide,
                      wide_groups=list(wide_groups), serving_values=dict(spec.serving_values))
    for tower in ("deep", "logit", "bottom", "ctr", "cvr"):
        dense = []
        i = 0
        while f"{tower}_{i}" in names:
            layer = model.get_layer(f"{tower}_{i}")
            w, b = layer.get_weights()
            act = "relu" if layer.get_config()["activation"] == "relu" else "none"
            dense.append((np.asarray(w, np.float32), np.asarray(b, np.float32), act))
            i += 1
        if dense:
            fa.mlps[tower] = dense
    i = 0
    while f"cross_{i}" in names:
        layer = model.get_layer(f"cross_{i}")
        ws = [np.asarray(w, np.float32) for w in layer.get_weights()]
        fa.cross.append(((ws[0], ws[1]), ws[2]) if layer.rank else (ws[0], ws[1]))
        i += 1
    return fa


def export_keras(out: str | os.PathLike, model, spec: KerasFamilySpec, *, name: str,
                 version: str) -> Path:
    """Write a Keras family model (:func:`build_keras_family`) as a format 2 package."""
    return write_family(out, family_arrays_keras(model, spec), name=name, version=version)


def serving_tensors(spec: KerasFamilySpec, context: dict, ads: list[dict]) -> dict[str, np.ndarray]:
    """The tensors TF Serving gets for a request (one row per ad; a context group repeated):
    ids as int64 two's complement, padded with 0, lengths, weights, dense."""
    from .reference import value_ids

    out = {}
    for name, side, _, _, pooling in spec.groups:
        rows = []
        for ad in ads:
            value = context.get(name) if side == "context" else ad.get("features", {}).get(name)
            if isinstance(value, dict):
                ids, ws = value["ids"], value["weights"]
            else:
                ids = value if isinstance(value, list) else ([] if value is None else [value])
                ws = [1.0] * len(ids)
            rows.append((value_ids(list(ids)), ws))
        width = max(1, max(len(r[0]) for r in rows))
        ids = np.zeros((len(ads), width), np.uint64)
        w = np.zeros((len(ads), width), np.float32)
        for i, (r, ws) in enumerate(rows):
            ids[i, :len(r)] = r
            w[i, :len(ws)] = ws
        out[name] = ids.view(np.int64)
        out[f"{name}_len"] = np.array([len(r[0]) for r in rows], np.int64)
        if pooling == "weighted_sum":
            out[f"{name}_w"] = w
    if spec.dense_dim:
        out["dense"] = np.array([ad["dense"] for ad in ads], np.float32)
    return out
