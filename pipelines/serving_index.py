"""The hourly serving index: what the API recommends from, refreshed every hour apart from the daily ranker.

A news service cannot propose only what it knew at the last training run: half of all clicks go to
articles under 11 hours old. So the recommendable state is its own artifact, rebuilt when an hour lands
(`clicks_hourly`'s `refresh_index` task, or `newsrec refresh --hour N`) from the incremental aggregates
and the validated clicks, and the ranker is combined with the newest one at serving time:

    <root>/serving_index/hour=NNN/     everything known before hour NNN (its cutoff)
        index/                         CandidateIndex: pool, popularity windows, trend, co-clicks, similar
        features/                      FeatureTables: user tables of every reader, time-dependent article table
        history.npy                    clicks before the cutoff, int64 [HISTORY_COLUMNS, clicks] sorted by user
                                       and time: the API's per-user history
        articles.parquet               the catalogue published before the cutoff
        embeddings.npy                 the catalogue's L2-normalised embeddings (row = article_id)
        index.json                     format number, cutoff, the features its tables provide, params
    <root>/serving_index/CURRENT.json  which version is live: written last, atomically

The big parts (history, the users' profiles, the embeddings) are .npy files an API worker memory-maps:
a swap reads no more than it touches, decodes nothing, and the workers of one host share the pages.
With a user store configured (params.yaml `serve.user_store_url`), the per-user part of each version
(history, user tables, profiles) is also written to Redis before the version is published
(pipelines.user_store); index.json's `user_store` names its keys, and API replicas read only the article
side of the files.

A version is built in a temporary folder and renamed into place, then CURRENT.json is replaced, so a
reader sees the old version or the whole new one. API replicas on other machines than the publisher (ECS
tasks, while the hourly DAG runs on Airflow's workers) read a mirror: with params.yaml `refresh.publish_uri`
(`s3://bucket/prefix`, or a shared folder) each version is copied there as a new folder that is never
rewritten, then the mirror's CURRENT.json names it, so the same rule holds there (`mirror`); a replica copies
the version the mirror's pointer names into its local folder, whole, before it loads it (`fetch`,
serving.index_source.MirroredIndexSource). A model and an index are compatible by contract: the
index's format number is the one this code reads and it provides every feature the ranker uses
(`check_compatible`); the API refuses an incompatible pair and keeps serving the old one.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines import columns as C
from pipelines import lake
from pipelines.errors import InputError, MissingInputError, NewsrecError
from pipelines.fileio import atomic_write
from pipelines.user_store import UserStoreConfig

# Raised whenever what an index holds, or what the code expects of it, changes.
# 2: history and profiles as memory-mapped .npy; 3: feature tables also hold the last clicks before the
# newest and the derived article shares.
INDEX_FORMAT = 3
CURRENT = "CURRENT.json"
META = "index.json"
PARTS = {"index": "index", "features": "features", "history": "history.npy",
         "articles": "articles.parquet", "embeddings": "embeddings.npy"}
# Clicks before the cutoff, per user: the API's starting point for one user's candidates and features.
HISTORY_COLUMNS = [C.USER_ID, C.SESSION_ID, C.CLICK_ARTICLE_ID, C.CLICK_TIMESTAMP, *C.CONTEXT_COLUMNS]


def save_history(history: pd.DataFrame, path: str | Path) -> None:
    """Write clicks (HISTORY_COLUMNS, sorted by user and time) as one int64 [columns, clicks] .npy."""
    np.save(path, np.stack([history[c].to_numpy(np.int64) for c in HISTORY_COLUMNS]) if len(history)
            else np.zeros((len(HISTORY_COLUMNS), 0), dtype=np.int64))


def load_history(path: str | Path) -> pd.DataFrame:
    """What `save_history` wrote, memory-mapped (read-only): no time to load, pages shared between workers."""
    # [columns, clicks] C-order is [clicks, columns] Fortran-order: pandas wraps it as one block, no copy
    return pd.DataFrame(np.load(path, mmap_mode="r").T, columns=HISTORY_COLUMNS, copy=False)


def version_order(name: str) -> tuple[int, int]:
    """Sort key of a version folder, `hour=NNN` or a mirror's copy `hour=NNN.<publish ns>`: by hour, then by
    publish time (names alone would put hour=1000 before hour=999)."""
    hour, _, stamp = name.partition("=")[2].partition(".")
    return int(hour), int(stamp or 0)


def version_dir(index_root: str | Path, cutoff_hour: int) -> Path:
    return Path(index_root) / f"{C.HOUR}={int(cutoff_hour):03d}"


@dataclass
class ServingIndex:
    """The recommendable state at one cutoff (see the module docstring); `meta` is index.json."""

    tables: object  # pipelines.features.FeatureTables
    index: object  # pipelines.candidates.CandidateIndex
    articles: pd.DataFrame
    history: pd.DataFrame | None  # None when loaded without the user side
    meta: dict

    @property
    def cutoff_ms(self) -> int:
        return int(self.meta["cutoff_ms"])

    @property
    def cutoff_hour(self) -> int:
        return int(self.meta["cutoff_hour"])

    def save(self, out_dir: str | Path, previous: Path | None = None) -> Path:
        """Write every part under `out_dir` (created; must not exist yet). The embeddings (the tables' own,
        normalised) are hard-linked from the `previous` version when both say they hold the same catalogue
        (`meta["catalogue"]`): at Globo scale that is 364 MB not written again every hour."""
        out = Path(out_dir)
        out.mkdir(parents=True)
        self.index.save(out / PARTS["index"])
        self.tables.save(out / PARTS["features"])
        save_history(self.history, out / PARTS["history"])
        self.articles.to_parquet(out / PARTS["articles"], index=False)
        same = previous is not None and (previous / META).exists() and (previous / PARTS["embeddings"]).exists() \
            and json.loads((previous / META).read_text()).get("catalogue") == self.meta.get("catalogue")
        if same:
            os.link(previous / PARTS["embeddings"], out / PARTS["embeddings"])
        else:
            np.save(out / PARTS["embeddings"], np.asarray(self.tables.embeddings))
        (out / META).write_text(json.dumps(self.meta, indent=2) + "\n")
        return out

    @classmethod
    def load(cls, src_dir: str | Path, user_side: bool = True) -> ServingIndex:
        """Read a version written by `save`; an index of another format is refused with a clear message.
        `user_side=False`: without the history and with empty user tables (users are read from Redis)."""
        from pipelines.candidates import CandidateIndex
        from pipelines.features import FeatureTables

        src = Path(src_dir)
        if not (src / META).exists():
            raise MissingInputError(f"no serving index in {src} ({META} missing)")
        meta = json.loads((src / META).read_text())
        if meta.get("format") != INDEX_FORMAT:
            raise InputError(f"serving index in {src} has format {meta.get('format')}; this code reads format "
                             f"{INDEX_FORMAT}: rebuild it with `newsrec refresh`")
        embeddings = np.load(src / PARTS["embeddings"], mmap_mode="r")
        return cls(
            tables=FeatureTables.load(src / PARTS["features"], embeddings, user_side=user_side),
            index=CandidateIndex.load(src / PARTS["index"]),
            articles=pd.read_parquet(src / PARTS["articles"]),
            history=load_history(src / PARTS["history"]) if user_side else None,
            meta=meta,
        )


def check_compatible(ranker_features: list[str], meta: dict) -> None:
    """Raise ValueError unless an index with this index.json can serve a ranker using these features."""
    if meta.get("format") != INDEX_FORMAT:
        raise InputError(f"index format {meta.get('format')} is not the format {INDEX_FORMAT} this code serves")
    missing = [f for f in ranker_features if f not in set(meta.get("features", []))]
    if missing:
        raise InputError(f"index at hour {meta.get('cutoff_hour')} does not provide the ranker's features {missing}")


def fit_serving_index(
    data_root: str | Path,
    cutoff_hour: int,
    articles: pd.DataFrame,
    embeddings: np.ndarray,
    index_params: dict,
    feature_params: dict,
    epoch_ms: int,
) -> ServingIndex:
    """Fit the index at the start of `cutoff_hour` from the aggregates and validated clicks before it."""
    from pipelines.candidates import CandidateIndex
    from pipelines.features import FEATURES, fit_tables, normalise_embeddings
    from pipelines.split import hour_start_ms, load_clicks

    root = Path(data_root)
    cutoff_ms = hour_start_ms(cutoff_hour, epoch_ms)
    history = load_clicks(lake.validated_dir(root), None, cutoff_ms, columns=HISTORY_COLUMNS, epoch_ms=epoch_ms)
    history = history[HISTORY_COLUMNS].sort_values([C.USER_ID, C.CLICK_TIMESTAMP], kind="mergesort")
    index = CandidateIndex.fit(root, articles, embeddings, cutoff_ms, index_params, epoch_ms)
    tables = fit_tables(history, articles, normalise_embeddings(embeddings), cutoff_ms, feature_params)  # once
    meta = {"format": INDEX_FORMAT, "cutoff_hour": int(cutoff_hour), "cutoff_ms": int(cutoff_ms),
            "features": list(FEATURES), "feature_params": dict(feature_params), "index_params": dict(index_params),
            "pool_size": len(index.pool), "users": len(tables.users), "clicks": len(history)}
    published = articles[articles[C.CREATED_AT_TS] < cutoff_ms]
    return ServingIndex(tables=tables, index=index, articles=published.reset_index(drop=True),
                        history=history.reset_index(drop=True), meta=meta)


def publish(serving: ServingIndex, index_root: str | Path, keep: int, user_store: UserStoreConfig | None = None,
            client=None) -> Path:
    """Write `serving` as version hour=NNN, point CURRENT.json at it, keep the `keep` newest versions.

    Re-publishing an hour (a replayed drop) replaces that version whole. CURRENT.json never moves back to
    an older hour than the one it names, so replaying an old hour does not roll the service back. With a
    `user_store`, the per-user state of a version that becomes current is written there first (through
    `client`, default one from the config), so whatever CURRENT.json names is whole in Redis too; every
    other version's state there is then set to expire (replicas serve the current one only), and a replayed
    old hour, which never becomes current, is not written there at all.
    """
    root = Path(index_root)
    root.mkdir(parents=True, exist_ok=True)
    final = version_dir(root, serving.cutoff_hour)
    tmp = root / f".{final.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    live = current(root)
    becomes_current = live is None or live["cutoff_hour"] <= serving.cutoff_hour
    if user_store is not None and becomes_current:
        from redis.exceptions import RedisError

        from pipelines.user_store import materialise

        client = client if client is not None else user_store.client()
        try:
            serving.meta["user_store"] = materialise(client, user_store, serving.cutoff_hour, serving.history,
                                                     serving.tables)
        except RedisError as exc:  # nothing is published: the version before stays current
            raise NewsrecError(f"writing the users' state of hour {serving.cutoff_hour} to {user_store.url} "
                               f"(serve.user_store_url) failed: {type(exc).__name__}: {exc}; nothing was "
                               "published, the current version stays") from exc
    serving.save(tmp, previous=root / live["path"] if live else None)
    retired = []
    if final.exists():
        retired.append(_user_namespace(final))
        old = root / f".{final.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    if becomes_current:
        pointer = {"cutoff_hour": serving.cutoff_hour, "cutoff_ms": serving.cutoff_ms, "path": final.name,
                   "format": INDEX_FORMAT}
        if serving.meta.get("user_store"):  # a republished hour with other users' state must move the pointer
            pointer["user_store"] = serving.meta["user_store"]["namespace"]
        atomic_write(root / CURRENT, lambda p: p.write_text(json.dumps(pointer, indent=2) + "\n"))
    live = current(root)
    versions = sorted(root.glob(f"{C.HOUR}=*"), key=lambda p: version_order(p.name))
    for stale in versions[: max(0, len(versions) - max(int(keep), 1))]:
        if live is None or stale.name != live["path"]:
            shutil.rmtree(stale, ignore_errors=True)
    if user_store is not None and becomes_current:
        from pipelines.user_store import retire

        serving_now = _user_namespace(root / live["path"])
        retired += [_user_namespace(p) for p in versions]
        for namespace in set(retired) - {serving_now, None}:
            retire(client, user_store, namespace)
    return final


def _user_namespace(version: Path) -> str | None:
    """The Redis namespace of a version's per-user state (None: it has none there)."""
    try:
        return (json.loads((version / META).read_text()).get("user_store") or {}).get("namespace")
    except (OSError, ValueError):
        return None


