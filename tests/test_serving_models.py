"""ModelHolder: alias polling, whole-bundle swaps, and keeping the old model when a new one fails to load."""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
import weakref

import pytest

from serving.models import ModelHolder, ServedModel, VersionRef


class RegistryFake:
    """An in-memory alias table; `load` records calls and can be told to fail for a version."""

    def __init__(self) -> None:
        self.aliases: dict[str, str] = {}
        self.loads: list[str] = []
        self.broken: set[str] = set()
        self.down = False

    def resolve(self, alias):
        if self.down:
            raise ConnectionError("registry unreachable")
        version = self.aliases.get(alias)
        return None if version is None else VersionRef("m", version, f"run{version}", f"src{version}")

    def load(self, ref):
        self.loads.append(ref.version)
        if ref.version in self.broken:
            raise RuntimeError(f"artifact of v{ref.version} is corrupt")
        return ServedModel(ref=ref, bundle={"version": ref.version}, loaded_at=0.0)


@pytest.mark.unit
def test_holder_follows_aliases_and_shares_one_bundle_per_version():
    reg = RegistryFake()
    swaps = []
    holder = ModelHolder(reg, "champion", "challenger", on_swap=lambda slot, m: swaps.append((slot, m and m.ref.version)))
    assert holder.refresh() is False and holder.slots.champion is None

    reg.aliases = {"champion": "1", "challenger": "1"}
    assert holder.refresh() is True
    assert holder.slots.champion is holder.slots.challenger  # one bundle in memory for one version
    assert reg.loads == ["1"]
    assert holder.refresh() is False and reg.loads == ["1"]  # nothing changed: nothing reloaded

    before = holder.slots
    reg.aliases["challenger"] = "2"
    assert holder.refresh() is True
    assert before.challenger.ref.version == "1"  # an in-flight request's snapshot is untouched
    assert holder.slots.champion.ref.version == "1" and holder.slots.challenger.ref.version == "2"

    del reg.aliases["challenger"]
    holder.refresh()
    assert holder.slots.challenger is None
    assert swaps == [("champion", "1"), ("challenger", "1"), ("challenger", "2"), ("challenger", None)]


@pytest.mark.unit
def test_failed_load_or_registry_outage_keeps_the_current_model():
    reg = RegistryFake()
    reg.aliases = {"champion": "1"}
    holder = ModelHolder(reg, "champion", "challenger")
    holder.refresh()
    reg.aliases["champion"] = "2"
    reg.broken = {"2"}
    assert holder.refresh() is False
    assert holder.slots.champion.ref.version == "1"
    assert "corrupt" in holder.last_error

    reg.down = True
    assert holder.refresh() is False
    assert holder.slots.champion.ref.version == "1" and "unreachable" in holder.last_error

    reg.down, reg.broken = False, set()
    assert holder.refresh() is True and holder.slots.champion.ref.version == "2"
    assert holder.last_error is None


class _Bundle:
    """A bundle with a reference cycle, as pandas objects have: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


@pytest.mark.unit
def test_swaps_freeze_the_heap_yet_free_the_bundle_they_replace():
    reg = RegistryFake()
    reg.load = lambda ref: ServedModel(ref=ref, bundle=_Bundle(), loaded_at=0.0)
    reg.aliases = {"champion": "1"}
    holder = ModelHolder(reg, "champion", "challenger")
    try:
        holder.refresh()
        assert gc.get_freeze_count() > 0  # full collections no longer walk the loaded bundle
        first = weakref.ref(holder.slots.champion.bundle)
        gc.collect()
        assert first() is not None
        reg.aliases["champion"] = "2"
        holder.refresh()
        assert first() is None  # frozen while served, still freed once replaced
    finally:
        holder.stop()
    assert gc.get_freeze_count() == 0


@pytest.mark.unit
@pytest.mark.skipif(sys.platform != "linux", reason="thread priorities are set per thread on Linux only")
def test_the_poller_and_the_live_overlay_run_below_the_requests_priority():
    """An index swap's CPU must not queue the requests the worker serves meanwhile: the background threads run
    `nice` lower than the thread that started them, which keeps its own priority."""
    seen: dict[str, int] = {}
    done = threading.Event()

    def priority() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    class Recording(RegistryFake):
        def resolve(self, alias):
            if threading.current_thread().name == "model-poller":
                seen.setdefault("poller", priority())
            return super().resolve(alias)

    reg = Recording()
    reg.aliases = {"champion": "1"}

    def overlay(bundle):
        seen.setdefault("live", priority())
        done.set()
        return bundle

    own = priority()
    holder = ModelHolder(reg, "champion", "challenger")
    holder.refresh()
    holder.start(0.01, live=overlay, live_seconds=0.01, nice=5)
    try:
        assert done.wait(10)
        deadline = time.monotonic() + 10
        while "poller" not in seen and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        holder.stop()
    assert seen == {"poller": min(own + 5, 19), "live": min(own + 5, 19)}
    assert priority() == own
