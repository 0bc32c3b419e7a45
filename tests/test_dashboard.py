"""The Streamlit dashboard, run by Streamlit's AppTest against the real API serving a registered champion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from serving_support import ServerThread
from streamlit.testing.v1 import AppTest

from serving.app import create_app
from serving.settings import Settings

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")


@pytest.fixture(scope="module")
def api_url(serving_registry, tmp_path_factory):
    logs = tmp_path_factory.mktemp("dash_logs")
    app = create_app(Settings.from_params(tracking_uri=serving_registry["tracking_uri"], challenger_share=0.3,
                                          impression_log=logs / "i.jsonl", click_log=logs / "c.jsonl"),
                     poll=False)
    with ServerThread(app) as server:
        yield server.url


@pytest.fixture
def dashboard_env(api_url, tiny_validated, tmp_path, monkeypatch):
    drift_dir = tmp_path / "drift"
    (drift_dir / "run-1").mkdir(parents=True)
    (drift_dir / "run-1" / "summary.json").write_text(json.dumps({
        "drift_detected": True, "drifted_columns": ["click_deviceGroup"], "share_drifted": 0.25,
        "columns": ["click_deviceGroup", "click_os", "category_id", "words_count"],
        "current_hours": "018-023", "reference_hours": "000-017"}))
    monkeypatch.setenv("NEWSREC__DASHBOARD__API_URL", api_url)
    monkeypatch.setenv("NEWSREC__PATHS__DATA", str(tiny_validated))
    monkeypatch.setenv("NEWSREC__PATHS__DRIFT_REPORTS", str(drift_dir))
    return api_url


def _charts(at: AppTest) -> list:
    return at.get("vega_lite_chart")


@pytest.mark.integration
def test_recommendations_page_shows_top_n_beside_recent_reads(dashboard_env):
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert "API ready" in at.sidebar.success[0].value
    picker = at.selectbox[0]
    assert picker.options and "reads)" in picker.options[0]
    recs, reads = at.dataframe[0].value, at.dataframe[1].value
    assert len(recs) == 10
    assert {"article_id", "category_id", "age", "words_count", "score", "why"} <= set(recs.columns)
    assert recs["why"].str.len().gt(0).all()
    assert len(reads) > 0 and "clicked_at" in reads.columns
    assert reads["clicked_at"].str.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC").all()  # readable, not ISO
    assert len(_charts(at)) == 2  # scores, and which sources proposed the list

    at.slider[0].set_value(5).run()
    assert len(at.dataframe[0].value) == 5


@pytest.mark.integration
def test_typed_unknown_user_gets_cold_start_and_bad_id_an_error(dashboard_env):
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.text_input[0].input("123456789").run()
    assert any("new reader" in c.value for c in at.caption)
    assert len(at.dataframe[0].value) == 10
    at.text_input[0].input("abc").run()
    assert "non-negative integer" in at.error[0].value


@pytest.mark.integration
def test_similar_articles_opens_on_a_recommendable_article(dashboard_env, serving_bundle):
    from dashboard.data import Api, opening_article
    from pipelines.bundle import ServingBundle

    pool = set(ServingBundle.load(serving_bundle).index.pool["article_id"])
    at = AppTest.from_file(APP, default_timeout=60).run()
    top = int(at.dataframe[0].value["article_id"].iloc[0])  # the reader on the Recommendations page
    at.sidebar.radio[0].set_value("Similar articles").run()
    assert not at.error
    assert at.number_input[0].value == top and top in pool
    assert len(at.dataframe[0].value) > 0  # it has neighbours among the recommendable articles
    # Straight to the page (nothing chosen yet): the most active reader's top article.
    first = opening_article(Api(dashboard_env))
    assert first in pool and first != 0


@pytest.mark.unit
def test_times_read_as_dates_in_utc():
    from datetime import UTC, datetime

    from dashboard.data import time_text

    assert time_text("2017-10-06T02:13:44.123000Z") == "2017-10-06 02:13 UTC"
    assert time_text("2017-10-05T23:13:44-03:00") == "2017-10-06 02:13 UTC"
    assert time_text(1507256024000) == "2017-10-06 02:13 UTC"
    assert time_text(datetime(2017, 10, 6, 2, 13, tzinfo=UTC)) == "2017-10-06 02:13 UTC"
    assert time_text(None) == "unknown"


@pytest.mark.unit
def test_streamlit_sends_no_usage_statistics_and_shows_no_deploy_button():
    import tomllib

    from streamlit import config

    settings = tomllib.loads((Path(APP).parents[1] / ".streamlit" / "config.toml").read_text())
    assert settings["browser"]["gatherUsageStats"] is False
    assert settings["client"]["toolbarMode"] == "viewer"  # hides Deploy, rerun and clear-cache
    options = config.get_config_options()
    assert {f"{section}.{key}" for section, keys in settings.items() for key in keys} <= set(options)


@pytest.mark.integration
def test_similar_articles_page(dashboard_env, serving_bundle):
    from pipelines.bundle import ServingBundle

    article = int(ServingBundle.load(serving_bundle).index.pool["article_id"].iloc[0])
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.sidebar.radio[0].set_value("Similar articles").run()
    at.number_input[0].set_value(article).run()
    assert not at.error
    assert [m.label for m in at.metric] == ["Category", "Age (h)", "Words"]
    emb = at.dataframe[0].value
    assert 0 < len(emb) <= 10 and article not in set(emb["article_id"])
    at.number_input[0].set_value(10**9).run()
    assert "not in the catalogue" in at.error[0].value


@pytest.mark.integration
def test_model_and_pipeline_page(dashboard_env):
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.sidebar.radio[0].set_value("Model & pipeline").run()
    assert not at.exception
    labels = {m.label: m.value for m in at.metric}
    assert labels["Champion"] == "v1" and labels["Challenger"] == "v2"
    assert labels["Hours landed"] == "24" and labels["Hours quarantined"] == "0"
    assert labels["Drift detected"] == "1 of 4 columns"
    assert len(_charts(at)) >= 3  # metrics of both versions, clicks per validated hour
    assert any("ndcg@10: how high the articles" in c.value for c in at.caption)  # metric names explained
    assert [e.label for e in at.expander][:2] == [f"Evaluation report of v{v}: every method and baseline, both "
                                                  "protocols" for v in (1, 2)]


@pytest.mark.integration
def test_api_down_is_said_plainly(tiny_validated, monkeypatch):
    monkeypatch.setenv("NEWSREC__DASHBOARD__API_URL", "http://127.0.0.1:9")
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert "API not ready" in at.sidebar.error[0].value
    assert "make serve" in at.error[0].value


@pytest.mark.integration
def test_dashboard_renders_in_a_real_browser(api_url, tmp_path):
    """Streamlit server + headless Debian Chromium: the page shows recommendations and reads, not a blank."""
    from PIL import Image

    from dashboard.screenshot import capture, chromium, streamlit_server

    if chromium() is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    png = tmp_path / "dashboard.png"
    with streamlit_server({"NEWSREC__DASHBOARD__API_URL": api_url}) as url:
        text = capture(url, png, ready_text="Recent reads")
    assert "Top 10 for user" in text and "API ready" in text and "Why these articles" in text
    image = Image.open(png).convert("L")
    assert image.size == (1600, 1300)
    # A rendered page has text and charts: many distinct grey levels, not a flat background.
    assert len(set(image.getdata())) > 50