def current(index_root: str | Path) -> dict | None:
    """CURRENT.json of an index root (cutoff_hour, cutoff_ms, path, format), or None when none is published."""
    path = Path(index_root) / CURRENT
    if not path.exists():
        return None
    return json.loads(path.read_text())


def refresh(
    data_root: str | Path, hour: int, params: dict, index_params: dict, feature_params: dict, epoch_ms: int,
    user_store: UserStoreConfig | None = None,
) -> Path:
    """After hour `hour` landed: fit the index at cutoff hour+1 and publish it under params `index_dir`; with a
    `user_store` (params `serve.user_store_*`, `UserStoreConfig.from_serve`) its per-user state goes there too."""
    from pipelines.catalogue import read_catalogue

    root = Path(data_root)
    # the static files plus every article drop landed up to this hour: an article delivered in this
    # hour's drop is recommendable from the next hour on
    articles, embeddings = read_catalogue(root, until_hour=int(hour))
    serving = fit_serving_index(root, int(hour) + 1, articles, embeddings, index_params, feature_params, epoch_ms)
    serving.meta["catalogue"] = catalogue_key(root, int(hour))
    out = publish(serving, root / params["index_dir"], int(params["keep"]), user_store)
    if params.get("publish_uri"):  # replicas that read the users from Redis never read their files
        mirror(out, params["publish_uri"], int(params["keep"]), user_side=user_store is None)
    return out


