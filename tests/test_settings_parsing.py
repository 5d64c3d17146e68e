"""Unit tests of the settings parsers: every value a user can type, good and bad."""

from __future__ import annotations

import pytest

from runalways import _policy, _settings
from runalways.backends.flock import FlockBackend
from runalways.errors import SettingError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", True),
        ("TRUE", True),
        (" yes ", True),
        ("on", True),
        ("0", False),
        ("False", False),
        ("no", False),
        ("OFF", False),
    ],
)
def test_yes_no_values(text: str, expected: bool) -> None:
    assert _settings.parse_bool(text, "X") is expected


def test_a_bad_yes_no_value_names_the_variable_and_the_choices() -> None:
    with pytest.raises(SettingError, match=r"^RUNALWAYS_SILENT='maybe' is not a yes/no value; use one of 1/true"):
        _settings.parse_bool("maybe", "RUNALWAYS_SILENT")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3", (3, 1.0)),
        ("0", (0, 1.0)),
        ("5,0.5", (5, 0.5)),
        (" 2 , 3 ", (2, 3.0)),
        (4, (4, 1.0)),
        ((2, 0.25), (2, 0.25)),
    ],
)
def test_retry_values(value: _settings.RetryValue, expected: tuple[int, float]) -> None:
    assert _settings.parse_retry(value, "RUNALWAYS_RETRY") == expected


@pytest.mark.parametrize("value", ["", "x", "-1", "1.5", "3,", "3,0", "3,-1", "3,inf", "3,nan", ",2", "1,2,3"])
def test_bad_retry_values(value: str) -> None:
    with pytest.raises(SettingError, match="is not a retry count; use N or N,S"):
        _settings.parse_retry(value, "RUNALWAYS_RETRY")


def test_no_retry() -> None:
    assert _settings.parse_retry(None, "retry") is None


@pytest.mark.parametrize(("text", "seconds"), [("0", 0.0), ("10", 10.0), ("0.5", 0.5), ("1e1", 10.0)])
def test_seconds(text: str, seconds: float) -> None:
    assert _settings.parse_seconds(text, "--wait") == seconds


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90.0), ("90s", 90.0), ("45m", 2700.0), ("2h", 7200.0), ("1.5d", 129600.0)]
)
def test_durations_take_units(text: str, seconds: float) -> None:
    assert _settings.parse_seconds(text, "RUNALWAYS_TIMEOUT") == seconds
    assert _settings.parse_deadline(text, "RUNALWAYS_TIMEOUT") == seconds


@pytest.mark.parametrize("text", ["0", "0s", "0m"])
def test_a_deadline_of_0_is_refused(text: str) -> None:
    with pytest.raises(SettingError, match="must be longer than 0"):
        _settings.parse_deadline(text, "RUNALWAYS_TIMEOUT")


@pytest.mark.parametrize("text", ["-1", "soon", "inf", "nan", "", "s", "5x", "-1m", "infh"])
def test_bad_seconds(text: str) -> None:
    with pytest.raises(SettingError, match="is not a number of seconds"):
        _settings.parse_seconds(text, "--wait")


@pytest.mark.parametrize(("text", "level"), [("0", 0), ("1", 1), ("2", 2)])
def test_skip_levels(text: str, level: int) -> None:
    assert _settings.parse_skip(text, "RUNALWAYS_SKIP") == level


@pytest.mark.parametrize("text", ["3", "yes", "-1"])
def test_bad_skip_levels(text: str) -> None:
    with pytest.raises(SettingError, match="is not a skip level"):
        _settings.parse_skip(text, "RUNALWAYS_SKIP")


def test_environment_empty_values_are_unset() -> None:
    found = _policy.choose({"RUNALWAYS_SILENT": "", "RUNALWAYS_RETRY": "", "RUNALWAYS_SKIP": ""})
    assert (found.backend, found.silent, found.timeout, found.skip) == (FlockBackend, False, 0.0, 0)
    assert _settings.from_environment({"RUNALWAYS_RETRY": " "}, "RUNALWAYS_RETRY") is None


def test_environment_values_are_parsed() -> None:
    found = _policy.choose(
        {"RUNALWAYS_BACKEND": " fcntl ", "RUNALWAYS_SILENT": "on", "RUNALWAYS_RETRY": "2,0.5", "RUNALWAYS_SKIP": "2"}
    )
    assert (found.backend, found.silent, found.timeout, found.skip) == (FlockBackend, True, 1.0, 2)
    assert _settings.from_environment({"RUNALWAYS_RETRY": "2,0.5"}, "RUNALWAYS_RETRY") == (2, 0.5)


def test_unknown_runalways_variables_are_refused_with_the_list() -> None:
    with pytest.raises(
        SettingError, match=r"^RUNALWAYS_SILNET is not a runalways setting \(misspelt\?\); the settings"
    ):
        _policy.choose({"RUNALWAYS_SILNET": "1", "PATH": "/bin"})


def test_variables_a_backend_declares_are_accepted() -> None:
    class ThirdParty(FlockBackend):
        name = "third-party"
        variables = ("RUNALWAYS_EXTRA",)

    _settings.resolve({"RUNALWAYS_EXTRA": "x", "RUNALWAYS_SILENT": "1"}, {}, lambda name, where: ThirdParty)
    with pytest.raises(SettingError, match=r"^RUNALWAYS_EXTRA is not a runalways setting"):
        _policy.choose({"RUNALWAYS_EXTRA": "x"})


def test_the_settings_of_a_backend_are_accepted_with_that_backend_alone() -> None:
    cluster = {"RUNALWAYS_URL": "postgresql://", "RUNALWAYS_TTL": "5"}
    assert _policy.choose({"RUNALWAYS_BACKEND": "postgres", **cluster}).ttl == 5.0
    with pytest.raises(SettingError, match=r"^RUNALWAYS_URL is not a runalways setting"):
        _policy.choose(cluster)
