"""Lock names with the job's arguments (runalways._names) and the lock files they get (spec/SPEC.md R18)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runalways import _lockdir, _policy
from runalways._names import Job, check, expand
from runalways.errors import SettingError

MANAGE = Job(["sync_orders", "--since", "2 days"], "manage.py")


@pytest.mark.parametrize(
    ("template", "name"),
    [
        ("{script}-{1}", "manage.py-sync_orders"),
        ("{1}:{3}", "sync_orders:2 days"),
        ("{script} {args}", "manage.py sync_orders --since '2 days'"),
        ("{{1}}-{{{1}}}", "{1}-{sync_orders}"),
        ("nightly", "nightly"),
        ("a}}b{{", "a}b{"),
    ],
)
def test_the_fields_are_filled_in_from_the_job(template: str, name: str) -> None:
    assert expand(template, "RUNALWAYS_NAME", MANAGE) == name


def test_args_of_no_argument_is_nothing_and_a_name_of_nothing_is_refused() -> None:
    assert expand("{script}-{args}", "name", Job([], "job.py")) == "job.py-"
    with pytest.raises(SettingError, match=r"^name='\{args\}' is an empty name with these arguments"):
        expand("{args}", "name", Job([], "job.py"))
    with pytest.raises(SettingError, match=r"^--name=' ' is an empty name; give the lock a name$"):
        expand(" ", "--name", MANAGE)


@pytest.mark.parametrize(
    ("template", "said"),
    [
        ("{script}-{4}", "uses {4}, but the script was given only 3 arguments"),
        ("{0}", "unknown field {0}; use {1} to {9}, {args}, {script}"),
        ("{10}", "unknown field {10}"),
        ("{1.__class__}", "unknown field {1.__class__}"),
        ("{ 1 }", "unknown field { 1 }"),
        ("{}", "unknown field {}"),
        ("job-{1", "a '{' that is never closed"),
        ("job-}", "a '}' that closes nothing"),
    ],
)
def test_a_bad_template_is_one_line_naming_it(template: str, said: str) -> None:
    with pytest.raises(SettingError) as raised:
        expand(template, "RUNALWAYS_NAME", MANAGE)
    message = str(raised.value)
    assert message.startswith(f"RUNALWAYS_NAME={template!r} ") and said in message and "\n" not in message


def test_a_missing_argument_is_counted_for_the_command() -> None:
    with pytest.raises(SettingError, match=r"uses \{1\}, but the command was given no argument$"):
        expand("backup-{1}", "--name", Job([], "backup.sh", "the command"))
    with pytest.raises(SettingError, match=r"uses \{2\}, but the command was given only 1 argument$"):
        expand("backup-{2}", "--name", Job(["db1"], "backup.sh", "the command"))


@pytest.mark.parametrize("argument", ["a\nb", "a\rb", "\x1b[31m", "a\x85b", "a\u2028b", os.fsdecode(b"caf\xe9")])
def test_a_name_that_is_not_one_line_of_text_is_refused(argument: str) -> None:
    with pytest.raises(SettingError, match=r"a lock name is one line of text$") as raised:
        expand("job-{1}", "RUNALWAYS_NAME", Job([argument], "job.py"))
    assert "\n" not in str(raised.value)


def test_status_knows_no_arguments_but_a_name_as_the_job_made_it() -> None:
    status = Job(None, None)
    assert expand("backup-db1", "--name", status) == "backup-db1"
    assert expand("a{{b}}", "--name", status) == "a{b}"  # the same lock as `run --name 'a{{b}}'`
    for template in ("backup-{1}", "{args}", "{script}"):
        with pytest.raises(SettingError, match="give runalways status the name the job made, with --name"):
            expand(template, "--name", status)
    assert expand("{script}", "RUNALWAYS_NAME", Job(None, "job.py")) == "job.py"


def test_the_setting_checks_the_template_and_fills_in_nothing() -> None:
    assert check("{script}-{1}", "RUNALWAYS_NAME") == "{script}-{1}"
    chosen = _policy.choose({"RUNALWAYS_NAME": " {script}-{1} "})
    assert chosen.lock_name == "{script}-{1}"
    with pytest.raises(SettingError, match=r"^RUNALWAYS_NAME='\{host\}' has an unknown field"):
        _policy.choose({"RUNALWAYS_NAME": "{host}"})


@pytest.mark.parametrize(
    ("environ", "other"),
    [
        ({"RUNALWAYS_LOCK": "private"}, "RUNALWAYS_LOCK='private' names a lock file"),
        ({"RUNALWAYS_IDENTITY": "path"}, "RUNALWAYS_IDENTITY=path picks a lock file by the script's path"),
    ],
)
def test_a_name_and_a_lock_file_for_the_script_are_two_ways_to_name_one_lock(
    environ: dict[str, str], other: str
) -> None:
    with pytest.raises(SettingError, match=r"two ways to name one lock; unset one of them$") as raised:
        _policy.choose({"RUNALWAYS_NAME": "{1}", **environ})
    assert other in str(raised.value)
    with pytest.raises(SettingError, match="two ways to name one lock"):
        _policy.choose({"RUNALWAYS_NAME": "{1}"}, identity="path")


def test_a_script_named_by_the_setting_keeps_its_display_and_locks_the_name() -> None:
    from runalways._values import Target

    chosen = _policy.choose({"RUNALWAYS_NAME": "{script}-{1}"})
    script = Target("/srv/app/manage.py", display="./manage.py", name="manage.py")
    named = _policy.lock_for_script(script, chosen, Job(["send_invoices"], script.name))
    assert (named.path, named.display, named.name) == (None, "./manage.py", "manage.py-send_invoices")
    # An explicit name wins over the setting, and its own fields are filled in.
    explicit = _policy.named_target(chosen, None, "report-{1}", path_given_as="path=", job=Job(["daily"], "x"))
    assert explicit is not None and explicit.name == "report-daily"


#: Names as arguments make them: any text, with the characters a file name cannot hold or
#: that the lock directory's readable part replaces.
_NAMES = st.text(st.sampled_from(["a", "b", "_", "-", ".", "/", "\\", " ", "é", "%", "{"]), min_size=1, max_size=12)


@given(_NAMES, _NAMES)
def test_two_names_never_share_a_lock_file(one: str, other: str) -> None:
    if one == other:
        return
    assert _lockdir.file_name(one) != _lockdir.file_name(other)


@given(_NAMES)
def test_a_lock_file_name_is_one_safe_file_name(name: str) -> None:
    made = _lockdir.file_name(name)
    assert "/" not in made and made not in (".", "..") and not made.startswith(".") and len(made) <= 100
    assert made.endswith(".lock")


def test_a_long_name_is_cut_to_a_file_name_and_still_told_apart() -> None:
    long = "x" * 5000
    assert len(_lockdir.file_name(long)) < 100
    assert _lockdir.file_name(long) != _lockdir.file_name(long + "y")
