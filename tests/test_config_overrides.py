"""Deployed services override single params.yaml keys through NEWSREC__SECTION__KEY variables."""

from __future__ import annotations

import pytest

from pipelines.config import OverrideError, apply_env_overrides, load_params

pytestmark = pytest.mark.unit

PARAMS = {
    "serve": {"redis_url": None, "port": 8000, "challenger_share": 0.1},
    "import": {"context": {"click_deviceGroup": 1}},
}


PARAMS["serve"].update({"state_prefix": "newsrec:recent:", "hourly_index": True, "explore_prior": [1, 20]})


def test_values_are_read_as_the_type_of_their_default():
    env = {"NEWSREC__SERVE__REDIS_URL": "redis://redis:6379/0", "NEWSREC__SERVE__PORT": "9000",
           "NEWSREC__SERVE__CHALLENGER_SHARE": "0", "NEWSREC__SERVE__STATE_PREFIX": "newsrec:other:",
           "NEWSREC__SERVE__HOURLY_INDEX": "False", "NEWSREC__SERVE__EXPLORE_PRIOR": "[2, 30]"}
    out = apply_env_overrides(PARAMS, env)["serve"]
    assert out == {"redis_url": "redis://redis:6379/0", "port": 9000, "challenger_share": 0.0,
                   "state_prefix": "newsrec:other:", "hourly_index": False, "explore_prior": [2, 30]}
    assert isinstance(out["challenger_share"], float)
    assert apply_env_overrides(PARAMS, {"NEWSREC__SERVE__REDIS_URL": "null"})["serve"]["redis_url"] is None


@pytest.mark.parametrize(("name", "value", "words"), [
    # Read as YAML, these used to become a mapping {"newsrec": {"recent": None}}-like value and True.
    ("NEWSREC__SERVE__STATE_PREFIX", "newsrec:recent:", None),
    ("NEWSREC__SERVE__CHALLENGER_SHARE", "yes", "must be a number"),
    ("NEWSREC__SERVE__CHALLENGER_SHARE", "nan", "finite"),
    ("NEWSREC__SERVE__CHALLENGER_SHARE", "null", "null only unsets"),
    ("NEWSREC__SERVE__PORT", "80.5", "must be an integer"),
    ("NEWSREC__SERVE__PORT", "true", "must be an integer"),
    ("NEWSREC__SERVE__HOURLY_INDEX", "yes", "must be true or false"),
    ("NEWSREC__SERVE__EXPLORE_PRIOR", "{a: 1}", "items must be numbers"),
    ("NEWSREC__SERVE__EXPLORE_PRIOR", "[1, yes]", "items must be numbers"),
    ("NEWSREC__SERVE__EXPLORE_PRIOR", "1,x", "items must be numbers"),
    ("NEWSREC__SERVE__REDIS_URL", "{a: 1}", "single value"),
])
def test_a_value_of_the_wrong_type_fails_naming_the_variable(name, value, words):
    if words is None:  # taken as written: a string default takes the text
        key = name.rsplit("__", 1)[1].lower()
        assert apply_env_overrides(PARAMS, {name: value})["serve"][key] == value
        return
    with pytest.raises(OverrideError, match=name) as e:
        apply_env_overrides(PARAMS, {name: value})
    assert words in str(e.value)


def test_a_list_is_yaml_or_comma_separated_items():
    params = {"alerts": {"to": ["mlops@localhost"]}, "serve": {"explore_prior": [1, 20]}}
    env = {"NEWSREC__ALERTS__TO": "a@example.org, b@example.org", "NEWSREC__SERVE__EXPLORE_PRIOR": "2, 0.5"}
    out = apply_env_overrides(params, env)
    assert out["alerts"]["to"] == ["a@example.org", "b@example.org"] and out["serve"]["explore_prior"] == [2, 0.5]
    assert apply_env_overrides(params, {"NEWSREC__ALERTS__TO": "[x@example.org]"})["alerts"]["to"] == ["x@example.org"]


def test_the_service_fails_at_startup_on_a_bad_override(monkeypatch):
    from serving.settings import Settings

    monkeypatch.setenv("NEWSREC__SERVE__CHALLENGER_SHARE", "yes")
    with pytest.raises(OverrideError, match="NEWSREC__SERVE__CHALLENGER_SHARE='yes': must be a number"):
        Settings.from_params()


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
    monkeypatch.setenv("NEWSREC__PATHS__DATA", "/srv/newsrec")
    assert load_params("paths")["data"] == "/srv/newsrec"
    monkeypatch.delenv("NEWSREC__PATHS__DATA")
    assert load_params("paths")["data"] != "/srv/newsrec"
