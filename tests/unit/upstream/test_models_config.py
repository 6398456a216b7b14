"""The models config file: parsing, defaults, and errors that name the field."""

from __future__ import annotations

import json

import pytest

from scoring.upstream.config import (
    ConfigError,
    NativeModel,
    TFServingModel,
    load_models_config,
    parse_models_config,
)

TF = {"name": "deep", "kind": "tfserving", "urls": ["http://tfs-1:8501", "http://tfs-2:8501/"],
      "fallback": "ctr"}


def config(**over):
    doc = {"models": [{"name": "ctr"}, dict(TF)], "default": "ctr"}
    doc.update(over)
    return doc


def test_no_file_serves_every_repo_model_natively():
    cfg = load_models_config(None, ["a", "b"])
    assert cfg.models == (NativeModel("a"), NativeModel("b"))
    assert cfg.default is None and cfg.layered is None


def test_yaml_and_json_files_agree(tmp_path):
    yaml_text = """
models:
  - name: ctr
  - name: deep
    kind: tfserving
    urls: [http://tfs-1:8501, http://tfs-2:8501/]
    model_name: rnn_ctr
    label: canary
    signature_name: serving_default
    deadline_ms: 30
    max_concurrency: 8
    sub_batch_size: 25
    format: columnar
    inputs: {tensors: {ad_id: ad}, lengths: null, pad_id: -1, output: pctr}
    breaker: {failures: 3, cooldown_ms: 500}
    fallback: ctr
default: ctr
experiments:
  key: request_id
  salt: layer1
  arms:
    - {name: deep-5, model: deep, share: 5.25}
"""
    (tmp_path / "m.yaml").write_text(yaml_text)
    cfg = load_models_config(tmp_path / "m.yaml")
    (tmp_path / "m.json").write_text(json.dumps(
        {"models": [{"name": "ctr"}, {**TF, "model_name": "rnn_ctr", "label": "canary",
                                      "signature_name": "serving_default", "deadline_ms": 30,
                                      "max_concurrency": 8, "sub_batch_size": 25, "format": "columnar",
                                      "inputs": {"tensors": {"ad_id": "ad"}, "lengths": None,
                                                 "pad_id": -1, "output": "pctr"},
                                      "breaker": {"failures": 3, "cooldown_ms": 500}}],
         "default": "ctr",
         "experiments": {"key": "request_id", "salt": "layer1",
                         "arms": [{"name": "deep-5", "model": "deep", "share": 5.25}]}}))
    assert load_models_config(tmp_path / "m.json").models == cfg.models
    tf = cfg.get("deep")
    assert isinstance(tf, TFServingModel)
    assert tf.urls == ("http://tfs-1:8501", "http://tfs-2:8501")
    assert tf.predict_path() == "/v1/models/rnn_ctr/labels/canary:predict"
    assert tf.inputs.tensor("ad_id") == "ad" and tf.inputs.tensor("city") == "city"
    assert tf.inputs.length_tensor("ad_id") is None and tf.inputs.pad_id == -1
    assert (tf.deadline_ms, tf.max_concurrency, tf.sub_batch_size, tf.format) == (30, 8, 25, "columnar")
    assert (tf.breaker.failures, tf.breaker.cooldown_ms) == (3, 500)
    (layer,) = cfg.layered.layers
    arm = layer.arms[0]
    assert (arm.name, str(arm.set["model"]), arm.buckets, arm.share) == ("deep-5", "deep", 525, 5.25)
    assert layer.unit == "request_id" and layer.salt == "layer1" and cfg.layered.legacy
    assert cfg.experimental() == {"deep"}


def test_defaults_of_a_tfserving_model():
    tf = parse_models_config(config()).get("deep")
    assert tf.model_name == "deep" and tf.version is None and tf.label is None
    assert tf.predict_path() == "/v1/models/deep:predict"
    assert tf.model_path() == "/v1/models/deep"
    assert tf.inputs.length_tensor("user_id") == "user_id_len"
    assert tf.format == "row" and tf.deadline_ms == 50
    versioned = parse_models_config(config(models=[{"name": "ctr"}, {**TF, "version": 7}]))
    assert versioned.get("deep").predict_path() == "/v1/models/deep/versions/7:predict"


