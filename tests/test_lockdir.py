"""Unit tests of the lock directory's rules: where it is, and what makes it refused.

The account's home comes from the password database; these cases point that lookup at
a directory of the test's own, so that they never write into the real home of the
user running the suite. The conformance suite (spec/conformance/test_lock_location.py)
runs the same rules with real accounts.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from runalways import _lockdir
from runalways.errors import SettingError


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A home of the user's own, as the password database would name it."""
    for name in ("RUNALWAYS_DIR", "XDG_RUNTIME_DIR", "TMPDIR"):
        monkeypatch.delenv(name, raising=False)
    own = tmp_path / "home"
    own.mkdir(mode=0o755)
    monkeypatch.setattr(_lockdir, "_account_home", lambda uid: str(own))
    return own


@pytest.fixture
def fallback_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A directory like /dev/shm (root's, sticky, everyone may write) to fall back to."""
    if os.geteuid() != 0:
        pytest.fail("this case runs as root: the fallback root must belong to root")
    root = tmp_path / "shm"
    root.mkdir()
    root.chmod(0o1777)
    monkeypatch.setattr(_lockdir, "FALLBACK_ROOTS", (str(root),))
    return root


def test_the_default_is_in_the_home_and_per_host(home: Path) -> None:
    directory = _lockdir.directory()
    assert directory == str(home / ".runalways" / _lockdir.host_key())
    assert stat.S_IMODE(os.lstat(directory).st_mode) == 0o700
    assert stat.S_IMODE(os.lstat(home / ".runalways").st_mode) == 0o700


def test_the_session_does_not_move_it(home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cron = _lockdir.directory()
    runtime = tmp_path / "run-user"
    runtime.mkdir(mode=0o700)
    for name, value in {"XDG_RUNTIME_DIR": runtime, "TMPDIR": tmp_path, "HOME": tmp_path}.items():
        monkeypatch.setenv(name, str(value))
    assert _lockdir.directory() == cron


def test_the_host_key_is_the_machine_id_where_there_is_one() -> None:
    try:
        machine = Path("/etc/machine-id").read_text().strip()
    except OSError:
        machine = ""
    key = _lockdir.host_key()
    assert key == machine if machine.isalnum() else key and "/" not in key


@pytest.mark.parametrize("mode", [0o775, 0o757])
def test_a_home_others_may_write_to_is_not_used(home: Path, fallback_root: Path, mode: int) -> None:
    home.chmod(mode)
    assert _lockdir.directory() == str(fallback_root / "runalways-0")


def test_a_home_of_another_user_is_not_used(home: Path, fallback_root: Path) -> None:
    os.chown(home, 65534, 65534)
    assert _lockdir.directory() == str(fallback_root / "runalways-0")


def test_a_missing_home_falls_back(home: Path, fallback_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_lockdir, "_account_home", lambda uid: "/nonexistent")
    directory = _lockdir.directory()
    assert directory == str(fallback_root / "runalways-0")
    assert stat.S_IMODE(os.lstat(directory).st_mode) == 0o700


def test_a_squatted_fallback_is_refused_naming_runalways_dir(home: Path, fallback_root: Path) -> None:
    home.chmod(0o777)
    squatted = fallback_root / "runalways-0"
    squatted.mkdir(mode=0o700)
    os.chown(squatted, 65534, 65534)
    with pytest.raises(SettingError, match=r"belongs to another user \(uid 65534\).*set RUNALWAYS_DIR"):
        _lockdir.directory()


def test_a_regular_account_without_a_home_is_asked_for_runalways_dir(home: Path) -> None:
    with pytest.raises(SettingError, match=r"uid 1234 has no home directory of its own.*set RUNALWAYS_DIR"):
        _lockdir.fallback_directory(1234)


def test_system_accounts_and_nobody_may_fall_back(fallback_root: Path) -> None:
    assert _lockdir.fallback_directory(33) == str(fallback_root / "runalways-33")
    assert _lockdir.fallback_directory(65534) == str(fallback_root / "runalways-65534")


def test_a_planted_symlink_is_refused(home: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (home / ".runalways").symlink_to(elsewhere)
    with pytest.raises(SettingError, match="is not a directory"):
        _lockdir.directory()


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o1777])
def test_a_directory_others_can_write_to_is_refused(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: int
) -> None:
    chosen = tmp_path / "locks"
    chosen.mkdir()
    chosen.chmod(mode)
    monkeypatch.setenv("RUNALWAYS_DIR", str(chosen))
    with pytest.raises(
        SettingError, match=r"can be written by other users .*set RUNALWAYS_DIR to a directory only you"
    ):
        _lockdir.directory()


def test_a_directory_of_another_user_is_refused(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() != 0:
        pytest.fail("this case runs as root, to give the directory to another user")
    chosen = tmp_path / "theirs"
    chosen.mkdir(mode=0o700)
    os.chown(chosen, 65534, 65534)
    monkeypatch.setenv("RUNALWAYS_DIR", str(chosen))
    with pytest.raises(SettingError, match=r"belongs to another user \(uid 65534\)"):
        _lockdir.directory()


def test_a_directory_that_cannot_be_created_says_why(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNALWAYS_DIR", str(tmp_path / "missing" / "locks"))
    with pytest.raises(SettingError, match=r"cannot create RUNALWAYS_DIR .*No such file or directory"):
        _lockdir.directory()


def test_lock_files_are_named_readably_and_distinctly(home: Path) -> None:
    one = _lockdir.lock_file_for("nightly report")
    other = _lockdir.lock_file_for("nightly_report")
    assert os.path.basename(one).startswith("nightly_report-") and one.endswith(".lock")
    assert one != other
    assert _lockdir.lock_file_for("nightly report") == one
    assert "/" not in os.path.basename(_lockdir.lock_file_for("/usr/bin/backup\0--full"))


def test_the_places_of_0_1_follow_the_session(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    uid = os.getuid()
    assert _lockdir.previous_directories() == [
        "/run/user/1000/runalways",
        str(tmp_path / f"runalways-{uid}"),
        f"/tmp/runalways-{uid}",
    ]
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.delenv("TMPDIR")
    assert _lockdir.previous_directories() == [f"/tmp/runalways-{uid}"]
