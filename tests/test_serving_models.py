"""ModelHolder: alias polling, whole-bundle swaps, and keeping the old model when a new one fails to load."""

from __future__ import annotations

import dataclasses
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


@pytest.mark.model
@pytest.mark.parametrize("own_state", [False, True])
def test_a_version_loaded_from_the_registry_leaves_no_copy_of_what_it_read(serving_registry, monkeypatch,
                                                                           own_state):
    """The registry's pyfunc reads the whole bundle (every reader's history and feature rows). Once the service
    keeps only what it serves (the ranker, over an hourly index with the users in Redis; or the prepared bundle,
    until an index replaces its state), nothing else may keep the bundle alive: MLflow's loader held the last
    model it loaded in a module global."""
    import mlflow.pyfunc

    from serving.registry_source import MlflowBundleSource

    read = []
    real = mlflow.pyfunc.load_model

    def spy(uri, *args, **kwargs):
        model = real(uri, *args, **kwargs)
        read.append(weakref.ref(model.unwrap_python_model().bundle))
        return model

    monkeypatch.setattr(mlflow.pyfunc, "load_model", spy)
    source = MlflowBundleSource(serving_registry["tracking_uri"], serving_registry["model_name"], own_state=own_state)
    served = source.load(source.resolve("champion"))
    gc.collect()
    assert len(read) == 1
    if own_state:
        assert served.base is read[0]()  # served as registered: the one copy is the one in use
        served = dataclasses.replace(served, base=served.base.ranker_only(), bundle=None)  # an index took over
        gc.collect()
    assert served.base.tables is None and served.base.ranker is not None
    assert read[0]() is None


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
