"""Synthetic Globo.com-format news dataset: seeded, deterministic, with structure worth learning.

The generative story, in the order the code follows it:

- Categories have Zipf-shaped sizes; each is split into sub-topics. Articles are either *fresh*
  (published continuously from a warm-up before hour 000 until the last hour) or *back catalogue*
  (published years earlier; a small evergreen part of it is still read).
- Embeddings are category centroid + sub-topic offset + article noise, squashed by tanh, so
  nearest neighbours share a sub-topic and then a category.
- Each article has a Pareto popularity; a fresh article's pull decays with age as
  exp(-(age/tau)^beta), which puts half the clicks on articles under ~11 h and 90% under ~20 h
  as in the real data.
- Users have Pareto-like activity (most come once, a few come hundreds of times), 1-3 favourite
  categories and a mostly stable device/OS/region. Sessions have 2+ clicks; the first click of a
  session and every "jump" picks a category (a favourite or the front page), the other clicks
  stay in the current article's sub-topic, so articles read together recur together.
- Clicks of hour N's file fall inside hour N except rare late outliers (up to two days later);
  session_start is rounded down to the second and lies a few minutes before the first click.

With `article_drops` (`--article-drops`), the articles published at or after hour 000 are written as hourly
article drops (`articles/articles_hour_NNN.csv` + `embeddings_hour_NNN.pickle`, hour N = the hour of
created_at_ts) instead of into the static files, which then hold only the articles published before hour
000 (the pickle keeps row i = article_id i, with zero rows for the ids delivered later). Every draw is the
same either way: the union of the static files and the drops is the catalogue written without them.

Every random draw comes from one SeedSequence, so the same seed writes the same bytes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pickle
import shutil
import sys
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines import columns as C
from pipelines.config import parse_step, step_parser
from pipelines.errors import InputError
from pipelines.fileio import atomic_write

DRIFT_KINDS = ("context", "category")

# Context value mixes, read off the real hour file (318 rows) and the public EDA of the full
# dataset. Keys are the integer codes the real file uses.
ENVIRONMENT = {4: 0.965, 2: 0.025, 1: 0.010}
DEVICE_GROUP = {1: 0.48, 3: 0.42, 4: 0.08, 2: 0.015, 5: 0.005}
# OS depends on the device group (in the real file device 1 pairs with 17/12, device 3 with 2/20).
OS_BY_DEVICE = {
    1: {17: 0.84, 12: 0.10, 13: 0.03, 19: 0.03},
    2: {2: 0.70, 20: 0.30},
    3: {2: 0.55, 20: 0.40, 3: 0.03, 5: 0.02},
    4: {20: 0.55, 2: 0.45},
    5: {7: 1.0},
}
COUNTRY = {1: 0.965, 11: 0.010, 10: 0.006, 7: 0.005, 8: 0.004, 5: 0.003, 2: 0.002, 3: 0.002, 4: 0.001,
           6: 0.001, 9: 0.001}
REGION = {25: 0.30, 21: 0.16, 20: 0.06, 8: 0.055, 24: 0.045, 16: 0.04, 12: 0.035, 13: 0.03, 19: 0.03,
          17: 0.025, 9: 0.025, 5: 0.025, 6: 0.022, 28: 0.02, 18: 0.015, 26: 0.015, 7: 0.012, 4: 0.012,
          15: 0.012, 11: 0.012, 10: 0.012, 14: 0.01, 22: 0.008, 23: 0.008, 27: 0.006, 3: 0.005, 2: 0.004,
          1: 0.004}
REFERRER = {1: 0.57, 2: 0.32, 7: 0.05, 5: 0.03, 6: 0.02, 4: 0.006, 3: 0.004}
# After a context drift: mobile takes over and social/search referrals jump.
DRIFT_DEVICE_GROUP = {1: 0.80, 3: 0.12, 4: 0.06, 2: 0.015, 5: 0.005}
DRIFT_REFERRER = {1: 0.25, 2: 0.58, 7: 0.10, 5: 0.04, 6: 0.02, 4: 0.006, 3: 0.004}


@dataclass(frozen=True)
class Profile:
    """Sizes of one dataset profile and the behaviour knobs shared by all (params.yaml `synth`)."""

    hours: int
    articles: int
    categories: int
    users: int
    sessions: int
    fresh_per_hour: float
    warmup_hours: int
    evergreen_share: float
    back_catalogue_click_share: float
    subtopic_size: int
    popularity_alpha: float
    freshness_tau_h: float
    freshness_beta: float
    max_age_h: int
    category_zipf: float
    user_activity_sigma: float
    session_size_exponent: float
    max_session_size: int
    p_jump: float
    p_favourite: float
    favourite_boost: float
    p_second_device: float
    gap_30s_share: float
    lead_median_s: float
    late_session_share: float
    drift_context_strength: float
    drift_surge_share: float

    @classmethod
    def from_params(cls, section: dict[str, Any], name: str) -> Profile:
        """Merge the shared knobs of the `synth` section with the sizes of profile `name`."""
        profiles = section.get("profiles", {})
        if name not in profiles:
            raise InputError(f"unknown synth profile '{name}' (params.yaml has: {', '.join(profiles) or 'none'})")
        known = {f.name for f in fields(cls)}
        merged = {k: v for k, v in section.get("knobs", {}).items() if k in known}
        merged.update(profiles[name])
        unknown, missing = set(merged) - known, known - set(merged)
        if unknown or missing:
            raise InputError(f"synth settings for profile '{name}': unknown {sorted(unknown)}, missing {sorted(missing)}")
        return cls(**merged)


def _pick(rng: np.random.Generator, dist: dict[int, float], size: int) -> np.ndarray:
    keys = np.fromiter(dist.keys(), dtype=np.int64)
    p = np.fromiter(dist.values(), dtype=np.float64)
    return keys[rng.choice(len(keys), size=size, p=p / p.sum())]


def _os_for(rng: np.random.Generator, device: np.ndarray) -> np.ndarray:
    out = np.empty_like(device)
    for dev, dist in OS_BY_DEVICE.items():
        m = device == dev
        if m.any():
            out[m] = _pick(rng, dist, int(m.sum()))
    return out


def _diurnal(hours: np.ndarray) -> np.ndarray:
    """Relative volume by hour of day (hour 000 = local midnight): a night trough at ~30% of the
    evening peak, gentle enough that a normal hour never looks like a volume spike."""
    hod = np.asarray(hours) % 24
    return 0.3 + 0.7 * np.exp(-(((hod - 15.0) / 5.5) ** 2))


def _pareto(rng: np.random.Generator, alpha: float, size: int) -> np.ndarray:
    return (1.0 - rng.random(size)) ** (-1.0 / alpha)


# --------------------------------------------------------------------------------------------- articles


@dataclass
class Articles:
    category: np.ndarray  # int64 [n]
    subtopic: np.ndarray  # int64 [n], unique across categories
    created_at: np.ndarray  # int64 ms
    words: np.ndarray
    popularity: np.ndarray  # float64; 0 for back catalogue that nobody reads any more
    fresh: np.ndarray  # bool
    category_weight: np.ndarray  # float64 [n_categories], share of fresh production


def make_articles(rng: np.random.Generator, p: Profile, total_hours: int, epoch_ms: int) -> Articles:
    """Catalogue metadata in article-id order (ids grouped by category, as in the real file)."""
    n, k = p.articles, p.categories
    if n < k:
        raise InputError(f"profile has fewer articles ({n}) than categories ({k})")
    cat_w = np.arange(1, k + 1, dtype=np.float64) ** -p.category_zipf
    cat_w = cat_w[rng.permutation(k)]  # category ids carry no rank
    cat_w /= cat_w.sum()

    span_h = p.warmup_hours + total_hours
    n_fresh = min(round(p.fresh_per_hour * span_h), n - k)
    n_back = n - n_fresh
    # Every category owns at least one article; the rest follow the Zipf weights.
    category = np.concatenate([np.arange(k), rng.choice(k, size=n - k, p=cat_w)])
    rng.shuffle(category)
    fresh = np.zeros(n, dtype=bool)
    fresh[rng.choice(n, size=n_fresh, replace=False)] = True

    # Fresh articles: publication hour follows the daily rhythm, then a uniform second inside it.
    hour_grid = np.arange(-p.warmup_hours, total_hours)
    w = _diurnal(hour_grid)
    pub_hour = hour_grid[rng.choice(len(hour_grid), size=n_fresh, p=w / w.sum())]
    created = np.empty(n, dtype=np.int64)
    created[fresh] = epoch_ms + pub_hour * C.HOUR_MS + rng.integers(0, 3600, size=n_fresh) * 1000
    # Back catalogue: up to ~6 years old.
    age_s = rng.integers(3 * 86400, 6 * 365 * 86400, size=n_back)
    created[~fresh] = epoch_ms - (p.warmup_hours * 3600 + age_s) * 1000

    popularity = _pareto(rng, p.popularity_alpha, n)
    evergreen = ~fresh & (rng.random(n) < p.evergreen_share)
    popularity[~fresh & ~evergreen] = 0.0

    # Sub-topics: a category of m fresh articles gets ~m/subtopic_size of them, Zipf-sized.
    fresh_per_cat = np.bincount(category[fresh], minlength=k)
    n_sub = np.clip(np.ceil(fresh_per_cat / p.subtopic_size), 1, 200).astype(np.int64)
    sub_offset = np.concatenate([[0], np.cumsum(n_sub)[:-1]])
    u = rng.random(n)
    # Inverse-CDF of a Zipf(1) over n_sub[c] ranks, vectorised via the harmonic approximation.
    local = np.floor(np.exp(u * np.log(n_sub[category] + 1.0)) - 1.0).astype(np.int64)
    local = np.minimum(local, n_sub[category] - 1)
    subtopic = sub_offset[category] + local

    words = np.maximum(20, rng.lognormal(np.log(180.0), 0.45, size=n)).astype(np.int64)

    # Real article ids are grouped by category.
    order = np.lexsort((rng.random(n), category))
    return Articles(
        category=category[order].astype(np.int64),
        subtopic=subtopic[order].astype(np.int64),
        created_at=created[order],
        words=words[order],
        popularity=popularity[order],
        fresh=fresh[order],
        category_weight=cat_w,
    )


def make_embeddings(rng: np.random.Generator, arts: Articles, chunk: int = 32768) -> np.ndarray:
    """float32 [n, 250]: category centroid + sub-topic offset + noise, tanh-squashed into (-1, 1).

    Filled in chunks so the globo profile never holds more than the final 364 MB matrix plus one chunk.
    """
    d = C.EMBEDDING_DIM
    n_cat = int(arts.category.max()) + 1
    n_sub = int(arts.subtopic.max()) + 1
    cat_c = rng.standard_normal((n_cat, d), dtype=np.float32)
    sub_c = 0.7 * rng.standard_normal((n_sub, d), dtype=np.float32)
    n = len(arts.category)
    out = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        x = rng.standard_normal((e - s, d), dtype=np.float32)
        x *= 0.6
        x += cat_c[arts.category[s:e]]
        x += sub_c[arts.subtopic[s:e]]
        x *= 0.5
        np.tanh(x, out=out[s:e])
    return out


# --------------------------------------------------------------------------------------------- sessions


@dataclass
class Sessions:
    user: np.ndarray  # int64 [s], relabelled in order of first appearance
    hour: np.ndarray  # int64 [s]
    size: np.ndarray  # int64 [s]
    device: np.ndarray
    os: np.ndarray
    environment: np.ndarray
    country: np.ndarray
    region: np.ndarray
    referrer: np.ndarray
    fav_cat: np.ndarray  # int64 [s, 3]: the session's user's favourite categories
    fav_cum: np.ndarray  # float64 [s, 3]: their cumulative weights


def favourite_weights(rng: np.random.Generator, size: int) -> np.ndarray:
    """float64 [size, 3]: the weights of a user's three favourite slots, drawn from the prior `make_sessions`
    gives every user: one to three favourites used (the rest weigh 0), Dirichlet weights, each row summing to 1."""
    n_fav = rng.choice([1, 2, 3], size=size, p=[0.45, 0.35, 0.20])
    fw = rng.dirichlet([1.5, 1.0, 0.7], size=size)
    fw[np.arange(3)[None, :] >= n_fav[:, None]] = 0.0
    return fw / fw.sum(axis=1, keepdims=True)


def make_sessions(rng: np.random.Generator, p: Profile, arts: Articles, total_hours: int, hours: int,
                  drift_from: int | None, drift_kind: str | None) -> Sessions:
    """Users with heavy-tailed activity, their sessions placed in hours, and each session's context."""
    scale = total_hours / p.hours
    n_users = max(1, round(p.users * scale))
    n_sess = max(n_users, round(p.sessions * scale))

    # Every user comes at least once; the remaining sessions go by a lognormal appetite.
    appetite = rng.lognormal(0.0, p.user_activity_sigma, size=n_users)
    per_user = 1 + rng.multinomial(n_sess - n_users, appetite / appetite.sum())
    user = np.repeat(np.arange(n_users), per_user)
    hw = _diurnal(np.arange(total_hours))
    hour = rng.choice(total_hours, size=n_sess, p=hw / hw.sum())

    sizes = np.arange(2, p.max_session_size + 1)
    sp = sizes.astype(np.float64) ** -p.session_size_exponent
    size = sizes[rng.choice(len(sizes), size=n_sess, p=sp / sp.sum())]

    # Per-user stable context, with a second device some users switch to now and then.
    env_u = _pick(rng, ENVIRONMENT, n_users)
    dev_u = _pick(rng, DEVICE_GROUP, n_users)
    os_u = _os_for(rng, dev_u)
    dev2_u = _pick(rng, DEVICE_GROUP, n_users)
    os2_u = _os_for(rng, dev2_u)
    has_second = rng.random(n_users) < p.p_second_device
    country_u = _pick(rng, COUNTRY, n_users)
    region_u = _pick(rng, REGION, n_users)

    # Favourite categories, drawn by how much each category publishes.
    fav = rng.choice(p.categories, size=(n_users, 3), p=arts.category_weight)
    fav_cum = np.cumsum(favourite_weights(rng, n_users), axis=1)

    second = has_second[user] & (rng.random(n_sess) < 0.3)
    device = np.where(second, dev2_u[user], dev_u[user])
    os_ = np.where(second, os2_u[user], os_u[user])
    referrer = _pick(rng, REFERRER, n_sess)

    if drift_kind == "context" and drift_from is not None:
        late = (hour >= drift_from) & (rng.random(n_sess) < p.drift_context_strength)
        device[late] = _pick(rng, DRIFT_DEVICE_GROUP, int(late.sum()))
        os_[late] = _os_for(rng, device[late])
        after = hour >= drift_from
        referrer[after] = _pick(rng, DRIFT_REFERRER, int(after.sum()))

    keep = hour < hours
    s = Sessions(
        user=user[keep], hour=hour[keep], size=size[keep], device=device[keep], os=os_[keep],
        environment=env_u[user][keep], country=country_u[user][keep], region=region_u[user][keep],
        referrer=referrer[keep], fav_cat=fav[user][keep], fav_cum=fav_cum[user][keep],
    )
    return s


