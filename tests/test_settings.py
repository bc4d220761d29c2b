import dataclasses
import inspect
import os
import re
from pathlib import Path

import pytest

from service.core import settings as settings_module
from service.core.settings import ConfigError, Settings, from_mapping, read_environment, variables
from stack.launcher import ROOT

ENV_EXAMPLE = ROOT / ".env.example"

KEY = "k" * 16


def test_defaults():
    s = from_mapping({"API_KEY": KEY})
    assert s.api_keys == (KEY.encode(),)
    assert s.fraud_threshold is None  # the model's manifest decides
    assert s.model_path == Path("model/fraud-model.joblib")
    assert s.model_version is None and s.model_sha256 is None
    assert s.port == 8080 and s.workers >= 1


def test_settings_are_frozen():
    s = from_mapping({"API_KEY": KEY})
    with pytest.raises(AttributeError):
        s.fraud_threshold = 10  # type: ignore[misc]


def test_key_rotation_list():
    s = from_mapping({"API_KEY": f" {KEY}a , {KEY}b ,"})
    assert s.api_keys == (f"{KEY}a".encode(), f"{KEY}b".encode())


def test_keys_never_in_repr():
    assert KEY not in repr(from_mapping({"API_KEY": KEY}))


@pytest.mark.parametrize(
    "env, variable",
    [
        ({}, "API_KEY"),
        ({"API_KEY": "   "}, "API_KEY"),
        ({"API_KEY": "short"}, "API_KEY"),
        ({"API_KEY": KEY, "FRAUD_THRESHOLD": "abc"}, "FRAUD_THRESHOLD"),
        ({"API_KEY": KEY, "FRAUD_THRESHOLD": "101"}, "FRAUD_THRESHOLD"),
        ({"API_KEY": KEY, "FRAUD_THRESHOLD": "-1"}, "FRAUD_THRESHOLD"),
        ({"API_KEY": KEY, "PORT": "0"}, "PORT"),
        ({"API_KEY": KEY, "PORT": "http"}, "PORT"),
        ({"API_KEY": KEY, "WORKERS": "0"}, "WORKERS"),
        ({"API_KEY": KEY, "MODEL_SHA256": "abc"}, "MODEL_SHA256"),
        ({"API_KEY": KEY, "MODEL_PATH": "  "}, "MODEL_PATH"),
        ({"API_KEY": KEY, "FEATURE_STORE_URL": "http://127.0.0.1:6379"}, "FEATURE_STORE_URL"),
        ({"API_KEY": KEY, "FEATURE_STORE_URL": "redis://127.0.0.1:port/0"}, "FEATURE_STORE_URL"),
        ({"API_KEY": KEY, "FEATURE_STORE_URL": "redis://127.0.0.1:6379/0?socket_timeout=x"}, "FEATURE_STORE_URL"),
    ],
)
def test_invalid_values_name_the_variable(env, variable):
    with pytest.raises(ConfigError) as e:
        from_mapping(env)
    message = str(e.value)
    assert message.startswith(variable)
    assert "\n" not in message


def test_bad_key_is_not_echoed():
    with pytest.raises(ConfigError) as e:
        from_mapping({"API_KEY": "secret-but-short"[:10]})
    assert "secret-but" not in str(e.value)


def test_environment_wins_over_env_file(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text(f"API_KEY={KEY}\nFRAUD_THRESHOLD=70\nPORT=9000\n")
    merged = read_environment({"ENV_FILE": str(env_file), "FRAUD_THRESHOLD": "30"})
    s = from_mapping(merged)
    assert s.fraud_threshold == 30 and s.port == 9000 and s.api_keys == (KEY.encode(),)


def test_missing_env_file_is_fine(tmp_path):
    assert read_environment({"ENV_FILE": str(tmp_path / "absent")})["ENV_FILE"].endswith("absent")


def test_defaults_are_declared_once_on_the_fields():
    """from_mapping adds nothing of its own: unset variables are the dataclass's defaults."""
    assert from_mapping({"API_KEY": KEY}) == Settings(api_keys=(KEY.encode(),))
    assert from_mapping({"API_KEY": KEY}).workers == len(os.sched_getaffinity(0))
    assert from_mapping({"API_KEY": KEY, "WORKERS": "", "PORT": ""}) == Settings(api_keys=(KEY.encode(),))


def test_every_setting_has_a_variable_and_a_parser():
    for f in dataclasses.fields(Settings):
        assert f.metadata["variable"].isupper() and callable(f.metadata["parse"]), f.name
    assert len(variables()) == len(dataclasses.fields(Settings))  # no variable read into two fields


# Documented in .env.example beside the settings, read by others: prometheus-client (gunicorn.conf.py),
# OpenTelemetry's SDK (service/telemetry/tracing.py).
NOT_SETTINGS = {
    "PROMETHEUS_MULTIPROC_DIR",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_SERVICE_NAME",
    "OTEL_BSP_MAX_QUEUE_SIZE",
}


def env_example() -> dict[str, tuple[bool, str]]:
    """.env.example's variables: name -> (set, or only shown in a comment; the value written)."""
    lines = re.finditer(r"^(#?)([A-Z][A-Z0-9_]*)=(.*)$", ENV_EXAMPLE.read_text(), re.M)
    return {m[2]: (m[1] == "", m[3]) for m in lines}


def test_env_example_documents_exactly_the_settings():
    assert set(env_example()) == set(variables()) | NOT_SETTINGS


def test_env_example_shows_each_settings_default_and_only_valid_values():
    """A copy of .env.example changes nothing but API_KEY, and a value it shows for a setting that
    has a default is that default; another value is shown only for a setting off by default (no
    value: None, or an empty list), or one whose default is computed (WORKERS: the cores)."""
    for name, (is_set, value) in env_example().items():
        if name in NOT_SETTINGS or not value:
            continue
        f = variables()[name]
        parsed = f.metadata["parse"](value)  # raises for a value the service would refuse
        if f.default_factory is not dataclasses.MISSING or f.default in (None, ()):
            assert not is_set, f"{name}={value} is set in .env.example, but its default is computed or off"
            continue
        assert parsed == f.default, f"{name}: .env.example shows {value}, the default is {f.default!r}"


def test_the_docs_example_of_a_setting_is_a_line_of_settings():
    """docs/extending.md and the settings module show one field as the example of a setting."""
    source = inspect.getsource(Settings)
    for text in ((ROOT / "docs" / "extending.md").read_text(), settings_module.__doc__ or ""):
        [example] = re.findall(r"^[ \t]*(\w+: [^=\n]+ = setting\(.*\))$", text, re.M)
        assert f"    {example}\n" in source, example


def test_each_variable_is_parsed_into_its_field():
    env = {"API_KEY": KEY, "WORKERS": "3", "OOD_Z": "2.5", "MODEL_REQUIRED": "yes", "METRICS_ALLOW": "10.0.0.1/8"}
    s = from_mapping(env)
    assert (s.workers, s.ood_z, s.model_required, s.metrics_allow) == (3, 2.5, True, ("10.0.0.0/8",))
