"""R0: the spec and the suite name each other: no clause without a test, no test without a clause."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SPEC = Path(__file__).parent.parent / "SPEC.md"
SUITE = Path(__file__).parent
CLAUSE = re.compile(r"^- \*\*(R\d+(?:\.\d+)+)\b", re.MULTILINE)  # R16.1, and R17.4.1 under R17.4
TEST_NAME = re.compile(r"`(test_\w+)`")


def spec_clauses() -> dict[str, set[str]]:
    """Clause id -> the tests its text names."""
    text = SPEC.read_text()
    found: dict[str, set[str]] = {}
    starts = list(CLAUSE.finditer(text))
    for number, match in enumerate(starts):
        end = starts[number + 1].start() if number + 1 < len(starts) else len(text)
        body = text[match.start() : end].split("\n#", 1)[0]  # a clause ends at the next heading
        assert match[1] not in found, f"clause {match[1]} appears twice in SPEC.md"
        found[match[1]] = set(TEST_NAME.findall(body))
    return found


def suite_tests() -> dict[str, set[str]]:
    """Conformance test name -> the clauses its ``@pytest.mark.clause`` names."""
    found: dict[str, set[str]] = {}
    for module in sorted(SUITE.glob("test_*.py")):
        for node in ast.parse(module.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                assert node.name not in found, f"{node.name} is defined twice in the suite"
                found[node.name] = {
                    argument.value
                    for decorator in node.decorator_list
                    if isinstance(decorator, ast.Call) and ast.unparse(decorator.func) == "pytest.mark.clause"
                    for argument in decorator.args
                    if isinstance(argument, ast.Constant) and isinstance(argument.value, str)
                }
    return found


@pytest.mark.clause("R0.1")
def test_every_clause_names_tests_that_verify_it() -> None:
    suite = suite_tests()
    for clause, named in spec_clauses().items():
        assert named, f"{clause} names no test"
        for test in named:
            assert test in suite, f"{clause} names {test}, which the suite does not have"
            assert clause in suite[test], f"{clause} names {test}, but {test} does not name {clause}"


@pytest.mark.clause("R0.1")
def test_every_test_names_clauses_that_name_it() -> None:
    spec = spec_clauses()
    for test, named in suite_tests().items():
        assert named, f"{test} names no clause (add @pytest.mark.clause)"
        for clause in named:
            assert clause in spec, f"{test} names {clause}, which SPEC.md does not have"
            assert test in spec[clause], f"{test} names {clause}, but {clause} does not name {test}"