def _catalogue(meta_text: str | bytes | None) -> str | None:
    """The `catalogue` key of an index.json's text (None: none, or no text)."""
    return json.loads(meta_text).get("catalogue") if meta_text else None


def mirror(version: str | Path, uri: str, keep: int, user_side: bool = True, client=None) -> str | None:
    """Copy the published local `version` folder to `uri` (params `refresh.publish_uri`), then, when it is the
    live one of its index root, point the mirror's CURRENT.json at it: a replica that reads that pointer finds
    the whole version. Every copy is a new folder there, `hour=NNN.<publish time ns>`, never rewritten: a
    republished hour (a retried refresh, a late drop) cannot mix with the copy a replica is reading. Without
    the `user_side` (the version's users are in Redis) its per-user files are not sent. Copies beyond the
    `keep` newest are removed from the mirror, never the live one. Returns the copy's location; None for a
    replayed old version that `publish` did not keep (nor would the mirror). A missing bucket raises
    storage.NotLandedError before anything is sent."""
    import time

    from pipelines import storage

    local = Path(version)
    if not (local / META).exists():
        return None
    live = current(local.parent)
    copy_name = f"{local.name}.{time.time_ns()}"
    target = storage.join(uri, copy_name)
    storage.list_files(target, client)  # raises for a missing bucket
    names = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    if not user_side:
        names = [n for n in names if n not in user_only_files()]
    for name in [n for n in names if n != META] + [META]:
        storage.upload(local / name, storage.join(target, name), client)
    if live is not None and live["path"] == local.name:
        pointer = {**live, "path": copy_name}
        storage.write_bytes(storage.join(uri, CURRENT), (json.dumps(pointer, indent=2) + "\n").encode(), client)
    pointer = remote_current(uri, client)
    files = storage.list_files(uri, client)
    copies = sorted({n.split("/", 1)[0] for n in files if n.startswith(f"{C.HOUR}=") and "/" in n},
                    key=version_order)
    for old in copies[: max(0, len(copies) - max(int(keep), 1))]:
        if pointer is None or old != pointer["path"]:
            for name in (n for n in files if n.startswith(f"{old}/")):
                storage.delete(storage.join(uri, name), client)
    return target


