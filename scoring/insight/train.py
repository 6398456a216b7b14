"""A trainer that deliberately overfits the synthetic world (``ctr-insight train``).

The model has the package's structure (GwEN-style, as in DeepInsight): one ``nn.EmbeddingBag``
(sum pooling) per feature group, context groups first, concatenated, then four Linear+ReLU layers
and ``Linear(., 1)``, ``Sigmoid``. Feature values are hashed exactly as the engine does (contract
section 1: ``xxh64(utf-8, seed 0) % buckets``), so every exported package scores a row as the
torch model does. The user_id table has 16 rows per distinct user in the data, so nearly every
user has a row of its own (about 3% share one); training uses Adam (lazy ``SparseAdam`` for the
tables, ``Adam`` for the MLP) with no weight decay, dropout or early stopping, and runs well past
the best epoch: test AUC peaks after an epoch or two and then falls while train AUC keeps rising,
as the model memorises users.

Every epoch is exported (``scoring.model.export.export_torch``) as
``<model_repo>/<name>/epoch-NN/``, written beside it under a ``.``-name the repository ignores and
renamed into place, so a version directory appears only complete. ``<model_repo>/<name>/
training.json`` records the hyperparameters, the groups and, per epoch, the losses and AUCs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .synth import (
    AD_GROUPS,
    CONTEXT_GROUPS,
    GROUPS,
    auc,
    preset,
    read_jsonl,
    read_world,
)


@dataclass(frozen=True)
class TrainParams:
    """The trainer's hyperparameters (presets in :data:`TRAIN_SIZES`)."""

    epochs: int
    batch_size: int = 1024
    lr: float = 3e-4
    user_dim: int = 8           # user_id's embedding width
    dim: int = 8                # every other group's
    hidden: tuple[int, ...] = (256, 128, 64, 32)
    init_std: float = 0.05      # embedding rows start Normal(0, init_std)


TRAIN_SIZES = {"full": TrainParams(epochs=8),
               "ci": TrainParams(epochs=5, batch_size=256, lr=1e-3)}


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, int(n - 1).bit_length())


ID_BUCKETS_PER_ID = 16  # user_id / ad_id table rows per distinct id in the data


def buckets_for(world: dict) -> dict[str, int]:
    """Table rows per group, powers of two: user_id and ad_id 16x the distinct ids the files hold
    (so nearly every id has a row of its own: about 3% of ids share one), the small vocabularies
    16x theirs (at least 64)."""
    vocab = world["vocabulary"]
    seen = world.get("seen", {})
    count = {**vocab, "user_id": seen.get("users", vocab["user_id"]),
             "ad_id": seen.get("ads", vocab["ad_id"])}
    return {g: max(64, _pow2_at_least(ID_BUCKETS_PER_ID * int(count[g]))) for g in GROUPS}


def hash_value(value: str) -> int:
    """The engine's 64-bit id of a string feature value (contract section 1)."""
    import xxhash

    return xxhash.xxh64_intdigest(value.encode("utf-8"), seed=0)


@dataclass
class Rows:
    """Rows (one per shown ad) as table row indices per group, in :data:`GROUPS` order."""

    ids: np.ndarray       # int64 [rows, groups]
    clicks: np.ndarray    # float32 [rows]
    request: np.ndarray   # int64 [rows]: index of the row's request in its file

    def __len__(self) -> int:
        return int(self.clicks.size)


def encode(bodies: Sequence[dict], buckets: dict[str, int]) -> Rows:
    """Score bodies (with ``clicks``) -> :class:`Rows`; each distinct value is hashed once."""
    cache: dict[tuple[str, str], int] = {}

    def row(group: str, value: str) -> int:
        key = (group, value)
        r = cache.get(key)
        if r is None:
            r = cache[key] = hash_value(value) % buckets[group]
        return r

    ids, clicks, request = [], [], []
    for i, body in enumerate(bodies):
        ctx = body["context"]
        c = [row(g, ctx[g]) for g in CONTEXT_GROUPS]
        for ad, click in zip(body["ads"], body["clicks"], strict=True):
            f = ad["features"]
            ids.append(c + [row(g, f[g]) for g in AD_GROUPS])
            clicks.append(click)
            request.append(i)
    return Rows(np.asarray(ids, dtype=np.int64).reshape(-1, len(GROUPS)),
                np.asarray(clicks, dtype=np.float32), np.asarray(request, dtype=np.int64))


