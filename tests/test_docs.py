"""The documentation's links resolve, ``runalways --help`` points to every page of docs/, and the
settings tables of the README and docs/cluster.md are the settings table of the code.

``python tests/test_docs.py`` writes the settings tables anew after a setting changed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from runalways._settings import SETTINGS
from runalways.cli.parser import DOCS

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """The anchors GitHub makes of a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    in_code = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_link_of_the_documentation_resolves(page: Path) -> None:
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        assert destination.exists(), f"{page.name}: {target} does not exist"
        if anchor:
            assert anchor in anchors(destination), f"{page.name}: {target} names no heading"


def test_the_readme_and_the_help_point_to_every_page_of_docs() -> None:
    pages = {str(page.relative_to(ROOT)) for page in PAGES[1:]}
    assert {path for path, _ in DOCS} == pages
    readme = (ROOT / "README.md").read_text()
    assert all(f"]({page})" in readme for page in pages)
    shown = subprocess.run(
        [sys.executable, "-m", "runalways", "--help"], capture_output=True, text=True, timeout=30, check=True
    )
    assert all(page in shown.stdout for page in pages), shown.stdout


#: The lines around a generated settings table.
BEGIN = "<!-- settings table: generated from runalways/_settings.py, do not edit by hand -->"
END = "<!-- end of settings table -->"
#: Where each table stands: the core's settings in the README, the cluster backends' in their page.
TABLES = {ROOT / "README.md": False, ROOT / "docs" / "cluster.md": True}


def settings_table(cluster: bool) -> str:
    """The Markdown table of the settings that every backend reads, or of those the cluster backends add."""
    rows = ["| variable | values | effect |", "|---|---|---|"]
    for setting in SETTINGS:
        if setting.variable is not None and (setting.backends is not None) == cluster:
            rows.append(f"| `{setting.variable}` | {setting.allowed} | {setting.about} |")
    return "\n".join(rows)


def _written(text: str) -> str:
    _, begin, rest = text.partition(BEGIN + "\n")
    table, end, _after = rest.partition("\n" + END)
    assert begin and end, f"no lines {BEGIN!r} ... {END!r} around the settings table"
    return table


@pytest.mark.parametrize("page", TABLES, ids=lambda page: str(page.relative_to(ROOT)))
def test_the_settings_table_of_the_documentation_is_the_code_s(page: Path) -> None:
    assert _written(page.read_text()) == settings_table(TABLES[page]), "run: python tests/test_docs.py"


def test_every_setting_says_what_it_does_and_what_it_takes() -> None:
    for setting in SETTINGS:
        assert setting.allowed and setting.about and "|" not in setting.allowed + setting.about, setting.attribute


def test_the_architecture_names_every_module_of_the_layers_contract() -> None:
    # The floors of docs/architecture.md are the layers import-linter checks, and no others.
    from importlinter.api import read_configuration

    contracts = read_configuration(str(ROOT / "pyproject.toml"))["contracts_options"]
    layered = {
        module.strip()
        for contract in contracts
        if contract["type"] == "layers" and contract["containers"] == ["runalways"]
        for layer in contract["layers"]
        for module in layer.split("|")
    }
    section = (ROOT / "docs" / "architecture.md").read_text().split("## The floors, top down")[1]
    table = "\n".join(line for line in section.splitlines() if line.startswith("| ") and "|---" not in line)
    named = {cell for row in table.splitlines()[1:] for cell in re.findall(r"`([\w.]+?)(?:\.py|/)`", row.split("|")[2])}
    assert named == layered | {"__init__"}, named ^ (layered | {"__init__"})


if __name__ == "__main__":
    for page, cluster in TABLES.items():
        text = page.read_text()
        page.write_text(text.replace(_written(text), settings_table(cluster), 1))