# --------------------------------------------------------------------------------------------- clicks


def _segment_sample(cw: np.ndarray, lo: np.ndarray, hi: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Weighted draw inside index ranges [lo, hi) of one cumulative-weight array; -1 where the
    range has no weight."""
    base = np.where(lo > 0, cw[np.maximum(lo - 1, 0)], 0.0)
    top = np.where(hi > 0, cw[np.maximum(hi - 1, 0)], 0.0)
    ok = (hi > lo) & (top > base)
    idx = np.searchsorted(cw, base + u * (top - base), side="right")
    idx = np.clip(idx, lo, np.maximum(hi - 1, lo))
    return np.where(ok, idx, -1)


class _Offer:
    """The articles readable in one hour with their pull, ordered by (category, sub-topic) so that a
    category or a sub-topic is an index range of one cumulative-weight array."""

    def __init__(self, articles: np.ndarray, weight: np.ndarray, key_all: np.ndarray, sub_stride: int):
        order = np.argsort(key_all[articles], kind="stable")
        self.articles, self.weight = articles[order], weight[order]
        self.keys = key_all[self.articles]
        self.sub_stride = sub_stride
        self.cw = np.cumsum(self.weight)
        self.total = float(self.cw[-1]) if len(self.cw) else 0.0

    def anywhere(self, u: np.ndarray) -> np.ndarray:
        return np.minimum(np.searchsorted(self.cw, u * self.total, side="right"), len(self.cw) - 1)

    def in_range(self, key_lo: np.ndarray, key_hi: np.ndarray, u: np.ndarray) -> np.ndarray:
        """A draw among keys in [key_lo, key_hi); -1 where that range has no weight."""
        lo = np.searchsorted(self.keys, key_lo, side="left")
        hi = np.searchsorted(self.keys, key_hi, side="left")
        return _segment_sample(self.cw, lo, hi, u)

    def in_category(self, cat: np.ndarray, u: np.ndarray) -> np.ndarray:
        """A draw inside each category, or anywhere when the category has nothing on offer."""
        idx = self.in_range(cat * self.sub_stride, (cat + 1) * self.sub_stride, u)
        return np.where(idx >= 0, idx, self.anywhere(u))

    def favourite_accept(self, p: Profile) -> np.ndarray:
        """Per category, the chance a jump towards it as a favourite is taken: a favourite category pulls in
        proportion to what it has on offer now, so a reader of a category with nothing fresh reads the
        front page instead of digging up old articles."""
        mass = np.bincount(self.keys // self.sub_stride, weights=self.weight, minlength=p.categories) / self.total
        pull = p.favourite_boost * mass
        return pull / (1.0 + pull)


class _Offers:
    """Each hour's `_Offer`: the fresh articles published in the `max_age_h` before the hour (each pulling by
    its popularity and its age at the middle of the hour) and the evergreen back catalogue, scaled to
    `back_catalogue_click_share` of the clicks."""

    def __init__(self, p: Profile, arts: Articles, epoch_ms: int):
        self.p, self.arts, self.epoch_ms = p, arts, epoch_ms
        fresh_ids = np.flatnonzero(arts.fresh)
        self.fresh_ids = fresh_ids[np.argsort(arts.created_at[fresh_ids], kind="stable")]
        self.fresh_created = arts.created_at[self.fresh_ids]
        self.evergreen = np.flatnonzero(~arts.fresh & (arts.popularity > 0))
        # Key that orders the active set by category, then sub-topic, so both are index ranges.
        self.sub_stride = int(arts.subtopic.max()) + 1
        self.key_all = arts.category * self.sub_stride + arts.subtopic

    def at(self, h: int) -> _Offer:
        p, arts = self.p, self.arts
        start = self.epoch_ms + h * C.HOUR_MS
        lo_i = np.searchsorted(self.fresh_created, start - p.max_age_h * C.HOUR_MS, side="left")
        hi_i = np.searchsorted(self.fresh_created, start, side="left")  # published before the hour starts
        fresh_now = self.fresh_ids[lo_i:hi_i]
        age_h = (start + C.HOUR_MS / 2 - arts.created_at[fresh_now]) / C.HOUR_MS
        w_fresh = arts.popularity[fresh_now] * np.exp(-((age_h / p.freshness_tau_h) ** p.freshness_beta))
        w_ever = arts.popularity[self.evergreen]
        share = p.back_catalogue_click_share
        if w_ever.sum() > 0 and w_fresh.sum() > 0:
            w_ever = w_ever * (share / (1 - share)) * w_fresh.sum() / w_ever.sum()
        return _Offer(np.concatenate([fresh_now, self.evergreen]), np.concatenate([w_fresh, w_ever]), self.key_all,
                      self.sub_stride)


def _choose_articles(rng: np.random.Generator, p: Profile, arts: Articles, sess: Sessions,
                     click_sess: np.ndarray, click_pos: np.ndarray, epoch_ms: int,
                     surge_cat: int | None, surge_from: int | None) -> np.ndarray:
    """The article of every click, hour by hour (clicks must be grouped by hour, sessions contiguous)."""
    n_clicks = len(click_sess)
    article = np.full(n_clicks, -1, dtype=np.int64)
    click_hour = sess.hour[click_sess]
    offers = _Offers(p, arts, epoch_ms)
    sub_stride = offers.sub_stride

    jump = (click_pos == 0) | (rng.random(n_clicks) < p.p_jump)
    favourite = rng.random(n_clicks) < p.p_favourite
    u_fav = rng.random(n_clicks)
    which = (u_fav[:, None] > sess.fav_cum[click_sess]).sum(axis=1)
    target_cat = sess.fav_cat[click_sess, np.minimum(which, 2)]
    # Drawn even without a surge, so a drifted dataset equals the plain one before the drift hour.
    u_surge = rng.random(n_clicks)
    surge = np.zeros(n_clicks, dtype=bool)
    if surge_cat is not None:
        surge = (click_hour >= surge_from) & (u_surge < p.drift_surge_share)
        target_cat = np.where(surge, surge_cat, target_cat)
        favourite |= surge
    u_accept = rng.random(n_clicks)
    u1, u2, u3 = rng.random(n_clicks), rng.random(n_clicks), rng.random((3, n_clicks))

    bounds = np.searchsorted(click_hour, np.arange(int(click_hour.max(initial=-1)) + 2))
    for h in range(len(bounds) - 1):
        a, b = bounds[h], bounds[h + 1]
        if a == b:
            continue
        offer = offers.at(h)
        if offer.total <= 0:
            raise InputError(f"hour {h}: no article is readable (catalogue too small for the profile)")
        keys = offer.keys

        sl = slice(a, b)
        jmp, fav, cat = jump[sl], favourite[sl], target_cat[sl]
        fav = fav & ((u_accept[sl] < offer.favourite_accept(p)[cat]) | surge[sl])
        pick = np.empty(b - a, dtype=np.int64)
        fj = jmp & fav
        gj = jmp & ~fav
        pick[fj] = offer.in_category(cat[fj], u1[sl][fj])
        pick[gj] = offer.anywhere(u1[sl][gj])
        # The other clicks follow the sub-topic of the session's latest jump.
        pos = np.arange(b - a)
        anchor = np.maximum.accumulate(np.where(jmp, pos, 0))
        cont = ~jmp
        akey = keys[pick[anchor[cont]]]
        idx = offer.in_range(akey, akey + 1, u2[sl][cont])
        pick[cont] = np.where(idx >= 0, idx, offer.in_category(akey // sub_stride, u2[sl][cont]))

        # Re-read an article inside one session rarely happens in the real data: redraw repeats,
        # first within the category, then anywhere.
        sess_local = click_sess[sl]
        for r in range(3):
            art = offer.articles[pick]
            dup = pd.Series(sess_local * len(arts.category) + art).duplicated().to_numpy()
            if not dup.any():
                break
            u = u3[r, a:b][dup]
            pick[dup] = offer.in_category(keys[pick[dup]] // sub_stride, u) if r < 2 else offer.anywhere(u)
        article[sl] = offer.articles[pick]
    return article


def make_clicks(rng: np.random.Generator, p: Profile, arts: Articles, sess: Sessions, epoch_ms: int,
                surge_cat: int | None, surge_from: int | None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every click of the kept sessions as contract columns (int64 arrays) and each click's hour file,
    sorted by hour file."""
    sess, click_sess, click_pos, ts, start, sid, user = _placed_sessions(rng, p, sess, epoch_ms)
    article = _choose_articles(rng, p, arts, sess, click_sess, click_pos, epoch_ms, surge_cat, surge_from)

    # Rows of a file ordered like the real ones: by session start, a session's clicks together.
    order = np.lexsort((ts, sid[click_sess], start[click_sess], sess.hour[click_sess]))
    cs = click_sess[order]
    cols = {
        C.USER_ID: user[cs],
        C.SESSION_ID: sid[cs],
        C.SESSION_START: start[cs],
        C.SESSION_SIZE: sess.size[cs],
        C.CLICK_ARTICLE_ID: article[order],
        C.CLICK_TIMESTAMP: ts[order],
        C.CLICK_ENVIRONMENT: sess.environment[cs],
        C.CLICK_DEVICE_GROUP: sess.device[cs],
        C.CLICK_OS: sess.os[cs],
        C.CLICK_COUNTRY: sess.country[cs],
        C.CLICK_REGION: sess.region[cs],
        C.CLICK_REFERRER_TYPE: sess.referrer[cs],
    }
    return {k: v.astype(np.int64, copy=False) for k, v in cols.items()}, sess.hour[cs]


