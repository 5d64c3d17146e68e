"""The settings parsers, fuzzed in-process: any text is a setting or one line, never a traceback.

Fast and many: the whole-process runs in spec/conformance/test_faults.py check the
same promise end to end, fewer times. The regression tests at the end are named after what
the fuzzing found.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from typing import Iterator, Mapping

import fuzzing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runalways import _policy
from runalways._values import Target
from runalways.backends import names, pidfile
from runalways.cli.parser import build_parser
from runalways.errors import RunAlwaysError, SettingError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from runalways._settings import RetryValue

#: Examples per property: enough to reach every setting with every kind of text many times.
EXAMPLES = 400


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` as its only RUNALWAYS_* settings (the backends read it)."""
    before = dict(os.environ)
    for key in [key for key in os.environ if key.startswith("RUNALWAYS_")]:
        del os.environ[key]
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(before)


def assert_one_line(error: RunAlwaysError) -> None:
    message = str(error)
    assert message and "\n" not in message and "\r" not in message, repr(message)
    assert fuzzing.PASSWORD not in message, message


def parse_and_build(values: Mapping[str, str]) -> None:
    """What a start does with its environment before it locks: parse it, make the backend."""
    with environment(values):
        try:
            chosen = _policy.choose(os.environ)
            chosen.backend(Target(None, display="job", name="job"), chosen)
        except RunAlwaysError as error:
            assert_one_line(error)


@settings(max_examples=EXAMPLES, deadline=None)
@given(fuzzing.environments())
def test_any_environment_is_a_setting_or_one_line(values: dict[str, str]) -> None:
    parse_and_build(values)


@settings(max_examples=EXAMPLES // 4, deadline=None)
@given(fuzzing.urls())
def test_a_runalways_url_never_shows_its_password(url: str) -> None:
    parse_and_build({"RUNALWAYS_BACKEND": "postgres", "RUNALWAYS_URL": url})


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    backend=st.one_of(st.none(), st.sampled_from(names()), fuzzing.texts()),
    silent=st.one_of(st.none(), st.booleans()),
    retry=st.one_of(
        st.none(),
        st.integers(min_value=-(10**400), max_value=10**400),
        fuzzing.texts(),
        st.tuples(st.integers(min_value=-(10**400), max_value=10**400), st.floats()),
    ),
    wait=st.one_of(st.none(), st.floats()),
    identity=st.one_of(st.none(), fuzzing.texts()),
    fork=st.one_of(st.none(), fuzzing.texts()),
    conflict_exit=st.one_of(st.none(), st.integers(min_value=-(10**400), max_value=10**400)),
)
def test_any_keyword_of_the_api_is_a_setting_or_one_line(
    backend: str | None,
    silent: bool | None,
    retry: RetryValue,
    wait: float | None,
    identity: str | None,
    fork: str | None,
    conflict_exit: int | None,
) -> None:
    try:
        _policy.choose(
            {},
            backend=backend,
            silent=silent,
            retry=retry,
            wait=wait,
            identity=identity,
            fork=fork,
            conflict_exit=conflict_exit,
        )
    except RunAlwaysError as error:
        assert_one_line(error)


@settings(max_examples=EXAMPLES, deadline=None)
@given(fuzzing.command_lines())
def test_any_command_line_parses_or_is_one_line_and_exit_2(argv: list[str]) -> None:
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
        try:
            build_parser().parse_args(argv)
        except SystemExit as ended:
            if "--help" not in argv:
                assert ended.code == 2, (ended.code, errors.getvalue())
                assert errors.getvalue().count("\n") == 1 and errors.getvalue().startswith("runalways"), errors


#: A pidfile as runalways writes it, every field a placeholder for fuzzed text.
_FIELDS = ("pid", "start_ticks", "boot_id", "host", "uid", "started", "name", "token")


@st.composite
def pidfile_contents(draw: st.DrawFn) -> bytes:
    """Random bytes, or a pidfile whose every field may be replaced by random text."""
    here = pidfile.me()
    fields = {key: here.get(key, "x") for key in _FIELDS}
    for key in draw(st.lists(st.sampled_from(_FIELDS), max_size=3)):
        fields[key] = draw(fuzzing.texts())
    whole = pidfile.render(fields)
    return draw(st.one_of(st.just(whole), st.binary(max_size=200), st.integers(0, len(whole)).map(lambda n: whole[:n])))


