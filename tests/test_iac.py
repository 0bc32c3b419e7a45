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
    redis = block('resource "aws_elasticache_replication_group" "state"')
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
