"""What can be checked about docker/ without a Docker engine.

Every build context, Dockerfile, target, COPY source and mounted file exists; each image runs a real
command of the project; images are pinned and multi-stage, run as non-root and carry a HEALTHCHECK; the
compose file parses with the whole stack and a healthcheck per long-running service; and every
environment variable compose sets is one the code (or the named library) actually reads.
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest
import yaml

from pipelines.cluster import WORKER_ENVIRON

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"

pytestmark = pytest.mark.unit

EXPECTED_SERVICES = {
    "postgres", "redis", "redis-state", "redis-users", "s3", "s3-buckets", "mailpit", "mlflow",
    "airflow-init", "airflow-api-server", "airflow-scheduler", "airflow-dag-processor",
    "airflow-triggerer", "airflow-worker", "api", "dashboard", "dask-scheduler", "dask-worker",
}
ONE_SHOT = {"s3-buckets", "airflow-init"}


# --- a Dockerfile, read the way BuildKit reads it ------------------------------------------------------


@dataclass
class Stage:
    name: str | None
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def _logical_lines(text: str) -> list[str]:
    lines, current = [], ""
    for raw in text.splitlines():
        if not current and raw.lstrip().startswith("#"):
            continue
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        current += raw
        if current.strip():
            lines.append(current.strip())
        current = ""
    return lines


@cache
def parse_dockerfile(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages in order)."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(path.read_text()):
        op, _, rest = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(name, base))
        elif op == "ARG" and not stages:
            key, _, default = rest.partition("=")
            args[key.strip()] = default.strip()
        elif stages:
            stages[-1].instructions.append((op, rest.strip()))
    return args, stages


def exec_form(rest: str) -> list[str]:
    """CMD/ENTRYPOINT/HEALTHCHECK CMD arguments as argv (exec form is JSON, shell form is split)."""
    rest = rest.strip()
    return json.loads(rest) if rest.startswith("[") else shlex.split(rest)


def stage_chain(stages: list[Stage], target: str) -> list[Stage]:
    """The target stage and the stages it is built FROM, nearest first."""
    by_name = {s.name: s for s in stages if s.name}
    chain, current = [], by_name[target]
    while current is not None:
        chain.append(current)
        current = by_name.get(current.base)
    return chain


def effective(stages: list[Stage], target: str, op: str) -> str | None:
    """The last `op` instruction in effect for a target (inherited from its parent stages)."""
    for stage in stage_chain(stages, target):
        found = [rest for o, rest in stage.instructions if o == op]
        if found:
            return found[-1]
    return None


def dockerfiles() -> list[Path]:
    return sorted(DOCKER.glob("*Dockerfile"))


@cache
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def built_services() -> list[tuple[str, Path, Path, str | None]]:
    """(service, build context, dockerfile, target) for every service compose builds."""
    out = []
    for name, svc in compose()["services"].items():
        build = svc.get("build")
        if build:
            context = (COMPOSE.parent / build["context"]).resolve()
            out.append((name, context, context / build.get("dockerfile", "Dockerfile"), build.get("target")))
    return out


def final_targets() -> list[tuple[Path, str]]:
    """Every (Dockerfile, stage) that compose builds: the images that actually run."""
    return sorted({(dockerfile, target or parse_dockerfile(dockerfile)[1][-1].name)
                   for _, _, dockerfile, target in built_services()})


# --- Dockerfiles ---------------------------------------------------------------------------------------


def test_there_are_images_for_every_part():
    assert {p.name for p in dockerfiles()} >= {"Dockerfile", "mlflow.Dockerfile"}
    targets = {(p.name, t) for p, t in final_targets()}
    assert targets >= {("Dockerfile", "pipelines"), ("Dockerfile", "api"), ("Dockerfile", "dashboard"),
                       ("mlflow.Dockerfile", "runtime")}


@pytest.mark.parametrize("dockerfile", dockerfiles(), ids=lambda p: p.name)
def test_base_images_are_pinned_and_builds_are_multi_stage(dockerfile):
    _, stages = parse_dockerfile(dockerfile)
    names = {s.name for s in stages}
    assert len(stages) >= 2, "multi-stage: build tools stay out of the runtime image"
    for stage in stages:
        if stage.base in names:
            continue
        _, _, tag = stage.base.partition(":")
        assert tag and tag != "latest" and re.search(r"\d+\.\d+\.\d+", tag), f"{dockerfile.name}: unpinned {stage.base}"
    for op, rest in (i for s in stages for i in s.instructions):
        # Plain pip installs only the pinned installer; everything else goes through uv and the lock.
        for spec in re.findall(r"(?<!uv )pip install ((?:[^&;]+))", rest) if op == "RUN" else []:
            packages = [w.strip("\"'") for w in spec.split() if not w.startswith("-")]
            assert all("==" in p for p in packages), f"{dockerfile.name}: unpinned pip install {spec}"


@pytest.mark.parametrize("dockerfile", dockerfiles(), ids=lambda p: p.name)
def test_the_locked_stack_is_what_gets_installed(dockerfile):
    _, stages = parse_dockerfile(dockerfile)
    installs = [rest for s in stages for op, rest in s.instructions if op == "RUN" and "uv pip install" in rest]
    assert installs, f"{dockerfile.name} installs nothing with uv"
    locked = [r for r in installs if "requirements.lock" in r and ("--constraint" in r or " -r " in r)]
    assert locked, f"{dockerfile.name}: third-party packages must come pinned by requirements.lock"


@pytest.mark.parametrize(("dockerfile", "target"), final_targets(), ids=lambda v: getattr(v, "name", v))
def test_runtime_images_are_non_root_with_a_healthcheck(dockerfile, target):
    _, stages = parse_dockerfile(dockerfile)
    user = effective(stages, target, "USER")
    assert user and user.split(":")[0] not in {"root", "0"}, f"{target} runs as root"
    healthcheck = effective(stages, target, "HEALTHCHECK")
    assert healthcheck and healthcheck.split()[0] != "NONE", f"{target} has no HEALTHCHECK"
    assert "CMD" in healthcheck.split()


@pytest.mark.parametrize(("service", "context", "dockerfile", "target"), built_services(),
                         ids=lambda v: v if isinstance(v, str) else None)
def test_copy_sources_and_targets_exist(service, context, dockerfile, target):
    assert context.is_dir(), f"{service}: build context {context} missing"
    assert dockerfile.is_file(), f"{service}: {dockerfile} missing"
    _, stages = parse_dockerfile(dockerfile)
    if target:
        assert target in {s.name for s in stages}, f"{service}: no stage {target} in {dockerfile.name}"
    ignored = _dockerignored(context)
    for op, rest in (i for s in stages for i in s.instructions):
        if op not in {"COPY", "ADD"}:
            continue
        words = [w for w in shlex.split(rest) if not w.startswith("--")]
        if "--from=" in rest:
            continue
        for src in words[:-1]:
            assert (context / src).exists(), f"{dockerfile.name}: COPY source {src} missing from the context"
            assert src.split("/")[0] not in ignored, f"{dockerfile.name}: COPY {src} is excluded by .dockerignore"


def _dockerignored(context: Path) -> set[str]:
    path = context / ".dockerignore"
    if not path.exists():
        return set()
    return {ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")}


def test_the_context_leaves_out_data_and_secrets():
    ignored = _dockerignored(ROOT)
    assert {".git", ".venv", "data", "mlruns", "tests"} <= ignored


# --- the commands images and services run are real commands of the project --------------------------


def _assert_real_command(argv: list[str], where: str) -> None:
    from pipelines.cli import COMMANDS

    program, *rest = argv
    if program == "newsrec":
        assert rest and rest[0] in COMMANDS, f"{where}: `newsrec {rest[:1]}` is not a CLI command"
        target, _, func = COMMANDS[rest[0]][0].partition(":")
        module = importlib.import_module(target)
        assert callable(getattr(module, func or "main", None)), f"{where}: {COMMANDS[rest[0]][0]} is not callable"
    elif program == "airflow":
        assert rest[0] in {"scheduler", "api-server", "dag-processor", "triggerer", "db", "celery", "jobs"}, where
        if rest[0] == "celery":
            # The Celery worker command exists only when the Celery provider is installed.
            importlib.import_module("airflow.providers.celery.executors.celery_executor")
    elif program == "streamlit":
        assert rest[0] == "run" and (ROOT / rest[1]).is_file(), f"{where}: streamlit app {rest[1:2]} missing"
    elif program == "mlflow":
        from mlflow.cli import cli

        assert rest[0] in cli.commands, f"{where}: `mlflow {rest[0]}` does not exist"
    elif program == "python":
        assert rest[0] == "-c", where
        compile(rest[1], where, "exec")
    elif program == "dask":
        # Parsed by the very click commands `dask scheduler` / `dask worker` run: unknown flags or bad values fail.
        from distributed.cli import dask_scheduler, dask_worker

        command = {"scheduler": dask_scheduler.main, "worker": dask_worker.main}[rest[0]]
        command.make_context(f"dask {rest[0]}", list(rest[1:]))
    elif program == "celery":
        assert "--app" in rest, where
        module, _, attr = rest[rest.index("--app") + 1].rpartition(".")
        assert hasattr(importlib.import_module(module), attr), f"{where}: celery app {module}.{attr} missing"
    else:
        assert program in {"pg_isready", "redis-cli", "mc", "/mailpit"}, f"{where}: unknown program {program}"


@pytest.mark.parametrize(("dockerfile", "target"), final_targets(), ids=lambda v: getattr(v, "name", v))
def test_image_commands_are_real(dockerfile, target):
    _, stages = parse_dockerfile(dockerfile)
    cmd = effective(stages, target, "CMD")
    assert cmd, f"{target} has no CMD"
    _assert_real_command(exec_form(cmd), f"{dockerfile.name}:{target} CMD")
    check = effective(stages, target, "HEALTHCHECK")
    _assert_real_command(exec_form(check[check.index("CMD") + 3 :]), f"{dockerfile.name}:{target} HEALTHCHECK")


def test_service_commands_and_healthchecks_are_real():
    for name, svc in compose()["services"].items():
        if "command" in svc and "build" in svc:  # a third-party image's command is its entrypoint's args
            _assert_real_command(svc["command"], f"{name}.command")
        test = svc.get("healthcheck", {}).get("test")
        if test:
            kind, *argv = test
            if kind == "CMD-SHELL":
                argv = shlex.split(argv[0].replace("$${HOSTNAME}", "host"))
            _assert_real_command(argv, f"{name}.healthcheck")


def test_the_api_app_factory_and_serve_command_exist():
    from pipelines.cli import COMMANDS

    assert COMMANDS["serve"][0] == "pipelines.serve"
    app = importlib.import_module("serving.app")
    assert callable(app.create_app)


# --- compose --------------------------------------------------------------------------------------------


def test_compose_has_the_whole_stack_with_healthchecks():
    services = compose()["services"]
    assert set(services) == EXPECTED_SERVICES
    images = {dockerfile: stages for dockerfile, stages in ((p, parse_dockerfile(p)[1]) for p in dockerfiles())}
    for name, svc in services.items():
        if name in ONE_SHOT:
            assert svc.get("restart") == "no", f"{name} is one-shot"
            continue
        hc = svc.get("healthcheck")
        if hc is None and "build" in svc:  # the image's own HEALTHCHECK applies
            dockerfile = (COMPOSE.parent / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve()
            target = svc["build"].get("target") or images[dockerfile][-1].name
            hc = effective(images[dockerfile], target, "HEALTHCHECK")
        assert hc and not (isinstance(hc, dict) and hc.get("disable")), f"{name} has no healthcheck"
        assert svc.get("restart") == "unless-stopped", f"{name} is not restarted when it dies"
        if "image" in svc and "build" not in svc:
            tag = svc["image"].rpartition(":")[2]
            assert re.search(r"\d", tag) and tag != "latest", f"{name}: unpinned image {svc['image']}"


def test_dependencies_wait_for_health_and_exist():
    services = compose()["services"]
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            wanted = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            assert cond["condition"] in {wanted, "service_started"}, f"{name} -> {dep}: {cond}"


def test_bind_mounts_exist():
    for name, svc in compose()["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (COMPOSE.parent / source).exists(), f"{name}: mounted {source} missing"


def test_every_interpolated_secret_is_documented():
    text = COMPOSE.read_text()
    used = set(re.findall(r"\$\{(\w+)(?::?-[^}]*)?\}", text)) - {"HOSTNAME"}
    example = (DOCKER / ".env.example").read_text()
    documented = set(re.findall(r"^(\w+)=", example, flags=re.MULTILINE))
    assert used <= documented, f"undocumented in docker/.env.example: {sorted(used - documented)}"


# --- the environment each service gets is one something reads -----------------------------------------


@cache
def _airflow_options() -> dict[str, set[str]]:
    from airflow.configuration import conf

    # Provider sections ([celery]) join Airflow's config description once the provider is loaded.
    importlib.import_module("airflow.providers.celery.executors.celery_executor")
    return {s: set(v.get("options", {})) for s, v in conf.configuration_description.items()}


@cache
def _mlflow_env_names() -> set[str]:
    import mlflow.environment_variables as ev
    from mlflow.cli import cli

    names = {v.name for v in vars(ev).values() if hasattr(v, "name") and hasattr(v, "get")}
    for command in cli.commands.values():
        names |= {p.envvar for p in command.params if isinstance(getattr(p, "envvar", None), str)}
    return names


@cache
def _boto_env_names() -> set[str]:
    from botocore.configprovider import BOTOCORE_DEFAUT_SESSION_VARIABLES
    from botocore.credentials import EnvProvider

    names = {EnvProvider.ACCESS_KEY, EnvProvider.SECRET_KEY, EnvProvider.TOKENS[0]}
    for _, env_name, *_ in BOTOCORE_DEFAUT_SESSION_VARIABLES.values():
        names |= set(env_name) if isinstance(env_name, list | tuple) else {env_name} - {None}
    return names | {"AWS_ENDPOINT_URL_S3"}  # service-specific form of AWS_ENDPOINT_URL (botocore resolves it)


def _read_by_script(path: Path, name: str) -> bool:
    return re.search(rf"\$\{{?{name}\b", path.read_text()) is not None


# What each third-party image reads, from that image's own documentation.
IMAGE_ENV = {
    "postgres": {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"},
    "minio/minio": {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"},
}


def _service_env(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    return {str(k): str(v) for k, v in env.items()}


def _secret_env_names(params: dict) -> set[str]:
    """Variables a secret is read from: those params.yaml names (`alerts.password_env`, ...) and the erasure key."""
    from pipelines.erasures import KEY_ENV

    return {KEY_ENV} | {value for section in params.values() if isinstance(section, dict)
                        for key, value in section.items() if key.endswith("_env") and isinstance(value, str)}


@pytest.mark.parametrize("service", sorted(EXPECTED_SERVICES))
def test_environment_matches_what_the_code_reads(service):
    from dashboard.data import API_KEY_ENV
    from pipelines.config import apply_env_overrides, load_params

    svc = compose()["services"][service]
    env = _service_env(svc)
    params = load_params()
    image = svc.get("image", "").partition(":")[0]
    for name, value in env.items():
        where = f"{service}: {name}"
        if name.startswith("NEWSREC__"):
            apply_env_overrides(params, {name: value})  # raises when params.yaml has no such key
        elif name.startswith("AIRFLOW__"):
            section, _, key = name[len("AIRFLOW__") :].lower().partition("__")
            assert key in _airflow_options().get(section, set()), f"{where}: Airflow has no [{section}] {key}"
        elif name.startswith("MLFLOW_") and service == "mlflow" or name == "MLFLOW_S3_ENDPOINT_URL":
            assert name in _mlflow_env_names(), f"{where}: MLflow reads no such variable"
        elif name.startswith("AWS_"):
            assert name in _boto_env_names(), f"{where}: botocore reads no such variable"
        elif name in IMAGE_ENV.get(image, set()) or name in _secret_env_names(params):
            pass
        elif service == "api" and name == params["serve"]["api_keys_env"]:
            pass  # serving/access.py reads the keys from the variable params names
        elif service == "dashboard" and name == API_KEY_ENV:
            pass
        elif service == "dask-worker" and name in WORKER_ENVIRON:
            pass  # glibc's malloc reads these when the worker process starts (pipelines/cluster.py)
        elif service == "postgres":
            assert _read_by_script(DOCKER / "postgres" / "create-databases.sh", name), f"{where}: nothing reads it"
        else:
            pytest.fail(f"{where}: no part of the stack reads this variable")


def worker_env_user_store(services) -> str | None:
    """The user store the Airflow workers' refresh_index writes to."""
    return _service_env(services["airflow-worker"]).get("NEWSREC__SERVE__USER_STORE_URL")


