"""Hourly popularity and co-click aggregates, and the point-in-time readers over them.

Each validated hour NNN gets its own partitions, computed from that hour's file alone, so the step
is incremental (the hourly DAG runs it for the new hour) and idempotent (re-running overwrites):

    <root>/aggregates/popularity/hour=NNN/part-0.parquet   article_id, click_hour, clicks, users
    <root>/aggregates/coclick/hour=NNN/part-0.parquet      article_a, article_b, click_hour, weight

`click_hour` is the hour of the click itself (of the later click for a pair), not of the file: a
late outlier of hour 10 stamped in hour 40 counts in hour 40. Readers take a cutoff hour and keep
click_hour < cutoff, so nothing at or after a cutoff reaches what is fitted at it. Time decay is
applied when reading, relative to the cutoff, which keeps the stored partitions cutoff-free.

Co-click pairs are ordered pairs (a, b) and (b, a) of distinct articles read in the same session,
weighted 1/distance between their positions in the session (sessions ordered by click time), up to
`coclick_max_distance` positions apart (long sessions would otherwise grow quadratically). Weights
are summed exactly (`_exact_sum`): a float sum over several threads could differ in its last bit from run
to run, and replaying an hour must give the same bytes, and a pipeline run the same candidates.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.columns import (
    ARTICLE_A,
    ARTICLE_B,
    ARTICLE_ID,
    CLICK_ARTICLE_ID,
    CLICK_HOUR,
    CLICK_TIMESTAMP,
    CLICKS,
    HOUR,
    HOUR_MS,
    SESSION_ID,
    USER_ID,
    USERS,
    WEIGHT,
)
from pipelines.config import parse_step, step_parser
from pipelines.errors import InputError, MissingInputError
from pipelines.lake import (
    PART_FILE,
    aggregate_file,
    aggregates_dir,
    landed_hours,
    partition_file,
    partition_hour,
    validated_dir,
)

POPULARITY = "popularity"
COCLICK = "coclick"


def _copy_atomic(con, sql: str, args: list, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    con.execute(f"COPY ({sql}) TO '{tmp}' (FORMAT parquet)", args)
    tmp.replace(out)


def aggregate_hour(
    data_root: str | Path, hour: int, epoch_ms: int, coclick_max_distance: int
) -> dict[str, Path]:
    """Write the popularity and co-click partitions of one validated hour; returns their paths."""
    import duckdb

    if coclick_max_distance < 1:
        raise InputError(f"coclick_max_distance must be >= 1, got {coclick_max_distance}")
    data_root = Path(data_root)
    src = partition_file(data_root, hour)
    if not src.exists():
        raise MissingInputError(f"hour {hour} is not validated: {src} missing (run `newsrec validate` first)")
    click_hour = f"CAST(floor(({{ts}} - {int(epoch_ms)}) / {HOUR_MS}) AS BIGINT)"
    pop_sql = f"""
        SELECT {CLICK_ARTICLE_ID} AS {ARTICLE_ID}, {click_hour.format(ts=CLICK_TIMESTAMP)} AS {CLICK_HOUR},
               count(*) AS {CLICKS}, count(DISTINCT {USER_ID}) AS {USERS}
        FROM read_parquet(?) GROUP BY 1, 2 ORDER BY 2, 1"""
    cocl_sql = f"""
        WITH c AS (
            SELECT {USER_ID} AS u, {SESSION_ID} AS s, {CLICK_ARTICLE_ID} AS a, {CLICK_TIMESTAMP} AS ts,
                   row_number() OVER (PARTITION BY {USER_ID}, {SESSION_ID}
                                      ORDER BY {CLICK_TIMESTAMP}, {CLICK_ARTICLE_ID}) AS pos
            FROM read_parquet(?))
        SELECT x.a AS {ARTICLE_A}, y.a AS {ARTICLE_B},
               {click_hour.format(ts="greatest(x.ts, y.ts)")} AS {CLICK_HOUR},
               {_exact_sum("1.0 / abs(x.pos - y.pos)")} AS {WEIGHT}
        FROM c x JOIN c y ON x.u = y.u AND x.s = y.s AND x.pos <> y.pos AND x.a <> y.a
                         AND abs(x.pos - y.pos) <= ?
        GROUP BY 1, 2, 3 ORDER BY 3, 1, 2"""
    outs = {
        POPULARITY: aggregate_file(data_root, POPULARITY, hour),
        COCLICK: aggregate_file(data_root, COCLICK, hour),
    }
    with duckdb.connect() as con:
        con.execute("SET threads TO 2")
        _copy_atomic(con, pop_sql, [str(src)], outs[POPULARITY])
        _copy_atomic(con, cocl_sql, [str(src), int(coclick_max_distance)], outs[COCLICK])
    return outs


def drop_hour(data_root: str | Path, hour: int) -> list[Path]:
    """Remove one hour's partitions (the hour is no longer validated, e.g. a re-run quarantined it)."""
    removed = []
    for kind in (POPULARITY, COCLICK):
        part = aggregate_file(data_root, kind, hour).parent
        if part.is_dir():
            for f in part.iterdir():
                f.unlink()
            part.rmdir()
            removed.append(part)
    return removed


def aggregate_all(data_root: str | Path, epoch_ms: int, coclick_max_distance: int) -> list[int]:
    """Aggregate every validated hour and drop partitions whose hour is no longer validated."""
    data_root = Path(data_root)
    hours = landed_hours(validated_dir(data_root))
    if not hours:
        raise MissingInputError(f"no validated hours under {validated_dir(data_root)}")
    for hour in hours:
        aggregate_hour(data_root, hour, epoch_ms, coclick_max_distance)
    landed = set(hours)
    stale = {hour for kind in (POPULARITY, COCLICK) for part in aggregates_dir(data_root, kind).glob(f"{HOUR}=*")
             if (hour := partition_hour(part.name)) is not None}
    for hour in sorted(stale - landed):
        drop_hour(data_root, hour)
    return hours


