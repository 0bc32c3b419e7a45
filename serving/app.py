"""The HTTP API: `create_app(settings)` builds a FastAPI app around the registry's champion (and challenger).

Endpoints are `async def` on purpose: a recommendation is a few milliseconds of CPU (candidate lookup,
feature assembly, LightGBM), which is cheaper inline on the event loop than handed to a thread pool
and fought over under the GIL.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint signatures at runtime, and the
# query bounds (k_max) come from settings inside create_app, which string annotations cannot see.
import asyncio
import logging
import math
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from pipelines.sources.base import names as source_names
from serving import recommend as rec
from serving.ab import CHALLENGER, CHAMPION, assign_variant
from serving.access import Access, read_keys
from serving.docs import add_offline_docs
from serving.eventlog import JsonLinesLog
from serving.explore import Explorer, make_explore_stats
from serving.live import LiveCounts, make_live_counts, with_live
from serving.metrics import PrometheusMiddleware, ServiceMetrics
from serving.models import BundleSource, IndexSource, ModelHolder, ServedModel
from serving.settings import Settings
from serving.state import UserStateStore, make_state_store

log = logging.getLogger("newsrec.serving")
# A request time this far after the serving state's cutoff gets a warning: nothing the service knows is that new
# (hourly refreshes keep the cutoff within the hour; a replay or a stalled refresh does not).
FAR_AHEAD_HOURS = 48

# Ids and context codes end up in int64 columns; bounding them turns overflow into a 422. The bound is the
# largest integer a JSON client (a float64 in JavaScript) can send exactly, far above any real id.
MAX_ID = 2**53 - 1


def _json_integer(value: Any) -> Any:
    """JSON Schema's integer: 3 or 3.0, but not true or "3" (which pydantic's lax mode would take)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a JSON integer")  # noqa: TRY004 - pydantic reports ValueError as a 422
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a JSON integer (NaN and Infinity are not JSON numbers)")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Id = Annotated[int, Field(ge=0, le=MAX_ID), BeforeValidator(_json_integer)]


# Request time: what the service treats as "now" (default: see serve.clock). Integers are epoch milliseconds.
# The years 1970-2099 in both spellings: far beyond any news, and well inside what a datetime holds once an
# offset is applied (9999-12-31T23:59:59-14:00 is year 10000 in UTC, which broke the service). An ISO time's
# year is judged as written, so the OpenAPI schema can say it (a pattern) and a fuzzer generates only times
# that are accepted.
MIN_YEAR, MAX_YEAR = 1970, 2099
MAX_TIME_MS = 4_102_444_799_999  # 2099-12-31T23:59:59.999Z
TIME_RANGE = "in the years 1970 to 2099: ISO 8601 (year as written) or epoch ms 0 to 4102444799999"
_ISO_YEARS = r"^(19[7-9][0-9]|20[0-9][0-9])-"  # MIN_YEAR..MAX_YEAR


