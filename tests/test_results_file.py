"""benchmarks/RESULTS.md has two writers: the benchmark rewrites it, the chaos soak writes one section of it."""

from __future__ import annotations

from pathlib import Path

import phases
import report
import soak_section

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "RESULTS.md"


def test_the_soak_appends_its_section_then_replaces_only_that() -> None:
    benchmark = "# benchmark results\n\n| guard | ms |\n"
    once = soak_section.write(benchmark, "## Chaos soak\n\nfirst table\n")
    assert once.startswith(benchmark) and soak_section.read(once) == "## Chaos soak\n\nfirst table"
    # Whatever follows the section stays as it is.
    later = once + "\n## More\n\nkept\n"
    again = soak_section.write(later, "## Chaos soak\n\nsecond table")
    assert again == later.replace("first table", "second table")


def test_the_benchmark_rewrites_the_file_but_keeps_the_soak_section(tmp_path: Path) -> None:
    soak = soak_section.read(RESULTS.read_text())
    assert soak is not None and soak.startswith("## Chaos soak\n")  # the README links to it
    (tmp_path / "RESULTS.md").write_text(soak_section.write("# results of an older benchmark\n", soak))
    results = report.Results(machine={"date": "today"}, counts=phases.Counts.quick(), quick=True, seed=1, guards=[])
    report.write(results, tmp_path)
    written = (tmp_path / "RESULTS.md").read_text()
    assert written.startswith(report.markdown(results)) and "older benchmark" not in written
    assert soak_section.read(written) == soak


def test_the_soak_and_its_fleet_mode_each_replace_only_their_own_rows() -> None:
    benchmark = "# benchmark results\n"
    plain = soak_section.write(benchmark, "## Chaos soak\n\nplain table one")
    fleet = soak_section.write_fleet(plain + "\n## More\n", "### Fleet mode\n\nfleet table one\n")
    section = soak_section.read(fleet)
    assert section is not None and section.startswith("## Chaos soak\n\nplain table one\n\n")
    assert soak_section.read_fleet(fleet) == "### Fleet mode\n\nfleet table one" and fleet.endswith("\n## More\n")
    # The plain soak rewrites its rows, the fleet mode's stay; and the other way round.
    plain_again = soak_section.write(fleet, "## Chaos soak\n\nplain table two")
    assert plain_again == fleet.replace("plain table one", "plain table two")
    fleet_again = soak_section.write_fleet(plain_again, "### Fleet mode\n\nfleet table two")
    assert fleet_again == plain_again.replace("fleet table one", "fleet table two")
    # The fleet mode alone makes a section of its own.
    alone = soak_section.write_fleet(benchmark, "### Fleet mode\n\nrows")
    assert (
        soak_section.read(alone)
        == f"## Chaos soak\n\n{soak_section.FLEET_BEGIN}\n### Fleet mode\n\nrows\n{soak_section.FLEET_END}"
    )