@settings(max_examples=EXAMPLES, deadline=None)
@given(raw=pidfile_contents(), age=st.floats(min_value=-(10**7), max_value=10**7))
def test_any_pidfile_is_judged_without_an_error(raw: bytes, age: float) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "job.pid")
        with open(path, "wb") as written:
            written.write(raw)
        mtime = os.stat(path).st_mtime - age
        os.utime(path, (mtime, mtime))
        seen = pidfile.read(path)
        assert seen is not None
        verdict, why = pidfile.judge(seen)
        assert verdict in (pidfile.LIVE, pidfile.STALE, pidfile.UNKNOWN, pidfile.FOREIGN) and why


# Regression tests: what the fuzzing found.


@pytest.mark.parametrize("value", ["²", "3,1,²", "\u0661"])
def test_a_retry_count_in_non_ascii_digits_is_one_line(value: str) -> None:
    # "²".isdigit() is true and int("²") raises ValueError: a traceback at the start.
    with pytest.raises(SettingError, match="is not a retry count"):
        _policy.choose({"RUNALWAYS_RETRY": value})


def test_an_exit_status_in_non_ascii_digits_is_one_line() -> None:
    with pytest.raises(SettingError, match="is not an exit status"):
        _policy.choose({"RUNALWAYS_CONFLICT_EXIT": "²"})


@pytest.mark.parametrize("variable", ["RUNALWAYS_RETRY", "RUNALWAYS_CONFLICT_EXIT"])
def test_a_number_of_thousands_of_digits_is_one_line(variable: str) -> None:
    # int() refuses more than 4300 digits with ValueError.
    with pytest.raises(SettingError, match=variable):
        _policy.choose({variable: "9" * 5000})


def test_a_retry_count_too_large_for_a_float_is_one_line() -> None:
    # N*S of a 400-digit N raised OverflowError.
    with pytest.raises(SettingError, match="is not a retry count"):
        _policy.choose({"RUNALWAYS_RETRY": "9" * 400})


def test_leading_zeros_still_make_a_retry_count() -> None:
    assert _policy.choose({"RUNALWAYS_RETRY": "0" * 40 + "3,0.5"}).timeout == 1.5


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://user:{fuzzing.PASSWORD}@[::1/db",
        f"postgresql://user:{fuzzing.PASSWORD}%ZZ@localhost/db",
        f"password={fuzzing.PASSWORD} junk",
    ],
)
def test_a_malformed_runalways_url_is_one_line_without_its_password(url: str) -> None:
    # psycopg.connect() raised ProgrammingError, quoting the URL's password, as a traceback.
    with environment({"RUNALWAYS_BACKEND": "postgres", "RUNALWAYS_URL": url}):
        chosen = _policy.choose(os.environ)
        with pytest.raises(SettingError, match="RUNALWAYS_URL is not a connection URL") as raised:
            chosen.backend(Target(None, display="job", name="job"), chosen)
    assert fuzzing.PASSWORD not in str(raised.value)


@pytest.mark.parametrize("pid", ["9" * 20, "9" * 5000, "2147483648"])
def test_a_pidfile_naming_a_pid_past_a_c_int_is_malformed(pid: str) -> None:
    # kill(pid, 0) raised OverflowError, int() ValueError past 4300 digits: tracebacks.
    fields = {**pidfile.me(), "pid": pid, "token": "t"}
    assert pidfile.parse(pidfile.render(fields)) is None


def test_a_malformed_pidfile_from_before_the_clock_was_stepped_back_is_stale(tmp_path: object) -> None:
    # Its mtime is an hour ahead of the clock: it counted as "being written" for an hour.
    path = os.path.join(str(tmp_path), "job.pid")
    with open(path, "wb"):
        pass
    ahead = os.stat(path).st_mtime + 3600
    os.utime(path, (ahead, ahead))
    seen = pidfile.read(path)
    assert seen is not None
    assert pidfile.judge(seen)[0] == pidfile.STALE


@pytest.mark.parametrize("argument", ["\n", "a\nb", "\x1b[2J", "\r"])
def test_an_argument_with_a_newline_or_an_escape_is_refused_in_one_line(argument: str) -> None:
    # argparse quoted it as given: "unrecognized arguments: \n" took two lines.
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors), pytest.raises(SystemExit) as ended:
        build_parser().parse_args(["backends", argument])
    assert ended.value.code == 2
    assert errors.getvalue().count("\n") == 1 and "\x1b" not in errors.getvalue() and "\r" not in errors.getvalue()
