"""What a candidate source is, and the one registry every other module reads its sources from.

A source is a `CandidateSource` subclass in its own module of this package, decorated with `@register`:
its name (the prefix of its `<name>_score` / `<name>_rank` columns), a label a reader is shown, the method
it appears as in the offline evaluation, and how it proposes articles. The candidate columns, the ranker's
features, the evaluation's baselines, the model signature and the labels of the API and the dashboard all
derive from `sources()`; params.yaml `candidates.per_source` and `fusion_weights` name sources from it.
Adding a source is one module here plus its params entries.

The registry is complete once first read: every module of this package is imported then, and a source
registered later is refused (the lists derived from it are module constants, so it would be missing there).

Also here: the ranked-list arrays and helpers every source builds its lists with.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import numpy as np

from pipelines.columns import rank_col, score_col
from pipelines.errors import InputError

if TYPE_CHECKING:
    from pipelines.candidates import CandidateIndex


# ---- ranked lists ---------------------------------------------------------------------------------
def block_rank(users: np.ndarray) -> np.ndarray:
    """0-based position of each row inside its run of equal consecutive `users` values."""
    if len(users) == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    run = np.cumsum(np.r_[True, users[1:] != users[:-1]]) - 1
    return np.arange(len(users)) - starts[run]


def sorted_positions(keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Position of each query value in the sorted `keys`, -1 where it is absent (a binary search each)."""
    if len(keys) == 0:
        return np.full(len(query), -1, dtype=np.intp)
    at = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    return np.where(keys[at] == query, at, -1)


def dense_users(*user_arrays: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """(the distinct user ids sorted, each array as positions in them). Codes keep the ids' order, so whatever
    is sorted by code is sorted by id; they keep the (user, article) pair key inside int64 for every user id
    (an API user id goes up to 2^53 - 1, far past 2^63 / the article bound)."""
    ids, inverse = np.unique(np.concatenate(user_arrays), return_inverse=True)
    return ids, np.split(inverse.astype(np.int64), np.cumsum([len(a) for a in user_arrays])[:-1])


class PairKeys:
    """(user, article) pairs as one int64, kept sorted, so a membership test is a binary search: no hash
    table to build per call, which cost one API request more than its whole search. Users are dense codes
    (dense_users), not ids."""

    def __init__(self, users: np.ndarray, articles: np.ndarray, article_bound: int):
        self.m = int(article_bound) + 1
        top = int(users.max()) if len(users) else 0
        if top >= (2**62) // self.m:
            raise InputError(
                f"user ids up to {top} with article ids up to {article_bound} overflow the pair key"
            )
        self.keys = np.unique(self.encode(users, articles))

    def encode(self, users: np.ndarray, articles: np.ndarray) -> np.ndarray:
        return users.astype(np.int64) * self.m + articles.astype(np.int64)

    def contains(self, users: np.ndarray, articles: np.ndarray) -> np.ndarray:
        return sorted_positions(self.keys, self.encode(users, articles)) >= 0


class Ranked(NamedTuple):
    """One source's lists as parallel arrays: `article[i]` is proposed to `user[i]` at 1-based `rank[i]`."""

    user: np.ndarray
    article: np.ndarray
    score: np.ndarray
    rank: np.ndarray

    @classmethod
    def concat(cls, parts: list[Ranked]) -> Ranked:
        if not parts:
            return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64), np.zeros(0, np.int64))
        return cls(*(np.concatenate(cols) for cols in zip(*parts, strict=True)))


def top_excluding(
    fetch: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray, np.ndarray]],
    users: np.ndarray,
    read: PairKeys,
    n: int,
    max_depth: int,
) -> Ranked:
    """Each user's top n unread items from a ranked source; `users` sorted ascending.

    `fetch(users, depth)` returns (user, article, score) arrays with each user's first `depth` items in
    order, users in the given order. Depth starts just above n and grows only for users whose read
    articles crowd the list, so heavy readers never make everyone's list longer.
    """
    out, todo, depth = [], np.asarray(users, dtype=np.int64), min(n + 16, max_depth)
    while len(todo) and depth > 0:
        u, a, s = fetch(todo, depth)
        keep = ~read.contains(u, a)
        u, a, s = u[keep], a[keep], s[keep]
        r = block_rank(u)
        got = np.bincount(np.searchsorted(todo, u[r < n]), minlength=len(todo))
        short = todo[got < n] if depth < max_depth else todo[:0]
        ok = (r < n) & ~np.isin(u, short)
        out.append(Ranked(u[ok], a[ok], s[ok], r[ok] + 1))
        todo, depth = short, min(depth * 4, max_depth)
    return Ranked.concat(out)


def top_of_order(ids: np.ndarray, scores: np.ndarray, users: np.ndarray, read: PairKeys, n: int) -> Ranked:
    """One global order (`ids` best first, their `scores`) cut per user: each user's first n unread."""

    def fetch(todo: np.ndarray, depth: int):
        return np.repeat(todo, depth), np.tile(ids[:depth], len(todo)), np.tile(scores[:depth], len(todo))

    return top_excluding(fetch, users, read, n, len(ids))