def test_services_get_the_settings_their_code_needs():
    services = compose()["services"]
    api = _service_env(services["api"])
    # the API follows the hourly serving indexes the Airflow workers publish: same data volume, read-only
    assert "newsrec-data:/app/data:ro" in services["api"]["volumes"]
    assert api["NEWSREC__PATHS__DATA"] == _service_env(services["airflow-worker"])["NEWSREC__PATHS__DATA"]
    # the API's state in its own bounded Redis, never in the broker's (which must not evict)
    assert api["NEWSREC__SERVE__REDIS_URL"].startswith("redis://redis-state:")
    state = services["redis-state"]["command"]
    assert state[state.index("--maxmemory-policy") + 1] == "allkeys-lru" and "--maxmemory" in state
    broker = services["redis"]["command"]
    assert broker[broker.index("--maxmemory-policy") + 1] == "noeviction"
    # the hourly index's users: written by refresh_index, read by every API replica; never evicted
    users = services["redis-users"]["command"]
    assert users[users.index("--maxmemory-policy") + 1] == "noeviction"
    assert api["NEWSREC__SERVE__USER_STORE_URL"] == worker_env_user_store(services) == "redis://redis-users:6379/0"
    assert api["NEWSREC__MLFLOW__TRACKING_URI"] == "http://mlflow:5000"
    worker = _service_env(services["airflow-worker"])
    assert worker["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert worker["NEWSREC__STORAGE__RAW_URI"].startswith("s3://")
    assert worker["NEWSREC__MLFLOW__TRACKING_URI"] == "http://mlflow:5000"
    assert "NEWSREC_ERASURE_KEY" in worker  # tasks that read clicks honour the erasure register with it
    # Artifacts go where the server proxies them, never to a path inside one container.
    assert yaml.safe_load(worker["NEWSREC__MLFLOW__ARTIFACT_ROOT"]) is None
    dashboard = _service_env(services["dashboard"])
    assert dashboard["NEWSREC__DASHBOARD__API_URL"] == "http://api:8000"  # the API's container port
    mlflow = _service_env(services["mlflow"])
    assert mlflow["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql")
    assert mlflow["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    # Every bucket a service points at is created by the one-shot s3-buckets service.
    made = set(services["s3-buckets"]["command"][3:])
    pointed = {m for svc in services.values() for v in _service_env(svc).values()
               for m in re.findall(r"s3://([a-z0-9.\-]+)", v)}
    assert pointed <= made, f"buckets never created: {sorted(pointed - made)}"
    # One shared secret signs Airflow's task tokens: every Airflow component must see the same value.
    secrets = {_service_env(s).get("AIRFLOW__API_AUTH__JWT_SECRET") for n, s in services.items() if n.startswith("airflow")}
    assert len(secrets) == 1 and None not in secrets


def _option(argv: list[str], flag: str) -> str:
    assert flag in argv, f"{flag} not given explicitly in {argv}"
    return argv[argv.index(flag) + 1]


def _docker_bytes(text: str) -> int:
    """A compose memory size (`5g`, `512m`): binary units, as Docker reads them."""
    number, unit = re.fullmatch(r"(\d+)([bkmg]?)", text.lower()).groups()
    return int(number) * 1024 ** "bkmg".index(unit or "b")


def test_the_dask_cluster_runs_beside_the_airflow_worker():
    from dask.utils import parse_bytes

    services = compose()["services"]
    scheduler, worker, airflow = services["dask-scheduler"], services["dask-worker"], services["airflow-worker"]
    # The Airflow worker's image: client, scheduler and workers share dask, distributed and the steps' code.
    for svc in (scheduler, worker):
        assert svc["image"] == airflow["image"] and svc["build"] == airflow["build"]
        assert svc["profiles"] == ["dask"], "a small install does not start the cluster"
    # The workers read the data root at the path the Airflow worker writes it: tasks hand over paths.
    data = next(v for v in airflow["volumes"] if v.startswith("newsrec-data:"))
    assert f"{data}:ro" in worker["volumes"]
    # The workers' processes start with the environment the tests' and benchmarks' clusters have.
    assert WORKER_ENVIRON.items() <= _service_env(worker).items()
    # Every worker setting explicit, and the container leaves room above the nanny's limit.
    argv = worker["command"]
    assert argv[:2] == ["dask", "worker"]
    assert int(_option(argv, "--nworkers")) >= 1 and int(_option(argv, "--nthreads")) >= 1
    limit = parse_bytes(_option(argv, "--memory-limit"))
    assert limit * int(_option(argv, "--nworkers")) < _docker_bytes(worker["mem_limit"])
    assert "mem_limit" in scheduler
    # One address, three places: the scheduler's port, the workers' scheduler, the Airflow worker's setting.
    port = _option(scheduler["command"], "--port")
    address = f"tcp://dask-scheduler:{port}"
    assert argv[2] == address
    setting = _service_env(airflow)["NEWSREC__DASK__SCHEDULER"]
    variable, default = re.fullmatch(r"\$\{(\w+):-(\w+)\}", setting).groups()
    assert yaml.safe_load(default) is None, "no scheduler unless one is asked for: the one-process default"
    example = (DOCKER / ".env.example").read_text()
    assert f"{variable}={address}" in example and "COMPOSE_PROFILES=dask" in example
    assert {"COMPOSE_PROFILES", variable} <= set(re.findall(r"^(\w+)=", example, flags=re.MULTILINE))
    assert airflow["depends_on"]["dask-scheduler"] == {"condition": "service_healthy", "required": False}
    # Only the dashboard is published, and only to this host; the scheduler port stays on the compose network.
    dashboard = _option(scheduler["command"], "--dashboard-address").rpartition(":")[2]
    assert scheduler["ports"] == [f"127.0.0.1:{dashboard}:{dashboard}"] and "ports" not in worker
    # The health checks ask the HTTP servers the commands start.
    for svc in (scheduler, worker):
        http = _option(svc["command"], "--dashboard-address").rpartition(":")[2]
        assert f"http://127.0.0.1:{http}/health" in svc["healthcheck"]["test"][-1]


def test_readme_shows_the_deployment_diagram_of_the_docs():
    def diagram(text: str) -> str:
        start = text.index("```mermaid")
        return text[start : text.index("```", start + 10)]

    readme = (ROOT / "README.md").read_text()
    docs = (ROOT / "docs" / "deployment.md").read_text()
    assert "## Deployment" in readme
    assert diagram(readme[readme.index("## Deployment"):]) == diagram(docs)
    # Every service the diagram draws exists in the stack it describes.
    for node in ("mlflow", "api", "dash", "redis", "rds", "alb", "cd", "ses"):
        assert re.search(rf"^\s+{node}[\[\(]", diagram(docs), flags=re.MULTILINE), node


# Variables the Python, pip and uv tools themselves document; the image sets them for build and runtime hygiene.
TOOL_ENV = {"PATH", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "PIP_DISABLE_PIP_VERSION_CHECK",
            "PIP_NO_CACHE_DIR", "UV_NO_CACHE", "UV_COMPILE_BYTECODE", "UV_LINK_MODE", "AIRFLOW_HOME"}


@pytest.mark.parametrize("dockerfile", dockerfiles(), ids=lambda p: p.name)
def test_image_environment_is_read_by_something(dockerfile):
    code = "\n".join(p.read_text() for d in ("pipelines", "serving", "dashboard", "dags") for p in (ROOT / d).rglob("*.py"))
    _, stages = parse_dockerfile(dockerfile)
    for rest in (rest for s in stages for op, rest in s.instructions if op == "ENV"):
        for name in re.findall(r"(?:^|\s)(\w+)=", rest):
            if name.startswith("AIRFLOW__"):
                section, _, key = name[len("AIRFLOW__") :].lower().partition("__")
                assert key in _airflow_options().get(section, set()), f"{dockerfile.name}: {name}"
            elif name.startswith("MLFLOW_"):
                assert name in _mlflow_env_names(), f"{dockerfile.name}: {name}"
            elif name.startswith("NEWSREC"):
                assert name in code, f"{dockerfile.name}: no code reads {name}"
            else:
                assert name in TOOL_ENV, f"{dockerfile.name}: nothing reads {name}"
