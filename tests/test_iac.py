"""Infrastructure as code, checked without a cloud: `terraform fmt`, a checkov scan of terraform/, the
Dockerfiles and the workflows (every skip justified in place), and the properties the deployment doc
promises (encryption, Multi-AZ, canary with rollback, the alarms) read off the HCL.

Providers cannot be downloaded here, so `terraform init/validate/plan` are not run.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TF = ROOT / "terraform"
TOOLS_VENV = ROOT / ".venv-tools"

pytestmark = pytest.mark.unit


def _tool(name: str) -> str:
    for candidate in (TOOLS_VENV / "bin" / name, ROOT / ".venv" / "bin" / name):
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    assert found, f"{name} not installed: `make setup` puts it in {TOOLS_VENV}"
    return found


@cache
def hcl() -> str:
    return "\n".join(p.read_text() for p in sorted(TF.rglob("*.tf")))


def block(header: str) -> str:
    """The text of one top-level block, e.g. `resource "aws_lb" "main"` or `module "raw_bucket"`."""
    text = hcl()
    start = text.index(header + " {")
    depth = 0
    for i in range(start, len(text)):
        depth += text[i] == "{"
        depth -= text[i] == "}"
        if depth == 0 and text[i] == "}":
            return text[start : i + 1]
    raise AssertionError(f"unterminated block {header}")


def test_terraform_fmt():
    terraform = shutil.which("terraform")
    assert terraform, "terraform is not installed"
    done = subprocess.run([terraform, "fmt", "-check", "-recursive", "-diff", str(TF)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"terraform fmt would change:\n{done.stdout}{done.stderr}"


@cache
def checkov_report() -> list[dict]:
    frameworks = ["terraform", "dockerfile", "github_actions"]
    cmd = [_tool("checkov"), "--compact", "--skip-download", "-o", "json",
           "-d", str(TF), "-d", str(ROOT / "docker"), "-d", str(ROOT / ".github"),
           "--framework", *frameworks]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, check=False)
    assert done.stdout.strip(), f"checkov printed nothing: {done.stderr[-2000:]}"
    # One JSON document per scanned directory, each an object or a list of objects (one per framework).
    reports, text, pos, decoder = [], done.stdout, 0, json.JSONDecoder()
    while (pos := _skip_space(text, pos)) < len(text):
        doc, pos = decoder.raw_decode(text, pos)
        reports += doc if isinstance(doc, list) else [doc]
    return reports


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def test_checkov_passes_with_only_justified_skips():
    reports = checkov_report()
    failed = [(r["check_type"], c["check_id"], c["resource"], c["file_path"])
              for r in reports for c in r["results"]["failed_checks"]]
    assert not failed, f"checkov failures: {failed}"
    types = {r["check_type"] for r in reports}
    assert {"terraform", "dockerfile", "github_actions"} <= types, types
    passed = sum(len(r["results"]["passed_checks"]) for r in reports)
    assert passed > 400, passed
    skipped = [c for r in reports for c in r["results"]["skipped_checks"]]
    for check in skipped:
        reason = (check.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason.split()) >= 5, f"{check['check_id']} on {check['resource']} skipped without a reason"


def test_every_skip_is_written_beside_its_resource():
    for path in TF.rglob("*.tf"):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if "checkov:skip=" in line:
                above = [ln for ln in lines[max(0, i - 6) : i] if not ln.strip().startswith("#")]
                assert above and re.match(r'\s*(resource|data|module) "', above[-1]), f"{path.name}:{i + 1}"
                assert re.search(r"checkov:skip=CKV2?_AWS_\d+:\S.{20,}", line), f"{path.name}:{i + 1}: no reason"


# --- what docs/deployment.md promises, read off the HCL --------------------------------------------------


def test_data_stores_are_encrypted_and_redundant():
    rds = block('resource "aws_db_instance" "mlflow"')
    for key, value in (("storage_encrypted", "true"), ("multi_az", "true"), ("deletion_protection", "true"),
                       ("publicly_accessible", "false"), ("iam_database_authentication_enabled", "true")):
        assert re.search(rf"\b{key}\s*=\s*{value}\b", rds), key
    assert int(re.search(r"backup_retention_period\s*=\s*(\d+)", rds).group(1)) >= 7
    redis = (TF / "modules" / "redis_group" / "main.tf").read_text()
    assert len(re.findall(r'source\s*=\s*"\./modules/redis_group"', hcl())) == 2  # the online state, the users
    for key in ("at_rest_encryption_enabled", "transit_encryption_enabled", "automatic_failover_enabled",
                "multi_az_enabled"):
        assert re.search(rf"{key}\s*=\s*true", redis), key
    bucket = (TF / "modules" / "private_bucket" / "main.tf").read_text()
    for key in ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets"):
        assert re.search(rf"{key}\s*=\s*true", bucket), key
    assert 'sse_algorithm     = "aws:kms"' in bucket and 'status = "Enabled"' in bucket
    modules = re.findall(r'module "(\w+)_bucket"', hcl())
    assert sorted(modules) == ["artifacts", "dags", "dvc", "raw"]
    assert "enable_key_rotation     = true" in block('resource "aws_kms_key" "main"')


def test_the_hourly_index_and_its_users_reach_the_api_tasks():
    """On AWS the hourly DAG and the API run on different machines: the index goes through S3, the users'
    state through a Redis that never evicts, and both sides are configured with the same settings."""
    users = block('module "users_redis"')
    assert re.search(r"parameter_group_name\s*=\s*aws_elasticache_parameter_group\.users\.name", users)
    assert re.search(r'name\s*=\s*"maxmemory-policy"\s*value\s*=\s*"noeviction"',
                     block('resource "aws_elasticache_parameter_group" "users"'))
    assert "module.users_redis.id" in block('resource "aws_cloudwatch_metric_alarm" "users_redis_memory"')
    api = block('resource "aws_ecs_task_definition" "api"')
    startup = (TF / "mwaa" / "startup.sh").read_text()
    for name in ("NEWSREC__REFRESH__PUBLISH_URI", "NEWSREC__SERVE__USER_STORE_URL"):
        assert name in api and name in startup, name
    assert "module.users_redis.secret_arn" in api
    assert 'serving_index_uri = "s3://${local.bucket["artifacts"].id}/serving_index"' in hcl()
    # the API role reads that prefix and nothing else in the bucket
    read = block('data "aws_iam_policy_document" "serving_index_read"')
    api_policy = block('data "aws_iam_policy_document" "api"')
    assert re.findall(r'actions\s*=\s*\[([^\]]*)\]', read + api_policy) == \
        ['"s3:GetObject"', '"s3:ListBucket"', '"kms:Decrypt"']
    assert '"${local.bucket["artifacts"].arn}/serving_index/*"' in read
    for policy in (api_policy, block('data "aws_iam_policy_document" "mwaa"')):
        assert "source_policy_documents = [data.aws_iam_policy_document.serving_index_read.json]" in policy


def test_raw_drops_expire():
    assert re.search(r"expire_days\s*=\s*var\.raw_retention_days", block('module "raw_bucket"'))


def test_services_run_private_behind_an_https_alb():
    for service in ("api", "dashboard", "mlflow"):
        svc = block(f'resource "aws_ecs_service" "{service}"')
        assert "assign_public_ip = false" in svc and "aws_subnet.private" in svc, service
    https = block('resource "aws_lb_listener" "https"')
    assert 'protocol          = "HTTPS"' in https and "TLS13" in https
    assert 'status_code = "HTTP_301"' in block('resource "aws_lb_listener" "http"')
    assert "drop_invalid_header_fields = true" in block('resource "aws_lb" "main"')


def test_api_deploys_are_canaries_that_roll_back_on_alarm():
    group = block('resource "aws_codedeploy_deployment_group" "api"')
    assert "ECSCanary" in group
    assert '"DEPLOYMENT_STOP_ON_ALARM"' in group and "enabled = true" in group
    for alarm in ("api_p99_latency", "api_5xx_rate", "api_fallback_rate"):
        assert f"aws_cloudwatch_metric_alarm.{alarm}" in group, alarm
    assert 'type = "CODE_DEPLOY"' in block('resource "aws_ecs_service" "api"')


def test_alarms_cover_latency_errors_fallbacks_and_dags():
    text = hcl()
    for name in ("api_p99_latency", "api_5xx_rate", "api_fallback_rate", "dag_failed", "mlflow_down"):
        assert f'resource "aws_cloudwatch_metric_alarm" "{name}"' in text, name
    assert 'extended_statistic  = "p99"' in block('resource "aws_cloudwatch_metric_alarm" "api_p99_latency"')
    # The DAGs alarmed on are exactly the DAGs dags/ defines.
    alarmed = set(re.findall(r'"(\w+)"', re.search(r"dag_ids\s*=\s*toset\(\[(.*?)\]\)", text).group(1)))
    defined = {m for p in (ROOT / "dags").glob("*.py") for m in re.findall(r'dag_id="(\w+)"', p.read_text())}
    assert alarmed == defined, f"alarmed {sorted(alarmed)} vs defined {sorted(defined)}"
    # The fallback alarm reads the API's own Prometheus counters.
    from serving.metrics import ServiceMetrics

    exposed = {m.name + "_total" for m in ServiceMetrics.create().registry.collect() if m.type == "counter"}
    alarm = block('resource "aws_cloudwatch_metric_alarm" "api_fallback_rate"')
    for metric in re.findall(r'metric_name = "(\w+)"', alarm):
        assert metric in exposed, f"the API exposes no {metric}"


def test_autoscaling_on_cpu_and_latency():
    assert "ECSServiceAverageCPUUtilization" in block('resource "aws_appautoscaling_policy" "api_cpu"')
    scale_out = block('resource "aws_cloudwatch_metric_alarm" "api_latency_scale_out"')
    assert "aws_appautoscaling_policy.api_latency.arn" in scale_out


def test_settings_handed_to_the_code_are_ones_it_reads():
    """Every NEWSREC__ variable terraform sets names a params.yaml key; MLflow's are MLflow's."""
    from pipelines.config import apply_env_overrides, load_params

    text = hcl() + (TF / "mwaa" / "startup.sh").read_text()
    names = set(re.findall(r'\b(NEWSREC__\w+)', text))
    assert {"NEWSREC__MLFLOW__TRACKING_URI", "NEWSREC__SERVE__REDIS_URL", "NEWSREC__STORAGE__RAW_URI"} <= names
    params = load_params()
    literal = dict(re.findall(r'name\s*=\s*"(NEWSREC__\w+)",\s*value\s*=\s*"([^"$]*)"', text))
    for name in names:  # the value terraform sets where it is written out, else any text (secrets, expressions)
        apply_env_overrides(params, {name: literal.get(name, "x")})  # raises for a key params.yaml lacks
    import mlflow.cli

    mlflow_env = {p.envvar for p in mlflow.cli.server.params if isinstance(p.envvar, str)}
    for name in set(re.findall(r'"(MLFLOW_\w+)"', text)):
        assert name in mlflow_env, name


def _statements(text: str) -> list[str]:
    out, start = [], 0
    while (start := text.find("statement {", start)) != -1:
        depth, i = 0, start
        while True:
            depth += text[i] == "{"
            depth -= text[i] == "}"
            if depth == 0 and text[i] == "}":
                break
            i += 1
        out.append(text[start : i + 1])
        start = i
    return out


def test_iam_allows_no_wildcard_actions():
    statements = _statements(hcl())
    assert len(statements) > 30
    for statement in statements:
        if '"Deny"' in statement or "actions" not in statement:  # WAF rule statements have none
            continue
        actions = re.findall(r'"([^"]+)"', re.search(r"actions\s*=\s*\[([^\]]*)\]", statement).group(1))
        if actions == ["kms:*"]:  # the key policy's account statement (see kms.tf)
            assert ":root" in statement
            continue
        assert not [a for a in actions if a.endswith(":*") or a == "*"], statement


def _blocks(kind: str) -> dict[str, str]:
    """Every top-level block of a resource type, by name."""
    return {name: block(f'resource "{kind}" "{name}"') for name in re.findall(rf'^resource "{kind}" "(\w+)"', hcl(), re.MULTILINE)}


def test_the_dask_cluster_is_private_and_reads_the_data_root():
    import yaml

    text = hcl()
    # The scheduler is found by name: Cloud Map registers the service the workers' command points at.
    assert 'name = "dask-scheduler"' in block('resource "aws_service_discovery_service" "dask_scheduler"')
    scheduler = block('resource "aws_ecs_service" "dask_scheduler"')
    assert "aws_service_discovery_service.dask_scheduler.arn" in scheduler
    address = re.search(r'dask_scheduler_address\s*=\s*"([^"]+)"', text).group(1)
    assert address == "tcp://dask-scheduler.${aws_service_discovery_private_dns_namespace.main.name}:8786"
    scheduler_task = block('resource "aws_ecs_task_definition" "dask_scheduler"')
    assert '"--port", "8786"' in scheduler_task
    worker_task = block('resource "aws_ecs_task_definition" "dask_worker"')
    assert '"dask", "worker", local.dask_scheduler_address' in worker_task
    for flag in ("--nworkers", "--nthreads", "--memory-limit"):
        assert f'"{flag}"' in worker_task, flag
    from pipelines.cluster import WORKER_ENVIRON

    for name, value in WORKER_ENVIRON.items():  # the worker processes' environment, as the tests' clusters have it
        assert f'{{ name = "{name}", value = "{value}" }}' in worker_task, name
    # The pipelines image (the code the steps run), private subnets, no public address, the cluster's own group.
    for name in ("dask_scheduler", "dask_worker"):
        assert 'local.image["pipelines"]' in block(f'resource "aws_ecs_task_definition" "{name}"'), name
        svc = block(f'resource "aws_ecs_service" "{name}"')
        assert "assign_public_ip = false" in svc and "aws_subnet.private" in svc, name
        assert "security_groups  = [aws_security_group.dask.id]" in svc, name
    # Nothing reaches the cluster from 0.0.0.0/0; the scheduler's port only from its own group; the dashboard only
    # from the operators' networks.
    rules = {n: b for n, b in _blocks("aws_vpc_security_group_ingress_rule").items()
             if re.search(r"^\s*security_group_id\s*=\s*aws_security_group\.dask\.id$", b, re.MULTILINE)}
    assert set(rules) == {"dask_cluster", "dask_dashboard"}, sorted(rules)
    for name, rule in rules.items():
        assert "0.0.0.0/0" not in rule and "::/0" not in rule, name
    assert "referenced_security_group_id = aws_security_group.dask.id" in rules["dask_cluster"]
    ranges = re.search(r"dask_port_ranges = \{(.*?)\}", text, re.DOTALL).group(1)
    assert "[8786, 8790]" in ranges
    assert "toset(var.dask_dashboard_cidrs)" in rules["dask_dashboard"] and "from_port         = 8787" in rules["dask_dashboard"]
    # The data root: encrypted EFS, TLS only, through one access point; the workers mount it read-only where the
    # compose worker mounts its volume, and may only mount (no ClientWrite).
    efs = block('resource "aws_efs_file_system" "data"')
    assert "encrypted        = true" in efs and "aws_kms_key.main.arn" in efs
    policy = block('data "aws_iam_policy_document" "efs_data"')
    assert "aws:SecureTransport" in policy and "elasticfilesystem:AccessPointArn" in policy
    assert 'transit_encryption = "ENABLED"' in worker_task and 'iam             = "ENABLED"' in worker_task
    mount = re.search(r'\{ sourceVolume = "data", containerPath = "([^"]+)", readOnly = true \}', worker_task)
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    compose_mount = next(v for v in compose["services"]["dask-worker"]["volumes"] if v.startswith("newsrec-data:"))
    assert mount and compose_mount.split(":")[1] == mount.group(1)
    role = block('data "aws_iam_policy_document" "dask_worker"')
    assert re.findall(r'actions\s*=\s*\[([^\]]*)\]', role) == ['"elasticfilesystem:ClientMount"']
    # Worker count and size are variables; no cluster runs unless asked for.
    for variable in ("dask_workers", "dask_worker_cpu", "dask_worker_memory"):
        assert f'variable "{variable}"' in text, variable
    assert re.search(r'variable "dask_workers" \{.*?default\s*=\s*0\b', text, re.DOTALL)
    assert "desired_count    = var.dask_workers" in block('resource "aws_ecs_service" "dask_worker"')
