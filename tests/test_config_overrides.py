"""Deployed services override single params.yaml keys through NEWSREC__SECTION__KEY variables."""

from __future__ import annotations

import pytest

from pipelines.config import apply_env_overrides, load_params

pytestmark = pytest.mark.unit

PARAMS = {
    "serve": {"redis_url": None, "port": 8000, "challenger_share": 0.1},
    "import": {"context": {"click_deviceGroup": 1}},
}


def test_scalars_are_read_as_yaml():
    env = {"NEWSREC__SERVE__REDIS_URL": "redis://redis:6379/0", "NEWSREC__SERVE__PORT": "9000"}
    out = apply_env_overrides(PARAMS, env)
    assert out["serve"] == {"redis_url": "redis://redis:6379/0", "port": 9000, "challenger_share": 0.1}
    assert apply_env_overrides(PARAMS, {"NEWSREC__SERVE__CHALLENGER_SHARE": "null"})["serve"]["challenger_share"] is None


def test_nested_and_mixed_case_keys():
    out = apply_env_overrides(PARAMS, {"NEWSREC__IMPORT__CONTEXT__CLICK_DEVICEGROUP": "3"})
    assert out["import"]["context"] == {"click_deviceGroup": 3}


def test_the_cached_params_are_not_mutated():
    apply_env_overrides(PARAMS, {"NEWSREC__SERVE__PORT": "1"})
    assert PARAMS["serve"]["port"] == 8000


@pytest.mark.parametrize("name", ["NEWSREC__SERVE__REDIS_URI", "NEWSREC__SERVEX__PORT", "NEWSREC__SERVE__PORT__X"])
def test_a_key_params_yaml_lacks_is_an_error(name):
    with pytest.raises(KeyError, match=name):
        apply_env_overrides(PARAMS, {name: "1"})


def test_load_params_applies_the_environment(monkeypatch):
    monkeypatch.setenv("NEWSREC__DATA__ROOT", "/srv/newsrec")
    assert load_params("data")["root"] == "/srv/newsrec"
    monkeypatch.delenv("NEWSREC__DATA__ROOT")
    assert load_params("data")["root"] != "/srv/newsrec"
