"""`newsrec serve`: the recommendation API (serving.app) under uvicorn."""

from __future__ import annotations

import sys
from pathlib import Path

# One request is one thread's work; the service scales with worker processes. OpenMP (faiss) and BLAS
# would otherwise start a thread per core in every worker, and their idle threads spin: with two workers on
# two cores that spinning took the CPU the other worker needed (p99 at 200 req/s: 509 ms -> 36 ms).
# Set before those libraries load (they are imported lazily), so workers inherit it; an explicit value wins.
SINGLE_THREADED = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def main(argv: list[str] | None = None) -> int:
    import os

    for var in SINGLE_THREADED:
        os.environ.setdefault(var, "1")
    from pipelines.config import step_parser
    from serving.settings import Settings

    parser = step_parser("serve", __doc__)
    parser.add_argument("--host", help="bind address (default: serve.host)")
    parser.add_argument("--port", type=int, help="port (default: serve.port)")
    parser.add_argument("--workers", type=int, default=1,
                        help="uvicorn worker processes; more than one needs serve.redis_url (shared user state)")
    parser.add_argument("--tracking-uri", help="MLflow tracking/registry URI (default: mlflow.tracking_uri)")
    parser.add_argument("--redis-url", help="online user state in Redis (default: serve.redis_url)")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)

    overrides = {k: v for k, v in {"host": args.host, "port": args.port, "tracking_uri": args.tracking_uri,
                                   "redis_url": args.redis_url}.items() if v is not None}
    settings = Settings.from_params(args.params, **overrides)
    if args.workers > 1 and not settings.redis_url:
        # Each worker would keep its own in-process state: a click posted to one would be invisible to the others.
        print("newsrec serve: --workers > 1 needs serve.redis_url (or --redis-url) so workers share user state",
              file=sys.stderr)
        return 2

    problem = champion_problem(settings)
    if problem:
        print(f"newsrec serve: {problem}", file=sys.stderr)
    os.environ["NEWSREC_SERVE_LOG_LEVEL"] = args.log_level  # workers configure their logging from it

    import uvicorn

    # No access log: its lines name user ids in their paths (/v1/users/ID/...) and would stay in container logs
    # (CloudWatch keeps them a year) where `newsrec forget-user` cannot erase them. Requests are counted in
    # /metrics; impressions and clicks are logged by id in the event logs, which the erasure rewrites.
    if args.workers > 1:
        # Workers are separate processes: each builds its own app from the same params (see factory below).
        os.environ["NEWSREC_SERVE_PARAMS"] = str(args.params)
        for key, value in overrides.items():
            section = "MLFLOW" if key == "tracking_uri" else "SERVE"
            os.environ[f"NEWSREC__{section}__{key.upper()}"] = str(value)
        uvicorn.run("serving.app:app_from_env", factory=True, host=settings.host, port=settings.port,
                    workers=args.workers, log_level=args.log_level, access_log=False)
        return 0

    from serving.app import configure_logging, create_app

    configure_logging(args.log_level)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=args.log_level,
                access_log=False)
    return 0


def champion_problem(settings) -> str | None:
    """Why the service would start with nothing to serve, and what makes a champion; None when one exists."""
    how = ("`make quickstart` (or `dvc repro`) trains, registers and promotes one; `newsrec promote` promotes "
           "a registered challenger. The API starts anyway: /readyz and recommendations answer 503 until a "
           f"champion exists, and it is picked up within serve.poll_seconds ({settings.poll_seconds:g} s)")
    uri = settings.tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return f"no MLflow registry at {uri.removeprefix('sqlite:///')} (mlflow.tracking_uri): no champion. {how}"
    from serving.registry_source import MlflowBundleSource

    try:
        ref = MlflowBundleSource(uri, settings.model_name, compile_ranker=False).resolve(settings.champion_alias)
    except Exception as exc:  # noqa: BLE001 - any registry failure is worth one line before starting
        return f"cannot read the registry at {uri}: {exc}. {how}"
    if ref is None:
        return f"registry {uri} has no '{settings.champion_alias}' for model '{settings.model_name}'. {how}"
    return None
