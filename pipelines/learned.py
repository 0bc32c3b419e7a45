"""Learned retrieval: a two-tower model of readers and articles, trained on clicks (PyTorch, CPU).

The article tower embeds an article from its content and metadata alone: the catalogue's (L2-normalised)
embedding, its category and its length go through an MLP to a unit vector. Its state at the moment of the
request, its age and its trend (clicks decayed with the candidate index's trend half-life, 0 for a story
nobody has read yet), picks two small learned vectors, summed. So an article published this hour gets a
vector the first time an index holds it, before anyone has clicked it; nothing in the model is keyed by
article id.

The user tower reads the user's last `history` clicks, newest first: each clicked article through the
same content MLP, plus a learned vector for its position, one for how long before the user's newest click
it was read (hour buckets), and one for how long before the request the newest click was (its staleness:
minutes mean the reader is still in the session that click belongs to, hours mean a new visit, which
starts from the reader's standing interests rather than from the last story). Attention pooling over
them, joined with the newest click, then an MLP gives the user's unit vector (times a learned scale) and
their preference over article states. The score of an article for a user is one inner product:

    [scale * u, w_u] . [v_a, age(t - created_a) + trend(trend_a(t))]

Training: every click with at least one earlier click of the same user (within the fit window) is one
example, its request time the click's own (so the staleness runs from seconds, inside a session, to days,
a reader's next visit); a batch's other clicked articles are its negatives (in-batch sampled softmax), each in its state
at the example's time (age, trend), minus those not yet published then and copies of the positive; with `logq_correction` each logit is
lowered by the log of its article's share of the examples, the usual correction for in-batch sampling.

`fit_learned` trains at a cutoff; `fit_daily` fits the daily models the DVC flow needs (`newsrec learned`:
one per day back from the test cutoff, the serve snapshot's last), and `model_for` picks the model a
snapshot uses: the newest fitted at or before its cutoff, as the daily retrain would have left it.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines import columns as C
from pipelines import lake
from pipelines.errors import InputError, MissingInputError

# Hour buckets of an article's age at the request and of a click's distance before the user's newest one:
# bucket i holds [EDGES[i-1], EDGES[i]) hours (a news story's life is hours, its tail days).
AGE_EDGES_H = np.array([1, 2, 4, 8, 12, 16, 20, 24, 36, 48, 72, 168], dtype=np.float64)
N_AGE = len(AGE_EDGES_H) + 1
# Staleness buckets (hours from the user's newest click to the request): fine within a session, then hours.
STALE_EDGES_H = np.array([1 / 60, 5 / 60, 15 / 60, 0.5, 1, 2, 4, 8, 12, 24, 48, 168], dtype=np.float64)
N_STALE = len(STALE_EDGES_H) + 1
N_TREND = 24  # trend bucket: floor(2 * log2(1 + trend)), capped (a scale that does not depend on traffic)
CATEGORY_DIM = 16
_WEIGHTS = "weights.npz"
_META = "learned.json"
LEARNED_FORMAT = 2  # 2: the user tower reads the staleness of the user's newest click
PARAM_KEYS = ("dim", "hidden", "state_dim", "history", "dropout", "epochs", "batch", "lr", "weight_decay",
              "logq_correction", "max_examples", "seed", "threads", "warm_start", "incremental_epochs")


def age_bucket(hours: np.ndarray) -> np.ndarray:
    """Bucket of each age in hours (negative ages, not yet published, fall in bucket 0)."""
    return np.searchsorted(AGE_EDGES_H, np.asarray(hours, dtype=np.float64), side="right").astype(np.int64)


def staleness_bucket(hours: np.ndarray) -> np.ndarray:
    """Bucket of each staleness in hours (the request before the newest click, a clock skew, counts as 0)."""
    hours = np.maximum(np.asarray(hours, dtype=np.float64), 0.0)
    return np.searchsorted(STALE_EDGES_H, hours, side="right").astype(np.int64)


def trend_bucket(trend: np.ndarray) -> np.ndarray:
    """Bucket of each trend value (decayed clicks): half-octaves of 1 + trend."""
    return np.minimum(2 * np.log2(1 + np.maximum(np.asarray(trend, dtype=np.float64), 0)), N_TREND - 1).astype(np.int64)


def _torch():
    import torch

    return torch


_FIT_LOCK = threading.Lock()


@contextmanager
def _fitting(threads: int, seed: int):
    """One fit at a time in a process, torch seeded with `seed` and its intra-op threads set to `threads` for it.
    torch's random generator (weight init, dropout) and its thread count are the process's: two fits side by side
    in one process (a Dask worker with several threads) would draw from one generator and change each other's
    thread count, so their models would depend on timing. On a busy machine more threads than free cores make
    torch's small ops spin-wait (2 threads on 2 shared cores fitted 10x slower than 1)."""
    torch = _torch()
    with _FIT_LOCK:
        before = torch.get_num_threads()
        torch.manual_seed(int(seed))
        torch.set_num_threads(int(threads))
        try:
            yield torch
        finally:
            torch.set_num_threads(before)


