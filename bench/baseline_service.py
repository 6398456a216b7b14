"""The baseline peer: the same model behind a plain FastAPI + ONNX Runtime service, written the
way a performance-minded team would: the body read with ``orjson.loads`` (no request models),
strings hashed with the ``xxhash`` package, vectorised NumPy gathers and one ``reduceat`` per
group, one ONNX Runtime session with one intra-op thread, the response written with orjson, an
``async def`` route so no thread-pool hop.

    python -m bench.baseline_service --package DIR [--decode lean|pydantic] [--host H] [--port P]

``--decode pydantic`` is the same service decoding into pydantic request models (FastAPI's
usual style), kept as a second line. It answers ``POST /v1/score`` with the contract's body and
response (no limits, no metrics, no hot swap), so the benchmark drives every service with the
same requests.
"""

from __future__ import annotations

import argparse
from typing import Union

import numpy as np
import orjson
import xxhash
from fastapi import FastAPI, Request, Response
from fastapi.responses import ORJSONResponse
from pydantic import BaseModel

from scoring.model.package import ModelPackage, load_package

from .onnx_mlp import onnx_session

Value = Union[str, int, list[Union[str, int]]]


class Ad(BaseModel):
    id: Union[str, int, None] = None
    features: dict[str, Value] = {}
    dense: list[float] = []


class ScoreRequest(BaseModel):
    request_id: Union[str, int, None] = None
    context: dict[str, Value] = {}
    ads: list[Ad]


def _ids(value: Value) -> list[int]:
    values = value if isinstance(value, list) else [value]
    return [xxhash.xxh64_intdigest(v.encode()) if isinstance(v, str) else v for v in values]


_HASH = xxhash.xxh64_intdigest


def _lean_ids(value) -> list[int]:
    """The ids of one group's value(s) from ``orjson.loads`` output."""
    if value is None:
        return []
    if type(value) is str:
        return [_HASH(value.encode())]
    if type(value) is list:
        return [_HASH(v.encode()) if type(v) is str else v for v in value]
    return [value]


class OnnxModel:
    """Features -> [n, input_dim] float32 with NumPy gathers -> ONNX Runtime."""

    def __init__(self, package: ModelPackage) -> None:
        m = package.manifest
        compact = [t.name for t in m.tables.values() if t.dtype != "float32"]
        if compact or m.mlp_precision != "float32":
            raise SystemExit(f"baseline: float32 packages only (compact tables {compact}, MLP "
                             f"{m.mlp_precision}); the ONNX graph and gathers are float32")
        self.name, self.version, self.dense_dim = m.name, m.version, m.dense_dim
        self.groups = [(g, table) for g, table in zip(m.groups, package.tables)]
        self.session = onnx_session(package, threads=1)
        self.session.run(None, {"x": np.zeros((1, m.input_dim), np.float32)})

    def _pool(self, g, table, per_row: list[list[int]]) -> np.ndarray:
        """Sum/mean of the rows of each ad's ids: one gather and one reduceat for the group."""
        n = len(per_row)
        lens = np.fromiter((len(r) for r in per_row), dtype=np.int64, count=n)
        out = np.zeros((n, g.dim), np.float32)
        if lens.sum() == 0:
            return out
        flat = np.fromiter((i for r in per_row for i in r), dtype=np.uint64, count=int(lens.sum()))
        rows = table[(flat % np.uint64(g.buckets)).astype(np.int64)]
        nz = lens > 0
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]])[nz]
        out[nz] = np.add.reduceat(rows, starts, axis=0)
        if g.pooling == "mean":
            out[nz] /= lens[nz, None]
        return out

    def score_doc(self, doc: dict) -> np.ndarray:
        """The lean path: straight from ``orjson.loads``'s dicts and lists."""
        ads = doc["ads"]
        ctx = doc.get("context") or {}
        n = len(ads)
        feats = [ad.get("features") or {} for ad in ads]
        cols = []
        for g, table in self.groups:
            if g.side == "context":
                vec = self._pool(g, table, [_lean_ids(ctx.get(g.name))])
                cols.append(np.broadcast_to(vec, (n, g.dim)))
            else:
                name = g.name
                cols.append(self._pool(g, table, [_lean_ids(f.get(name)) for f in feats]))
        if self.dense_dim:
            cols.append(np.asarray([ad.get("dense") or [0.0] * self.dense_dim for ad in ads],
                                   np.float32).reshape(n, -1))
        x = np.concatenate(cols, axis=1).astype(np.float32, copy=False)
        return self.session.run(None, {"x": x})[0][:, 0]

    def score(self, req: ScoreRequest) -> np.ndarray:
        n = len(req.ads)
        cols = []
        for g, table in self.groups:
            if g.side == "context":
                v = req.context.get(g.name)
                vec = self._pool(g, table, [_ids(v) if v is not None else []])
                cols.append(np.broadcast_to(vec, (n, g.dim)))
            else:
                per_row = [_ids(ad.features[g.name]) if g.name in ad.features else [] for ad in req.ads]
                cols.append(self._pool(g, table, per_row))
        if self.dense_dim:
            cols.append(np.asarray([ad.dense for ad in req.ads], np.float32).reshape(n, -1))
        x = np.concatenate(cols, axis=1).astype(np.float32, copy=False)
        return self.session.run(None, {"x": x})[0][:, 0]


def create_app(package: ModelPackage, decode: str = "lean") -> FastAPI:
    model = OnnxModel(package)
    app = FastAPI(title=f"baseline: FastAPI + ONNX Runtime ({decode})")

    if decode == "lean":
        @app.post("/v1/score")
        async def score(request: Request) -> Response:
            doc = orjson.loads(await request.body())
            scores = model.score_doc(doc) if doc["ads"] else np.zeros(0, np.float32)
            return Response(orjson.dumps({"model": model.name, "version": model.version,
                                          "scores": scores, "request_id": doc.get("request_id")},
                                         option=orjson.OPT_SERIALIZE_NUMPY),
                            media_type="application/json")
    else:
        @app.post("/v1/score")
        async def score_pydantic(req: ScoreRequest) -> ORJSONResponse:
            scores = model.score(req) if req.ads else np.zeros(0, np.float32)
            return ORJSONResponse({"model": model.name, "version": model.version,
                                   "scores": scores.tolist(), "request_id": req.request_id})

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--package", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--decode", choices=("lean", "pydantic"), default="lean")
    args = parser.parse_args(argv)
    uvicorn.run(create_app(load_package(args.package), args.decode), host=args.host, port=args.port,
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
