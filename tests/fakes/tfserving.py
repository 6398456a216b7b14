"""A test server that speaks TensorFlow Serving's REST API, computing a real MLP from a package.

Endpoints as TF Serving has them (paths matched case-insensitively like its regexes):

    GET  /v1/models/{m}[/versions/{v}|/labels/{l}]            model status (model_version_status)
    GET  /v1/models/{m}[/versions/{v}|/labels/{l}]/metadata   signature_def of "serving_default"
    POST /v1/models/{m}[/versions/{v}|/labels/{l}]:predict    "instances" (row) or "inputs" (columnar)

Errors are TF Serving's ``{ "error": "..." }`` bodies with its status codes (400 invalid argument,
404 not found, 503 unavailable, 504 deadline exceeded). The signature takes, per feature group
``g``, ``g`` (DT_INT64 [-1, -1], padded ids, two's complement for ids >= 2**63) and ``g_len``
(DT_INT64 [-1], real ids per row), and ``dense`` (DT_FLOAT [-1, dense_dim]); it outputs ``pctr``
(DT_DOUBLE [-1, 1]), computed in float64 from the package's tables and layers, so scores can be
compared with :func:`scoring.model.reference.reference_scores` to float64 rounding.

Faults for tests: ``delay`` (seconds before each predict answer), ``fail`` (status code, for the
next ``fail_count`` predicts or all), ``malformed`` (200 with broken JSON), ``wrong_shape`` (one
prediction too many), and :meth:`FakeTFServing.stop` (connections refused). Concurrency is
recorded server-side: ``max_in_flight`` and each predict's (start, end) interval.
"""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from scoring.model.package import ModelPackage
from scoring.model.reference import mlp_forward

SIGNATURE = "serving_default"
_SPEC = r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?"
_PREDICT = re.compile(_SPEC + r":(classify|regress|predict)", re.I)
_METADATA = re.compile(_SPEC + r"/metadata", re.I)
_STATUS = re.compile(_SPEC, re.I)
_UNAVAILABLE = "Servable not available (the server is overloaded or restarting)"


class TFError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Faults:
    delay: float = 0.0
    fail: int | None = None
    fail_count: int | None = None      # None: every request
    malformed: bool = False
    wrong_shape: bool = False


@dataclass
class Stats:
    predicts: int = 0
    rows: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    intervals: list[tuple[float, float]] = field(default_factory=list)
    connections: int = 0
    bodies: list[dict] = field(default_factory=list)   # last predict bodies (kept when asked)

    def overlap(self) -> float:
        """Seconds during which two or more predicts were being served at once."""
        events = sorted([(s, 1) for s, _ in self.intervals] + [(e, -1) for _, e in self.intervals])
        depth, last, total = 0, 0.0, 0.0
        for t, d in events:
            if depth >= 2:
                total += t - last
            depth += d
            last = t
        return total


