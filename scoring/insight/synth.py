"""A synthetic CTR world whose clicks come from a planted teacher network (``ctr-insight synth``).

What it is for: a model trained on it (:mod:`scoring.insight.train`) first learns the teacher and
then memorises users, so DeepInsight's signals (neuron fluctuation, group influence, probes; see
``docs/insight.md``) can be watched as a model overfits, against a known truth.

The world (every number is a :class:`WorldParams` field, written to ``world.json``):

* **Users**: a population of ``n_users``; each request's user is drawn Zipf(``user_zipf``) over
  ranks (ranks map to ids by a random permutation), so a few users make many requests and most
  make one or none. Age, gender, city (Zipf over ``n_cities``) and device are fixed per user.
* **Ads**: ``n_ads``, drawn Zipf(``ad_zipf``); each has a fixed advertiser (Zipf over
  ``n_advertisers``) and category (its advertiser's main category 80% of the time). A request
  shows 5-10 distinct ads at positions 1..n; its hour comes from a daily traffic profile.
* **Teacher** (the clicks)::

      z     = scale * (mlp([L_age, L_gender, L_city, L_device, L_hour(d), L_category(d),
                            L_advertiser]) - mean)
      logit = base + z + user_bias[user] + ad_bias[ad] - position_slope * (position - 1)
              + Normal(0, teacher_noise)
      click ~ Bernoulli(sigmoid(logit))

  ``L_g`` is a ``latent_dim`` vector per value of group g, Normal(0, 1); ``mlp`` is a random
  ``7 * latent_dim -> teacher_hidden (ReLU) -> 1`` net; ``scale`` makes z's std
  ``teacher_scale`` over the generated rows and ``base`` makes the mean click rate
  ``target_ctr``. ``user_bias`` (std ``user_bias_std``) is the only signal user_id carries beyond
  the user's attributes; ``ad_bias`` (std ``ad_bias_std``) likewise for ad_id.
* **Days and drift**: ``days`` days; the last ``test_days`` are the test split, the others train.
  The hour and category latents drift linearly over the days:
  ``L(d) = L + drift * (d - 1) / (days - 1) * D`` with a fixed random direction D per value.

Files: ``train.jsonl`` and ``test.jsonl`` hold one score request body per line (contract
section 3: ``request_id`` ``d<day>-<n>``, ``context``, ``ads`` with ``id`` and ``features``) plus
``"clicks"``, a 0/1 per ad; every feature value is a string, hashed by the engine (section 1).
``world.json`` holds the parameters, the teacher's weights (all but the per-user and per-ad
biases, which the seed regenerates), the split's days and a summary (rows, click rates, how
Zipf-like the users are, the teacher's own AUC: the ceiling any model can reach).
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

CONTEXT_GROUPS = ("user_id", "age", "gender", "city", "hour", "device")
AD_GROUPS = ("ad_id", "advertiser_id", "category", "position")
GROUPS = CONTEXT_GROUPS + AD_GROUPS
TEACHER_GROUPS = ("age", "gender", "city", "device", "hour", "category", "advertiser_id")
DRIFTING = ("hour", "category")

AGES = ("<18", "18-24", "25-34", "35-44", "45-54", "55-64", "65+")
AGE_P = (0.05, 0.20, 0.30, 0.20, 0.12, 0.08, 0.05)
GENDERS = ("f", "m", "u")
GENDER_P = (0.47, 0.47, 0.06)
DEVICES = ("android", "ios", "pc", "tablet")
DEVICE_P = (0.50, 0.30, 0.15, 0.05)
# traffic share by hour of day: low at night, peaks at lunch and in the evening
HOUR_WEIGHTS = (2, 1, 1, 1, 1, 2, 3, 5, 6, 6, 6, 7, 9, 8, 6, 6, 6, 7, 9, 10, 10, 9, 7, 4)
SPLITS = ("train", "test")


@dataclass(frozen=True)
class WorldParams:
    """Every number that shapes the world (see the module docstring for where each enters)."""

    n_users: int
    n_ads: int
    n_advertisers: int
    n_categories: int
    n_cities: int
    requests_per_day: int
    days: int = 7
    test_days: int = 1
    min_ads: int = 5
    max_ads: int = 10
    user_zipf: float = 0.9
    ad_zipf: float = 0.6
    advertiser_zipf: float = 0.8
    city_zipf: float = 1.0
    latent_dim: int = 6
    teacher_hidden: int = 32
    teacher_scale: float = 1.0
    user_bias_std: float = 0.35
    ad_bias_std: float = 0.3
    position_slope: float = 0.12
    teacher_noise: float = 0.3
    drift: float = 0.3
    target_ctr: float = 0.06


SIZES = {
    # ~200k train rows (4,400 requests x 7.5 ads x 6 days), ~33k test rows
    "full": WorldParams(n_users=500_000, n_ads=2_000, n_advertisers=800, n_categories=40,
                        n_cities=120, requests_per_day=4_400),
    # ~25k train rows, ~4k test rows: synth + train in a few seconds
    "ci": WorldParams(n_users=60_000, n_ads=600, n_advertisers=200, n_categories=24,
                      n_cities=40, requests_per_day=550),
}


def preset(presets: dict[str, Any], size: str, overrides: dict[str, Any], what: str) -> Any:
    """``presets[size]`` (a dataclass) with ``overrides`` applied, unknown names refused."""
    if size not in presets:
        raise ValueError(f"size must be one of {sorted(presets)}, got {size!r}")
    fields = type(presets[size]).__dataclass_fields__
    unknown = set(overrides) - set(fields)
    if unknown:
        raise ValueError(f"unknown {what} parameter(s) {sorted(unknown)}; known: {sorted(fields)}")
    return replace(presets[size], **overrides)


def world_params(size: str = "full", **overrides: Any) -> WorldParams:
    """The preset ``size`` ("full" or "ci") with ``overrides`` (WorldParams fields) applied."""
    p = preset(SIZES, size, overrides, "world")
    if not 1 <= p.test_days < p.days:
        raise ValueError(f"test_days must be 1..days-1, got test_days={p.test_days}, days={p.days}")
    if not 1 <= p.min_ads <= p.max_ads:
        raise ValueError(f"need 1 <= min_ads <= max_ads, got {p.min_ads}, {p.max_ads}")
    return p


def auc(labels: Any, scores: Any) -> float:
    """ROC AUC (ties count half); NaN when only one class is present."""
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    n1 = int(y.sum())
    n0 = y.size - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    _, first, counts = np.unique(s[order], return_index=True, return_counts=True)
    ranks = np.empty(y.size, dtype=np.float64)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def _zipf_p(n: int, s: float) -> np.ndarray:
    w = np.arange(1, n + 1, dtype=np.float64) ** -s
    return w / w.sum()


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class _World:
    """The fixed parts: users, ads and the teacher, drawn from one generator."""

    def __init__(self, p: WorldParams, rng: np.random.Generator) -> None:
        self.p = p
        self.user_of_rank = rng.permutation(p.n_users)
        self.user_p = _zipf_p(p.n_users, p.user_zipf)
        self.age = rng.choice(len(AGES), size=p.n_users, p=AGE_P)
        self.gender = rng.choice(len(GENDERS), size=p.n_users, p=GENDER_P)
        self.city = rng.permutation(p.n_cities)[
            rng.choice(p.n_cities, size=p.n_users, p=_zipf_p(p.n_cities, p.city_zipf))]
        self.device = rng.choice(len(DEVICES), size=p.n_users, p=DEVICE_P)
        self.user_bias = rng.normal(0.0, p.user_bias_std, size=p.n_users)

        self.ad_of_rank = rng.permutation(p.n_ads)
        self.ad_p = _zipf_p(p.n_ads, p.ad_zipf)
        self.advertiser = rng.permutation(p.n_advertisers)[
            rng.choice(p.n_advertisers, size=p.n_ads, p=_zipf_p(p.n_advertisers, p.advertiser_zipf))]
        main_category = rng.integers(0, p.n_categories, size=p.n_advertisers)
        other = rng.integers(0, p.n_categories, size=p.n_ads)
        self.category = np.where(rng.random(p.n_ads) < 0.8, main_category[self.advertiser], other)
        self.ad_bias = rng.normal(0.0, p.ad_bias_std, size=p.n_ads)

        vocab = {"age": len(AGES), "gender": len(GENDERS), "city": p.n_cities,
                 "device": len(DEVICES), "hour": 24, "category": p.n_categories,
                 "advertiser_id": p.n_advertisers}
        k = p.latent_dim
        self.latent = {g: rng.standard_normal((vocab[g], k)) for g in TEACHER_GROUPS}
        self.drift_dir = {g: rng.standard_normal((vocab[g], k)) for g in DRIFTING}
        fan_in = k * len(TEACHER_GROUPS)
        self.w1 = rng.standard_normal((fan_in, p.teacher_hidden)) * np.sqrt(2.0 / fan_in)
        self.b1 = rng.normal(0.0, 0.1, size=p.teacher_hidden)
        self.w2 = rng.standard_normal(p.teacher_hidden) * np.sqrt(1.0 / p.teacher_hidden)

    def latent_on(self, group: str, day: np.ndarray, values: np.ndarray) -> np.ndarray:
        lat = self.latent[group][values]
        if group in DRIFTING and self.p.days > 1:
            shift = self.p.drift * (day - 1) / (self.p.days - 1)
            lat = lat + shift[:, None] * self.drift_dir[group][values]
        return lat

    def teacher_raw(self, rows: dict[str, np.ndarray]) -> np.ndarray:
        x = np.concatenate([self.latent_on(g, rows["day"], rows[g]) for g in TEACHER_GROUPS], axis=1)
        return np.maximum(x @ self.w1 + self.b1, 0.0) @ self.w2


def _requests(w: _World, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """All requests of all days: per-row arrays (one row = one shown ad) and rows per request."""
    p = w.p
    n_req = p.requests_per_day * p.days
    day = np.repeat(np.arange(1, p.days + 1), p.requests_per_day)
    user = w.user_of_rank[rng.choice(p.n_users, size=n_req, p=w.user_p)]
    hour_p = np.asarray(HOUR_WEIGHTS, dtype=np.float64)
    hour = rng.choice(24, size=n_req, p=hour_p / hour_p.sum())
    n_ads = rng.integers(p.min_ads, p.max_ads + 1, size=n_req)
    cand = w.ad_of_rank[rng.choice(p.n_ads, size=(n_req, 3 * p.max_ads), p=w.ad_p)]
    ads, counts = [], np.empty(n_req, dtype=np.int64)
    for i in range(n_req):
        shown = list(dict.fromkeys(cand[i].tolist()))[:n_ads[i]]
        ads.extend(shown)
        counts[i] = len(shown)
    ad = np.asarray(ads, dtype=np.int64)
    req = np.repeat(np.arange(n_req), counts)
    starts = np.cumsum(counts) - counts
    position = np.arange(ad.size) - np.repeat(starts, counts) + 1
    u = user[req]
    rows = {"request": req, "day": day[req], "user_id": u, "age": w.age[u], "gender": w.gender[u],
            "city": w.city[u], "device": w.device[u], "hour": hour[req], "ad_id": ad,
            "advertiser_id": w.advertiser[ad], "category": w.category[ad], "position": position}
    return rows, counts


def _calibrate_base(rest: np.ndarray, target: float) -> float:
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if _sigmoid(mid + rest).mean() < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _values(rows: dict[str, np.ndarray], i: int) -> tuple[dict[str, str], dict[str, str]]:
    ctx = {"user_id": f"u{rows['user_id'][i]}", "age": AGES[rows["age"][i]],
           "gender": GENDERS[rows["gender"][i]], "city": f"c{rows['city'][i]}",
           "hour": f"{rows['hour'][i]:02d}", "device": DEVICES[rows["device"][i]]}
    ad = {"ad_id": f"a{rows['ad_id'][i]}", "advertiser_id": f"v{rows['advertiser_id'][i]}",
          "category": f"cat{rows['category'][i]}", "position": f"p{rows['position'][i]}"}
    return ctx, ad


def _write_jsonl(path: Path, rows: dict[str, np.ndarray], counts: np.ndarray, clicks: np.ndarray,
                 requests: np.ndarray) -> None:
    starts = np.cumsum(counts) - counts
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in requests.tolist():
            s, n = int(starts[r]), int(counts[r])
            ctx, _ = _values(rows, s)
            ads = []
            for i in range(s, s + n):
                _, feats = _values(rows, i)
                ads.append({"id": feats["ad_id"], "features": feats})
            body = {"request_id": f"d{rows['day'][s]}-{r:06d}", "context": ctx, "ads": ads,
                    "clicks": clicks[s:s + n].astype(int).tolist()}
            f.write(json.dumps(body, separators=(",", ":")) + "\n")
    os.replace(tmp, path)


def _round(a: np.ndarray) -> list:
    return np.round(np.asarray(a, dtype=np.float64), 5).tolist()


def generate(out_dir: str | os.PathLike, *, size: str = "full", seed: int = 0,
             **overrides: Any) -> dict:
    """Write ``train.jsonl``, ``test.jsonl`` and ``world.json`` into ``out_dir``; return the
    summary (per split: requests, rows, clicks, click rate, distinct users, the top 1% of users'
    share of rows, the teacher's AUC). ``overrides`` set :class:`WorldParams` fields."""
    p = world_params(size, **overrides)
    rng = np.random.default_rng(seed)
    w = _World(p, rng)
    rows, counts = _requests(w, rng)

    raw = w.teacher_raw(rows)
    z_mean, z_scale = float(raw.mean()), float(p.teacher_scale / max(raw.std(), 1e-12))
    rest = ((raw - z_mean) * z_scale + w.user_bias[rows["user_id"]] + w.ad_bias[rows["ad_id"]]
            - p.position_slope * (rows["position"] - 1)
            + rng.normal(0.0, p.teacher_noise, size=raw.size))
    base = _calibrate_base(rest, p.target_ctr)
    p_click = _sigmoid(base + rest)
    clicks = rng.random(p_click.size) < p_click

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    first_test = p.days - p.test_days + 1
    split_days = {"train": list(range(1, first_test)), "test": list(range(first_test, p.days + 1))}
    req_day = rows["day"][np.cumsum(counts) - counts]
    summary: dict[str, Any] = {}
    train_users: set[int] = set()
    for split in SPLITS:
        requests = np.flatnonzero(np.isin(req_day, split_days[split]))
        _write_jsonl(out / f"{split}.jsonl", rows, counts, clicks, requests)
        sel = np.isin(rows["day"], split_days[split])
        users, per_user = np.unique(rows["user_id"][sel], return_counts=True)
        top = max(1, int(round(0.01 * users.size)))
        s = {"days": split_days[split], "requests": int(requests.size), "rows": int(sel.sum()),
             "clicks": int(clicks[sel].sum()), "click_rate": round(float(clicks[sel].mean()), 5),
             "distinct_users": int(users.size), "distinct_ads": int(np.unique(rows["ad_id"][sel]).size),
             "top1pct_users_row_share": round(float(np.sort(per_user)[::-1][:top].sum() / sel.sum()), 4),
             "teacher_auc": round(auc(clicks[sel], p_click[sel]), 5)}
        if split == "train":
            train_users = set(users.tolist())
        else:
            seen = np.isin(rows["user_id"][sel], list(train_users))
            s["rows_with_user_seen_in_train"] = round(float(seen.mean()), 4)
        summary[split] = s

    world = {
        "description": "synthetic CTR world: clicks from a planted teacher network; see "
                       "scoring/insight/synth.py",
        "size": size, "seed": seed, "parameters": asdict(p),
        "groups": {"context": list(CONTEXT_GROUPS), "ad": list(AD_GROUPS)},
        "vocabulary": {"user_id": p.n_users, "age": len(AGES), "gender": len(GENDERS),
                       "city": p.n_cities, "hour": 24, "device": len(DEVICES),
                       "ad_id": p.n_ads, "advertiser_id": p.n_advertisers,
                       "category": p.n_categories, "position": p.max_ads},
        "values": {"user_id": "u<id>", "age": list(AGES), "gender": list(GENDERS),
                   "city": "c<id>", "hour": "00..23", "device": list(DEVICES), "ad_id": "a<id>",
                   "advertiser_id": "v<id>", "category": "cat<id>", "position": "p1..p<max_ads>"},
        "splits": {split: {"file": f"{split}.jsonl", "days": split_days[split]} for split in SPLITS},
        "teacher": {
            "formula": "logit = base + z_scale * (relu(x @ w1 + b1) @ w2 - z_mean) + user_bias[user]"
                       " + ad_bias[ad] - position_slope * (position - 1) + Normal(0, teacher_noise);"
                       " x = concat(latent[g][value] for g in inputs), hour and category latents "
                       "+ drift * (day - 1) / (days - 1) * drift_direction; click ~ "
                       "Bernoulli(sigmoid(logit))",
            "inputs": list(TEACHER_GROUPS), "drifting": list(DRIFTING),
            "base": round(base, 6), "z_mean": round(z_mean, 6), "z_scale": round(z_scale, 6),
            "latent": {g: _round(w.latent[g]) for g in TEACHER_GROUPS},
            "drift_direction": {g: _round(w.drift_dir[g]) for g in DRIFTING},
            "w1": _round(w.w1), "b1": _round(w.b1), "w2": _round(w.w2),
            "not_stored": "user_bias, ad_bias and the users' and ads' attributes: regenerated "
                          "from the seed",
        },
        "seen": {"users": int(np.unique(rows["user_id"]).size),
                 "ads": int(np.unique(rows["ad_id"]).size)},  # distinct ids in the files
        "summary": summary,
    }
    tmp = out / ".world.json.tmp"
    tmp.write_text(json.dumps(world, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, out / "world.json")
    return summary


def read_world(data_dir: str | os.PathLike) -> dict:
    """``world.json`` of a directory :func:`generate` wrote."""
    path = Path(data_dir) / "world.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no world.json; write the data with `ctr-insight synth "
                                f"--out {data_dir}` first") from None


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The request bodies (with ``clicks``) of a ``.jsonl`` file :func:`generate` wrote."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="directory for train.jsonl, test.jsonl, world.json")
    parser.add_argument("--size", choices=sorted(SIZES), default="full",
                        help="full: ~200k train rows; ci: ~25k (default: full)")
    parser.add_argument("--seed", type=int, default=0, help="the world's seed (default: 0)")


def run(args: argparse.Namespace) -> int:
    summary = generate(args.out, size=args.size, seed=args.seed)
    print(json.dumps(summary, indent=1))
    return 0