def build_net(buckets: dict[str, int], params: TrainParams) -> Any:
    """The model: ``embeddings`` (a ModuleDict in MLP input order) and ``mlp``."""
    import torch
    from torch import nn

    class InsightNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            dims = {g: params.user_dim if g == "user_id" else params.dim for g in GROUPS}
            self.embeddings = nn.ModuleDict({
                g: nn.EmbeddingBag(buckets[g], dims[g], mode="sum", sparse=True) for g in GROUPS})
            for bag in self.embeddings.values():
                nn.init.normal_(bag.weight, 0.0, params.init_std)
            sizes = [sum(dims.values()), *params.hidden]
            layers: list[nn.Module] = []
            for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
                layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
            self.mlp = nn.Sequential(*layers, nn.Linear(sizes[-1], 1), nn.Sigmoid())
            self.slices = {}
            start = 0
            for g in GROUPS:
                self.slices[g] = slice(start, start + dims[g])
                start += dims[g]

        def mlp_input(self, ids: torch.Tensor) -> torch.Tensor:
            return torch.cat([bag(ids[:, i:i + 1]) for i, bag in enumerate(self.embeddings.values())],
                             dim=1)

        def logit(self, ids: torch.Tensor) -> torch.Tensor:
            return self.mlp[:-1](self.mlp_input(ids))[:, 0]

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.logit(ids))

    return InsightNet()


def predict(net: Any, rows: Rows, chunk: int = 65536) -> np.ndarray:
    """pCTR of every row (float64)."""
    import torch

    out = []
    with torch.no_grad():
        for s in range(0, len(rows), chunk):
            out.append(net(torch.from_numpy(rows.ids[s:s + chunk])).double().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def logloss(clicks: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(clicks * np.log(p) + (1 - clicks) * np.log(1 - p)))


def _export(net: Any, model_dir: Path, *, name: str, version: str) -> Path:
    from ..model.export import export_torch

    sides = {g: "context" for g in CONTEXT_GROUPS} | {g: "ad" for g in AD_GROUPS}
    tmp = model_dir / f".tmp-{version}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    export_torch(tmp, dict(net.embeddings.items()), net.mlp, name=name, version=version,
                 sides=sides)
    final = model_dir / version
    if final.exists():  # a rerun: swap the old version out, then delete it
        old = model_dir / f".old-{version}-{os.getpid()}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    return final


def epoch_version(epoch: int) -> str:
    return f"epoch-{epoch:02d}"


def load_rows(data_dir: str | os.PathLike, world: dict, buckets: dict[str, int]
              ) -> tuple[Rows, Rows, int]:
    """The train and test rows of ``data_dir``, and how many distinct users train has."""
    data = Path(data_dir)
    bodies = read_jsonl(data / world["splits"]["train"]["file"])
    users = len({b["context"]["user_id"] for b in bodies})
    train_rows = encode(bodies, buckets)
    del bodies
    test_rows = encode(read_jsonl(data / world["splits"]["test"]["file"]), buckets)
    return train_rows, test_rows, users


def _params(world: dict, size: str | None, epochs: int | None, overrides: dict) -> TrainParams:
    size = size or world.get("size", "full")
    params = preset(TRAIN_SIZES, size, overrides, "training")
    return replace(params, epochs=int(epochs)) if epochs is not None else params


def train(data_dir: str | os.PathLike, model_repo: str | os.PathLike, *, name: str = "insight",
          epochs: int | None = None, seed: int = 0, size: str | None = None,
          threads: int = 1, log: Callable[[str], None] | None = None,
          on_epoch: Callable[[Any, dict], None] | None = None, **overrides: Any) -> list[dict]:
    """Train on ``data_dir`` (what :func:`scoring.insight.synth.generate` wrote), export one
    package per epoch into ``model_repo/name/epoch-NN/`` and write ``training.json`` there.

    ``size`` picks the :data:`TRAIN_SIZES` preset (default: the world's size); ``epochs`` and
    ``overrides`` (:class:`TrainParams` fields) change it. Returns, per epoch: ``epoch``,
    ``version``, ``train_loss``, ``train_auc``, ``test_loss``, ``test_auc`` (log loss and AUC of
    the model at the epoch's end on every train / test row) and ``seconds``. ``threads``: torch's
    intra-op threads (0: leave as is); ``log`` gets a line per epoch; ``on_epoch(net, row)`` is
    called after each epoch's export with the torch model (see :func:`build_net`)."""
    import torch

    from ..model.manifest import check_name

    check_name(name, "model name")
    world = read_world(data_dir)
    params = _params(world, size, epochs, overrides)
    if threads:
        torch.set_num_threads(threads)
    say = log or (lambda _msg: None)

    t0 = time.perf_counter()
    buckets = buckets_for(world)
    train_rows, test_rows, users = load_rows(data_dir, world, buckets)
    say(f"data: {len(train_rows)} train rows, {len(test_rows)} test rows "
        f"({time.perf_counter() - t0:.1f} s)")

    torch.manual_seed(seed)
    net = build_net(buckets, params)
    model_dir = Path(model_repo) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    history: list[dict] = []
    record = {
        "name": name, "data": str(data_dir), "seed": seed,
        "world": {"size": world.get("size"), "seed": world.get("seed")},
        "parameters": asdict(params),
        "groups": [{"name": g, "side": "context" if g in CONTEXT_GROUPS else "ad",
                    "buckets": buckets[g], "dim": params.user_dim if g == "user_id" else params.dim}
                   for g in GROUPS],
        "rows": {"train": len(train_rows), "test": len(test_rows)},
        "train_users": users,  # distinct users in train, and the user_id rows they hash to
        "train_user_rows": int(np.unique(train_rows.ids[:, 0]).size),
        "epochs": history,
    }
    step = _trainer(net, train_rows, params, seed)
    for epoch in range(1, params.epochs + 1):
        te = time.perf_counter()
        step()
        p_train, p_test = predict(net, train_rows), predict(net, test_rows)
        version = epoch_version(epoch)
        _export(net, model_dir, name=name, version=version)
        row = {"epoch": epoch, "version": version,
               "train_loss": round(logloss(train_rows.clicks, p_train), 5),
               "train_auc": round(auc(train_rows.clicks, p_train), 5),
               "test_loss": round(logloss(test_rows.clicks, p_test), 5),
               "test_auc": round(auc(test_rows.clicks, p_test), 5),
               "seconds": round(time.perf_counter() - te, 2)}
        history.append(row)
        if on_epoch is not None:
            on_epoch(net, row)
        say(f"{version}: train loss {row['train_loss']:.4f} auc {row['train_auc']:.4f}  "
            f"test loss {row['test_loss']:.4f} auc {row['test_auc']:.4f}  ({row['seconds']:.1f} s)")
    record["best_version"] = (max(history, key=lambda r: r["test_auc"])["version"]
                              if history else None)
    record["seconds"] = round(time.perf_counter() - t0, 2)
    tmp = model_dir / ".training.json.tmp"
    tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, model_dir / "training.json")
    return history


