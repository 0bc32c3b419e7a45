"""What the dashboard shows, as plain functions: API calls and the pipeline's own status files.

Kept apart from the Streamlit script so it is testable without a browser and the script stays layout.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from pipelines import columns as C
from pipelines.sources.base import labels as source_labels

# What each value of an API item's `sources` means to a reader: the candidate sources' labels, and the
# exploration slot (serving.explore).
SOURCE_NAMES = {**source_labels(), "explore": "new story given a try (exploration)"}


API_KEY_ENV = "NEWSREC_DASHBOARD_API_KEY"


class ApiError(RuntimeError):
    """The API answered with an error (its message is what the user should see)."""


@dataclass
class Api:
    """A small client of the recommendation API."""

    base_url: str
    timeout: float = 10.0
    # The API key when its serve.auth is on: one of the API's keys, from environment variable API_KEY_ENV.
    api_key: str | None = field(default_factory=lambda: os.environ.get(API_KEY_ENV) or None)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _get(self, path: str, **params: Any) -> Any:
        try:
            r = httpx.get(f"{self.base_url}{path}", params={k: v for k, v in params.items() if v is not None},
                          timeout=self.timeout, headers=self.headers)
        except httpx.HTTPError as exc:
            raise ApiError(f"the API at {self.base_url} does not answer ({exc}); start it with `make serve`") from exc
        if r.status_code >= 400:
            detail = r.json().get("detail") if r.headers.get("content-type", "").startswith("application/json") else r.text
            raise ApiError(f"{r.status_code}: {detail}")
        return r.json()

    def ready(self) -> dict[str, Any]:
        try:
            return httpx.get(f"{self.base_url}/readyz", timeout=self.timeout).json()
        except httpx.HTTPError as exc:
            return {"status": "unreachable", "reasons": [str(exc)]}

    def users(self, n: int) -> pd.DataFrame:
        return pd.DataFrame(self._get("/v1/users", n=n, order="active"), columns=["user_id", "clicks"])

    def recommendations(self, user_id: int, k: int, **context: int | None) -> dict[str, Any]:
        return self._get(f"/v1/users/{user_id}/recommendations", k=k, **context)

    def history(self, user_id: int, n: int) -> dict[str, Any]:
        return self._get(f"/v1/users/{user_id}/history", n=n)

    def similar(self, article_id: int, k: int) -> dict[str, Any]:
        return self._get(f"/v1/articles/{article_id}/similar", k=k)

    def models(self) -> dict[str, Any]:
        return self._get("/v1/models")

    def evaluation(self, slot: str) -> str:
        """The served model's evaluation report: one self-contained HTML page."""
        try:
            r = httpx.get(f"{self.base_url}/v1/models/{slot}/evaluation", timeout=self.timeout, headers=self.headers)
        except httpx.HTTPError as exc:
            raise ApiError(f"the API at {self.base_url} does not answer ({exc})") from exc
        if r.status_code >= 400:
            raise ApiError(f"{r.status_code}: {r.json().get('detail', r.text)}")
        return r.text


def items_frame(items: list[dict[str, Any]], with_sources: bool = False) -> pd.DataFrame:
    """API article items as a table a person reads: ages in hours/days, sources spelled out."""
    cols = ["rank", C.ARTICLE_ID, C.CATEGORY_ID, "age", C.WORDS_COUNT]
    if not items:
        return pd.DataFrame(columns=cols + (["score", "why"] if with_sources else []))
    frame = pd.DataFrame(items)
    if "rank" not in frame:
        frame["rank"] = range(1, len(frame) + 1)
    frame["age"] = frame["age_hours"].map(_age_text)
    if with_sources:
        frame["why"] = frame["sources"].map(lambda s: ", ".join(SOURCE_NAMES.get(x, x) for x in s))
        cols += ["score", "why"]
    elif "score" in frame:
        cols += ["score"]
    if "clicked_at" in frame:
        frame["clicked_at"] = frame["clicked_at"].map(time_text)
        cols = ["clicked_at", *cols[1:], "online"]
    return frame[[c for c in cols if c in frame]]


def source_counts(items: list[dict[str, Any]]) -> pd.DataFrame:
    """How many of the recommended articles each candidate source proposed."""
    rows = [{"source": SOURCE_NAMES.get(s, s), "articles": sum(s in i["sources"] for i in items)}
            for s in SOURCE_NAMES]
    return pd.DataFrame(rows)


def time_text(value: str | float | datetime | None) -> str:
    """A time as people read it, "2017-10-06 02:13 UTC", from an ISO string, epoch ms or a datetime."""
    if value is None or value == "":
        return "unknown"
    if isinstance(value, int | float):
        when = datetime.fromtimestamp(value / 1000, UTC)
    elif isinstance(value, datetime):
        when = value
    else:
        when = datetime.fromisoformat(str(value))  # Python 3.11 reads a trailing Z
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    return f"{when:%Y-%m-%d %H:%M} UTC"


def opening_article(api: Api) -> int | None:
    """The article the similar-articles page opens on: the top recommendation for the most active reader,
    so a recommendable one (None when the model knows no reader or recommends nothing)."""
    users = api.users(1)
    if not len(users):
        return None
    items = api.recommendations(int(users["user_id"].iloc[0]), 1)["items"]
    return int(items[0][C.ARTICLE_ID]) if items else None


def _age_text(hours: float) -> str:
    if hours < 1:
        return f"{hours * 60:.0f} min"
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours / 24:.1f} days"


def validation_status(data_root: str | Path) -> tuple[dict[str, Any] | None, pd.DataFrame]:
    """The validation summary (or None before any run) and one row per hour: hour, status, rows, reason."""
    from pipelines.lake import summary_path

    path = summary_path(data_root)
    if not path.exists():
        return None, pd.DataFrame(columns=["hour", "status", "rows", "reason"])
    summary = json.loads(path.read_text())
    hours = pd.DataFrame([{"hour": int(h["hour"]), "status": h["status"], "rows": int(h.get("rows") or 0),
                           "reason": h.get("reason") or ""} for h in summary.get("hours", {}).values()])
    if len(hours):
        hours = hours.sort_values("hour").reset_index(drop=True)
    return summary, hours


def latest_drift(reports_dir: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest `<reports_dir>/<run>/summary.json` of the drift monitor, or None when none exists."""
    runs = sorted(Path(reports_dir).glob("*/summary.json"), key=lambda p: p.stat().st_mtime)
    if not runs:
        return None
    return runs[-1].parent, json.loads(runs[-1].read_text())