def _placed_sessions(rng: np.random.Generator, p: Profile, sess: Sessions, epoch_ms: int) -> tuple:
    """Sessions sorted by hour, each click's session and position in it, click times, session starts and ids,
    and each session's user id as the files write it (in order of first appearance)."""
    o = np.argsort(sess.hour, kind="stable")
    sess = Sessions(**{f.name: getattr(sess, f.name)[o] for f in fields(Sessions)})
    n_sess = len(sess.hour)
    click_sess = np.repeat(np.arange(n_sess), sess.size)
    first = np.concatenate([[0], np.cumsum(sess.size)[:-1]])
    click_pos = np.arange(len(click_sess)) - first[click_sess]
    n_clicks = len(click_sess)

    # Gaps between clicks: the real file is full of exact 30 s steps, the rest are reading times.
    gap = np.where(rng.random(n_clicks) < p.gap_30s_share, 30_000,
                   np.minimum(rng.lognormal(np.log(90_000), 1.0, size=n_clicks), 900_000)).astype(np.int64)
    gap[click_pos == 0] = 0
    offset = np.cumsum(gap)
    offset -= offset[first][click_sess]
    span = offset[first + sess.size - 1]
    room = np.maximum(C.HOUR_MS - span - 1, 0)
    t0 = epoch_ms + sess.hour * C.HOUR_MS + (rng.random(n_sess) * room).astype(np.int64)
    ts = t0[click_sess] + offset
    # Rare late outliers: a session's last click arrives hours to two days later.
    late = rng.random(n_sess) < p.late_session_share
    last = first + sess.size - 1
    ts[last[late]] += rng.integers(C.HOUR_MS, 48 * C.HOUR_MS, size=int(late.sum()))
    lead = np.minimum(rng.lognormal(np.log(p.lead_median_s * 1000), 0.8, size=n_sess), 1_800_000)
    start = ((t0 - lead.astype(np.int64)) // 1000) * 1000

    # Real ids: start second * 1e6 + a 6-digit tail; redraw the tails that collide.
    tail = rng.integers(100_000, 1_000_000, size=n_sess)
    sid = start // 1000 * 1_000_000 + tail
    for _ in range(20):
        dup = pd.Series(sid).duplicated().to_numpy()
        if not dup.any():
            break
        sid[dup] = start[dup] // 1000 * 1_000_000 + rng.integers(100_000, 1_000_000, size=int(dup.sum()))
    else:
        raise RuntimeError("could not make session ids unique")

    # User ids in order of first appearance, as in the real files.
    first_seen = pd.DataFrame({"u": sess.user, "t": start}).groupby("u")["t"].min()
    rank = first_seen.rank(method="first").astype(np.int64) - 1
    user = rank.reindex(sess.user).to_numpy()
    return sess, click_sess, click_pos, ts, start, sid, user


# --------------------------------------------------------------------------------------------- ground truth


@dataclass
class GroundTruth:
    """What the generator knew and no model sees: every article's popularity and sub-topic, every user's
    favourite categories (by the user ids the files hold). `odds` turns it into each article's expected clicks
    by a user in an hour, so a benchmark can rank by it: the best any ranking of this world could do."""

    profile: Profile
    articles: Articles
    epoch_ms: int
    fav_cat: np.ndarray  # int64 [users, slots]: 3 slots in the generator, more for a mixture of favourites
    fav_weight: np.ndarray  # float64 [users, slots], each row sums to 1 (0 for a user's unused slots)

    def odds(self, hour: int, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the articles readable in `hour`, float64 [len(users), len(articles)]): each one's expected clicks by
        each user's session started in that hour, following the generative story: a jump goes to a favourite
        category (taken with the category's pull) or the front page, by pull; every other click stays in the
        sub-topic of the session's latest jump, by pull. (Re-reads are redrawn in the generator and counted
        here: at news click rates they are rare.)"""
        p, arts = self.profile, self.articles
        offer = _Offers(p, arts, self.epoch_ms).at(hour)
        w = offer.weight / offer.total if offer.total > 0 else offer.weight
        cat = offer.keys // offer.sub_stride
        cat_mass = np.bincount(cat, weights=w, minlength=p.categories)
        fav = self.fav_weight[users] * p.p_favourite * offer.favourite_accept(p)[self.fav_cat[users]]
        to_cat = np.zeros((len(users), p.categories))
        np.add.at(to_cat, (np.repeat(np.arange(len(users)), self.fav_cat.shape[1]), self.fav_cat[users].ravel()), fav.ravel())
        # The offer is ordered by (category, sub-topic): each sub-topic is one run of equal keys.
        new_sub = np.diff(offer.keys, prepend=-1) != 0
        bounds, sub = np.flatnonzero(new_sub), np.cumsum(new_sub) - 1
        sub_mass = np.add.reduceat(w, bounds)
        with np.errstate(divide="ignore", invalid="ignore"):
            in_cat = np.where(cat_mass[cat] > 0, w / cat_mass[cat], 0.0)
            in_sub = np.where(sub_mass[sub] > 0, w / sub_mass[sub], 0.0)
        jump = to_cat[:, cat] * in_cat + (1.0 - fav.sum(axis=1))[:, None] * w
        stay = np.add.reduceat(jump, bounds, axis=1)[:, sub] * in_sub
        sizes = np.arange(2, p.max_session_size + 1, dtype=np.float64)
        share = sizes ** -p.session_size_exponent
        jumps = float((share * (1 + p.p_jump * (sizes - 1))).sum())
        stays = float((share * (1 - p.p_jump) * (sizes - 1)).sum())
        return offer.articles, jump * jumps / share.sum() + stay * stays / share.sum()

    def with_favourites(self, fav_cat: np.ndarray, fav_weight: np.ndarray) -> GroundTruth:
        """The same world with other favourites (e.g. estimated from each user's reads)."""
        return dataclasses.replace(self, fav_cat=fav_cat, fav_weight=fav_weight)


def ground_truth(profile: Profile, seed: int, epoch_ms: int, hours: int | None = None) -> GroundTruth:
    """The world `synthesize(out, profile, seed, epoch_ms, hours)` wrote, drawn again from the same seed (no
    drift: a drifted dataset equals the plain one only before its drift hour)."""
    hours = profile.hours if hours is None else int(hours)
    total_hours = max(hours, profile.hours)
    r_art, _, r_sess, r_click, _ = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5))
    arts = make_articles(r_art, profile, total_hours, epoch_ms)
    sess = make_sessions(r_sess, profile, arts, total_hours, hours, None, None)
    sess, *_, user = _placed_sessions(r_click, profile, sess, epoch_ms)
    n_users = int(user.max()) + 1 if len(user) else 0
    fav_cat = np.zeros((n_users, 3), dtype=np.int64)
    fav_cum = np.zeros((n_users, 3))
    fav_cat[user], fav_cum[user] = sess.fav_cat, sess.fav_cum
    fav_weight = np.diff(fav_cum, axis=1, prepend=0.0)
    return GroundTruth(profile, arts, epoch_ms, fav_cat, fav_weight)