def _build_network(emb_dim: int, n_categories: int, p: dict):
    torch = _torch()
    nn = torch.nn
    dim, hidden, state_dim, history = int(p["dim"]), int(p["hidden"]), int(p["state_dim"]), int(p["history"])

    class TwoTower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.category = nn.Embedding(n_categories + 1, CATEGORY_DIM)  # the last row: unknown category
            self.content = nn.Sequential(nn.Linear(emb_dim + CATEGORY_DIM + 1, hidden), nn.ReLU(),
                                         nn.Linear(hidden, dim))
            self.dropout = nn.Dropout(float(p["dropout"]))  # on the embedding, while fitting only
            self.age = nn.Embedding(N_AGE, state_dim)
            self.trend = nn.Embedding(N_TREND, state_dim)
            self.position = nn.Embedding(history, dim)
            self.gap = nn.Embedding(N_AGE, dim)
            self.staleness = nn.Embedding(N_STALE, dim)
            nn.init.zeros_(self.staleness.weight)  # a staleness no example had leaves the tower as if blind to it
            self.attention = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))
            self.user = nn.Sequential(nn.Linear(2 * dim, hidden), nn.ReLU(), nn.Linear(hidden, dim + state_dim))
            self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))

        def items(self, emb, category, words):
            """Content vectors (not normalised) of articles: [..., dim]."""
            return self.content(torch.cat([self.dropout(emb), self.category(category), words.unsqueeze(-1)], dim=-1))

        def scale(self):
            return self.log_scale.clamp(max=math.log(100.0)).exp()

        def articles(self, emb, category, words):
            """Unit content vectors [n, dim]; the state part is `age.weight[a] + trend.weight[t]`."""
            return nn.functional.normalize(self.items(emb, category, words), dim=-1)

        def users(self, emb, category, words, gap, mask, stale):
            """[B, dim + state_dim] user vectors from [B, N] histories (newest first; mask: a click is there) and
            [B] staleness buckets."""
            return self.users_of_items(self.items(emb, category, words), gap, mask, stale)

        def users_of_items(self, items, gap, mask, stale):
            """`users` from the clicked articles' content vectors [B, N, dim]."""
            x = items + self.position.weight[: items.shape[1]] + self.gap(gap) + self.staleness(stale).unsqueeze(1)
            logits = self.attention(x).squeeze(-1).masked_fill(~mask, float("-inf"))
            pooled = (torch.softmax(logits, dim=-1).unsqueeze(-1) * x).sum(dim=1)
            out = self.user(torch.cat([pooled, x[:, 0]], dim=-1))
            u = nn.functional.normalize(out[:, :dim], dim=-1) * self.scale()
            return torch.cat([u, out[:, dim:]], dim=-1)

    return TwoTower()


@dataclass
class Catalogue:
    """Per-article model inputs by article id: normalised embedding, category code, scaled length, creation."""

    emb: np.ndarray  # float32 [n, dim], row = article_id
    category: np.ndarray  # int64 [n] codes (n_categories = unknown)
    words: np.ndarray  # float32 [n]
    created: np.ndarray  # int64 [n] ms (int64 max where the id is not in the catalogue)


