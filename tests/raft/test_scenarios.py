"""Scenario tests: tests/raft/testdata/*.txt, run by tests/raft/scenario.py.

Regenerate the expected output after an intended behaviour change with
``pytest tests/raft/test_scenarios.py --rewrite`` (or ``RAFT_REWRITE=1``), then
review the diff.
"""

from __future__ import annotations

import glob
import os

import pytest

from .scenario import parse_file, render_file, run_file

TESTDATA = os.path.join(os.path.dirname(__file__), "testdata")
FILES = sorted(glob.glob(os.path.join(TESTDATA, "*.txt")))


def test_there_are_scenarios() -> None:
    assert len(FILES) >= 6


@pytest.mark.parametrize("path", FILES, ids=[os.path.basename(p) for p in FILES])
def test_scenario(path: str, rewrite: bool) -> None:
    mismatches = run_file(path, rewrite=rewrite)
    if rewrite:
        return
    if mismatches:
        c, actual = mismatches[0]
        pytest.fail(
            f"{os.path.basename(path)}:{c.line_no}: {c.command}\n--- expected\n{c.expected}\n--- actual\n{actual}\n"
            f"({len(mismatches)} mismatching case(s); rerun with --rewrite to accept)",
            pytrace=False,
        )


def test_parse_render_roundtrip() -> None:
    text = "# a comment\n\ncampaign 1\n----\nline one\nline two\n\nstatus\n----\nok\n"
    cases, trailing = parse_file(text)
    assert [c.command for c in cases] == ["campaign 1", "status"]
    assert cases[0].expected == "line one\nline two"
    assert render_file(cases, trailing) == text