def _exact_sum(term: str) -> str:
    """SQL for sum(term) that gives the same double whatever order duckdb's threads add the rows in: each
    term rounded to 1e-18 and added as a decimal (exact), the total cast back. A float sum's last bits vary
    with the order, and near-ties in the candidate lists then flip from one `dvc repro` to the next."""
    return f"CAST(sum(CAST({term} AS DECIMAL(38, 18))) AS DOUBLE)"


def _glob(data_root: Path, kind: str) -> str:
    base = aggregates_dir(data_root, kind)
    if not any(base.glob(f"{HOUR}=*/{PART_FILE}")):
        raise MissingInputError(f"no {kind} aggregates under {base} (run `newsrec aggregates --all` first)")
    return str(base / "*" / PART_FILE)


def read_popularity(
    data_root: str | Path, cutoff_hour: int, windows: Sequence[int], half_life_hours: float
) -> pd.DataFrame:
    """Per article clicked before the cutoff: `clicks` (all history), `clicks_<w>h` for each window (the
    last w hours before the cutoff), `users` (sum of hourly distinct users), `trend` (clicks decayed with
    the given half-life from the cutoff) and `last_click_hour`. Only click_hour < cutoff_hour is read."""
    import duckdb

    if half_life_hours <= 0:
        raise InputError(f"half_life_hours must be > 0, got {half_life_hours}")
    cols = [
        f"sum({CLICKS}) FILTER (WHERE {CLICK_HOUR} >= {int(cutoff_hour) - int(w)}) AS {CLICKS}_{int(w)}h"
        for w in windows
    ]
    sql = f"""
        SELECT {ARTICLE_ID}, sum({CLICKS}) AS {CLICKS}, {", ".join(cols) + "," if cols else ""}
               sum({USERS}) AS {USERS},
               {_exact_sum(f"{CLICKS} * pow(0.5, ({int(cutoff_hour)} - {CLICK_HOUR} - 0.5) / ?)")} AS trend,
               max({CLICK_HOUR}) AS last_click_hour
        FROM read_parquet(?, hive_partitioning=true, hive_types={{'hour': BIGINT}})
        WHERE {HOUR} < ? AND {CLICK_HOUR} < ?
        GROUP BY 1 ORDER BY 1"""
    with duckdb.connect() as con:
        frame = con.execute(
            sql, [float(half_life_hours), _glob(data_root, POPULARITY), int(cutoff_hour), int(cutoff_hour)]
        ).df()
    counts = [CLICKS, USERS] + [f"{CLICKS}_{int(w)}h" for w in windows]
    frame[counts] = frame[counts].fillna(0).astype("int64")
    return frame


def read_coclick(
    data_root: str | Path,
    cutoff_hour: int,
    half_life_hours: float,
    top_k: int,
    targets: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Each article's `top_k` co-read neighbours before the cutoff: article_a, article_b, weight (sum of
    1/distance weights decayed with the given half-life from the cutoff), rank (1 = strongest). With
    `targets`, only those articles can be neighbours (b), e.g. the recommendable pool."""
    import duckdb

    if half_life_hours <= 0 or top_k < 1:
        raise InputError(f"need half_life_hours > 0 and top_k >= 1, got {half_life_hours}, {top_k}")
    only = f"AND {ARTICLE_B} IN (SELECT {ARTICLE_ID} FROM targets)" if targets is not None else ""
    sql = f"""
        SELECT {ARTICLE_A}, {ARTICLE_B}, w AS {WEIGHT},
               row_number() OVER (PARTITION BY {ARTICLE_A} ORDER BY w DESC, {ARTICLE_B}) AS rank
        FROM (SELECT {ARTICLE_A}, {ARTICLE_B},
                     {_exact_sum(f"{WEIGHT} * pow(0.5, ({int(cutoff_hour)} - {CLICK_HOUR} - 0.5) / ?)")} AS w
              FROM read_parquet(?, hive_partitioning=true, hive_types={{'hour': BIGINT}})
              WHERE {HOUR} < ? AND {CLICK_HOUR} < ? {only}
              GROUP BY 1, 2)
        QUALIFY rank <= ?
        ORDER BY 1, 4"""
    with duckdb.connect() as con:
        if targets is not None:
            con.register("targets", pd.DataFrame({ARTICLE_ID: np.asarray(targets, dtype=np.int64)}))
        return con.execute(
            sql,
            [
                float(half_life_hours),
                _glob(data_root, COCLICK),
                int(cutoff_hour),
                int(cutoff_hour),
                int(top_k),
            ],
        ).df()


def main(argv: list[str] | None = None) -> int:
    parser = step_parser("aggregates", __doc__, data_root="data root with validated/clicks/")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--hour", type=int, help="aggregate this validated hour only")
    which.add_argument("--all", action="store_true", help="aggregate every validated hour")
    args, config = parse_step(parser, argv)
    params = config["aggregates"]
    epoch_ms = int(config["data"]["epoch_ms"])
    max_d = int(params["coclick_max_distance"])
    if args.all:
        hours = aggregate_all(args.data_root, epoch_ms, max_d)
        print(
            f"aggregated {len(hours)} hours ({hours[0]}..{hours[-1]}) into {args.data_root / 'aggregates'}"
        )
    else:
        outs = aggregate_hour(args.data_root, args.hour, epoch_ms, max_d)
        print(f"hour {args.hour}: " + ", ".join(str(p) for p in outs.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
