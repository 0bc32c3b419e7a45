"""Temporal split of the validated hours into snapshots, and the point-in-time click readers.

A snapshot is (name, role, cutoff_hour, end_hour). Everything fitted for it (aggregates read,
candidate index, features) sees only its history, the clicks with click_timestamp < cutoff; its
target is the clicks in [cutoff, end). Windows are cut on hour numbers, not on file counts, so a
quarantined hour leaves a hole in time instead of shifting every later window.

    train snapshots   ... | train_hNNN target | ... | val_hNNN targets | test target |
    cutoffs                 ^ label_hours apart     ^ val start        ^ test start  ^ serve (end of data)

Roles: train (rolling cutoffs `label_hours` apart, before the validation window), val (cutoffs
`label_hours` apart across the validation window), test (cutoff = test start, the whole test window as
target: the frozen protocol; the as-served protocol replays it hour by hour), serve (cutoff = after the
last validated hour, no target: what the registered model's bundle is fitted on). The label window is
the serving refresh cadence (params `split.label_hours`, one hour): the index is refreshed every hour, so
the ranker learns to rank what is read in the hour after a refresh. `newsrec split` writes them to a JSON file
the later stages read, so every stage agrees on the same windows.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines import lake
from pipelines.columns import (
    ARTICLE_ID,
    CLICK_ARTICLE_ID,
    CLICK_COLUMNS,
    CLICK_TIMESTAMP,
    CREATED_AT_TS,
    HOUR,
    HOUR_MS,
    USER_ID,
    WARM,
)
from pipelines.config import parse_step, step_parser
from pipelines.errors import ConfigError, InputError, MissingInputError

ROLES = ("train", "val", "test", "serve")


@dataclass(frozen=True)
class Snapshot:
    """One point in time the models are fitted at, and the window whose clicks are its labels."""

    name: str
    role: str
    cutoff_hour: int
    end_hour: int
    cutoff_ms: int
    end_ms: int

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise InputError(f"snapshot role must be one of {ROLES}, got {self.role!r}")
        if self.end_hour < self.cutoff_hour:
            raise InputError(
                f"snapshot {self.name}: end_hour {self.end_hour} < cutoff_hour {self.cutoff_hour}"
            )


def hour_start_ms(hour: int, epoch_ms: int) -> int:
    """First millisecond of hour `hour` (the contract's hour arithmetic)."""
    return int(epoch_ms) + int(hour) * HOUR_MS


def make_snapshot(name: str, role: str, cutoff_hour: int, end_hour: int, epoch_ms: int) -> Snapshot:
    return Snapshot(
        name,
        role,
        int(cutoff_hour),
        int(end_hour),
        hour_start_ms(cutoff_hour, epoch_ms),
        hour_start_ms(end_hour, epoch_ms),
    )


def plan_snapshots(
    hours: Sequence[int],
    epoch_ms: int,
    test_hours: int,
    val_hours: int,
    label_hours: int,
    train_snapshots: int,
    min_history_hours: int,
) -> list[Snapshot]:
    """Train snapshots (oldest first), then val, test and serve, from the validated hour numbers.

    Train cutoffs step back from the validation start by `label_hours`; a cutoff needs at least
    `min_history_hours` hours of data before it, so fewer than `train_snapshots` come back on short data.
    """
    if not hours:
        raise InputError("no validated hours to split (run `newsrec validate` first)")
    for key, value in {
        "test_hours": test_hours,
        "val_hours": val_hours,
        "label_hours": label_hours,
        "train_snapshots": train_snapshots,
    }.items():
        if int(value) < 1:
            raise InputError(f"split.{key} must be >= 1, got {value}")
    first, last = min(hours), max(hours)
    test_start = last + 1 - test_hours
    val_start = test_start - val_hours
    cutoffs = [val_start - i * label_hours for i in range(1, train_snapshots + 1)]
    cutoffs = [c for c in cutoffs if c - first >= min_history_hours]
    if not cutoffs:
        span = last - first + 1
        need = min_history_hours + label_hours + val_hours + test_hours
        raise InputError(
            f"{span} hours ({first}..{last}) are too few for the split: need at least {need} "
            f"(min_history_hours {min_history_hours} + label_hours {label_hours} + val_hours {val_hours} "
            f"+ test_hours {test_hours})"
        )
    snaps = [make_snapshot(f"train_h{c:03d}", "train", c, c + label_hours, epoch_ms) for c in sorted(cutoffs)]
    # Validation has the same shape as training (one label window per cutoff), so early stopping judges
    # the task the ranker is trained for; the last window is cut short at the test start.
    snaps += [
        make_snapshot(f"val_h{c:03d}", "val", c, min(c + label_hours, test_start), epoch_ms)
        for c in range(val_start, test_start, label_hours)
    ]
    snaps.append(make_snapshot("test", "test", test_start, last + 1, epoch_ms))
    snaps.append(make_snapshot("serve", "serve", last + 1, last + 1, epoch_ms))
    return snaps


def write_snapshots(snapshots: Sequence[Snapshot], path: str | Path) -> Path:
    """The split file every later stage reads (JSON, a list of snapshots)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"snapshots": [asdict(s) for s in snapshots]}, indent=2) + "\n")
    tmp.replace(path)
    return path


def read_snapshots(path: str | Path, roles: Sequence[str] | None = None) -> list[Snapshot]:
    """Snapshots from the split file, optionally only those of the given roles."""
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"split file not found: {path} (run `newsrec split` first)")
    snaps = [Snapshot(**s) for s in json.loads(path.read_text())["snapshots"]]
    return [s for s in snaps if roles is None or s.role in roles]


def get_snapshot(path: str | Path, name: str) -> Snapshot:
    """One snapshot of the split file by name (e.g. "test")."""
    snaps = {s.name: s for s in read_snapshots(path)}
    if name not in snaps:
        raise ConfigError(f"no snapshot {name!r} in {path}; have {sorted(snaps)}")
    return snaps[name]


def load_clicks(
    validated_dir: str | Path,
    start_ms: int | None,
    end_ms: int | None,
    columns: Sequence[str] | None = None,
    epoch_ms: int | None = None,
) -> pd.DataFrame:
    """Validated clicks with start_ms <= click_timestamp < end_ms (either bound may be None), plus `hour`
    (the file they came from), ordered by time. With `epoch_ms`, files that start after end_ms are not read
    at all (a file's clicks are never earlier than its hour)."""
    import duckdb

    hours = lake.landed_hours(validated_dir)
    if not hours:
        raise MissingInputError(f"no validated hours under {validated_dir} (run `newsrec validate` first)")
    cols = list(columns) if columns is not None else list(CLICK_COLUMNS)
    unknown = [c for c in cols if c not in CLICK_COLUMNS and c != HOUR]
    if unknown:
        raise InputError(f"unknown click column(s) {unknown}")
    if HOUR not in cols:
        cols.append(HOUR)
    where, args = [], []
    if start_ms is not None:
        where.append(f"{CLICK_TIMESTAMP} >= ?")
        args.append(int(start_ms))
    if end_ms is not None:
        where.append(f"{CLICK_TIMESTAMP} < ?")
        args.append(int(end_ms))
        if epoch_ms is not None:
            where.append(f"{HOUR} < ?")
            args.append(-(-(int(end_ms) - int(epoch_ms)) // HOUR_MS))
    glob = str(Path(validated_dir) / "*" / "*.parquet")
    sql = (
        f"SELECT {', '.join(cols)} FROM read_parquet(?, hive_partitioning=true, hive_types={{'hour': BIGINT}})"
        + (f" WHERE {' AND '.join(where)}" if where else "")
        + f" ORDER BY {CLICK_TIMESTAMP}, {USER_ID}"
    )
    with duckdb.connect() as con:
        frame = con.execute(sql, [glob, *args]).df()
    # Users erased with `newsrec forget-user` never reach features or models, even from restored data.
    from pipelines.erasures import drop_erased_users

    frame = drop_erased_users(frame, Path(validated_dir).parents[1])
    return frame.astype({HOUR: "int64"})


def snapshot_clicks(validated_dir: str | Path, snapshot: Snapshot) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(history, target) of a snapshot: clicks before the cutoff, and clicks in [cutoff, end)."""
    history = load_clicks(validated_dir, None, snapshot.cutoff_ms)
    if snapshot.end_ms > snapshot.cutoff_ms:
        target = load_clicks(validated_dir, snapshot.cutoff_ms, snapshot.end_ms)
    else:
        target = history.iloc[0:0]
    return history, target


def snapshots_clicks(validated_dir: str | Path, snapshots: Sequence[Snapshot]
                     ) -> Iterator[tuple[Snapshot, pd.DataFrame, pd.DataFrame]]:
    """(snapshot, history, target) of each snapshot, equal to `snapshot_clicks`, from one read of the clicks up to
    the latest snapshot's end: dozens of hourly snapshots each slice it instead of each reading the whole
    history again. Each history and target is a slice of that one read (no copy: dozens of copies of a
    Globo-sized history cost more than the rest of a snapshot), so read them and derive new frames from them;
    do not modify them in place."""
    if not snapshots:
        return
    clicks = load_clicks(validated_dir, None, max(max(s.end_ms, s.cutoff_ms) for s in snapshots))
    ts = clicks[CLICK_TIMESTAMP].to_numpy()
    for snap in snapshots:
        cut = int(np.searchsorted(ts, snap.cutoff_ms, side="left"))
        end = int(np.searchsorted(ts, snap.end_ms, side="left")) if snap.end_ms > snap.cutoff_ms else cut
        yield snap, clicks.iloc[:cut], clicks.iloc[cut:end].reset_index(drop=True)


def eval_targets(
    history: pd.DataFrame, target: pd.DataFrame, articles: pd.DataFrame, cutoff_ms: int
) -> pd.DataFrame:
    """The relevant (user_id, article_id) pairs of a snapshot, one row each, with `warm`.

    A target click counts if its article was available at the cutoff (created_at_ts < cutoff) and the
    user had not read it in their history; users are those with at least one such click. warm = the
    user has history clicks.
    """
    avail = articles.loc[articles[CREATED_AT_TS] < cutoff_ms, [ARTICLE_ID]]
    pairs = (
        target[[USER_ID, CLICK_ARTICLE_ID]]
        .drop_duplicates()
        .rename(columns={CLICK_ARTICLE_ID: ARTICLE_ID})
        .merge(avail, on=ARTICLE_ID, how="inner")
    )
    # Only these users' history can exclude a pair or make a user warm: an hour's few thousand readers, not the
    # millions of history rows de-duplicated for every snapshot.
    mine = history.loc[history[USER_ID].isin(pairs[USER_ID].unique()), [USER_ID, CLICK_ARTICLE_ID]]
    read = mine.drop_duplicates().rename(columns={CLICK_ARTICLE_ID: ARTICLE_ID})
    pairs = pairs.merge(read, on=[USER_ID, ARTICLE_ID], how="left", indicator=True)
    pairs = pairs.loc[pairs["_merge"] == "left_only", [USER_ID, ARTICLE_ID]]
    pairs[WARM] = pairs[USER_ID].isin(mine[USER_ID].unique())
    return pairs.sort_values([USER_ID, ARTICLE_ID]).reset_index(drop=True)


def split(data_root: str | Path, out: str | Path, params: dict, epoch_ms: int) -> list[Snapshot]:
    """Plan the snapshots from `<data_root>/validated/clicks` and write them to `out`."""
    hours = lake.landed_hours(lake.validated_dir(data_root))
    snaps = plan_snapshots(
        hours,
        epoch_ms,
        test_hours=int(params["test_hours"]),
        val_hours=int(params["val_hours"]),
        label_hours=int(params["label_hours"]),
        train_snapshots=int(params["train_snapshots"]),
        min_history_hours=int(params["min_history_hours"]),
    )
    write_snapshots(snaps, out)
    return snaps


def main(argv: list[str] | None = None) -> int:
    parser = step_parser("split", __doc__, data_root="data root with validated/clicks/")
    parser.add_argument("--out", type=Path, required=True, help="split file to write (JSON)")
    args, config = parse_step(parser, argv)
    params = config["split"]
    epoch_ms = int(config["data"]["epoch_ms"])
    snaps = split(args.data_root, args.out, params, epoch_ms)
    for s in snaps:
        print(f"{s.name:<12} {s.role:<5} cutoff hour {s.cutoff_hour:>4}  end hour {s.end_hour:>4}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
