"""Fuzzing the API from its own OpenAPI document (schemathesis): no input may produce a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from serving_support import ServerThread

from serving.app import create_app
from serving.settings import Settings


@pytest.fixture(scope="module")
def served_schema(serving_registry, tmp_path_factory):
    logs = tmp_path_factory.mktemp("fuzz_logs")
    app = create_app(
        Settings.from_params(tracking_uri=serving_registry["tracking_uri"], challenger_share=0.5,
                             impression_log=logs / "impressions.jsonl", click_log=logs / "clicks.jsonl"),
        poll=False,
    )
    # Over real HTTP: the app's lifespan loads the champion, as in service.
    with ServerThread(app) as server:
        yield schemathesis.openapi.from_url(f"{server.url}/openapi.json")


def _operations(schema):
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.integration
def test_schema_covers_the_api(served_schema):
    labels = {op.label for op in _operations(served_schema)}
    assert "GET /v1/users/{user_id}/recommendations" in labels and "POST /v1/events" in labels


WITH_INPUT = [
    "GET /v1/users",
    "GET /v1/users/{user_id}/recommendations",
    "GET /v1/users/{user_id}/history",
    "GET /v1/articles/{article_id}",
    "GET /v1/articles/{article_id}/similar",
    "POST /v1/events",
]
WITHOUT_INPUT = ["GET /v1/models", "GET /readyz", "GET /healthz", "GET /metrics"]
# Operations without parameters have no invalid input to generate.
CASES = [(label, schemathesis.GenerationMode.POSITIVE) for label in WITH_INPUT + WITHOUT_INPUT] + [
    (label, schemathesis.GenerationMode.NEGATIVE) for label in WITH_INPUT
]


@pytest.mark.integration
@pytest.mark.parametrize(("label", "mode"), CASES, ids=[f"{m.value}-{label}" for label, m in CASES])
def test_no_input_makes_the_api_fail(served_schema, label, mode):
    """Schema-valid (positive) and schema-violating (negative) inputs: responses conform, none is a 5xx,
    invalid input is rejected with a 4xx."""
    operation = next(op for op in _operations(served_schema) if op.label == label)
    strategy = operation.as_strategy(generation_mode=mode)

    @given(case=strategy)
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case):
        case.call_and_validate()

    run()
