"""`newsrec ab-report`: click-through rate per A/B variant from the service's impression and click logs.

An impression is one recommendation list shown to a user; a click is attributed to the impression that
carried its `impression_id` (when that impression showed the article to the same user within
`attribution_seconds` before the click), or else to the user's latest impression that showed the clicked
article within that window. A click on nothing served is counted nowhere. The unit of analysis is the impression (did it get at
least one click) or the user (did they click anything shown), each a Bernoulli trial, so each variant
gets a Wilson interval and the pair a two-proportion z-test (equivalently, a 2x2 chi-square with one
degree of freedom: chi2 = z^2).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import NormalDist
from typing import Any

import pandas as pd

from pipelines.config import parse_step, step_parser
from pipelines.errors import InputError, MissingInputError

UNITS = ("impression", "user")


def load_impressions(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Impression records -> one row per impression (impression_id, user_id, variant, ts_ms, articles)."""
    frame = pd.DataFrame.from_records(records, columns=["impression_id", "user_id", "variant", "ts_ms", "articles"])
    if frame[["impression_id", "user_id", "variant", "ts_ms"]].isna().any().any():
        raise InputError("impression log has records without impression_id, user_id, variant or ts_ms")
    return frame.astype({"user_id": "int64", "ts_ms": "int64"})


