"""The metrics file (runalways._metrics) in-process: its name, its text, what each event changes.

The whole-process cases, scraped by a real node exporter, are spec/conformance/test_metrics.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import cast

from runalways import _metrics
from runalways._values import Target
from runalways.backends.base import Backend


class _Job:
    """What ``update`` asks of a backend: its target."""

    def __init__(self, name: str) -> None:
        self.target = Target(None, display=name, name=name)


def job(name: str) -> Backend:
    return cast("Backend", _Job(name))


def test_a_safe_name_is_the_file_s_name_and_any_other_gets_a_hash() -> None:
    assert _metrics.file_stem("nightly-backup.py") == "runalways_nightly-backup.py"
    spaced, underscored = _metrics.file_stem("a b"), _metrics.file_stem("a_b")
    assert spaced.startswith("runalways_a_b-") and len(spaced) == len("runalways_a_b-") + 8
    assert spaced != underscored == "runalways_a_b"
    long = _metrics.file_stem("x" * 300)
    assert len(long) < 128 and long != _metrics.file_stem("x" * 301)
    for name in ("../../etc/passwd", "a/b", "\n", "caf\udce9", "é"):
        stem = _metrics.file_stem(name)
        assert "/" not in stem and stem.isascii() and stem.isprintable(), (name, stem)


def test_a_run_without_a_name_is_named_by_its_command() -> None:
    assert _metrics.job_name(Target(None, display="backup.sh --full", name="/srv/backup.sh\0--full")) == (
        "backup.sh --full"
    )
    assert _metrics.job_name(Target(None, display="backup.sh --full", name="backup")) == "backup"


def test_label_values_are_escaped_as_the_exposition_format_says() -> None:
    assert _metrics.label_value('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    assert _metrics.label_value("caf\udce9") == "caf\ufffd"  # a name that is not UTF-8


def test_each_event_changes_what_it_says() -> None:
    values: dict[str, float] = {}
    _metrics.change(values, "start", {"started": 100.0}, 100.5)
    assert values == {"last_start_timestamp_seconds": 100.0, "running": 1, "stale": 0, "runs_total": 1}
    _metrics.change(values, "skip", {"reason": "held"}, 101.0)
    _metrics.change(values, "stale", {}, 102.0)
    assert (values["skips_total"], values["last_skip_timestamp_seconds"], values["stale"]) == (1, 101.0, 1)
    _metrics.change(values, "exit", {"status": 2, "duration": 3.5}, 104.0)
    assert (values["last_exit_status"], values["last_duration_seconds"], values["running"], values["stale"]) == (
        2,
        3.5,
        0,
        0,
    )
    assert "last_success_timestamp_seconds" not in values
    _metrics.change(values, "start", {"started": 200.0}, 200.0)
    _metrics.change(values, "start", {"started": 300.0}, 300.0)  # the run before never said it ended
    assert (values["unreported_ends_total"], values["last_exit_status"], values["runs_total"]) == (1, -1, 3)
    _metrics.change(values, "exit", {"status": 0, "duration": 1.0}, 301.0)
    assert (values["last_success_timestamp_seconds"], values["unreported_ends_total"]) == (301.0, 1)


def test_the_file_reads_back_what_was_written_and_a_damaged_one_starts_again(tmp_path: Path) -> None:
    values = {"runs_total": 3.0, "skips_total": 7.0, "last_exit_status": -1.0, "last_duration_seconds": 0.25}
    path = tmp_path / "runalways_job.prom"
    path.write_text(_metrics.render('we"ird job', values))
    read = _metrics.read(str(path))
    assert {key: read[key] for key in values} == values
    assert read["running"] == 0 and read["last_start_timestamp_seconds"] == 0
    path.write_bytes(b'runalways_runs_total{name="x"} many\n\xff\xfe garbage\nrunalways_skips_total 4\n')
    assert _metrics.read(str(path)) == {"skips_total": 4.0}
    assert _metrics.read(str(tmp_path / "missing.prom")) == {}


def test_an_update_leaves_only_the_file_and_its_lock(tmp_path: Path) -> None:
    old_umask = os.umask(0o077)
    try:
        _metrics.update(str(tmp_path), "skip", job("tidy"), {})
    finally:
        os.umask(old_umask)
    assert sorted(os.listdir(tmp_path)) == [".runalways_tidy.lock", "runalways_tidy.prom"]
    written = tmp_path / "runalways_tidy.prom"
    assert written.stat().st_mode & 0o777 == 0o644  # the collector's user reads it, whatever the umask
    before = written.read_text()
    _metrics.update(str(tmp_path), "kill", job("tidy"), {})  # the start that follows a kill says it
    assert written.read_text() == before


def test_an_update_loads_no_heavy_module() -> None:
    code = """
import sys
before = set(sys.modules)
from runalways._metrics import update
from runalways._values import Target
class Job:
    target = Target(None, display="cheap", name="cheap job")
update(sys.argv[1], "start", Job(), {"started": 1.0})
print(" ".join(sorted(set(sys.modules) - before)))
"""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        loaded = subprocess.run(
            [sys.executable, "-c", code, folder], capture_output=True, text=True, timeout=30, check=True
        ).stdout.split()
    assert not {"re", "tempfile", "json", "uuid", "hashlib", "subprocess"} & set(loaded), loaded
