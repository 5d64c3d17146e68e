"""How the settings of a start are merged: the environment, the keywords of the code, the options typed."""

from __future__ import annotations

import inspect

import pytest

from runalways import _policy, api
from runalways._settings import SETTINGS, Settings
from runalways.backends.flock import FlockBackend
from runalways.errors import SettingError


def test_defaults() -> None:
    chosen = _policy.choose({})
    assert (chosen.backend, chosen.silent, chosen.timeout, chosen.skip) == (FlockBackend, False, 0.0, 0)


def test_the_environment_wins_over_the_code_for_the_import_and_the_api() -> None:
    chosen = _policy.choose({"RUNALWAYS_SILENT": "0", "RUNALWAYS_RETRY": "3,0.5"}, silent=True, wait=100)
    assert (chosen.silent, chosen.timeout) == (False, 1.5)


def test_the_options_typed_win_on_the_command_line() -> None:
    env = {"RUNALWAYS_SILENT": "0", "RUNALWAYS_RETRY": "3,0.5"}
    chosen = _policy.choose(env, silent=True, wait=100, environment_wins=False)
    assert (chosen.silent, chosen.timeout) == (True, 100)


def test_the_environment_fills_in_what_the_command_line_left_out() -> None:
    chosen = _policy.choose({"RUNALWAYS_SILENT": "1", "RUNALWAYS_RETRY": "4"}, environment_wins=False)
    assert (chosen.silent, chosen.timeout) == (True, 4.0)


def test_retry_is_a_wait_of_n_times_s() -> None:
    assert _policy.choose({}, retry="4,0.25").timeout == 1.0
    assert _policy.choose({}, retry=(2, 3)).timeout == 6.0


def test_waiting_for_ever() -> None:
    assert _policy.choose({}, wait=float("inf")).timeout is None


def test_retry_and_wait_together_are_refused() -> None:
    with pytest.raises(SettingError, match="give retry or wait, not both"):
        _policy.choose({}, retry=1, wait=1)


def test_a_negative_wait_is_refused() -> None:
    with pytest.raises(SettingError, match="wait=-1 is not a number of seconds"):
        _policy.choose({}, wait=-1)


def test_an_unknown_backend_keyword_names_the_keyword() -> None:
    with pytest.raises(SettingError, match=r"^backend='nope' is not a known backend; choose one of: fcntl"):
        _policy.choose({}, backend="nope")


def test_an_unknown_backend_variable_names_the_variable() -> None:
    with pytest.raises(SettingError, match=r"^RUNALWAYS_BACKEND='nope' is not a known backend"):
        _policy.choose({"RUNALWAYS_BACKEND": "nope"})


def test_hang_settings_default_to_none_and_the_documented_values() -> None:
    chosen = _policy.choose({"RUNALWAYS_SILENT": "1"})
    assert (chosen.deadline, chosen.stale_after, chosen.on_stale, chosen.log) == (None, None, "report", None)
    assert (chosen.kill_grace, chosen.stale_exit) == (10.0, 4)
    assert (Settings(FlockBackend).kill_grace, Settings(FlockBackend).stale_exit) == (10.0, 4)


def test_hang_settings_from_the_environment_win_over_the_code() -> None:
    env = {"RUNALWAYS_TIMEOUT": "2h", "RUNALWAYS_STALE_AFTER": "45m", "RUNALWAYS_KILL_GRACE": "1m"}
    chosen = _policy.choose(env, deadline="5", stale_after=60, kill_grace=3)
    assert (chosen.deadline, chosen.stale_after, chosen.kill_grace) == (7200.0, 2700.0, 60.0)
    typed = _policy.choose(env, deadline="5", stale_after=60, kill_grace=3, environment_wins=False)
    assert (typed.deadline, typed.stale_after, typed.kill_grace) == (5.0, 60.0, 3.0)


def test_a_deadline_keyword_of_0_is_refused() -> None:
    with pytest.raises(SettingError, match=r"^timeout='0' must be longer than 0"):
        _policy.choose({}, deadline=0)


def test_the_keywords_of_the_api_are_those_of_the_settings_table() -> None:
    # A setting the table gives a keyword is a keyword of guard() (policy, RUNALWAYS_POLICY, too);
    # lock() takes those of the wait and the backend. path and name choose the lock, not a setting.
    keywords = {setting.keyword for setting in SETTINGS if setting.keyword is not None}
    assert set(inspect.signature(api.guard).parameters) - {"path", "name"} == keywords
    assert set(inspect.signature(api.lock).parameters) - {"path", "name"} <= keywords


def test_the_policy_of_the_environment_wins_over_the_code_s_and_a_typed_one_over_both() -> None:
    assert _policy.choose({"RUNALWAYS_POLICY": "Queue"}, policy="alone").policy == "queue"
    assert _policy.choose({}, policy="replace").policy == "replace"
    assert _policy.choose({}).policy is None  # the face's own
    typed = _policy.choose({"RUNALWAYS_POLICY": "queue"}, environment_wins=False, policy="alone")
    assert typed.policy == "alone"


def test_a_kill_grace_keyword_needs_a_deadline_or_a_kill_to_mean_something() -> None:
    chosen = _policy.choose({}, deadline="1h", kill_grace="30")
    assert (chosen.deadline, chosen.kill_grace) == (3600.0, 30.0)
