"""The API's docs pages work offline: every asset they load is served by the API itself."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.settings import Settings


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("docs")
    # No registry needed for the docs: an empty one, so no model loads.
    settings = Settings.from_params(tracking_uri=f"sqlite:///{tmp / 'empty.db'}",
                                    impression_log=tmp / "i.jsonl", click_log=tmp / "c.jsonl")
    with TestClient(create_app(settings, poll=False)) as c:
        yield c


@pytest.mark.integration
@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_nothing_from_the_internet(client, page):
    html = client.get(page)
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert not re.search(r"(https?:)?//[\w.-]+\.\w+/", html.text), "the page loads something from outside"
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html.text)
    assert assets, "the page names its scripts and styles"
    for url in assets:
        got = client.get(url)
        assert got.status_code == 200 and len(got.content) > 1000, url
    if page == "/docs":
        assert {a.rsplit("/", 1)[-1] for a in assets} >= {"swagger-ui-bundle.js", "swagger-ui.css"}
        assert "/openapi.json" in html.text and client.get("/openapi.json").status_code == 200
        assert client.get("/docs/oauth2-redirect").status_code == 200
