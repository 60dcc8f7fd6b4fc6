"""The services' shared environment parsing: defaults, minimums, one wording."""

from __future__ import annotations

import pytest

from kubelambda.envconfig import ConfigError, env_int, env_number
from kubelambda.gateway.config import load_config


def test_unset_or_empty_is_the_default() -> None:
    assert env_number({}, "X", 2.5, 0.0) == 2.5
    assert env_int({"X": ""}, "X", 7, 0) == 7


def test_numbers_and_whole_numbers() -> None:
    assert env_number({"X": "0.25"}, "X", 1.0, 0.0) == 0.25
    assert env_int({"X": "12"}, "X", 1, 0) == 12
    # Helm renders a large number from values.yaml as a float.
    assert env_int({"X": "1e+06"}, "X", 1, 0) == 1_000_000


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("abc", "X must be a number, got 'abc'"),
        ("1.5", "X must be an integer, got '1.5'"),
        ("inf", "X must be an integer, got 'inf'"),
        ("nan", "X must be an integer, got 'nan'"),
        ("-2", "X must be at least 0, got -2"),
    ],
)
def test_unusable_values_name_the_variable(raw: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{message}$"):
        env_int({"X": raw}, "X", 1, 0)


def test_the_gateway_reads_its_settings_with_them() -> None:
    config = load_config({"KUBELAMBDA_GATEWAY_MAX_CONCURRENCY": "2e3"})
    assert config.max_concurrency == 2000
    name = "KUBELAMBDA_GATEWAY_COLD_START_SECONDS"
    with pytest.raises(ConfigError, match=f"^{name} must be at least 0, got -1$"):
        load_config({name: "-1"})
