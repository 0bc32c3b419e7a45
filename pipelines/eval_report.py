"""One self-contained HTML page per evaluation: the tables and plots a person reads to judge a model.

Written by `newsrec evaluate` beside eval.json (`eval_report.html`), logged with the registered version's
run in MLflow (artifacts, `evaluation/`), and opened from the dashboard. Everything is inside the file
(plots as inline PNG, no script, no web font), so it opens the same on a machine without internet.

Per protocol (as served first, then frozen): the reranker against the best baseline with the 95% interval
of the difference, NDCG@k for all / warm / cold users per method, coverage@k per method, candidate recall
of each source and of the fused list, NDCG@j and recall@j for j = 1..curve_k, and the full table; MIND's
impression protocol when the data has impressions.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import pandas as pd

SEGMENTS = ("all", "warm", "cold")
_TITLES = {"as_served": "As served: index and features refreshed every hour, ranker fixed at the cutoff",
           "frozen": "Frozen: every list computed at the test cutoff, judged on the whole test window"}
_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 7px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.verdict{font-size:15px;padding:.6em;background:#f6f8fa;border-left:4px solid #4a7}.bad{border-color:#c44}
img{max-width:100%}.plots{display:flex;flex-wrap:wrap;gap:1em}"""


def _png(fig) -> str:
    """A matplotlib figure as an <img> with the PNG inline."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _bars(values: pd.DataFrame, title: str, xlabel: str) -> str:
    """Horizontal bars, one group per method (rows), one bar per column."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(values) + 1.2))
    values.plot.barh(ax=ax, width=0.8, legend=False)
    if values.shape[1] > 1:
        ax.legend(bbox_to_anchor=(1.01, 1), loc="upper left", fontsize=8)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def _curves(curves: dict, k_max: int) -> str:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for method, rows in curves.items():
        frame = pd.DataFrame(rows, columns=["k", "ndcg", "recall"])
        style = {"linewidth": 2.5} if method == "reranker" else {"linewidth": 1.2}
        axes[0].plot(frame["k"], frame["ndcg"], label=method, **style)
        axes[1].plot(frame["k"], frame["recall"], label=method, **style)
    for ax, name in zip(axes, ("NDCG@j", "recall@j"), strict=True):
        ax.set_title(f"{name}, all users, j = 1..{k_max}")
        ax.set_xlabel("j")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="lower right")
    return _png(fig)


def _protocol(name: str, res: dict, k: int) -> list[str]:
    methods = res["methods"]
    parts = [f"<h2>{html.escape(_TITLES.get(name, name))}</h2>"]
    users = res["users"]
    unit = "queries (user x hour)" if name == "as_served" else "users"
    parts.append(f"<p>{users['all']} {unit}: {users['warm']} warm, {users['cold']} cold.</p>")
    cmp = res.get("reranker_vs_best_baseline")
    if cmp:
        low, high = cmp["diff_ci95"]
        verdict = "beats every baseline" if cmp["beats_every_baseline"] else "does NOT beat every baseline"
        parts.append(f'<p class="verdict{"" if cmp["beats_every_baseline"] else " bad"}">reranker / best baseline '
                     f'({html.escape(cmp["best_baseline"])}) on {cmp["metric"]}: <b>{cmp["ratio"]:.3f}x</b>, '
                     f'{verdict}; difference {cmp["diff"]:+.4f}, 95% paired bootstrap interval '
                     f'[{low:+.4f}, {high:+.4f}]</p>')
    ndcg = pd.DataFrame({seg: {m: v[seg][f"ndcg@{k}"] for m, v in methods.items()} for seg in SEGMENTS})
    ndcg = ndcg.sort_values("all", ascending=False)
    coverage = pd.DataFrame({f"coverage@{k}": {m: v["all"][f"coverage@{k}"] for m, v in methods.items()}})
    recall = pd.DataFrame({"candidate recall": {m: v["all"]["candidate_recall"] for m, v in methods.items()
                                                if m != "reranker"}})
    plots = [_bars(ndcg, f"NDCG@{k} by method and users", f"NDCG@{k}"),
             _bars(coverage.loc[ndcg.index], f"Coverage@{k} (share of the catalogue in some top {k})", "share"),
             _bars(recall.sort_values("candidate recall", ascending=False),
                   "Candidate recall: relevant articles each source's list reaches (fusion: the union)", "share")]
    if res.get("curves"):
        plots.append(_curves(res["curves"], max(len(rows) for rows in res["curves"].values())))
    parts.append('<div class="plots">' + "".join(plots) + "</div>")
    rows = [{"method": m, "users": seg, **v[seg]} for m, v in methods.items() for seg in SEGMENTS]
    parts.append(pd.DataFrame(rows).to_html(index=False, float_format=lambda x: f"{x:.4f}", border=0))
    return parts


def render(results: dict, title: str = "newsrec evaluation") -> str:
    """The report for `newsrec evaluate`'s results (with their curves), as one HTML string."""
    import matplotlib

    matplotlib.use("Agg")
    k = int(results["k"])
    body = [f"<h1>{html.escape(title)}</h1>",
            (f"<p>Test snapshot <code>{html.escape(str(results.get('snapshot', 'test')))}</code>, top {k}; "
            "every method ranks the catalogue available at each cutoff, read articles excluded. Methods: "
            "popular (all-time clicks), trending (decayed recent clicks), recent_popular (clicks in the last "
            "hours), cocl (co-reads), emb_knn (embedding kNN of the reader's profile), fusion (the four "
            "sources fused), als (implicit's ALS, the collaborative-filtering peer), reranker (the LightGBM ranker "
            "over the fused list).</p>")]
    for name, res in (("as_served", results.get("as_served")), ("frozen", results)):
        if res and "methods" in res:
            body += _protocol(name, res, k)
    imp = (results.get("as_served") or {}).get("impressions")
    if imp:
        body += ["<h2>Impressions (MIND's protocol): each test impression's shown articles, ordered as served</h2>",
                 (f"<p>{imp['impressions']} impressions with a clicked and an unclicked article (of "
                  f"{imp['impressions_shown']}); AUC, MRR, nDCG@5 and nDCG@10 per impression, averaged.</p>"),
                 pd.DataFrame(imp["methods"]).T.rename_axis("method").reset_index().to_html(
                     index=False, float_format=lambda x: f"{x:.4f}", border=0)]
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>\n")


def write(results: dict, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(render(results), encoding="utf-8")
    return path
