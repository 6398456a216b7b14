"""The same MLP as a model package, as an ONNX graph built with ``onnx.helper``: the peer that
benchmarks compare against (ONNX Runtime, one intra-op thread)."""

from __future__ import annotations

import numpy as np

from scoring.model.package import ModelPackage


def build_onnx_mlp(package: ModelPackage) -> bytes:
    """Serialized ONNX model: input ``x`` float32 [n, input_dim] -> ``pctr`` float32 [n, 1]."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, prev = [], [], "x"
    layers = package.manifest.layers
    for i, (layer, w, b) in enumerate(zip(layers, package.weights, package.biases)):
        inits += [numpy_helper.from_array(np.asarray(w, dtype=np.float32), f"w{i}"),
                  numpy_helper.from_array(np.asarray(b, dtype=np.float32), f"b{i}")]
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [f"g{i}"]))
        out = "pctr" if i == len(layers) - 1 else f"h{i}"
        op = {"relu": "Relu", "sigmoid": "Sigmoid"}[layer.activation]
        nodes.append(helper.make_node(op, [f"g{i}"], [out]))
        prev = out
    graph = helper.make_graph(
        nodes, "ctr_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", package.manifest.input_dim])],
        [helper.make_tensor_value_info("pctr", TensorProto.FLOAT, ["n", 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every ONNX Runtime release in use
    return model.SerializeToString()


def onnx_session(package: ModelPackage, threads: int = 1):
    """An ONNX Runtime session of the package's MLP pinned to ``threads`` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(build_onnx_mlp(package), opts, providers=["CPUExecutionProvider"])