def _normalise(x: np.ndarray) -> np.ndarray:
    """Rows over the last axis to unit L2 norm, as torch.nn.functional.normalize (eps 1e-12)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclass
class LearnedModel:
    """A fitted two-tower model (see the module docstring) and what it needs to encode new articles.

    Scoring runs the towers in numpy from the trained weights, not in torch: the API scores one user per
    request next to faiss, and torch's thread pool beside faiss's made that one small pass cost tens of ms
    on a busy 2-core machine (numpy: well under 1 ms); the API need not import torch at all. A test holds
    both forward passes equal."""

    params: dict
    categories: np.ndarray  # sorted category ids known at fit; their position is the model's code
    emb_dim: int
    meta: dict
    weights: dict = field(repr=False)  # the network's state_dict as float32 arrays

    @property
    def dim(self) -> int:
        """Width of a user or article vector (content part + state part)."""
        return int(self.params["dim"]) + int(self.params["state_dim"])

    def category_codes(self, category_ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(category_ids, dtype=np.int64)
        at = np.clip(np.searchsorted(self.categories, ids), 0, max(len(self.categories) - 1, 0))
        known = (len(self.categories) > 0) & (self.categories[at] == ids) if len(self.categories) else \
            np.zeros(len(ids), dtype=bool)
        return np.where(known, at, len(self.categories)).astype(np.int64)

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        return x @ self.weights[f"{name}.weight"].T + self.weights[f"{name}.bias"]

    def _items(self, emb: np.ndarray, codes: np.ndarray, words: np.ndarray) -> np.ndarray:
        """The content MLP (TwoTower.items): [..., dim]."""
        x = np.concatenate([emb, self.weights["category.weight"][codes], words[..., None]], axis=-1)
        return self._linear(np.maximum(self._linear(x, "content.0"), 0), "content.2")

    def article_vectors(self, emb: np.ndarray, category_ids: np.ndarray, words: np.ndarray,
                        created_ms: np.ndarray, trend: np.ndarray, at_ms: int) -> np.ndarray:
        """float32 [n, dim]: each article's vector as of `at_ms` (its age and `trend` then pick the state part).

        `emb` are the articles' L2-normalised catalogue embeddings, one row per article; `trend` their clicks
        decayed with the half-life the model was fitted with (`meta["trend_half_life_hours"]`)."""
        emb = np.asarray(emb, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[1] != self.emb_dim:
            raise InputError(f"article embeddings of shape {emb.shape}; the model reads width {self.emb_dim}")
        content = _normalise(self._items(emb, self.category_codes(category_ids), _scaled_words(words)))
        state = self.weights["age.weight"][age_bucket((int(at_ms) - np.asarray(created_ms, np.int64)) / C.HOUR_MS)] \
            + self.weights["trend.weight"][trend_bucket(trend)]
        return np.ascontiguousarray(np.hstack([content, state]), dtype=np.float32)

    def user_vectors(self, emb: np.ndarray, category_ids: np.ndarray, words: np.ndarray, ts: np.ndarray,
                     mask: np.ndarray, at_ms: int | np.ndarray) -> np.ndarray:
        """float32 [B, dim] from histories [B, N] (newest click first, `mask` where a click is; `emb` is
        [B, N, emb_dim] normalised embeddings, `ts` click times in ms) as of the request time `at_ms` (one for
        all, or one per user). N is cut to params `history`."""
        n = int(self.params["history"])
        emb, category_ids, words, ts, mask = (np.asarray(a)[:, :n] for a in (emb, category_ids, words, ts, mask))
        gap = np.where(mask, age_bucket((ts[:, :1] - ts) / C.HOUR_MS), 0)
        stale = staleness_bucket((np.asarray(at_ms, dtype=np.int64) - ts[:, 0]) / C.HOUR_MS)
        codes = self.category_codes(category_ids.ravel()).reshape(category_ids.shape)
        x = self._items(emb.astype(np.float32, copy=False), codes, _scaled_words(words.ravel()).reshape(words.shape))
        x = (x + self.weights["position.weight"][: x.shape[1]] + self.weights["gap.weight"][gap]
             + self.weights["staleness.weight"][stale][:, None, :])
        logits = self._linear(np.tanh(self._linear(x, "attention.0")), "attention.2")[..., 0]
        logits = np.where(mask, logits, -np.inf)
        attention = np.exp(logits - logits.max(axis=1, keepdims=True))
        attention /= attention.sum(axis=1, keepdims=True)
        pooled = (attention[..., None] * x).sum(axis=1)
        out = self._linear(np.maximum(self._linear(np.concatenate([pooled, x[:, 0]], axis=-1), "user.0"), 0),
                           "user.2")
        d = int(self.params["dim"])
        scale = np.exp(min(float(self.weights["log_scale"]), math.log(100.0)))
        return np.ascontiguousarray(np.hstack([_normalise(out[:, :d]) * scale, out[:, d:]]), dtype=np.float32)

    # ---- persistence -------------------------------------------------------------------------------
    def save(self, out_dir: str | Path) -> Path:
        """Write `weights.npz` (the network's weights) and `learned.json` (params, category vocabulary, facts)."""
        from pipelines.fileio import atomic_write

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)

        def write_weights(path: Path) -> None:
            with path.open("wb") as fh:
                np.savez(fh, **self.weights)

        atomic_write(out / _WEIGHTS, write_weights)
        # the fit's wall time is not part of the model: a DVC output is the same bytes on every run
        meta = {"format": LEARNED_FORMAT, "params": self.params, "categories": self.categories.tolist(),
                "emb_dim": self.emb_dim, **{k: v for k, v in self.meta.items() if k != "fit_seconds"}}
        atomic_write(out / _META, lambda p: p.write_text(json.dumps(meta, indent=2) + "\n"))
        return out

    @classmethod
    def load(cls, in_dir: str | Path) -> LearnedModel:
        src = Path(in_dir)
        if not (src / _META).exists():
            raise MissingInputError(f"no learned model in {src} ({_META} missing): run `newsrec learned`")
        meta = json.loads((src / _META).read_text())
        if meta.get("format") != LEARNED_FORMAT:
            raise InputError(f"learned model in {src} has format {meta.get('format')}; this code reads "
                             f"{LEARNED_FORMAT}: fit it again with `newsrec learned`")
        with np.load(src / _WEIGHTS, allow_pickle=False) as npz:
            weights = {k: npz[k] for k in npz.files}
        rest = {k: v for k, v in meta.items() if k not in ("format", "params", "categories", "emb_dim")}
        return cls(params=meta["params"], categories=np.asarray(meta["categories"], dtype=np.int64),
                   emb_dim=int(meta["emb_dim"]), meta=rest, weights=weights)


