"""The documentation's links resolve, and ``runalways --help`` points to every page of docs/."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

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
