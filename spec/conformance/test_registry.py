"""R7: backends are found by name, and third parties can add their own."""

from __future__ import annotations

import sys

import pytest
from harness import Procs, finish

from runalways.backends import get_class


@pytest.mark.clause("R7.1")
def test_a_backend_registered_by_entry_point_is_found_by_name(procs: Procs) -> None:
    chosen = get_class(procs.backend)
    site = procs.workdir / "site"
    plugin = site / "spec_plugin.py"
    plugin.parent.mkdir()
    # A third-party package: a subclass of the backend under test, under its own name.
    plugin.write_text(
        f"from {chosen.__module__} import {chosen.__name__} as Base\n"
        "class ThirdParty(Base):\n"
        "    name = 'third-party'\n"
    )
    dist_info = site / "spec_plugin-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: spec-plugin\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text("[runalways.backends]\nthird-party = spec_plugin:ThirdParty\n")
    env = {"PYTHONPATH": str(site), "RUNALWAYS_BACKEND": "third-party"}

    listing = procs.run([sys.executable, "-m", "runalways", "backends"], env=env)
    assert any(row.split()[:2] == ["third-party", "usable"] for row in listing.stdout.splitlines()), listing
    job = procs.script("job.py")
    holder = procs.hold(job, env=env)
    assert procs.run_python(job, env=env).stdout == ""  # the plugin really locks
    assert finish(holder).returncode == 0