# --------------------------------------------------------------------------------------------- writing


def _write_int_csv(cols: dict[str, np.ndarray], path: Path) -> None:
    """An all-integer CSV, byte-identical to pandas' to_csv(index=False) but ~10x faster (pyarrow)."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    def write(t: Path) -> None:
        with t.open("wb") as fh:
            fh.write((",".join(cols) + "\n").encode())
            table = pa.table({k: np.asarray(v, dtype=np.int64) for k, v in cols.items()})
            pcsv.write_csv(table, fh, pcsv.WriteOptions(include_header=False, quoting_style="none"))

    atomic_write(path, write)


def _write_pickle(array: np.ndarray, path: Path) -> None:
    def write(t: Path) -> None:
        with t.open("wb") as fh:
            # Protocol 5 streams the array's buffer instead of copying it (364 MB at globo scale).
            pickle.dump(array, fh, protocol=5)

    atomic_write(path, write)


def _write_zip(clicks_dir: Path, zip_path: Path) -> None:
    """clicks.zip as Kaggle ships it: clicks/clicks_hour_NNN.csv, with fixed timestamps for stable bytes."""

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for f in sorted(clicks_dir.glob("clicks_hour_*.csv")):
                info = zipfile.ZipInfo(f"{C.CLICKS_DIR}/{f.name}", date_time=(2017, 10, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, f.read_bytes())

    atomic_write(zip_path, write)


def _write_catalogue(out: Path, arts: Articles, emb: np.ndarray, epoch_ms: int, article_drops: bool) -> int:
    """The static metadata and embeddings, and with `article_drops` the hourly article drops; the drop count.

    Stale drops of an earlier run into the same folder are removed either way: they would repeat ids.
    """
    cols = {
        C.ARTICLE_ID: np.arange(len(arts.category), dtype=np.int64),
        C.CATEGORY_ID: arts.category,
        C.CREATED_AT_TS: arts.created_at,
        C.PUBLISHER_ID: np.zeros(len(arts.category), dtype=np.int64),
        C.WORDS_COUNT: arts.words,
    }
    drops_dir = out / C.ARTICLES_DIR
    if drops_dir.exists():
        for stale in drops_dir.iterdir():
            if C.parse_hour_file_name(stale.name) is not None:
                stale.unlink()
        if not any(drops_dir.iterdir()):
            drops_dir.rmdir()
    if not article_drops:
        _write_int_csv(cols, out / C.METADATA_FILE)
        _write_pickle(emb, out / C.EMBEDDINGS_FILE)
        return 0

    # Floor division keeps the hours of articles published before hour 000 negative: those stay static.
    pub_hour = (arts.created_at - epoch_ms) // C.HOUR_MS
    static = pub_hour < 0
    _write_int_csv({k: v[static] for k, v in cols.items()}, out / C.METADATA_FILE)
    n_static = int(np.flatnonzero(static).max()) + 1 if static.any() else 0
    static_emb = emb[:n_static].copy()
    static_emb[~static[:n_static]] = 0.0  # ids published later: not delivered yet
    _write_pickle(static_emb, out / C.EMBEDDINGS_FILE)
    del static_emb
    hours = np.unique(pub_hour[~static])
    for h in hours:
        ids = np.flatnonzero(pub_hour == h)  # id order, as in the static file
        _write_pickle(np.ascontiguousarray(emb[ids]), drops_dir / C.hour_file_name(int(h), C.EMBEDDINGS_HOUR))
        _write_int_csv({k: v[ids] for k, v in cols.items()}, drops_dir / C.hour_file_name(int(h), C.ARTICLES_DIR))
    return len(hours)


def parse_bad(specs: Iterable[str]) -> list[tuple[int, str]]:
    """`HOUR:KIND` strings -> [(hour, kind)]."""
    out = []
    for s in specs:
        hour, sep, kind = s.partition(":")
        if not sep or not hour.strip().isdigit() or not kind.strip():
            raise InputError(f"--bad expects HOUR:KIND, e.g. 5:duplicated_rows; got '{s}'")
        out.append((int(hour), kind.strip()))
    return out


def synthesize(out_dir: str | Path, profile: Profile, seed: int, epoch_ms: int, hours: int | None = None,
               zip_clicks: bool = False, drift_from: int | None = None, drift_kind: str | None = None,
               bad: Iterable[tuple[int, str]] = (), article_drops: bool = False) -> dict[str, Any]:
    """Write a Globo-format dataset into `out_dir` and return a summary of what was written.

    `hours` cuts (or extends) the profile's hours; the population and article rates stay the
    profile's, so `--hours 100` on globo is the first 100 hours of the same world (its articles of later
    hours are still written, as drops of those hours with `article_drops`). `article_drops`: see the
    module docstring.
    """
    hours = profile.hours if hours is None else int(hours)
    if hours < 1:
        raise InputError(f"hours must be >= 1, got {hours}")
    if (drift_from is None) != (drift_kind is None):
        raise InputError("--drift-from and --drift-kind go together")
    if drift_kind is not None and drift_kind not in DRIFT_KINDS:
        raise InputError(f"unknown drift kind '{drift_kind}' (known: {', '.join(DRIFT_KINDS)})")
    if drift_from is not None and not 0 <= drift_from < hours:
        raise InputError(f"--drift-from {drift_from} is outside hours 0..{hours - 1}")
    bad = list(bad)
    for h, _ in bad:
        if not 0 <= h < hours:
            raise InputError(f"--bad hour {h} is outside hours 0..{hours - 1}")
    out = Path(out_dir)
    total_hours = max(hours, profile.hours)

    ss = np.random.SeedSequence(seed)
    r_art, r_emb, r_sess, r_click, r_drift = (np.random.default_rng(s) for s in ss.spawn(5))
    arts = make_articles(r_art, profile, total_hours, epoch_ms)

    surge_cat = None
    if drift_kind == "category":
        # A mid-sized category (5th-15th by output) so the surge is a change, not a takeover of a leader.
        ranked = np.argsort(-arts.category_weight, kind="stable")
        surge_cat = int(ranked[min(len(ranked) - 1, int(r_drift.integers(4, 15)))])

    sess = make_sessions(r_sess, profile, arts, total_hours, hours, drift_from, drift_kind)
    clicks, click_hour = make_clicks(r_click, profile, arts, sess, epoch_ms, surge_cat, drift_from)
    # Users erased with `newsrec forget-user` (the register of the data root `out` belongs to) are not made
    # again when the dataset is regenerated. Sessions belong to one user, so other sessions stay whole.
    from pipelines.erasures import erased_users

    erased = erased_users(np.unique(clicks[C.USER_ID]), out.parent)
    if erased:
        keep = ~np.isin(clicks[C.USER_ID], erased)
        clicks, click_hour = {c: v[keep] for c, v in clicks.items()}, click_hour[keep]
    n_clicks = len(click_hour)
    n_sessions = len(sess.hour)  # session ids are unique by construction
    n_users = int(np.count_nonzero(np.bincount(clicks[C.USER_ID])))
    del sess

    out.mkdir(parents=True, exist_ok=True)
    clicks_dir = out / C.CLICKS_DIR
    if clicks_dir.exists():
        for stale in clicks_dir.glob("clicks_hour_*.csv"):
            stale.unlink()
    bounds = np.searchsorted(click_hour, np.arange(hours + 1))
    for h in range(hours):
        _write_int_csv({c: clicks[c][bounds[h]:bounds[h + 1]] for c in C.CLICK_COLUMNS},
                       clicks_dir / C.hour_file_name(h))
    del clicks, click_hour

    # Last, so the 364 MB globo matrix never coexists with the click arrays.
    emb = make_embeddings(r_emb, arts)
    n_drops = _write_catalogue(out, arts, emb, epoch_ms, article_drops)
    del emb

    if bad:
        try:
            from pipelines.baddrops import inject_bad_drop
        except ImportError as e:
            raise RuntimeError("--bad needs pipelines/baddrops.py (inject_bad_drop)") from e
        for h, kind in bad:
            inject_bad_drop(clicks_dir, h, kind, seed)

    if zip_clicks:
        _write_zip(clicks_dir, out / C.CLICKS_ZIP)
        shutil.rmtree(clicks_dir)

    return {
        "out": str(out),
        "seed": seed,
        "hours": hours,
        "articles": len(arts.category),
        "categories": int(profile.categories),
        "clicks": int(n_clicks),
        "sessions": int(n_sessions),
        "users": int(n_users),
        "drift": None if drift_kind is None else {"kind": drift_kind, "from_hour": drift_from,
                                                   **({"category": surge_cat} if surge_cat is not None else {})},
        "bad": [{"hour": h, "kind": k} for h, k in bad],
        "zip": zip_clicks,
        "article_drops": n_drops if article_drops else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = step_parser("synth", __doc__)
    ap.add_argument("--profile", help="dataset size, a profile of params synth.profiles (default: synth.profile)")
    ap.add_argument("--out", required=True, help="folder to write the Globo files into (e.g. data/raw)")
    ap.add_argument("--seed", type=int, help="random seed (default: params synth.seed)")
    ap.add_argument("--hours", type=int, help="number of hourly files (default: the profile's)")
    ap.add_argument("--zip", action="store_true", help="pack the hourly files into clicks.zip as Kaggle ships them")
    ap.add_argument("--drift-from", type=int, metavar="HOUR", help="inject drift from this hour on")
    ap.add_argument("--drift-kind", choices=DRIFT_KINDS, help="context: device/OS/referrer mix; category: one surges")
    ap.add_argument("--bad", nargs="+", default=[], metavar="HOUR:KIND",
                    help="turn these hours into bad drops (kinds: pipelines.baddrops.BAD_DROP_KINDS)")
    ap.add_argument("--epoch-ms", type=int, help="start of hour 000 in ms (default: params data.epoch_ms)")
    ap.add_argument("--article-drops", action=argparse.BooleanOptionalAction,
                    help="write articles published from hour 000 on as hourly article drops under articles/ "
                         "instead of into the static files (default: params synth.article_drops)")
    args, config = parse_step(ap, argv)
    cfg = config["synth"]
    args.profile = args.profile or cfg["profile"]
    if args.profile not in cfg.get("profiles", {}):
        ap.error(f"--profile {args.profile!r}: params synth.profiles has {sorted(cfg.get('profiles', {}))}")
    args.seed = int(cfg["seed"]) if args.seed is None else args.seed
    args.epoch_ms = int(config["data"]["epoch_ms"]) if args.epoch_ms is None else args.epoch_ms
    args.article_drops = bool(cfg["article_drops"]) if args.article_drops is None else args.article_drops
    profile = Profile.from_params(cfg, args.profile)
    summary = synthesize(args.out, profile, args.seed, args.epoch_ms, hours=args.hours, zip_clicks=args.zip,
                         drift_from=args.drift_from, drift_kind=args.drift_kind, bad=parse_bad(args.bad),
                         article_drops=args.article_drops)
    print(json.dumps({"profile": args.profile, **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