class _Model:
    """One served version: the package's signature and its forward pass."""

    def __init__(self, package: ModelPackage) -> None:
        self.package = package
        m = package.manifest
        self.inputs: dict[str, tuple[str, list[int]]] = {}
        for g in m.groups:
            self.inputs[g.name] = ("DT_INT64", [-1, -1])
            self.inputs[g.name + "_len"] = ("DT_INT64", [-1])
        if m.dense_dim:
            self.inputs["dense"] = ("DT_FLOAT", [-1, m.dense_dim])
        # a format 2 model graph with several outputs answers each by name
        graph = m.graph
        self.output_names = [o.name for o in graph.outputs] if graph is not None and \
            len(graph.outputs) > 1 else []

    def signature_def(self) -> dict:
        def info(name: str, dtype: str, dims: list[int]) -> dict:
            return {"dtype": dtype, "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in dims],
                                                     "unknown_rank": False},
                    "name": f"{SIGNATURE}_{name}:0"}
        names = self.output_names or ["pctr"]
        return {"inputs": {k: info(k, *v) for k, v in self.inputs.items()},
                "outputs": {n: info(n, "DT_DOUBLE", [-1, 1]) for n in names},
                "method_name": "tensorflow/serving/predict"}

    def tensors(self, raw: dict[str, Any]) -> dict[str, np.ndarray]:
        """Named JSON values -> typed arrays, checked against the signature."""
        missing = sorted(set(self.inputs) - set(raw))
        extra = sorted(set(raw) - set(self.inputs))
        if extra:
            raise TFError(400, f"input tensor alias not found in signature: {extra[0]}. Inputs "
                               f"expected to be in the set {{{','.join(sorted(self.inputs))}}}.")
        if missing:
            raise TFError(400, f"input size does not match signature: {len(raw)}!={len(self.inputs)} "
                               f"len({{{','.join(sorted(raw))}}}) != len({{{','.join(sorted(self.inputs))}}})"
                               f". Sent extra: {{}}. Missing but required: {{{','.join(missing)}}}.")
        out = {}
        for name, value in raw.items():
            dtype, dims = self.inputs[name]
            try:
                arr = np.array(value, dtype=np.int64 if dtype == "DT_INT64" else np.float32)
            except (ValueError, OverflowError, TypeError):
                raise TFError(400, f"Failed to process tensor: {name}: values are not all {dtype} "
                                   "or do not form a rectangular (non-ragged) tensor") from None
            if arr.ndim != len(dims) or any(d != -1 and d != s for d, s in zip(dims, arr.shape)):
                raise TFError(400, f"Tensor :{name}, has shape {list(arr.shape)} but the signature "
                                   f"expects {dims}")
            out[name] = arr
        sizes = {a.shape[0] for a in out.values()}
        if len(sizes) > 1:
            raise TFError(400, f"Input tensors have different 0-th dimensions: {sorted(sizes)}")
        return out

    def predict(self, t: dict[str, np.ndarray]) -> Any:
        m = self.package.manifest
        n = next(iter(t.values())).shape[0]
        if m.graph is not None:  # the float64 graph reference, one row at a time
            from scoring.model.reference_graph import graph_outputs
            rows = {name: [] for name in (self.output_names or [m.graph.primary])}
            for r in range(n):
                ids = {g.name: [int(i) for i in np.ascontiguousarray(t[g.name][r]).view(np.uint64)
                                [:int(t[g.name + "_len"][r])]] for g in m.groups}
                ctx = {g.name: ids[g.name] for g in m.groups if g.side == "context" and ids[g.name]}
                ad = {"features": {g.name: ids[g.name] for g in m.groups
                                   if g.side == "ad" and ids[g.name]}}
                if m.dense_dim:
                    ad["dense"] = [float(x) for x in t["dense"][r]]
                out = graph_outputs(self.package, ctx, [ad])
                for name in rows:
                    rows[name].append(float(out[name][0]))
            result = {k: np.array(v) for k, v in rows.items()}
            return result if self.output_names else result[m.graph.primary]
        parts = []
        for g, table in zip(m.groups, self.package.tables):
            ids = np.ascontiguousarray(t[g.name]).view(np.uint64)  # two's complement back
            counts = t[g.name + "_len"]
            if (counts < 0).any() or (counts > ids.shape[1]).any():
                raise TFError(400, f"{g.name}_len: counts must be 0..{ids.shape[1]}")
            rows = np.asarray(table)[(ids % np.uint64(g.buckets)).astype(np.int64)].astype(np.float64)
            mask = np.arange(ids.shape[1])[None, :] < counts[:, None]
            vec = np.where(mask[:, :, None], rows, 0.0).sum(axis=1)
            if g.pooling == "mean":
                vec = np.where(counts[:, None] > 0, vec / np.maximum(counts, 1)[:, None], 0.0)
            parts.append(vec)
        if m.dense_dim:
            parts.append(t["dense"].astype(np.float64))
        x = np.concatenate(parts, axis=1) if parts else np.zeros((n, 0))
        return mlp_forward(self.package, x)


class _SavedModel(_Model):
    """A real TensorFlow SavedModel (a directory): its ``serving_default`` signature computes
    the predictions, as TF Serving would run it, with TensorFlow itself."""

    def __init__(self, path: str) -> None:  # noqa: D107 - no package: the signature says it all
        import tensorflow as tf

        self._tf = tf
        self.package = None
        self.fn = tf.saved_model.load(str(path)).signatures["serving_default"]
        spec = self.fn.structured_input_signature[1]
        self.inputs = {k: ("DT_INT64" if s.dtype == tf.int64 else "DT_FLOAT", [-1] * len(s.shape))
                       for k, s in spec.items()}
        self.output_names = sorted(self.fn.structured_outputs)
        self._lock = threading.Lock()

    def predict(self, t: dict[str, np.ndarray]) -> Any:
        tf = self._tf
        feeds = {k: tf.constant(v, dtype=tf.int64 if self.inputs[k][0] == "DT_INT64" else tf.float32)
                 for k, v in t.items()}
        with self._lock:
            out = self.fn(**feeds)
        result = {k: v.numpy().reshape(-1).astype(np.float64) for k, v in out.items()}
        return result if len(result) > 1 else next(iter(result.values()))