@pytest.mark.parametrize("change,message", [
    ({"models": [{"name": "ctr"}, {**TF, "deadline": 5}]}, "models[1].deadline: unknown field; did you mean 'deadline_ms'?"),
    ({"models": [{"name": "ctr"}, {**TF, "deadline_ms": 0}]}, "models[1].deadline_ms: expected an integer 1..60000, got 0"),
    ({"models": [{"name": "ctr"}, {**TF, "urls": ["tfs-1:8501"]}]}, "models[1].urls[0]: expected a TF Serving REST base URL"),
    ({"models": [{"name": "ctr"}, {**TF, "urls": []}]}, "models[1].urls must list at least one"),
    ({"models": [{"name": "ctr"}, {**TF, "version": 1, "label": "x"}]}, "models[1].version and models[1].label"),
    ({"models": [{"name": "ctr"}, {**TF, "fallback": "deep"}]}, "models[1].fallback 'deep' must name a native model"),
    ({"models": [{"name": "ctr"}, {k: v for k, v in TF.items() if k != "fallback"}]}, "models[1].features is required"),
    ({"models": [{"name": "ctr"}, {**TF, "kind": "onnx"}]}, "models[1].kind: expected one of ['native', 'tfserving']"),
    ({"models": [{"name": "ctr"}, {**TF, "format": "rows"}]}, "models[1].format: expected one of"),
    ({"models": [{"name": "ctr"}, {**TF, "model_name": "a/b"}]}, "models[1].model_name: 'a/b' cannot be part"),
    ({"models": [{"name": "ctr"}, {**TF, "max_concurrency": "4"}]}, "models[1].max_concurrency: expected an integer, got '4'"),
    ({"models": [{"name": "ctr"}, {**TF, "breaker": {"failures": 0}}]}, "models[1].breaker.failures: expected an integer 1..1000000"),
    ({"models": [{"name": "ctr"}, {**TF, "features": {"context": ["a"], "ad": ["a"]}}]}, "group 'a' is listed twice"),
    ({"models": [{"name": "ctr"}, {**TF, "inputs": {"tensors": {"ad_id": 3}}}]}, "models[1].inputs.tensors.ad_id: expected a tensor name"),
    ({"models": [{"name": "ctr"}, {"name": "ctr"}]}, "models[1].name 'ctr' is repeated"),
    ({"models": [{"name": "../x"}]}, "models[0].name must be 1-128 characters"),
    ({"models": []}, "models must list at least one model"),
    ({"default": "nope"}, "default 'nope' is not a model of this file"),
    ({"default": None, "experiments": {"arms": [{"model": "deep", "share": 5}]}}, "default is required with experiments"),
    ({"experiments": {"arms": [{"model": "nope", "share": 5}]}}, "experiments.arms[0].model 'nope' is not a model"),
    ({"experiments": {"arms": [{"model": "deep", "share": 5.125}]}}, "experiments.arms[0].share: expected a percentage"),
    ({"experiments": {"arms": [{"model": "deep", "share": 0}]}}, "experiments.arms[0].share: expected a percentage"),
    ({"experiments": {"arms": [{"model": "deep", "share": 60}, {"name": "b", "model": "ctr", "share": 50}]}},
     "shares add up to 110.00 %"),
    ({"experiments": {"key": "user", "arms": []}}, "experiments.key: expected one of ['context.user_id', 'request_id']"),
    ({"extra": 1}, "extra: unknown field"),
])
def test_errors_name_the_field(change, message):
    doc = config()
    doc.update(change)
    if doc.get("default") is None:
        doc.pop("default", None)
    with pytest.raises(ConfigError) as err:
        parse_models_config(doc, source="m.yaml")
    assert message in str(err.value)
    assert str(err.value).startswith("m.yaml: ")


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="CTR_MODELS_CONFIG: cannot read"):
        load_models_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("models: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_models_config(tmp_path / "bad.yaml")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_models_config(tmp_path / "bad.json")
    (tmp_path / "list.yaml").write_text("- a\n")
    with pytest.raises(ConfigError, match="the top level: expected a mapping, got list"):
        load_models_config(tmp_path / "list.yaml")