def load_clicks(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Click records -> (user_id, article_id, ts_ms, impression_id or None)."""
    frame = pd.DataFrame.from_records(records, columns=["user_id", "article_id", "ts_ms", "impression_id"])
    if frame[["user_id", "article_id", "ts_ms"]].isna().any().any():
        raise InputError("click log has records without user_id, article_id or ts_ms")
    return frame.astype({"user_id": "int64", "article_id": "int64", "ts_ms": "int64"})


def attribute_clicks(impressions: pd.DataFrame, clicks: pd.DataFrame, window_ms: int) -> pd.DataFrame:
    """Clicks matched to the impression that showed the article: (impression_id, article_id, ts_ms)."""
    shown = impressions[["impression_id", "user_id", "ts_ms", "articles"]].explode("articles")
    shown = shown.dropna(subset=["articles"]).rename(columns={"articles": "article_id", "ts_ms": "shown_ms"})
    shown["article_id"] = shown["article_id"].astype("int64")
    cols = ["impression_id", "article_id", "ts_ms"]
    clicks = clicks.reset_index(drop=True).rename_axis("click_no").reset_index()

    # Explicit: the client echoed the impression id back; only valid if that impression showed the article to
    # this user, and the click came within the window after it (an id replayed later, or a click claimed
    # before the list existed, counts nowhere).
    tagged = clicks[clicks["impression_id"].notna()].merge(shown, on=["impression_id", "user_id", "article_id"])
    lag = tagged["ts_ms"] - tagged["shown_ms"]
    explicit = tagged[(lag >= 0) & (lag <= window_ms)][["click_no", *cols]]

    # Implicit: latest earlier impression of the same user that showed the article, within the window.
    rest = clicks[~clicks["click_no"].isin(explicit["click_no"])].drop(columns="impression_id")
    cand = rest.merge(shown, on=["user_id", "article_id"])
    lag = cand["ts_ms"] - cand["shown_ms"]
    cand = cand[(lag >= 0) & (lag <= window_ms)]
    implicit = cand.sort_values("shown_ms").groupby("click_no").tail(1)[["click_no", *cols]]
    return pd.concat([explicit, implicit], ignore_index=True).drop(columns="click_no")


def wilson_interval(successes: int, trials: int, confidence: float) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (sound near 0 and with small samples)."""
    if trials == 0:
        return (float("nan"), float("nan"))
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def two_proportion_test(s1: int, n1: int, s2: int, n2: int, confidence: float) -> dict[str, float]:
    """Two-sided pooled z-test of p2 == p1, the chi-square it equals, and a CI for p2 - p1."""
    if min(n1, n2) == 0:
        raise InputError("both variants need at least one trial to compare them")
    p1, p2 = s1 / n1, s2 / n2
    pooled = (s1 + s2) / (n1 + n2)
    se_pooled = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    z = (p2 - p1) / se_pooled if se_pooled > 0 else 0.0
    p_value = math.erfc(abs(z) / math.sqrt(2))
    zc = NormalDist().inv_cdf(0.5 + confidence / 2)
    se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    diff = p2 - p1
    return {
        "diff": diff,
        "diff_ci_low": diff - zc * se,
        "diff_ci_high": diff + zc * se,
        "relative_lift": diff / p1 if p1 > 0 else float("nan"),
        "z": z,
        "chi2": z * z,
        "p_value": p_value,
    }


def ab_report(
    impression_records: list[dict[str, Any]],
    click_records: list[dict[str, Any]],
    attribution_seconds: float,
    confidence: float,
    unit: str = "impression",
    baseline: str = "champion",
) -> dict[str, Any]:
    """CTR per variant with Wilson CIs, and each other variant against `baseline` (z-test, chi-square)."""
    if unit not in UNITS:
        raise InputError(f"unit must be one of {UNITS}, got {unit!r}")
    if not 0 < confidence < 1:
        raise InputError(f"confidence must be in (0, 1), got {confidence}")
    impressions = load_impressions(impression_records)
    if impressions.empty:
        raise InputError("the impression log is empty: nothing was served yet")
    clicks = load_clicks(click_records)
    attributed = attribute_clicks(impressions, clicks, int(attribution_seconds * 1000))

    clicked_imps = set(attributed["impression_id"])
    impressions["clicked"] = impressions["impression_id"].isin(clicked_imps)
    per_imp = impressions.groupby("variant").agg(
        impressions=("impression_id", "size"), clicked_impressions=("clicked", "sum"), users=("user_id", "nunique")
    )
    clicks_per_variant = (
        attributed.merge(impressions[["impression_id", "variant"]], on="impression_id").groupby("variant").size()
    )
    if unit == "user":
        trials_by = impressions.groupby(["variant", "user_id"])["clicked"].any().groupby("variant")
        trials, successes = trials_by.size(), trials_by.sum()
    else:
        trials, successes = per_imp["impressions"], per_imp["clicked_impressions"]

    variants: dict[str, dict[str, Any]] = {}
    for variant in sorted(per_imp.index):
        n, s = int(trials[variant]), int(successes[variant])
        low, high = wilson_interval(s, n, confidence)
        variants[variant] = {
            "users": int(per_imp.loc[variant, "users"]),
            "impressions": int(per_imp.loc[variant, "impressions"]),
            "clicks": int(clicks_per_variant.get(variant, 0)),
            "trials": n,
            "successes": s,
            "ctr": s / n,
            "ctr_ci_low": low,
            "ctr_ci_high": high,
        }
    comparisons = {}
    if baseline in variants:
        b = variants[baseline]
        for name, v in variants.items():
            if name != baseline:
                test = two_proportion_test(b["successes"], b["trials"], v["successes"], v["trials"], confidence)
                test["significant"] = test["p_value"] < 1 - confidence
                comparisons[f"{name}_vs_{baseline}"] = test
    return {
        "unit": unit,
        "confidence": confidence,
        "attribution_seconds": attribution_seconds,
        "clicks_logged": len(clicks),
        "clicks_attributed": len(attributed),
        "variants": variants,
        "comparisons": comparisons,
        "exploration": exploration_report(impression_records, attributed, confidence),
    }


def exploration_report(
    impression_records: list[dict[str, Any]], attributed: pd.DataFrame, confidence: float
) -> dict[str, Any] | None:
    """Per-slot click-through of the explored slots (fresh articles given a place by serving.explore) against
    every other slot, and how many explored articles found readers; None when nothing was explored."""
    explored = [(r["impression_id"], int(a)) for r in impression_records for a in (r.get("explored") or [])]
    if not explored:
        return None
    slots = sum(len(r.get("articles") or []) for r in impression_records)
    keys = set(explored)
    hits = {(i, int(a)) for i, a in zip(attributed["impression_id"], attributed["article_id"], strict=True)}
    explored_hits = len(keys & hits)
    out = {"explored_slots": len(keys), "explored_clicks": explored_hits,
           "explored_articles": len({a for _, a in keys}),
           "articles_clicked": len({a for i, a in keys & hits}),
           "other_slots": slots - len(keys), "other_clicks": len(hits - keys)}
    for name, n, k in (("explored", out["explored_slots"], explored_hits),
                       ("other", out["other_slots"], out["other_clicks"])):
        low, high = wilson_interval(k, n, confidence) if n else (float("nan"), float("nan"))
        out[f"{name}_ctr"], out[f"{name}_ctr_ci"] = (k / n if n else float("nan")), [low, high]
    return out


def format_report(report: dict[str, Any]) -> str:
    """A fixed-width table a person reads in a terminal."""
    pct = round(report["confidence"] * 100)
    lines = [
        (f"A/B report (unit: {report['unit']}; {report['clicks_attributed']}/{report['clicks_logged']} clicks "
         f"attributed within {report['attribution_seconds']:.0f}s)"),
        f"{'variant':<12}{'users':>9}{'impr.':>9}{'clicks':>9}{'trials':>9}{'CTR':>9}  {pct}% CI",
    ]
    for name, v in report["variants"].items():
        lines.append(
            f"{name:<12}{v['users']:>9}{v['impressions']:>9}{v['clicks']:>9}{v['trials']:>9}{v['ctr']:>9.4f}"
            f"  [{v['ctr_ci_low']:.4f}, {v['ctr_ci_high']:.4f}]"
        )
    ex = report.get("exploration")
    if ex:
        lines.append(
            f"exploration: {ex['explored_slots']} explored slots, per-slot CTR {ex['explored_ctr']:.4f} "
            f"[{ex['explored_ctr_ci'][0]:.4f}, {ex['explored_ctr_ci'][1]:.4f}] vs {ex['other_ctr']:.4f} "
            f"[{ex['other_ctr_ci'][0]:.4f}, {ex['other_ctr_ci'][1]:.4f}] on the other slots; "
            f"{ex['articles_clicked']} of {ex['explored_articles']} explored articles found readers"
        )
    for name, t in report["comparisons"].items():
        verdict = "significant" if t["significant"] else "not significant"
        lines.append(
            f"{name}: diff {t['diff']:+.4f} [{t['diff_ci_low']:+.4f}, {t['diff_ci_high']:+.4f}], "
            f"lift {t['relative_lift']:+.1%}, z={t['z']:.2f}, chi2={t['chi2']:.2f}, p={t['p_value']:.3g} "
            f"({verdict} at {pct}%)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = step_parser("ab-report", __doc__)
    parser.add_argument("--impressions", type=Path, help="impression log (default: params paths.impression_log)")
    parser.add_argument("--clicks", type=Path, help="click log (default: params paths.click_log)")
    parser.add_argument("--attribution-seconds", type=float, help="default: params ab_report.attribution_seconds")
    parser.add_argument("--confidence", type=float, help="default: params ab_report.confidence")
    parser.add_argument("--unit", choices=UNITS, default="impression")
    parser.add_argument("--out", type=Path, help="also write the report as JSON here")
    args, config = parse_step(parser, argv)
    params, paths = config["ab_report"], config["paths"]
    args.impressions = args.impressions or Path(paths["impression_log"])
    args.clicks = args.clicks or Path(paths["click_log"])
    if args.attribution_seconds is None:
        args.attribution_seconds = float(params["attribution_seconds"])
    if args.confidence is None:
        args.confidence = float(params["confidence"])

    from serving.eventlog import log_files, read_log

    for path in (args.impressions, args.clicks):
        if not log_files(path):
            raise MissingInputError(f"log not found: {path} (nor its day files {path.name}.YYYY-MM-DD)")
    report = ab_report(
        read_log(args.impressions),
        read_log(args.clicks),
        args.attribution_seconds,
        args.confidence,
        unit=args.unit,
    )
    print(format_report(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0