def _scaled_words(words: np.ndarray) -> np.ndarray:
    return (np.log1p(np.clip(np.asarray(words, dtype=np.float64), 0, None)) / 8.0).astype(np.float32)


def check_params(params: dict) -> dict:
    """The `learned` params with every key present and sane; ValueError naming what is wrong."""
    missing = [k for k in PARAM_KEYS if k not in params]
    if missing:
        raise InputError(f"learned params lack {missing}")
    for key in ("dim", "hidden", "state_dim", "history", "epochs", "batch", "threads", "incremental_epochs"):
        if int(params[key]) < 1:
            raise InputError(f"learned.{key} must be >= 1, got {params[key]}")
    if float(params["lr"]) <= 0:
        raise InputError(f"learned.lr must be > 0, got {params['lr']}")
    if not 0 <= float(params["dropout"]) < 1:
        raise InputError(f"learned.dropout must be in [0, 1), got {params['dropout']}")
    return {k: params[k] for k in PARAM_KEYS} | {k: v for k, v in params.items() if k not in PARAM_KEYS}


def training_examples(clicks: pd.DataFrame, history: int, max_examples: int | None, since_ms: int | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(history rows [E, history] into the clicks sorted by user and time, -1 padded, newest first; positive
    article; its time; the sorted clicks' article ids and times): one example per click with an earlier click of the same user on another
    article, not a re-read of one of its `history` previous clicks. With `since_ms`, only clicks from then on
    are examples (their histories still reach back before it). The newest `max_examples` are kept."""
    user = clicks[C.USER_ID].to_numpy(np.int64)
    ts = clicks[C.CLICK_TIMESTAMP].to_numpy(np.int64)
    art = clicks[C.CLICK_ARTICLE_ID].to_numpy(np.int64)
    order = np.lexsort((ts, user))
    user, ts, art = user[order], ts[order], art[order]

    def earlier(rows: np.ndarray, back: int) -> np.ndarray:
        """The row `back` clicks before each of `rows` by the same user, else -1 (rows are sorted by user)."""
        prev = rows - back
        return np.where((prev >= 0) & (user[np.maximum(prev, 0)] == user[rows]), prev, -1)

    # Which clicks are examples, one history column at a time: the [clicks, history] table is built for the
    # kept examples only (at Globo scale, 3M clicks x 20 int64 would be 480 MB, and each mask as much again).
    rows = np.arange(len(user))
    valid = earlier(rows, 1) >= 0
    reread = np.zeros(len(user), dtype=bool)
    for back in range(1, history + 1):
        prev = earlier(rows, back)
        reread |= (prev >= 0) & (art[np.maximum(prev, 0)] == art)
    keep = np.flatnonzero(valid & ~reread & (ts >= (np.iinfo(np.int64).min if since_ms is None else int(since_ms))))
    if max_examples is not None and len(keep) > int(max_examples):
        keep = keep[np.argsort(ts[keep], kind="stable")[-int(max_examples):]]
        keep.sort()
    hist = np.stack([earlier(keep, back) for back in range(1, history + 1)], axis=1)
    return hist, art[keep], ts[keep], art, ts


def _catalogue(articles: pd.DataFrame, embeddings: np.ndarray, categories: np.ndarray) -> Catalogue:
    from pipelines.features import normalise_embeddings

    n = embeddings.shape[0]
    ids = articles[C.ARTICLE_ID].to_numpy(np.int64)
    if len(ids) and (ids.min() < 0 or ids.max() >= n):
        raise InputError(f"article ids up to {int(ids.max())} but embeddings have {n} rows")
    category = np.full(n, len(categories), dtype=np.int64)
    words = np.zeros(n, dtype=np.float32)
    created = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    codes = np.searchsorted(categories, articles[C.CATEGORY_ID].to_numpy(np.int64))
    category[ids] = codes
    words[ids] = _scaled_words(articles[C.WORDS_COUNT].to_numpy())
    created[ids] = articles[C.CREATED_AT_TS].to_numpy(np.int64)
    return Catalogue(normalise_embeddings(np.asarray(embeddings, dtype=np.float32)), category, words, created)


def hourly_trend(articles: np.ndarray, ts: np.ndarray, cutoff_ms: int, half_life_hours: float
                 ) -> tuple[np.ndarray, np.ndarray, int]:
    """The trend every clicked article had at the start of each hour before the cutoff, as the candidate index
    computes it (`aggregates.read_popularity`: an hour's clicks decayed from its middle): (sorted article ids,
    float32 [articles, hours + 1] where column k is the trend at the start of hour first + k, first hour)."""
    hour = (np.asarray(ts, dtype=np.int64) - int(cutoff_ms)) // C.HOUR_MS  # negative: hours before the cutoff
    first = int(hour.min()) if len(hour) else 0
    ids, row = np.unique(articles, return_inverse=True)
    counts = np.zeros((len(ids), -first + 1), dtype=np.float64)
    np.add.at(counts, (row, hour - first), 1.0)
    decay = 0.5 ** (1.0 / float(half_life_hours))
    trend = np.zeros_like(counts)
    for k in range(1, counts.shape[1]):
        trend[:, k] = trend[:, k - 1] * decay + counts[:, k - 1] * decay ** 0.5
    return ids, trend.astype(np.float32), first


def fit_learned(clicks: pd.DataFrame, articles: pd.DataFrame, embeddings: np.ndarray, cutoff_ms: int,
                params: dict, trend_half_life_hours: float, log=print, init: LearnedModel | None = None
                ) -> LearnedModel:
    """Train the two-tower model on `clicks` before `cutoff_ms` (later ones are ignored) over the catalogue
    `articles` / `embeddings` (row = article_id); an article's trend decays with `trend_half_life_hours`, the
    candidate index's (params candidates.trend_half_life_hours). Seeded: the same inputs give the same model.

    With `init` (a model fitted at an earlier cutoff), the fit is that model's incremental update: it starts
    from its weights and category vocabulary (a category it never saw reads as unknown) and trains
    `incremental_epochs` passes over the clicks from its cutoff to this one only."""
    torch = _torch()
    p = check_params(params)
    if init is not None:
        if int(init.meta["cutoff_ms"]) >= int(cutoff_ms):
            raise InputError(f"a warm start needs a model fitted before the cutoff {cutoff_ms}; "
                             f"it was fitted at {init.meta['cutoff_ms']}")
        shape = {k: init.params[k] for k in ("dim", "hidden", "state_dim", "history")}
        if shape != {k: p[k] for k in shape} or init.emb_dim != np.asarray(embeddings).shape[1]:
            raise InputError(f"a warm start needs a model of the same shape: it has {shape} and embedding width "
                             f"{init.emb_dim}, the params ask for {({k: p[k] for k in shape})}")
    missing = {C.USER_ID, C.CLICK_ARTICLE_ID, C.CLICK_TIMESTAMP} - set(clicks.columns)
    if missing:
        raise InputError(f"clicks frame lacks columns {sorted(missing)}")
    clicks = clicks[clicks[C.CLICK_TIMESTAMP].to_numpy() < int(cutoff_ms)]
    n_hist = int(p["history"])
    since = None if init is None else int(init.meta["cutoff_ms"])
    hist, pos, ts, art, art_ts = training_examples(clicks, n_hist, p.get("max_examples"), since)
    if len(pos) < 2:
        raise InputError(f"{len(pos)} training example(s) before the cutoff" + ("" if init is None else
                         " since the warm start's") + ": the learned model needs users with at least two clicks")
    categories = init.categories if init is not None else np.unique(articles[C.CATEGORY_ID].to_numpy(np.int64))
    cat = _catalogue(articles, embeddings, categories)
    clicked_missing = np.setdiff1d(np.unique(art), articles[C.ARTICLE_ID].to_numpy(np.int64))
    if len(clicked_missing):
        raise InputError(f"clicks on {len(clicked_missing)} article(s) missing from the catalogue, "
                         f"e.g. {clicked_missing[:5].tolist()}")
    if float(trend_half_life_hours) <= 0:
        raise InputError(f"trend half-life must be > 0, got {trend_half_life_hours}")
    trend_ids, trend, first_hour = hourly_trend(art, art_ts, cutoff_ms, trend_half_life_hours)
    example_hour = (ts - int(cutoff_ms)) // C.HOUR_MS - first_hour

    seed = int(p["seed"])
    with _fitting(p["threads"], seed):
        net = _build_network(cat.emb.shape[1], len(categories), p)
        if init is not None:
            net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in init.weights.items()})
        opt = torch.optim.AdamW(net.parameters(), lr=float(p["lr"]), weight_decay=float(p["weight_decay"]))
        emb_t = torch.from_numpy(cat.emb)
        cat_t, words_t = torch.from_numpy(cat.category), torch.from_numpy(cat.words)
        _, pos_code, counts = np.unique(pos, return_inverse=True, return_counts=True)
        logq = np.log(counts[pos_code] / len(pos)).astype(np.float32)
        hist_art = np.where(hist >= 0, art[np.maximum(hist, 0)], 0)
        hist_ts = np.where(hist >= 0, art_ts[np.maximum(hist, 0)], 0)
        mask = hist >= 0
        gap = np.where(mask, age_bucket((hist_ts[:, :1] - hist_ts) / C.HOUR_MS), 0)
        stale = staleness_bucket((ts - hist_ts[:, 0]) / C.HOUR_MS)  # each example's request: its click
        rng = np.random.default_rng(seed)
        batch = int(p["batch"])
        started, losses = time.perf_counter(), []
        net.train()
        epochs = int(p["epochs"] if init is None else p["incremental_epochs"])
        for epoch in range(epochs):
            order = rng.permutation(len(pos))
            total, steps = 0.0, 0
            for lo in range(0, len(order) - 1, batch):
                b = order[lo: lo + batch]
                if len(b) < 2:
                    continue
                # Each distinct article of the batch through the content MLP once (popular ones recur a lot).
                ids, inv = np.unique(np.concatenate([hist_art[b].ravel(), pos[b]]), return_inverse=True)
                t_ids = torch.from_numpy(ids)
                items = net.items(emb_t[t_ids], cat_t[t_ids], words_t[t_ids])
                inv = torch.from_numpy(inv)
                n_h = hist_art[b].size
                u = net.users_of_items(items[inv[:n_h]].reshape(len(b), n_hist, -1), torch.from_numpy(gap[b]),
                                       torch.from_numpy(mask[b]), torch.from_numpy(stale[b]))
                v = torch.nn.functional.normalize(items[inv[n_h:]], dim=-1)
                d = int(p["dim"])
                # Every article's state at every example's time: its age then, its trend at that hour's start.
                age_h = (ts[b][:, None] - cat.created[pos[b]][None, :]) / C.HOUR_MS
                rows = np.searchsorted(trend_ids, pos[b])  # every positive was clicked: it has a row
                pair_trend = trend[rows[None, :], example_hour[b][:, None]]
                state = u[:, d:]
                logits = (u[:, :d] @ v.T
                          + torch.gather(state @ net.age.weight.T, 1, torch.from_numpy(age_bucket(age_h)))
                          + torch.gather(state @ net.trend.weight.T, 1, torch.from_numpy(trend_bucket(pair_trend))))
                if p["logq_correction"]:
                    logits = logits - torch.from_numpy(logq[b])[None, :]
                # Not negatives: copies of the positive, articles not yet published at the example's time. The
                # positive itself always stays (a click may precede its article's timestamp by a clock skew).
                masked = torch.from_numpy((pos[b][:, None] == pos[b][None, :]) | (age_h < 0))
                logits = logits.masked_fill(masked & ~torch.eye(len(b), dtype=torch.bool), float("-inf"))
                loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(b)))
                opt.zero_grad()
                loss.backward()
                opt.step()
                total, steps = total + float(loss.detach()), steps + 1
            losses.append(total / max(steps, 1))
            log(f"learned: epoch {epoch + 1}/{epochs} loss {losses[-1]:.4f} "
                f"({len(pos)} examples, {time.perf_counter() - started:.0f} s)")
        net.eval()
        weights = {k: v.detach().numpy().astype(np.float32) for k, v in net.state_dict().items()}
    meta = {"cutoff_ms": int(cutoff_ms), "trend_half_life_hours": float(trend_half_life_hours),
            "examples": len(pos), "losses": losses,
            "warm_start_from_ms": None if init is None else int(init.meta["cutoff_ms"]),
            "fit_seconds": round(time.perf_counter() - started, 2)}
    return LearnedModel(params=p, categories=categories, emb_dim=int(cat.emb.shape[1]), meta=meta,
                        weights=weights)


# ---- the daily models of the DVC flow -------------------------------------------------------------------
def fit_hours(snapshots: Sequence, refit_hours: int) -> list[int]:
    """Cutoff hours to fit at: the serve snapshot's, the test's, then every `refit_hours` back from the test
    cutoff (the daily retrain's cadence) while that stays after the earliest snapshot's cutoff, and that cutoff
    itself: every snapshot has a model fitted at or before its cutoff, none before the data starts."""
    if int(refit_hours) < 1:
        raise InputError(f"learned.refit_hours must be >= 1, got {refit_hours}")
    by_role = {s.role: s for s in snapshots}
    if "test" not in by_role:
        raise InputError("the split has no test snapshot")
    first = min(s.cutoff_hour for s in snapshots)
    hours = {by_role["serve"].cutoff_hour} if "serve" in by_role else set()
    h = by_role["test"].cutoff_hour
    while h > first:
        hours.add(h)
        h -= int(refit_hours)
    hours.add(first)
    return sorted(hours)


def model_dir(models_dir: str | Path, cutoff_hour: int) -> Path:
    return Path(models_dir) / f"{C.HOUR}={int(cutoff_hour):03d}"


def model_for(models_dir: str | Path, cutoff_hour: int) -> LearnedModel | None:
    """The model fitted newest at or before `cutoff_hour` under `models_dir`; None when there is none (fitted
    later only, or `models_dir` None)."""
    if models_dir is None:
        return None
    hours = sorted(int(d.name.split("=", 1)[1]) for d in Path(models_dir).glob(f"{C.HOUR}=*")
                   if (d / _META).exists())
    usable = [h for h in hours if h <= int(cutoff_hour)]
    return LearnedModel.load(model_dir(models_dir, usable[-1])) if usable else None


def fit_keys_dir(out_dir: str | Path) -> Path:
    """Where `fit_daily` notes what each daily model was fitted from: beside the models' folder, not in it, so
    the folder's content (a DVC output) is the models alone, whatever code wrote them."""
    out = Path(out_dir)
    return out.with_name(out.name + ".fits")


def _model_digest(folder: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for name in (_WEIGHTS, _META):
        h.update((folder / name).read_bytes())
    return h.hexdigest()


def _digest(*parts: np.ndarray | pd.DataFrame) -> str:
    """sha256 of arrays (their bytes) and frames (pandas' per-row hashes of their values, in row order)."""
    import hashlib

    h = hashlib.sha256()
    for part in parts:
        a = pd.util.hash_pandas_object(part, index=False).to_numpy() if isinstance(part, pd.DataFrame) else part
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.data)
    return h.hexdigest()


def _code_digest() -> str:
    """The package's source and the torch release: a fit made by other code is never taken for this one's."""
    import hashlib
    from importlib.metadata import version

    h = hashlib.sha256(version("torch").encode())
    package = Path(__file__).resolve().parent
    for path in sorted(package.rglob("*.py")):
        h.update(path.relative_to(package).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _fit_at(clicks: pd.DataFrame, data_root: str, hour: int, params: dict, epoch_ms: int,
            trend_half_life_hours: float, init: LearnedModel | None = None,
            article_side: tuple | None = None) -> LearnedModel:
    """The model fitted at the start of `hour`. The same call runs in this process or as a Dask task: the article
    side (catalogue, embeddings, delivered drops) is `article_side` as the caller read it, or, on a worker, read
    from `data_root` there; the clicks come with the call, and the model goes back to the caller, which saves it
    (workers only read the data root)."""
    from pipelines.catalogue import delivered_hours, known_at, read_catalogue
    from pipelines.split import hour_start_ms

    if article_side is None:
        catalogue, embeddings = read_catalogue(data_root)
        article_side = catalogue, embeddings, delivered_hours(data_root, catalogue)
    catalogue, embeddings, delivered = article_side
    return fit_learned(clicks, known_at(catalogue, delivered, hour), embeddings, hour_start_ms(hour, epoch_ms),
                       params, trend_half_life_hours, init=init)


def _save_fit(model: LearnedModel, where: Path, note: Path, inputs: str) -> dict:
    """Write a fitted model to `where` (replacing what is there), then its note; the model's meta."""
    import shutil

    if where.exists():
        shutil.rmtree(where)
    model.save(where)
    note.write_text(json.dumps({"inputs": inputs, "model": _model_digest(where)}) + "\n")
    return model.meta


def fit_daily(data_root: str | Path, snapshots: Sequence, out_dir: str | Path, params: dict, epoch_ms: int,
              trend_half_life_hours: float, client=None) -> dict[str, dict]:
    """Fit and save one model per `fit_hours` cutoff under `<out_dir>/hour=NNN/`; returns what each fit saw.

    A model already under `out_dir` is kept, not refitted, when its note in `fit_keys_dir` says it was
    fitted from the same inputs and the model's files are still the ones then written. The key digests all a
    fit reads (the clicks before its cutoff in their order, the catalogue known at it, the embeddings, the
    params, the package's code and the torch release) and a fit is deterministic on one machine, so a kept
    model is the one a refit would write. A daily run then fits the new day's model only: the earlier days'
    clicks did not change (a late drop or an erasure changes them, and their models are refitted). Model
    folders of hours this run does not fit are removed, so `model_for` never picks a stale one.

    The fits are independent of each other, so with a Dask `client` each one left to fit is a task on the
    cluster (the clicks sent to the workers once, the article side read from `data_root`, which they share), and
    this process saves the models they send back: as many fits at once as the cluster has worker processes (a
    process fits one model at a time, see `_fitting`). Each is the same call with the same seed and thread count,
    so a worker on the same machine fits the same bytes.

    With params `warm_start`, only the earliest is fitted from scratch; each later one is the one before it
    updated on the clicks in between (`fit_learned`'s `init`), as a daily retrain that keeps its model would
    leave it (its key then includes the earlier model's). That chain runs in this process, one fit after another."""
    import shutil

    from pipelines.catalogue import delivered_hours, known_at, read_catalogue
    from pipelines.split import hour_start_ms, load_clicks

    root, out = Path(data_root), Path(out_dir)
    notes = fit_keys_dir(out)
    notes.mkdir(parents=True, exist_ok=True)
    catalogue, embeddings = read_catalogue(root)
    delivered = delivered_hours(root, catalogue)
    clicks = load_clicks(lake.validated_dir(root), None, None,
                         columns=[C.USER_ID, C.CLICK_ARTICLE_ID, C.CLICK_TIMESTAMP])
    hours = fit_hours(snapshots, int(params["refit_hours"]))
    fitted_now = {model_dir(out, h).name for h in hours}
    for stale in out.glob(f"{C.HOUR}=*"):
        if stale.is_dir() and stale.name not in fitted_now:
            shutil.rmtree(stale)
    for stale in notes.glob(f"{C.HOUR}=*.json"):
        if stale.stem not in fitted_now:
            stale.unlink()
    ts = clicks[C.CLICK_TIMESTAMP].to_numpy()
    base = json.dumps({"params": {k: params[k] for k in sorted(params)}, "epoch_ms": int(epoch_ms),
                       "trend_half_life_hours": float(trend_half_life_hours), "code": _code_digest(),
                       "embeddings": _digest(np.asarray(embeddings))}, sort_keys=True, default=str)
    warm = bool(params.get("warm_start"))
    on_cluster = client is not None and not warm
    metas, reused, pending, model, key = {}, set(), {}, None, ""
    for hour in hours:
        init = model if warm else None
        key = _digest(np.frombuffer((base + (key if init is not None else "")).encode(), dtype=np.uint8),
                      clicks[ts < hour_start_ms(hour, epoch_ms)], known_at(catalogue, delivered, hour))
        where, note = model_dir(out, hour), notes / f"{model_dir(out, hour).name}.json"
        try:
            noted = json.loads(note.read_text())
            kept = noted["inputs"] == key and noted["model"] == _model_digest(where)
        except (OSError, ValueError, KeyError):
            kept = False
        if kept:
            reused.add(hour)
            model = LearnedModel.load(where)
            metas[hour] = model.meta
            continue
        note.unlink(missing_ok=True)  # a fit that fails leaves no note claiming the old model
        args = (str(root.resolve()), hour, params, int(epoch_ms), float(trend_half_life_hours))  # workers' cwd differs
        if on_cluster:
            pending[hour] = args, key
            continue
        model = _fit_at(clicks, *args, init=init, article_side=(catalogue, embeddings, delivered))
        metas[hour] = _save_fit(model, where, note, key)
    # The clicks to every worker once; the latest cutoff (the most clicks, the longest fit) first.
    shared = client.scatter(clicks, broadcast=True, hash=False) if pending else None
    futures = {hour: client.submit(_fit_at, shared, *pending[hour][0], pure=False)
               for hour in sorted(pending, reverse=True)}
    for hour, future in futures.items():
        where = model_dir(out, hour)
        metas[hour] = _save_fit(future.result(), where, notes / f"{where.name}.json", pending[hour][1])
    report = {}
    for hour in hours:
        meta = metas[hour]
        report[f"{C.HOUR}={hour:03d}"] = {"examples": meta["examples"], "final_loss": meta["losses"][-1],
                                          "warm_start": meta.get("warm_start_from_ms") is not None}
        print(f"{C.HOUR}={hour:03d}  {meta['examples']} examples  loss {meta['losses'][-1]:.4f}  "
              + ("kept: fitted from the same inputs before" if hour in reused else f"{meta['fit_seconds']:.1f} s"),
              flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    from pipelines.config import parse_step, step_parser
    from pipelines.split import read_snapshots

    parser = step_parser("learned", __doc__, data_root="data root with raw/ and validated/")
    parser.add_argument("--split", type=Path, required=True, help="snapshot file written by `newsrec split`")
    parser.add_argument("--out", type=Path, required=True, help="folder for hour=NNN/ models")
    args, config = parse_step(parser, argv)
    from pipelines.cluster import connect

    with connect(config["dask"]) as client:
        report = fit_daily(args.data_root, read_snapshots(args.split), args.out, config["learned"],
                           int(config["data"]["epoch_ms"]), float(config["candidates"]["trend_half_life_hours"]),
                           client=client)
    (args.out / "fits.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