def remote_current(uri: str, client=None) -> dict | None:
    """The live version's pointer in the mirror at `uri` (params `refresh.publish_uri`, see `mirror`); None when
    none is published there yet. A missing bucket raises storage.NotLandedError: a misconfigured URI must not
    look like "nothing published yet"."""
    from pipelines import storage

    try:
        return json.loads(storage.read_bytes(storage.join(uri, CURRENT), client))
    except storage.NotLandedError:
        storage.list_files(uri, client)  # raises, naming the bucket, when it is missing
        return None


def user_only_files() -> set[str]:
    """What a replica reading its users from Redis never reads of a version (ServingIndex.load(user_side=False))."""
    from pipelines.features import USER_ONLY_FILES

    return {PARTS["history"], *(f"{PARTS['features']}/{name}" for name in USER_ONLY_FILES)}


def fetch(uri: str, pointer: dict, index_root: str | Path, user_side: bool = True, keep: int = 2,
          client=None) -> Path:
    """Copy the version `pointer` names from the mirror at `uri` (a copy `mirror` never rewrites) into the
    local `index_root` (a replica's own disk) under the same name, and return its folder there. Built under a
    temporary name and renamed, so a process never loads a part-copied version; one already there (another
    worker of the host was first) is not copied again, and embeddings of the same catalogue are hard-linked
    from a local version that holds them. Without the `user_side` (users in Redis) the per-user files are
    not copied. Local versions beyond the `keep` newest are removed (a process that still maps one keeps its
    pages until it swaps)."""
    import uuid

    from pipelines import storage

    root = Path(index_root)
    root.mkdir(parents=True, exist_ok=True)
    name = pointer["path"]
    source = storage.join(uri, name)
    meta_text = storage.read_bytes(storage.join(source, META), client).decode()
    final = root / name
    if (final / META).exists():
        return final
    names = [n for n in storage.list_files(source, client) if n != META]
    if not user_side:
        names = [n for n in names if n not in user_only_files()]
    elif PARTS["history"] not in names and json.loads(meta_text).get("user_store"):
        raise InputError(f"{source} was mirrored without its per-user files (its users are in Redis): this "
                         "replica needs serve.user_store_url set as the publisher's is")
    catalogue, linkable = _catalogue(meta_text), None
    for held in sorted(root.glob(f"{C.HOUR}=*"), key=lambda p: version_order(p.name), reverse=True):
        if catalogue is not None and (held / PARTS["embeddings"]).exists() and (held / META).exists() \
                and _catalogue((held / META).read_text()) == catalogue:
            linkable = held / PARTS["embeddings"]
            break
    tmp = root / f".{name}.fetch-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        for part in names:
            dest = tmp / part
            dest.parent.mkdir(parents=True, exist_ok=True)
            if part == PARTS["embeddings"] and linkable is not None:
                os.link(linkable, dest)
            else:
                storage.download(storage.join(source, part), dest, client)
        (tmp / META).write_text(meta_text)
        try:
            tmp.rename(final)
        except OSError:  # another worker of this host renamed the same copy in between
            if not (final / META).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    copies = sorted(root.glob(f"{C.HOUR}=*"), key=lambda p: version_order(p.name))
    for stale in copies[: max(0, len(copies) - max(int(keep), 1))]:
        if stale.name != name:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def catalogue_key(data_root: str | Path, until_hour: int) -> str:
    """What the catalogue up to `until_hour` is made of: the static files' size and time, the drop hours."""
    from pipelines.catalogue import article_drop_hours

    raw = Path(data_root) / "raw"
    stamp = [f"{(raw / f).stat().st_size}:{(raw / f).stat().st_mtime_ns}" for f in (C.METADATA_FILE, C.EMBEDDINGS_FILE)]
    return ";".join(stamp) + ";drops:" + ",".join(map(str, article_drop_hours(data_root, until_hour)))


def main(argv: list[str] | None = None) -> int:
    import time

    from pipelines.config import parse_step, step_parser

    parser = step_parser("refresh", __doc__, data_root="data root with raw/, validated/, aggregates/")
    parser.add_argument("--hour", type=int, required=True, help="the hour that just landed (cutoff = its end)")
    args, config = parse_step(parser, argv)
    started = time.perf_counter()
    from pipelines.user_store import UserStoreConfig

    out = refresh(args.data_root, args.hour, config["refresh"], config["candidates"], config["features"],
                  int(config["data"]["epoch_ms"]), UserStoreConfig.from_serve(config["serve"]))
    meta = json.loads((out / META).read_text())
    stored = meta.get("user_store")
    where = (f"; user state in Redis as {stored['namespace']}, {stored['payload_bytes'] / 2**20:.1f} MB written in "
             f"{stored['written_s']} s") if stored else ""
    print(f"published {out} (cutoff hour {meta['cutoff_hour']}: {meta['pool_size']} recommendable articles, "
          f"{meta['users']} users, {meta['clicks']} clicks{where}) in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
