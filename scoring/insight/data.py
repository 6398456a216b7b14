"""Labelled request logs for the offline study: JSONL, one score body per line plus ``clicks``.

A line is exactly what ``POST /v1/models/{name}/score`` takes (``request_id``, ``context``,
``ads``) plus ``"clicks": [0, 1, ...]``, one 0/1 per ad in order (docs/insight.md). Blank lines
are skipped. A line that is not JSON, or whose clicks do not fit its ads, or whose features the
model refuses, is named by file and line number; nothing is guessed.

Requests are hashed once per feature layout (group names and sides) and reused for every version
that has the same layout, which is the usual case for one model's versions. A group the log
carries but a version does not have (an older version, before the group was added) is left out
for that version, and named in the report; every other problem stops the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ..engine.features import EncodedBatch
from ..errors import InvalidRequest


class DataError(ValueError):
    """A labelled log that cannot be read; the message names the file, line and field."""


@dataclass
class Request:
    context: Any
    ads: list
    clicks: np.ndarray  # int8 [n_ads]


@dataclass
class LabelledLog:
    """One JSONL file: its requests, in order, and the click of every row."""

    name: str
    path: Path
    requests: list[Request]
    lines: list[int]
    clicks: np.ndarray = field(default=None)  # type: ignore[assignment]  # int8 [rows]
    _encoded: dict = field(default_factory=dict)
    dropped: dict = field(default_factory=dict)  # layout key -> groups left out for it
    groups: dict = field(default_factory=dict)   # every group the log sends -> first line

    def __post_init__(self) -> None:
        if self.clicks is None:
            self.clicks = (np.concatenate([r.clicks for r in self.requests]) if self.requests
                           else np.zeros(0, np.int8))

    @property
    def rows(self) -> int:
        return int(self.clicks.size)

    def encoded(self, engine) -> list[EncodedBatch]:
        """Every request hashed for ``engine``'s feature layout (cached per layout)."""
        layout = engine.layout
        key = (tuple((g.name, g.side) for g in engine.manifest.groups), engine.manifest.dense_dim)
        got = self._encoded.get(key)
        if got is None:
            known = {g.name for g in engine.manifest.groups}
            dropped: set[str] = set()
            got = []
            for req, line in zip(self.requests, self.lines):
                try:
                    got.append(layout.encode(*_known_only(req.context, req.ads, known, dropped)))
                except InvalidRequest as exc:
                    raise DataError(f"{self.path}:{line}: {exc}") from None
            self._encoded[key] = got
            self.dropped[key] = sorted(dropped)
        return got

    def dropped_for(self, engine) -> list[str]:
        """Groups of this log the engine's version does not have (left out for it)."""
        self.encoded(engine)
        key = (tuple((g.name, g.side) for g in engine.manifest.groups), engine.manifest.dense_dim)
        return self.dropped[key]


def _known_only(context: Any, ads: list, known: set[str], dropped: set[str]) -> tuple[Any, list]:
    """The request without groups the model does not have (copies only what changes)."""
    if isinstance(context, dict) and not context.keys() <= known:
        dropped.update(k for k in context if k not in known)
        context = {k: v for k, v in context.items() if k in known}
    out = ads
    for i, ad in enumerate(ads):
        feats = ad.get("features") if isinstance(ad, dict) else None
        if isinstance(feats, dict) and not feats.keys() <= known:
            dropped.update(k for k in feats if k not in known)
            if out is ads:
                out = list(ads)
            out[i] = {**ad, "features": {k: v for k, v in feats.items() if k in known}}
    return context, out


def load_log(path: str | Path, name: str | None = None) -> LabelledLog:
    path = Path(path)
    requests, lines, seen = [], [], {}
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    with fh:
        for i, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                doc = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise DataError(f"{path}:{i}: not JSON ({exc})") from None
            req = _request(doc, f"{path}:{i}")
            requests.append(req)
            lines.append(i)
            for group in _groups_of(req):
                seen.setdefault(group, i)
    if not requests:
        raise DataError(f"{path}: no requests (expected one JSON score body with clicks per line)")
    log = LabelledLog(name or path.stem, path, requests, lines)
    log.groups = seen
    return log


def _groups_of(req: Request) -> set[str]:
    names = set(req.context) if isinstance(req.context, dict) else set()
    for ad in req.ads:
        feats = ad.get("features") if isinstance(ad, dict) else None
        if isinstance(feats, dict):
            names.update(feats)
    return names


def _request(doc: Any, where: str) -> Request:
    if not isinstance(doc, dict):
        raise DataError(f"{where}: expected a JSON object (a score body with clicks), got "
                        f"{type(doc).__name__}")
    ads = doc.get("ads")
    if not isinstance(ads, list):
        raise DataError(f"{where}: ads: expected a list of ads")
    clicks = doc.get("clicks")
    if not isinstance(clicks, list) or len(clicks) != len(ads):
        raise DataError(f"{where}: clicks: expected a list with one 0/1 per ad ({len(ads)} ads), "
                        f"got {_short(clicks)}")
    for k, c in enumerate(clicks):
        if isinstance(c, bool) or c not in (0, 1):
            raise DataError(f"{where}: clicks[{k}]: expected 0 or 1, got {_short(c)}")
    context = doc.get("context")
    if context is not None and not isinstance(context, dict):
        raise DataError(f"{where}: context: expected an object of feature groups")
    return Request(context, ads, np.array([int(c) for c in clicks], dtype=np.int8))


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."