# ---- the interface --------------------------------------------------------------------------------
class Query(NamedTuple):
    """One candidates call as every source sees it. Users are dense codes (dense_users), sorted."""

    users: np.ndarray  # the users asked for
    clicks: tuple[np.ndarray, np.ndarray, np.ndarray]  # their history: (user, article, timestamp)
    read: PairKeys  # (user, article) pairs never to propose
    at_ms: int  # the request time (ms): how long ago the users' newest clicks were


class CandidateSource:
    """A candidate source as one index carries it (fitted at its cutoff, or loaded with it).

    Shared state (the pool, its popularity and trend orders, embeddings, the co-click table) lives on the
    `CandidateIndex` every method receives; a source holds only what is its own (a model and its vectors).
    """

    name: ClassVar[str]  # column prefix (`<name>_score`, `<name>_rank`), params key, API `sources` value
    label: ClassVar[str]  # what it means to a reader (dashboard, API docs)
    baseline: ClassVar[str]  # its method in the offline evaluation: its own list, ranked by its score
    # Column order (candidate columns, ranker features: keep existing values, a new source takes a larger one)
    # and the evaluation's row order of its baseline.
    position: ClassVar[int]
    report_position: ClassVar[int]
    # True when an index carries it only given something to fit from (a trained model): an evaluation where it
    # proposed nothing at all shows no method row for it.
    optional: ClassVar[bool] = False
    # Columns it scores for every candidate row, whichever source proposed it (ranker features): score_rows.
    row_columns: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def fit(cls, index: CandidateIndex, given: Any = None) -> CandidateSource | None:
        """This source at a fitted `index` (whose shared state is set); `given` is what the index fit was
        handed for it by name (e.g. a trained model). None: the index carries no such source."""
        return cls()

    @property
    def given(self) -> Any:
        """What the source was fitted from (`fit`'s `given`), None when nothing."""
        return None

    def save(self, folder: Path) -> None:
        """Write the source's own state to `folder` (`<index>/<name>/`); nothing by default."""

    @classmethod
    def load(cls, index: CandidateIndex, folder: Path) -> CandidateSource | None:
        """The source of an index read back, from what `save` wrote in `folder`."""
        return cls.fit(index)

    def prepare(self, index: CandidateIndex, query: Query) -> Any:
        """Per-call work `propose` and `score_rows` share (a model's pass over the users); None by default."""
        return None

    def propose(self, index: CandidateIndex, query: Query, n: int, prepared: Any) -> Ranked | None:
        """Each user's top `n` unread articles, users ascending then rank; None (or empty): nothing."""
        raise NotImplementedError

    def score_rows(self, index: CandidateIndex, prepared: Any, users: np.ndarray,
                   articles: np.ndarray) -> dict[str, np.ndarray]:
        """`row_columns` (float32) for candidate rows (user codes, article ids); none by default."""
        return {}


# ---- the registry ---------------------------------------------------------------------------------
_REGISTERED: dict[str, type[CandidateSource]] = {}
_SOURCES: tuple[type[CandidateSource], ...] | None = None


def register(source: type[CandidateSource]) -> type[CandidateSource]:
    """Class decorator: add a source to the registry (before the registry is first read)."""
    if _SOURCES is not None:
        raise RuntimeError(f"candidate source {source.name!r} registered after the source list was read: "
                         "define it in a module of pipelines/sources/ (or import it before pipelines.candidates)")
    taken = {s.name: s for s in _REGISTERED.values() if s is not source}
    if source.name in taken or any(s.position == source.position for s in taken.values()):
        raise RuntimeError(f"candidate source {source.name!r}: its name or position {source.position} is taken")
    _REGISTERED[source.name] = source
    return source


def sources() -> tuple[type[CandidateSource], ...]:
    """Every candidate source, in column order; importing this package's modules on first use."""
    global _SOURCES
    if _SOURCES is None:
        package = importlib.import_module("pipelines.sources")
        for module in pkgutil.iter_modules(package.__path__):
            if module.name != "base":
                importlib.import_module(f"pipelines.sources.{module.name}")
        _SOURCES = tuple(sorted(_REGISTERED.values(), key=lambda s: s.position))
    return _SOURCES


def names() -> list[str]:
    """The source names, in column order."""
    return [s.name for s in sources()]


def by_name() -> dict[str, type[CandidateSource]]:
    """Sources by name, in column order."""
    return {s.name: s for s in sources()}


def source_columns() -> list[str]:
    """Each source's score and rank column, in column order."""
    return [f(s) for s in names() for f in (score_col, rank_col)]


def row_columns() -> list[str]:
    """The columns sources score for every candidate row (`CandidateSource.row_columns`), in column order."""
    return [c for s in sources() for c in s.row_columns]


def baselines() -> dict[str, str]:
    """Evaluation method -> the source whose own list it is, in the evaluation's row order."""
    return {s.baseline: s.name for s in sorted(sources(), key=lambda s: s.report_position)}


def optional() -> set[str]:
    """Sources an index carries only when given something to fit from (`CandidateSource.optional`)."""
    return {s.name for s in sources() if s.optional}


def labels() -> dict[str, str]:
    """Source name -> what it means to a reader."""
    return {s.name: s.label for s in sources()}


def check_names(by_source: Mapping[str, Any], what: str) -> None:
    """InputError naming the unknown sources of a per-source mapping (params `per_source`, `fusion_weights`)."""
    unknown = set(by_source) - set(names())
    if unknown:
        raise InputError(f"unknown candidate source(s) {sorted(unknown)} in {what}; sources are {names()}")