def _is_number(text: str) -> bool:
    """Whatever Python reads as a number, exponents and nan included (pydantic would read it as a timestamp)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def _iso_only(value: Any) -> Any:
    """The date-time branch takes ISO strings only: numbers belong to the epoch-ms branch and its bounds."""
    numeric = not isinstance(value, str) or _is_number(value)
    if numeric and not isinstance(value, datetime):
        raise ValueError(f"a number here is epoch milliseconds, {TIME_RANGE}")
    return value


def _in_time_range(value: datetime) -> datetime:
    """An ISO time's year, as written, must lie in MIN_YEAR..MAX_YEAR (the schema's pattern)."""
    if not MIN_YEAR <= value.year <= MAX_YEAR:
        raise ValueError(f"the time must be {TIME_RANGE}")
    return value


IsoTime = Annotated[datetime, BeforeValidator(_iso_only), AfterValidator(_in_time_range),
                    WithJsonSchema({"type": "string", "format": "date-time", "pattern": _ISO_YEARS})]
TimeValue = Annotated[int, Field(ge=0, le=MAX_TIME_MS)] | IsoTime
# In a JSON body the epoch-ms branch is a JSON integer (not true, not "3"), as for ids.
TimeBody = Annotated[int, Field(ge=0, le=MAX_TIME_MS), BeforeValidator(_json_integer)] | IsoTime
TimeParam = Annotated[
    TimeValue | None,
    Query(description="request time: ISO 8601 date-time (UTC when no offset) or epoch milliseconds"),
]


class ArticleOut(BaseModel):
    article_id: int
    category_id: int
    created_at: datetime
    age_hours: float = Field(description="hours between publication and the request time")
    words_count: int


class RecommendedArticle(ArticleOut):
    rank: int
    score: float = Field(description="the ranker's score (higher is better; comparable within one list); for "
                                     "an explored slot, the Thompson draw of its click-through")
    sources: list[str] = Field(description=f"candidate generators that proposed it: {', '.join(source_names())}; "
                                           "explore for a fresh article given an exploration slot")


class Recommendations(BaseModel):
    user_id: int
    impression_id: str = Field(description="echo it in POST /v1/events to attribute the click")
    variant: str = Field(description="A/B arm: champion or challenger")
    model_name: str
    model_version: str
    cold_start: bool = Field(description="no history for this user: trending/fresh path")
    as_of: datetime
    items: list[RecommendedArticle]
    warnings: list[str] = Field(default_factory=list, description="what the service did with input it could not "
                                "use as given (an unknown context code, a time far past the newest data)")


class SimilarArticle(ArticleOut):
    rank: int
    score: float = Field(description="embedding cosine, or decayed co-read weight")


class Similar(BaseModel):
    article: ArticleOut
    model_version: str
    embedding: list[SimilarArticle] = Field(description="nearest recommendable articles by embedding")
    coclick: list[SimilarArticle] = Field(description="articles most co-read with it in sessions")


class ClickEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: Id
    article_id: Id
    timestamp: TimeBody | None = Field(
        None, description="when the click happened: ISO 8601 or epoch ms (default: the service clock)")
    impression_id: str | None = Field(None, max_length=64, description="the recommendation list it came from")


class EventAccepted(BaseModel):
    user_id: int
    article_id: int
    timestamp_ms: int
    recent_clicks: int = Field(description="clicks the service now holds for this user since the model's data")


class RecentRead(ArticleOut):
    clicked_at: datetime
    online: bool = Field(description="posted to this service after the model's data cutoff")


class KnownUser(BaseModel):
    user_id: int
    clicks: int = Field(description="clicks in the model's data")


class UserHistory(BaseModel):
    user_id: int
    known: bool = Field(description="the model's data or the service's online clicks hold reads of this user")
    items: list[RecentRead]


def _json_safe(value: Any) -> Any:
    """A validation error's echo of the input with NaN and infinities spelled as text (JSON has no such
    numbers, so the 422 could not be encoded and became a 500)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value).replace("inf", "Infinity").replace("nan", "NaN")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


class _BodyTooLarge(HTTPException):
    def __init__(self, limit: int, size: int | None = None):
        got = f"of {size:,} bytes " if size is not None else ""
        super().__init__(413, f"request body {got}is over the limit of {limit} bytes (serve.max_body_bytes)")


class BodyLimitMiddleware:
    """Refuse a request body over `limit` bytes with 413: at once when Content-Length says so, else as the
    chunks arrive (the endpoint never sees more than the limit)."""

    def __init__(self, app: Any, limit: int):
        self.app = app
        self.limit = int(limit)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await JSONResponse({"detail": _BodyTooLarge(self.limit, int(declared)).detail}, 413)(scope, receive, send)
            return
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge(self.limit)  # FastAPI renders it as the 413 it is
            return message

        await self.app(scope, limited, send)


