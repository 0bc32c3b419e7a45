"""newsrec dashboard: what each reader is recommended and why, similar articles, the model in service and
the pipeline's health. A client of the recommendation API (`make serve`); run with `make dashboard`."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st
import streamlit.components.v1 as components

from dashboard.data import (
    Api,
    ApiError,
    items_frame,
    latest_drift,
    opening_article,
    source_counts,
    time_text,
    validation_status,
)
from pipelines.config import load_config

PAGES = ("Recommendations", "Similar articles", "Model & pipeline")

st.set_page_config(page_title="newsrec", layout="wide")
config = load_config()  # once, at the app's boundary: paths absolute against params.yaml's folder
params = config["dashboard"]
api = Api(params["api_url"])

st.sidebar.title("newsrec")
page = st.sidebar.radio("Page", PAGES)
ready = api.ready()
if ready.get("status") == "ready":
    st.sidebar.success(f"API ready · champion v{ready['champion']}"
                       + (f" · challenger v{ready['challenger']}" if ready.get("challenger") else ""))
else:
    st.sidebar.error(f"API not ready: {'; '.join(ready.get('reasons', [])) or ready.get('status')}")


def score_chart(frame: pd.DataFrame, value: str, title: str) -> alt.Chart:
    return (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=alt.X(f"{value}:Q", title=title),
            y=alt.Y("article_id:N", sort=None, title="article"),
            color=alt.Color("category_id:N", title="category"),
            tooltip=list(frame.columns),
        )
        .properties(height=28 * max(len(frame), 1))
    )


def recommendations_page() -> None:
    st.header("Recommendations for a reader")
    try:
        users = api.users(int(params["users_listed"]))
    except ApiError as exc:
        st.error(str(exc))
        return
    left, right = st.columns([2, 1])
    with left:
        options = [f"{u.user_id} ({u.clicks} reads)" for u in users.itertuples()]
        picked = st.selectbox("Reader (most active first)", options) if options else None
    with right:
        typed = st.text_input("…or type a user id", "")
    if typed.strip():
        if not typed.strip().isdigit():
            st.error(f"a user id is a non-negative integer, not {typed!r}")
            return
        user_id = int(typed.strip())
    elif picked is not None:
        user_id = int(picked.split()[0])
    else:
        st.info("The model has no known readers; type any id to see the cold-start list.")
        return
    k = st.slider("How many articles", 1, 50, int(params["top_n"]))

    try:
        recs = api.recommendations(user_id, k)
        history = api.history(user_id, int(params["recent_reads"]))
    except ApiError as exc:
        st.error(str(exc))
        return
    if recs["items"]:  # the similar-articles page opens on this reader's top article
        st.session_state["article"] = int(recs["items"][0]["article_id"])
    st.caption(f"Served by **{recs['variant']}** (model v{recs['model_version']}) as of "
               f"{time_text(recs['as_of'])}" + (" · **new reader: trending and fresh articles**"
                                                if recs["cold_start"] else ""))
    col_recs, col_reads = st.columns([3, 2])
    with col_recs:
        st.subheader(f"Top {len(recs['items'])} for user {user_id}")
        table = items_frame(recs["items"], with_sources=True)
        st.dataframe(table, hide_index=True, width="stretch")
        if len(table):
            st.altair_chart(score_chart(table, "score", "ranker score"), width="stretch")
    with col_reads:
        st.subheader("Recent reads")
        reads = items_frame(history["items"])
        if len(reads):
            st.dataframe(reads, hide_index=True, width="stretch")
        else:
            st.info("No reads known for this user.")
        counts = source_counts(recs["items"])
        st.subheader("Why these articles")
        st.altair_chart(
            alt.Chart(counts).mark_bar().encode(x=alt.X("articles:Q", title="articles proposed"),
                                                y=alt.Y("source:N", sort="-x", title=None)),
            width="stretch",
        )


def similar_page() -> None:
    st.header("Similar articles")
    start = st.session_state.get("article")
    if start is None:
        try:
            start = opening_article(api)
        except ApiError as exc:
            st.error(str(exc))
            return
    article = st.number_input("Article id", min_value=0, step=1, value=int(start or 0),
                              help="Opens on the top recommendation of the reader on the Recommendations page")
    k = st.slider("How many", 1, 50, int(params["top_n"]))
    try:
        body = api.similar(int(article), k)
    except ApiError as exc:
        st.error(str(exc))
        return
    a = body["article"]
    c1, c2, c3 = st.columns(3)
    c1.metric("Category", a["category_id"])
    c2.metric("Age (h)", f"{a['age_hours']:.1f}")
    c3.metric("Words", a["words_count"])
    left, right = st.columns(2)
    with left:
        st.subheader("Closest by content (embedding)")
        emb = items_frame(body["embedding"])
        if len(emb):
            st.dataframe(emb, hide_index=True, width="stretch")
            st.altair_chart(score_chart(emb, "score", "cosine similarity"), width="stretch")
        else:
            st.info("This article has no embedding neighbours among the recommendable articles.")
    with right:
        st.subheader("Read together in sessions (co-click)")
        co = items_frame(body["coclick"])
        if len(co):
            st.dataframe(co, hide_index=True, width="stretch")
        else:
            st.info("No co-reads recorded for this article.")


# What the test-window figures mean, for people who do not read ranking papers.
METRICS_EXPLAINED = (
    "Test window: the last hours of the data, replayed as served (the index refreshed every hour). "
    "all / warm / cold: every reader, readers with history, readers without. "
    "ndcg@10: how high the articles the reader then clicked sit in the top 10 (1 = all on top). "
    "recall@10: share of those articles that made the top 10. mrr@10: 1 / the rank of the first one. "
    "hr@10: share of readers with at least one in their top 10. coverage@10: share of the catalogue that "
    "appears in anyone's top 10. The baselines (most clicked, trending, recently popular, similar content, "
    "co-reads) are in the evaluation report above."
)


def model_page() -> None:
    st.header("Model in service")
    try:
        models = api.models()
    except ApiError as exc:
        st.error(str(exc))
        models = {}
    for alias in ("champion", "challenger"):
        m = models.get(alias)
        if not m:
            continue
        c1, c2, c3, c4 = st.columns(4)
        c1.metric(alias.title(), f"v{m['version']}")
        c2.metric("Trained", time_text(m.get("trained_at")))
        c3.metric("Data up to", time_text(m["cutoff"]))
        c4.metric("Share of readers", f"{(models['challenger_share'] if alias == 'challenger' else 1 - models['challenger_share']):.0%}")
        with st.expander(f"Evaluation report of v{m['version']}: every method and baseline, both protocols"):
            try:
                components.html(api.evaluation(alias), height=900, scrolling=True)
            except ApiError as exc:
                st.info(str(exc))
        metrics = pd.DataFrame(sorted(m.get("metrics", {}).items()), columns=["metric", "value"])
        if len(metrics):
            metrics["segment"] = metrics["metric"].str.split("_").str[0]
            metrics["measure"] = metrics["metric"].str.split("_", n=1).str[1]
            st.altair_chart(
                alt.Chart(metrics).mark_bar().encode(
                    x=alt.X("value:Q", title="test window"), y=alt.Y("segment:N", title=None),
                    color="segment:N", row=alt.Row("measure:N", title=None), tooltip=["metric", "value"]),
            )
            st.caption(METRICS_EXPLAINED)

    st.header("Pipeline health")
    data_root = config["paths"]["data"]
    summary, hours = validation_status(data_root)
    if summary is None:
        st.info(f"No validation has run on {data_root} yet (`newsrec validate`).")
    else:
        c1, c2, c3 = st.columns(3)
        c1.metric("Hours landed", summary["landed"])
        c2.metric("Hours quarantined", summary["quarantined"])
        c3.metric("Clicks landed", f"{summary['rows_landed']:,}")
        latest = hours.tail(48)
        st.altair_chart(
            alt.Chart(latest).mark_bar().encode(
                x=alt.X("hour:O", title="hour"), y=alt.Y("rows:Q", title="clicks"),
                color=alt.Color("status:N", scale=alt.Scale(domain=["landed", "quarantined"],
                                                             range=["#4c78a8", "#e45756"])),
                tooltip=["hour", "status", "rows", "reason"]),
            width="stretch",
        )
        bad = hours[hours["status"] != "landed"]
        if len(bad):
            st.subheader("Quarantined drops")
            st.dataframe(bad, hide_index=True, width="stretch")
    drift = latest_drift(config["paths"]["drift_reports"])
    st.subheader("Latest drift check")
    if drift is None:
        st.info("No drift report yet (`newsrec drift`).")
    else:
        run, s = drift
        verdict = "Drift detected" if s["drift_detected"] else "No drift"
        st.metric(verdict, f"{len(s['drifted_columns'])} of {len(s['columns'])} columns",
                  help=f"hours {s['current_hours']} vs reference {s['reference_hours']} ({run.name})")
        if s["drifted_columns"]:
            st.write("Drifted: " + ", ".join(s["drifted_columns"]))


{"Recommendations": recommendations_page, "Similar articles": similar_page, "Model & pipeline": model_page}[page]()
