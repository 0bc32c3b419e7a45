"""Which model bundles are in service, and how a new registry version replaces one without a failed request.

`Slots` is an immutable pair (champion, challenger). Requests read `holder.slots` once and use that
object to the end, so a swap — building the new bundle completely, then assigning one reference —
can never hand a request half a model. Python assigns references atomically, so no lock is needed
on the read path.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipelines import memory

log = logging.getLogger("newsrec.serving")


@dataclass(frozen=True)
class VersionRef:
    """What an alias points at, cheap to look up on every poll."""

    name: str
    version: str
    run_id: str
    source: str  # the URI artifacts are loaded from

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


@dataclass(frozen=True)
class ServedModel:
    """A fully built serving bundle and where it came from.

    `bundle` is what requests use (serving.recommend.Prepared; None for a model loaded without its own state,
    which serves only once combined with an hourly index); `base` the registry's bundle it was built
    from (None when the source gives none); `index_hour` the cutoff hour of the hourly serving index it
    serves over (None: the state the model was registered with); `live_base` the bundle before the live
    popularity overlay (serving.live) was applied to it; `index_pointer` the published pointer of that index
    (it differs for an hour republished with other users' state)."""

    ref: VersionRef
    bundle: Any
    loaded_at: float
    info: dict[str, Any] = field(default_factory=dict)
    base: Any = None
    index_hour: int | None = None
    index_pointer: dict | None = None
    live_base: Any = None  # `bundle` before the live popularity overlay (serving.live), once one is applied


@dataclass(frozen=True)
class Slots:
    champion: ServedModel | None = None
    challenger: ServedModel | None = None


class BundleSource(Protocol):
    """Where bundles come from: the MLflow registry in service; a folder source is a valid stand-in."""

    def resolve(self, alias: str) -> VersionRef | None:
        """The version an alias points at now, or None when the alias is not set."""

    def load(self, ref: VersionRef) -> ServedModel:
        """Build the bundle for `ref` (slow: downloads artifacts, builds indexes)."""


class IndexSource(Protocol):
    """Where hourly serving indexes come from (pipelines.serving_index): a published folder in service."""

    def current(self) -> dict | None:
        """The live version's pointer (cutoff_hour, path, ...), or None when none is published."""

    def load(self, pointer: dict) -> Any:
        """Read that version (a pipelines.serving_index.ServingIndex)."""

    def combine(self, model: ServedModel, index: Any) -> ServedModel:
        """`model`'s ranker over `index`, ready for requests; ValueError when the pair is incompatible."""


class ModelHolder:
    """Keeps champion/challenger current by polling the aliases, and each over the newest hourly serving
    index when an `index_source` is given; swaps whole (model, index) pairs atomically."""

    def __init__(
        self,
        source: BundleSource,
        champion_alias: str,
        challenger_alias: str,
        on_swap: Callable[[str, ServedModel | None], None] | None = None,
        index_source: IndexSource | None = None,
    ) -> None:
        self.source = source
        self.index_source = index_source
        self.index: Any = None  # the newest loaded ServingIndex
        self.index_pointer: dict | None = None
        self.aliases = {"champion": champion_alias, "challenger": challenger_alias}
        self.slots = Slots()
        self.last_errors: list[str] = []  # the last poll's problems, one each
        self.last_poll: float | None = None
        self._on_swap = on_swap
        self._waiting: dict[str, ServedModel] = {}  # loaded without own state, no index to serve over yet
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def last_error(self) -> str | None:
        """The last poll's problems as one line (None when it had none)."""
        return "; ".join(self.last_errors) or None

    def refresh(self) -> bool:
        """Re-read both aliases (and the index pointer); load and swap in what changed. True when something
        was swapped.

        A version that fails to load leaves the current one serving (and is retried next poll): a
        broken registration must not take the service down. After a model swap the heap is collected and
        frozen (see `_freeze_heap`); after an index swap only frozen.
        """
        with self._refresh_lock:
            before = _refs(self.slots)
            changed = self._swap_changed()
            if changed:
                # An index swap replaces only data the old pair held without reference cycles (checked: a few
                # dozen small objects in cycles per swap, no arrays), so reference counting frees it and the
                # new objects are just frozen: no full collection (0.25-0.3 s without the GIL's release at
                # demo scale) on the hourly path. A model swap collects fully, as before.
                if _refs(self.slots) != before:
                    _freeze_heap()
                else:
                    gc.freeze()
                # What the swap freed goes back to the system: glibc keeps the replaced pair's fragmented heap and
                # pyarrow's pool what reading parquet used (at Globo scale a worker's RSS crept from 1.1 to 1.25 GB
                # over a dozen index swaps).
                memory.release()
            return changed

    def _swap_changed(self) -> bool:
        """One poll: resolve both aliases, load what changed, swap `slots` once; True if swapped."""
        current = self.slots
        new = {"champion": current.champion, "challenger": current.challenger}
        changed = False
        errors = []
        for slot, alias in self.aliases.items():
            try:
                ref = self.source.resolve(alias)
            except Exception as exc:  # noqa: BLE001 - registry outages must not stop the poller
                errors.append(f"resolve {alias}: {exc}")
                continue
            held = new[slot]
            waiting = self._waiting.pop(slot, None)
            if held is None and waiting is not None and waiting.ref == ref:
                new[slot] = waiting  # loaded before: only the index was missing
                continue
            if ref is None:
                if held is not None:
                    new[slot], changed = None, True
                continue
            if held is not None and held.ref == ref:
                check = getattr(self.source, "check", None)  # can the served version still be loaded?
                problem = check(ref) if check is not None else None
                if problem:
                    errors.append(problem)
                continue
            other = new["champion" if slot == "challenger" else "challenger"]
            if other is not None and other.ref == ref:
                new[slot] = other  # same version behind both aliases: share one bundle in memory
            else:
                try:
                    new[slot] = self.source.load(ref)
                except Exception as exc:
                    log.exception("loading %s for alias %s failed; keeping the current one", ref.uri, alias)
                    errors.append(f"load {ref.uri}: {exc}")
                    continue
            changed = True
        if self.index_source is not None:
            self._refresh_index(errors)
            combined: dict[int, ServedModel | None] = {}  # one combination per model, even behind both aliases
            for slot in self.aliases:
                model = new[slot]
                if id(model) not in combined:
                    combined[id(model)] = self._over_index(model, current, slot, errors)
                if combined[id(model)] is not model:
                    new[slot], changed = combined[id(model)], True
        for slot in self.aliases:
            model = new[slot]
            if model is not None and model.bundle is None:  # nothing to serve over yet: not in service
                self._waiting[slot] = model
                new[slot] = None
                errors.append(f"{slot} v{model.ref.version} waits for an hourly index with its users' state "
                              "(serve.user_store_url)")
        self.last_poll = time.time()
        self.last_errors = errors
        if changed:
            self.slots = Slots(**new)  # the one atomic swap
            for slot in self.aliases:
                if getattr(current, slot) is not new[slot] and self._on_swap is not None:
                    self._on_swap(slot, new[slot])
        return changed

    def _refresh_index(self, errors: list[str]) -> None:
        """Load the published index when its pointer moved; a version that fails to load keeps the old one."""
        try:
            pointer = self.index_source.current()
        except Exception as exc:  # noqa: BLE001 - a storage hiccup must not stop the poller
            errors.append(f"index pointer: {exc}")
            return
        if pointer is None or pointer == self.index_pointer:
            return
        started = time.perf_counter()
        try:
            index = self.index_source.load(pointer)
        except Exception as exc:
            log.exception("loading serving index %s failed; keeping the current one", pointer.get("path"))
            errors.append(f"load index {pointer.get('path')}: {exc}")
            return
        self.index, self.index_pointer = index, pointer
        log.info("serving index hour %s loaded in %.2f s", pointer.get("cutoff_hour"), time.perf_counter() - started)

    def _over_index(self, model: ServedModel | None, current: Slots, slot: str, errors: list[str]) -> ServedModel | None:
        """`model` over the newest index when that is newer than the model's own state; an incompatible
        pair is refused: the slot keeps what it served (the same model over its last index) or, for a new
        model, its own state."""
        if model is None or self.index is None or model.base is None:
            return model
        if model.index_hour == self.index.cutoff_hour and model.index_pointer in (None, self.index_pointer):
            return model
        # A model without its own state serves over the newest index even when that is older than the model.
        if model.bundle is not None and self.index.cutoff_ms <= model.base.cutoff_ms:
            return model
        try:
            return dataclasses.replace(self.index_source.combine(model, self.index), index_pointer=self.index_pointer)
        except Exception as exc:  # noqa: BLE001 - any refusal or failure keeps the pair that serves
            log.error("model %s with index hour %s refused: %s", model.ref.uri, self.index.cutoff_hour, exc)
            errors.append(f"{slot} v{model.ref.version} with index hour {self.index.cutoff_hour} refused: {exc}")
            held = getattr(current, slot)
            return held if held is not None and held.ref == model.ref else model

    def apply_live(self, overlay: Callable[[Any], Any]) -> None:
        """Swap in `overlay(bundle)` for every served model, always from its bundle before any overlay (so
        overlays never stack); one atomic swap, no heap freeze (this runs every few seconds)."""
        with self._refresh_lock:
            current, done = self.slots, {}
            new = {}
            for slot in self.aliases:
                model = getattr(current, slot)
                if model is None or id(model) in done:
                    new[slot] = done.get(id(model)) if model is not None else None
                    continue
                base = model.live_base if model.live_base is not None else model.bundle
                new[slot] = done[id(model)] = dataclasses.replace(model, bundle=overlay(base), live_base=base)
            self.slots = Slots(**new)

    def start(self, poll_seconds: float, live: Callable[[Any], Any] | None = None,
              live_seconds: float | None = None, nice: int = 0) -> None:
        """Poll in a daemon thread until `stop()`. `nice`: the poller's and the live overlay's CPU priority below
        the requests' (`background_priority`)."""
        if self._thread is not None:
            return
        self._stop.clear()

        def run() -> None:
            background_priority(nice)
            while not self._stop.wait(poll_seconds):
                self.refresh()

        self._thread = threading.Thread(target=run, name="model-poller", daemon=True)
        self._thread.start()
        if live is not None and live_seconds:
            def run_live() -> None:
                background_priority(nice)
                while not self._stop.wait(live_seconds):
                    try:
                        self.apply_live(live)
                    except Exception:
                        log.exception("live popularity overlay failed; serving without it until the next one")

            self._live_thread = threading.Thread(target=run_live, name="live-popularity", daemon=True)
            self._live_thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in (self._thread, getattr(self, "_live_thread", None)):
            if thread is not None:
                thread.join(timeout=10)
        self._thread = self._live_thread = None
        gc.unfreeze()


def background_priority(nice: int) -> None:
    """Lower the calling thread's CPU priority by `nice` (0: unchanged).

    An index swap loads and prepares a version in the poller thread while the worker's event loop serves
    requests on the same cores; at the same priority the swap's CPU queued the requests behind it. Niced, the
    kernel runs requests first and the swap in the cores' spare time (docs/serving.md, measured). On Linux a
    thread is its own task, so this changes the calling thread alone; elsewhere `setpriority` would renice
    the whole process, so it is left alone there.
    """
    if not nice or sys.platform != "linux":
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + nice)
    except OSError as exc:  # e.g. a sandbox that forbids it: serve on, at the same priority
        log.warning("background thread priority not lowered (%s)", exc)


def _refs(slots: Slots) -> tuple[VersionRef | None, VersionRef | None]:
    """Which versions the slots hold (what an index swap leaves unchanged)."""
    return tuple(m.ref if m is not None else None for m in (slots.champion, slots.challenger))


def _freeze_heap() -> None:
    """Collect once, then keep everything alive now (bundles, libraries) out of later collections.

    A served process holds a few hundred thousand long-lived objects; each full collection walked them
    all, stopping requests for 20-250 ms at random moments under load. Frozen, a collection walks only
    what requests allocate. Unfreezing first lets this collection free the bundle a swap replaced (pandas
    objects hold reference cycles); one still held by an in-flight request goes at the next swap.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()