def _trainer(net: Any, rows: Rows, params: TrainParams, seed: int) -> Callable[[], None]:
    """One epoch per call: shuffled mini-batches, log loss, Adam (lazy for the tables)."""
    import torch

    opt_tables = torch.optim.SparseAdam(list(net.embeddings.parameters()), lr=params.lr)
    opt_mlp = torch.optim.Adam(net.mlp.parameters(), lr=params.lr)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(seed)
    ids = torch.from_numpy(rows.ids)
    clicks = torch.from_numpy(rows.clicks)

    def epoch() -> None:
        net.train()
        perm = torch.randperm(len(rows), generator=gen)
        for s in range(0, len(rows), params.batch_size):
            b = perm[s:s + params.batch_size]
            loss = loss_fn(net.logit(ids[b]), clicks[b])
            opt_tables.zero_grad()
            opt_mlp.zero_grad()
            loss.backward()
            opt_tables.step()
            opt_mlp.step()
        net.eval()

    return epoch


def load_net(package_path: str | os.PathLike) -> Any:
    """The torch model of a package this trainer exported (for looking inside it with autograd)."""
    import torch

    from ..model.package import load_package

    pkg = load_package(package_path)
    m = pkg.manifest
    names = [g.name for g in m.groups]
    if names != list(GROUPS):
        raise ValueError(f"{package_path}: groups {names} are not the insight model's {list(GROUPS)}")
    dims = {g.name: g.dim for g in m.groups}
    hidden = tuple(int(np.shape(w)[1]) for w in pkg.weights[:-1])
    net = build_net({g.name: g.buckets for g in m.groups},
                    TrainParams(epochs=0, user_dim=dims["user_id"], dim=dims["ad_id"], hidden=hidden))
    with torch.no_grad():
        for bag, table in zip(net.embeddings.values(), pkg.tables):
            bag.weight.copy_(torch.from_numpy(np.array(table, dtype=np.float32)))
        linears = [mod for mod in net.mlp if isinstance(mod, torch.nn.Linear)]
        for lin, w, b in zip(linears, pkg.weights, pkg.biases):
            lin.weight.copy_(torch.from_numpy(np.array(w, dtype=np.float32).T))
            lin.bias.copy_(torch.from_numpy(np.array(b, dtype=np.float32)))
    return net.eval()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="directory `ctr-insight synth` wrote")
    parser.add_argument("--model-repo", required=True, help="model repository to export into")
    parser.add_argument("--name", default="insight", help="model name (default: insight)")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"epochs (default: {TRAIN_SIZES['full'].epochs} full, "
                             f"{TRAIN_SIZES['ci'].epochs} ci)")
    parser.add_argument("--size", choices=sorted(TRAIN_SIZES), default=None,
                        help="hyperparameter preset (default: the world's size)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation and shuffling seed")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")


def run(args: argparse.Namespace) -> int:
    train(args.data, args.model_repo, name=args.name, epochs=args.epochs, seed=args.seed,
          size=args.size, threads=args.threads, log=print)
    return 0

