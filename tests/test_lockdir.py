"""Unit tests of the private lock directory's rules."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from runalways import _lockdir
from runalways.errors import SettingError


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ("RUNALWAYS_DIR", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    return tmp_path


def test_default_is_a_new_private_directory_under_tmp(clean_env: Path) -> None:
    directory = _lockdir.directory()
    assert directory == str(clean_env / f"runalways-{os.getuid()}")
    assert stat.S_IMODE(os.lstat(directory).st_mode) == 0o700


def test_xdg_runtime_dir_is_preferred_when_it_is_private(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = clean_env / "run-user"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert _lockdir.directory() == str(runtime / "runalways")


def test_an_unsafe_xdg_runtime_dir_is_passed_over(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = clean_env / "shared"
    runtime.mkdir()
    runtime.chmod(0o777)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert _lockdir.directory() == str(clean_env / f"runalways-{os.getuid()}")


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o1777])
def test_a_directory_others_can_write_to_is_refused(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, mode: int
) -> None:
    chosen = clean_env / "locks"
    chosen.mkdir()
    chosen.chmod(mode)
    monkeypatch.setenv("RUNALWAYS_DIR", str(chosen))
    with pytest.raises(
        SettingError, match=r"can be written by other users .*set RUNALWAYS_DIR to a directory only you"
    ):
        _lockdir.directory()


def test_a_directory_of_another_user_is_refused(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() != 0:
        pytest.fail("this case runs as root, to give the directory to another user")
    chosen = clean_env / "theirs"
    chosen.mkdir(mode=0o700)
    os.chown(chosen, 65534, 65534)
    monkeypatch.setenv("RUNALWAYS_DIR", str(chosen))
    with pytest.raises(SettingError, match=r"belongs to another user \(uid 65534\)"):
        _lockdir.directory()


def test_a_planted_symlink_is_refused(clean_env: Path) -> None:
    elsewhere = clean_env / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (clean_env / f"runalways-{os.getuid()}").symlink_to(elsewhere)
    with pytest.raises(SettingError, match="is not a directory"):
        _lockdir.directory()


def test_a_directory_that_cannot_be_created_says_why(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNALWAYS_DIR", str(clean_env / "missing" / "locks"))
    with pytest.raises(SettingError, match=r"cannot create RUNALWAYS_DIR .*No such file or directory"):
        _lockdir.directory()


def test_lock_files_are_named_readably_and_distinctly(clean_env: Path) -> None:
    one = _lockdir.lock_file_for("nightly report")
    other = _lockdir.lock_file_for("nightly_report")
    assert os.path.basename(one).startswith("nightly_report-") and one.endswith(".lock")
    assert one != other
    assert _lockdir.lock_file_for("nightly report") == one
    assert "/" not in os.path.basename(_lockdir.lock_file_for("/usr/bin/backup\0--full"))