def _ms(dt: datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _model_meta(model: ServedModel) -> dict[str, Any]:
    return {
        "model_name": model.ref.name,
        "version": model.ref.version,
        "run_id": model.ref.run_id,
        "loaded_at": _dt(int(model.loaded_at * 1000)).isoformat(),
        "cutoff": _dt(rec.cutoff_ms(model.bundle)).isoformat(),
        **model.info,
    }


def create_app(
    settings: Settings,
    *,
    source: BundleSource | None = None,
    state: UserStateStore | None = None,
    index_source: IndexSource | None = None,
    live: LiveCounts | None = None,
    wall: Callable[[], float] = time.time,
    poll: bool = True,
) -> FastAPI:
    """The service. `source` defaults to the MLflow registry, `state` to what settings configure."""
    if source is None:
        from serving.registry_source import MlflowBundleSource

        source = MlflowBundleSource(settings.tracking_uri, settings.model_name, settings.compile_ranker,
                                    own_state=settings.user_store is None)
    if state is None:
        state = make_state_store(
            settings.redis_url, settings.state_prefix, settings.state_max_clicks, settings.state_ttl_seconds,
            settings.state_max_users,
        )
    metrics = ServiceMetrics.create()
    if live is None:
        live = make_live_counts(settings.redis_url, settings.state_prefix)
    explore_stats = make_explore_stats(settings.redis_url, settings.state_prefix)
    explorer = Explorer(settings.explore_share, settings.explore_fresh_hours, settings.explore_prior[0],
                        settings.explore_prior[1], explore_stats, np.random.default_rng())

    def on_swap(slot: str, model: ServedModel | None) -> None:
        ref = model.ref if model else None
        metrics.set_model(slot, settings.model_name, ref.version if ref else None, ref.run_id if ref else None)
        if model is not None:
            metrics.swaps.labels(slot).inc()
            log.info("serving %s as %s over index hour %s", ref.uri, slot, model.index_hour or "of the model")

    if index_source is None and settings.hourly_index and settings.index_uri:
        from serving.index_source import MirroredIndexSource

        index_source = MirroredIndexSource(settings.index_uri, settings.index_dir, settings.compile_ranker,
                                           settings.user_store)
    elif index_source is None and settings.hourly_index and settings.index_dir is not None:
        from serving.index_source import FolderIndexSource

        index_source = FolderIndexSource(settings.index_dir, settings.compile_ranker, settings.user_store)
    access = Access(settings.auth, read_keys(settings.api_keys_env), settings.rate_limit_per_minute,
                    settings.redis_url, settings.state_prefix)
    holder = ModelHolder(source, settings.champion_alias, settings.challenger_alias, on_swap=on_swap,
                         index_source=index_source)
    impressions = clicks = None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        nonlocal impressions, clicks
        impressions = JsonLinesLog(settings.impression_log, settings.log_flush_seconds, settings.log_keep_days)
        clicks = JsonLinesLog(settings.click_log, settings.log_flush_seconds, settings.log_keep_days)
        app.state.logs = (impressions, clicks)
        holder.refresh()
        if poll:
            now = (lambda: int(wall() * 1000)) if settings.clock == "wall" else (lambda: None)
            holder.start(settings.poll_seconds, live=lambda p: with_live(p, live, now()),
                         live_seconds=settings.live_refresh_seconds, nice=settings.background_nice)
        try:
            yield
        finally:
            holder.stop()
            impressions.close()
            clicks.close()
            state.close()

    app = FastAPI(
        title="newsrec",
        version="1",
        description="Personalised news recommendations from the registry's champion ranker, with an A/B split.",
        lifespan=lifespan,
        docs_url=None,  # served from local files by add_offline_docs: the pages work without internet
        redoc_url=None,
    )
    add_offline_docs(app)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(PrometheusMiddleware, metrics=metrics)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _json_safe(jsonable_encoder(exc.errors()))}, status_code=422)

    if settings.redis_url or settings.user_store is not None:
        from redis.exceptions import RedisError

        @app.exception_handler(RedisError)
        async def redis_down(request: Request, exc: RedisError) -> JSONResponse:
            # Online clicks, counts or the users' state are in a Redis that did not answer within its short
            # timeouts: the request is refused at once (the client may retry) rather than served without them.
            log.warning("Redis did not answer: %s", exc)
            return JSONResponse({"detail": f"the service's Redis does not answer ({type(exc).__name__}): retry "
                                 "shortly"}, status_code=503, headers={"Retry-After": "1"})
    app.state.holder = holder
    app.state.live = live
    app.state.state = state
    app.state.metrics = metrics
    app.state.settings = settings

    def champion() -> ServedModel:
        model = holder.slots.champion
        if model is None:
            raise HTTPException(503, f"no model in service yet: alias '{settings.champion_alias}' of "
                                     f"'{settings.model_name}' is not loaded ({holder.last_error or 'not set'})")
        return model

    def as_of(model: ServedModel, time_: datetime | int | None) -> int:
        if time_ is not None:
            return time_ if isinstance(time_, int) else _ms(time_)
        return rec.cutoff_ms(model.bundle) if settings.clock == "cutoff" else int(wall() * 1000)

    def require_article(model: ServedModel, article_id: int) -> None:
        if not rec.has_article(model.bundle, article_id):
            raise HTTPException(404, f"article {article_id} is not in the catalogue of "
                                     f"{model.ref.name} version {model.ref.version}")

    # /v1: every request counts against its client's rate limit; personal data, writes and the models' details
    # also need an API key when serve.auth is on (serving/access.py)
    limited = [Depends(access.limit)]
    keyed = [Depends(access.limit), Depends(access.require_key)]

    @app.get("/healthz", tags=["ops"], summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], summary="Readiness: a champion bundle is loaded and user state answers",
             responses={503: {"description": "not ready, with the reasons"}})
    async def readyz() -> JSONResponse:
        slots = holder.slots
        reasons = []
        if slots.champion is None:
            reasons.append(f"no champion loaded ({holder.last_error or 'alias not set'})")
        if not state.ping():
            reasons.append("user state store does not answer")
        if slots.champion is not None and settings.user_store is not None:
            # a replica of the Redis user store serves the hourly index's users, never a model's own files
            if slots.champion.index_hour is None:
                reasons.append("no hourly index with its user state in Redis loaded yet (serving the model's own "
                               "state)")
            elif not slots.champion.bundle.users.ping():
                reasons.append("the served index's user state is not in Redis (expired or evicted, or Redis does "
                               "not answer)")
        body = {
            "status": "not ready" if reasons else "ready",
            "reasons": reasons,
            # what the last poll could not do (a version that failed to load, artifacts gone): still serving
            "warnings": holder.last_errors,
            "champion": slots.champion.ref.version if slots.champion else None,
            "challenger": slots.challenger.ref.version if slots.challenger else None,
        }
        return JSONResponse(body, status_code=503 if reasons else 200)

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", dependencies=keyed, tags=["models"],
             summary="The model versions in service and what they were trained on")
    async def models() -> dict[str, Any]:
        slots = holder.slots
        return {
            "champion": _model_meta(slots.champion) if slots.champion else None,
            "challenger": _model_meta(slots.challenger) if slots.challenger else None,
            "challenger_share": settings.challenger_share,
            "index": holder.index_pointer,
            "last_poll": _dt(int(holder.last_poll * 1000)).isoformat() if holder.last_poll else None,
            "last_error": holder.last_error,
        }

    @app.get("/v1/models/{slot}/evaluation", dependencies=keyed, tags=["models"], response_class=HTMLResponse,
             summary="The served model's evaluation report (tables and plots, one self-contained page)",
             responses={404: {"description": "no model in that slot, or its run has no report"}})
    async def evaluation(slot: Literal["champion", "challenger"]) -> HTMLResponse:
        model = getattr(holder.slots, slot)
        if model is None:
            raise HTTPException(404, f"no {slot} is served")
        fetch = getattr(source, "report", None)
        page = await asyncio.to_thread(fetch, model.ref) if fetch is not None else None
        if page is None:
            raise HTTPException(404, f"{model.ref.uri} has no evaluation report (registered before reports, "
                                     "or its run's artifacts are gone)")
        return HTMLResponse(page)

    @app.get(
        "/v1/users/{user_id}/recommendations",
        dependencies=keyed,
        tags=["recommendations"],
        summary="Top-k articles for a user (unknown users get the cold-start path)",
        response_model=Recommendations,
        responses={503: {"description": "no model loaded yet"}},
    )
    async def recommendations(
        user_id: Annotated[int, Path(ge=0, le=MAX_ID, description="Globo user id")],
        k: Annotated[int, Query(ge=1, le=settings.k_max, description="how many articles")] = settings.k_default,
        device: Annotated[int | None, Query(ge=0, le=MAX_ID, description="click_deviceGroup code")] = None,
        os: Annotated[int | None, Query(ge=0, le=MAX_ID, description="click_os code")] = None,
        referrer: Annotated[int | None, Query(ge=0, le=MAX_ID, description="click_referrer_type code")] = None,
        region: Annotated[int | None, Query(ge=0, le=MAX_ID, description="click_region code")] = None,
        environment: Annotated[int | None, Query(ge=0, le=MAX_ID, description="click_environment")] = None,
        time: TimeParam = None,
    ) -> Response:
        slots = holder.slots  # read once: a swap mid-request cannot mix two models
        if slots.champion is None:
            champion()
        variant = assign_variant(settings.ab_salt, user_id, settings.challenger_share)
        model = slots.champion
        if variant == CHALLENGER:
            if slots.challenger is not None:
                model = slots.challenger
            else:
                variant = CHAMPION
                metrics.fallbacks.labels("no_challenger").inc()
        now_ms = as_of(model, time)
        context = rec.Context(device=device, os=os, referrer=referrer, region=region, environment=environment)
        recent = state.recent(user_id)
        result = rec.recommend(model.bundle, user_id, recent, context, now_ms, k, settings.rank)
        ahead_h = (now_ms - rec.cutoff_ms(model.bundle)) / 3_600_000
        if ahead_h > FAR_AHEAD_HOURS:
            newest = _dt(rec.cutoff_ms(model.bundle)).isoformat()
            result.warnings.append(f"time is {ahead_h:,.0f} h after the newest data ({newest}): articles' ages "
                                   "and popularity are extrapolated that far")
        explored = rec.explore(model.bundle, result, explorer, user_id, recent, k, now_ms)
        explore_stats.shown(result.article_ids)
        if result.cold_start:
            metrics.fallbacks.labels("cold_start").inc()
        metrics.variants.labels(variant).inc()
        impression_id = uuid.uuid4().hex
        impressions.write({
            "impression_id": impression_id,
            "ts_ms": int(wall() * 1000),
            "as_of_ms": now_ms,
            "user_id": user_id,
            "variant": variant,
            "model_version": model.ref.version,
            "cold_start": result.cold_start,
            "articles": result.article_ids,
            "explored": explored,
        })
        body = Recommendations(
            user_id=user_id,
            impression_id=impression_id,
            variant=variant,
            model_name=model.ref.name,
            model_version=model.ref.version,
            cold_start=result.cold_start,
            as_of=_dt(now_ms),
            items=result.items,
            warnings=result.warnings,
        )
        # Validated once, above; returned as bytes so FastAPI does not validate and encode it a second time
        # (the schema in the OpenAPI spec still comes from response_model).
        return Response(body.model_dump_json(), media_type="application/json")

    @app.get(
        "/v1/articles/{article_id}",
        dependencies=limited,
        tags=["articles"],
        summary="One article's details",
        response_model=ArticleOut,
        responses={404: {"description": "unknown article"}, 503: {"description": "no model loaded yet"}},
    )
    async def article(
        article_id: Annotated[int, Path(ge=0, le=MAX_ID)],
        time: TimeParam = None,
    ) -> ArticleOut:
        model = champion()
        require_article(model, article_id)
        return ArticleOut(**rec.article_details(model.bundle, [article_id], as_of(model, time))[0])

    @app.get(
        "/v1/articles/{article_id}/similar",
        dependencies=limited,
        tags=["articles"],
        summary="Articles nearest by embedding, and most co-read in sessions",
        response_model=Similar,
        responses={404: {"description": "unknown article"}, 503: {"description": "no model loaded yet"}},
    )
    async def similar(
        article_id: Annotated[int, Path(ge=0, le=MAX_ID)],
        k: Annotated[int, Query(ge=1, le=settings.similar_k_max)] = settings.k_default,
        time: TimeParam = None,
    ) -> Similar:
        model = champion()
        require_article(model, article_id)
        now_ms = as_of(model, time)
        return Similar(
            article=ArticleOut(**rec.article_details(model.bundle, [article_id], now_ms)[0]),
            model_version=model.ref.version,
            **rec.similar(model.bundle, article_id, k, now_ms),
        )

    @app.get(
        "/v1/users",
        dependencies=keyed,
        tags=["recommendations"],
        summary="Users the model has history for: the most active, or a random sample",
        responses={503: {"description": "no model loaded yet"}},
    )
    async def users(
        n: Annotated[int, Query(ge=1, le=1000)] = 20,
        order: Annotated[Literal["active", "random"], Query()] = "active",
        seed: Annotated[int, Query(ge=0, le=2**32 - 1)] = 0,
    ) -> list[KnownUser]:
        return [KnownUser(**u) for u in rec.known_users(champion().bundle, n, order, seed)]

    @app.get(
        "/v1/users/{user_id}/history",
        dependencies=keyed,
        tags=["recommendations"],
        summary="A user's most recent reads: the model's history plus clicks posted since",
        response_model=UserHistory,
        responses={503: {"description": "no model loaded yet"}},
    )
    async def history(
        user_id: Annotated[int, Path(ge=0, le=MAX_ID)],
        n: Annotated[int, Query(ge=1, le=settings.k_max)] = settings.k_default,
    ) -> UserHistory:
        model = champion()
        known, items = rec.user_history(model.bundle, user_id, state.recent(user_id), n, as_of(model, None))
        return UserHistory(user_id=user_id, known=known, items=items)

    @app.post(
        "/v1/events",
        dependencies=keyed,
        tags=["events"],
        summary="Record a click; the user's next recommendations reflect it",
        status_code=202,
        response_model=EventAccepted,
        responses={400: {"description": "the body is not JSON"}, 404: {"description": "unknown article"},
                   503: {"description": "no model loaded yet"}},
    )
    async def events(event: ClickEvent) -> EventAccepted:
        model = champion()
        require_article(model, event.article_id)
        ts = as_of(model, event.timestamp)
        state.add_click(event.user_id, event.article_id, ts)
        live.add(event.article_id, ts)
        explore_stats.clicked(event.article_id)
        metrics.events.inc()
        clicks.write({
            "ts_ms": int(wall() * 1000),
            "event_ms": ts,
            "user_id": event.user_id,
            "article_id": event.article_id,
            "impression_id": event.impression_id,
        })
        return EventAccepted(user_id=event.user_id, article_id=event.article_id, timestamp_ms=ts,
                             recent_clicks=len(state.recent(event.user_id)))

    return app


def configure_logging(level: str) -> None:
    """The service's own lines (model and index loads and swaps, refusals) beside uvicorn's, at its level."""
    logger = logging.getLogger("newsrec")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)-9s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level.upper())


def app_from_env() -> FastAPI:
    """App factory for multi-worker uvicorn: every worker process builds its own app from params."""
    import os

    configure_logging(os.environ.get("NEWSREC_SERVE_LOG_LEVEL", "info"))
    return create_app(Settings.from_params(os.environ.get("NEWSREC_SERVE_PARAMS", "params.yaml")))