class FakeTFServing:
    """A TF Serving REST look-alike on a loopback port, in a background thread. A version is a
    model package (computed with the float64 reference) or the path of a TensorFlow SavedModel
    (computed by TensorFlow)."""

    def __init__(self, name: str, versions: dict[int, ModelPackage], *,
                 labels: dict[str, int] | None = None, port: int = 0,
                 keep_bodies: bool = False) -> None:
        self.name = name
        self.versions = {v: _Model(p) if isinstance(p, ModelPackage) else _SavedModel(p)
                         for v, p in versions.items()}
        self.labels = dict(labels or {})
        self.faults = Faults()
        self.stats = Stats()
        self.keep_bodies = keep_bodies
        self._lock = threading.Lock()
        self._port = port
        self._server: ThreadingHTTPServer | None = None
        self._conns: set[socket.socket] = set()

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def start(self, serve: bool = True) -> "FakeTFServing":
        """Listen on the port; ``serve=False`` only binds (a caller may fork first)."""
        fake = self

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

            def process_request(self, request, client_address):
                with fake._lock:
                    fake._conns.add(request)
                    fake.stats.connections += 1
                super().process_request(request, client_address)

            def handle_error(self, request, client_address):
                if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
                    super().handle_error(request, client_address)  # a client gone is not news

            def shutdown_request(self, request):
                with fake._lock:
                    fake._conns.discard(request)
                super().shutdown_request(request)

        self._server = Server(("127.0.0.1", self._port), _handler(self))
        self._port = self._server.server_address[1]
        if serve:
            self.serve()
        return self

    def serve(self) -> None:
        assert self._server is not None
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def stop(self) -> None:
        """Stop listening and cut open keep-alive connections: new requests are refused."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server = None

    def __enter__(self) -> "FakeTFServing":
        return self.start() if self._server is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the API ----------------------------------------------------------------------------

    def resolve(self, name: str, version: str | None, label: str | None) -> tuple[int, _Model]:
        if name != self.name or not self.versions:
            spec = f"Specific({name}, {version})" if version else f"Latest({name})"
            raise TFError(404, f"Servable not found for request: {spec}")
        if label is not None:
            if label not in self.labels:
                raise TFError(404, f"Unrecognized servable version label: {label}")
            v = self.labels[label]
        elif version is not None:
            v = int(version)
        else:
            v = max(self.versions)
        if v not in self.versions:
            raise TFError(404, f"Servable not found for request: Specific({name}, {v})")
        return v, self.versions[v]

    def status(self, name: str, version: str | None, label: str | None) -> dict:
        if name != self.name:
            raise TFError(404, f"Could not find any versions of model {name}")
        chosen = sorted(self.versions, reverse=True)
        if version is not None or label is not None:
            chosen = [self.resolve(name, version, label)[0]]
        ok = {"error_code": "OK", "error_message": ""}
        return {"model_version_status": [{"version": str(v), "state": "AVAILABLE", "status": ok}
                                         for v in chosen]}

    def metadata(self, name: str, version: str | None, label: str | None) -> dict:
        v, model = self.resolve(name, version, label)
        return {"model_spec": {"name": name, "signature_name": "", "version": str(v)},
                "metadata": {"signature_def": {"signature_def": {SIGNATURE: model.signature_def()},
                                               "@type": "type.googleapis.com/tensorflow.serving.SignatureDefMap"}}}

    def predict(self, name: str, version: str | None, label: str | None, body: bytes) -> bytes:
        _, model = self.resolve(name, version, label)
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise TFError(400, f"JSON Parse error: {exc}") from None
        if not isinstance(doc, dict):
            raise TFError(400, "JSON Value: is not of expected type: object")
        if self.keep_bodies:
            self.stats.bodies.append(doc)
        sig = doc.get("signature_name") or SIGNATURE
        if sig != SIGNATURE:
            raise TFError(400, f'Serving signature name: "{sig}" not found in signature def')
        if ("instances" in doc) == ("inputs" in doc):
            raise TFError(400, "Missing 'inputs' or 'instances' key" if "inputs" not in doc else
                          "Not formatted correctly expecting only one of 'inputs' or 'instances' keys exists")
        if "instances" in doc:
            rows = doc["instances"]
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise TFError(400, "Expecting 'instances' to be a list of objects (one per example) "
                                   "for a signature with several inputs")
            if not rows:
                raise TFError(400, "'instances' is empty")
            columns = {k: [r.get(k) for r in rows] for k in rows[0]}
            for i, r in enumerate(rows):
                if set(r) != set(columns):
                    raise TFError(400, f"Failed to process element: {i} of 'instances' list. "
                                       "JSON object: does not have the same named inputs as element 0")
            tensors = model.tensors(columns)
            key = "predictions"
        else:
            if not isinstance(doc["inputs"], dict):
                raise TFError(400, "'inputs' must be an object of named tensors for this signature")
            tensors = model.tensors(doc["inputs"])
            key = "outputs"
        pctr = model.predict(tensors)
        if isinstance(pctr, dict):  # several named outputs
            n = len(next(iter(pctr.values())))
            with self._lock:
                self.stats.rows += n
            if key == "predictions":
                values = [{k: [float(v[i])] for k, v in pctr.items()} for i in range(n)]
            else:
                values = {k: [[float(x)] for x in v] for k, v in pctr.items()}
            return json.dumps({key: values}).encode()
        with self._lock:
            self.stats.rows += len(pctr)
        values = [[float(p)] for p in pctr]
        if self.faults.wrong_shape:
            values.append([0.5])
        out = json.dumps({key: values}).encode()
        return out[: len(out) // 2] if self.faults.malformed else out


def _handler(fake: FakeTFServing):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "FakeTFServing/2.x"
        disable_nagle_algorithm = True
        wbufsize = 1 << 16  # headers and body leave in one write (flushed after each request)

        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def _send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: int, message: str) -> None:
            self._send(status, ('{ "error": ' + json.dumps(message) + " }").encode())

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            try:
                if m := _METADATA.fullmatch(path):
                    self._send(200, json.dumps(fake.metadata(*m.groups())).encode())
                elif m := _STATUS.fullmatch(path):
                    self._send(200, json.dumps(fake.status(*m.groups()), indent=1).encode())
                elif path.lower().startswith("/v1/"):
                    raise TFError(400, f"Malformed request: GET {path}")
                else:
                    self._send(404, b"")
            except TFError as e:
                self._error(e.status, e.message)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            path = self.path.split("?")[0]
            m = _PREDICT.fullmatch(path)
            if not m:
                self._error(400, f"Malformed request: POST {path}")
                return
            name, version, label, verb = m.groups()
            with fake._lock:
                fake.stats.predicts += 1
                fake.stats.in_flight += 1
                fake.stats.max_in_flight = max(fake.stats.max_in_flight, fake.stats.in_flight)
                faults = fake.faults
                fail = faults.fail
                if fail is not None and faults.fail_count is not None:
                    faults.fail_count -= 1
                    if faults.fail_count <= 0:
                        faults.fail, faults.fail_count = None, None
            start = time.monotonic()
            try:
                if faults.delay:
                    time.sleep(faults.delay)
                if fail is not None:
                    raise TFError(fail, _UNAVAILABLE if fail == 503 else f"injected failure {fail}")
                if verb.lower() != "predict":
                    raise TFError(400, f"{verb} is not supported by this model (predict only)")
                self._send(200, fake.predict(name, version, label, body))
            except TFError as e:
                self._error(e.status, e.message)
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                with fake._lock:
                    fake.stats.in_flight -= 1
                    fake.stats.intervals.append((start, time.monotonic()))

    return Handler


def main(argv: list[str] | None = None) -> int:
    """Serve a package as a TF Serving look-alike until killed (for benchmarks):
    ``python -m tests.fakes.tfserving --package DIR [--name NAME] [--port N] [--processes N]``;
    prints ``READY <url>`` once it listens. ``--processes`` forks workers that share the
    listening socket, so requests are computed in parallel as TF Serving's thread pool does."""
    import argparse
    import os

    from scoring.model.package import load_package

    p = argparse.ArgumentParser(prog="python -m tests.fakes.tfserving")
    p.add_argument("--package", required=True)
    p.add_argument("--name", default="ctr")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--processes", type=int, default=1)
    args = p.parse_args(argv)
    server = FakeTFServing(args.name, {1: load_package(args.package)}, port=args.port)
    server.start(serve=False)
    parent = True
    for _ in range(args.processes - 1):
        if os.fork() == 0:
            parent = False
            break
    server.serve()
    if parent:
        print(f"READY {server.url}", flush=True)
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
