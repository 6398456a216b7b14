"""What goes over the wire to TF Serving: int64 ids, padding, row/columnar bodies, answers."""

from __future__ import annotations

import re

import numpy as np
import orjson
import pytest

from scoring.engine.features import hash_string
from scoring.upstream.config import Features, InputMapping
from scoring.upstream.payload import (
    BadResponse,
    from_int64,
    parse_predictions,
    predict_body,
    request_tensors,
    to_int64,
)
from scoring.upstream.scorer import layout_of

FEATURES = Features(("user_id", "city"), ("ad_id", "category"), 2)


def test_ids_at_or_above_2_63_are_sent_as_twos_complement():
    ids = np.array([0, 1, 2**63 - 1, 2**63, 2**64 - 1], dtype=np.uint64)
    signed = to_int64(ids)
    assert signed.tolist() == [0, 1, 2**63 - 1, -(2**63), -1]
    assert from_int64(signed).tolist() == ids.tolist()


def encode(context, ads, mapping=InputMapping()):
    batch = layout_of(FEATURES).encode(context, ads)
    return request_tensors(batch, FEATURES.context, FEATURES.ad, FEATURES.dense_dim, mapping)


def test_groups_become_padded_int64_matrices_with_lengths():
    big = 2**64 - 5
    ads = [{"features": {"ad_id": "a1", "category": ["x", "y", "z"]}, "dense": [0.5, 1]},
           {"features": {"ad_id": big}, "dense": [0, -2.5]},
           {"features": {"category": []}, "dense": [1, 1]}]
    t = encode({"user_id": "u1", "city": ["bj", "sh"]}, ads).slice(0, 3)
    assert t["user_id"].tolist() == [[hash_string("u1") - 2**64 * (hash_string("u1") >= 2**63)]] * 3
    assert t["user_id_len"].tolist() == [1, 1, 1] and t["city_len"].tolist() == [2, 2, 2]
    assert t["ad_id"][:, 0].tolist()[1] == big - 2**64
    assert t["ad_id_len"].tolist() == [1, 1, 0]
    assert t["category"].shape == (3, 3) and t["category_len"].tolist() == [3, 0, 0]
    assert t["category"][1].tolist() == [0, 0, 0]  # padding (pad_id 0), masked by the length
    assert t["dense"].dtype == np.float32 and t["dense"].tolist() == [[0.5, 1], [0, -2.5], [1, 1]]
    # a sub-batch is trimmed to its own longest row
    assert encode({}, ads).slice(1, 3)["category"].shape == (2, 1)


def test_mapping_renames_tensors_and_can_drop_lengths():
    mapping = InputMapping(tensors={"ad_id": "item"}, lengths=None, pad_id=-1, dense="stats")
    t = encode({}, [{"features": {"category": ["a", "b"]}, "dense": [1, 2]},
                    {"features": {"category": "c"}, "dense": [1, 2]}], mapping).slice(0, 2)
    assert sorted(t) == ["category", "city", "item", "stats", "user_id"]
    assert t["category"][1].tolist() == [to_int64(np.array([hash_string("c")], np.uint64))[0], -1]


def test_row_and_columnar_bodies():
    t = {"a": np.array([[1, -2], [3, 4]], dtype=np.int64), "a_len": np.array([2, 1]),
         "dense": np.array([[0.25], [0.5]], dtype=np.float32)}
    row = orjson.loads(predict_body(t, "row", "serving_default"))
    assert row == {"signature_name": "serving_default",
                   "instances": [{"a": [1, -2], "a_len": 2, "dense": [0.25]},
                                 {"a": [3, 4], "a_len": 1, "dense": [0.5]}]}
    col = orjson.loads(predict_body(t, "columnar", None))
    assert col == {"inputs": {"a": [[1, -2], [3, 4]], "a_len": [2, 1], "dense": [[0.25], [0.5]]}}


def test_parse_predictions_accepts_tf_shapes_and_rejects_the_rest():
    assert parse_predictions(b'{"predictions": [[0.1], [0.2]]}', 2, "row", None).tolist() == [0.1, 0.2]
    assert parse_predictions(b'{"predictions": [0.1, 1]}', 2, "row", None).tolist() == [0.1, 1.0]
    assert parse_predictions(b'{"outputs": [[0.3]]}', 1, "columnar", None).tolist() == [0.3]
    multi = b'{"predictions": [{"pctr": [0.4], "logit": [-0.4]}]}'
    assert parse_predictions(multi, 1, "row", "pctr").tolist() == [0.4]
    col_multi = b'{"outputs": {"pctr": [[0.4]], "logit": [[-0.4]]}}'
    assert parse_predictions(col_multi, 1, "columnar", "pctr").tolist() == [0.4]
    for body, n, fmt, output, msg in [
        (b'{"predictions": [0.1,', 1, "row", None, "malformed JSON"),
        (b'{"outputs": [0.1]}', 1, "row", None, "no 'predictions' key"),
        (b'{"predictions": [0.1, 0.2]}', 1, "row", None, "expected 1 predictions (one per ad), got 2"),
        (b'{"predictions": [[0.1, 0.2]]}', 1, "row", None, "expected one probability"),
        (b'{"predictions": [1.5]}', 1, "row", None, "expected one probability"),
        (b'{"predictions": [NaN]}', 1, "row", None, "prediction 0 is nan"),
        (multi, 1, "row", None, "several outputs"),
        (multi, 1, "row", "score", "output 'score' is not in the response"),
    ]:
        with pytest.raises(BadResponse, match=re.escape(msg)):
            parse_predictions(body, n, fmt, output)
