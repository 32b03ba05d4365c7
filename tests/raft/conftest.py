"""pytest options of the Raft tests: --rewrite regenerates scenario expectations."""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--rewrite",
        action="store_true",
        default=False,
        help="rewrite the expected output of tests/raft/testdata/*.txt (also: RAFT_REWRITE=1)",
    )


@pytest.fixture
def rewrite(request: pytest.FixtureRequest) -> bool:
    # default=False: the option is only registered when tests/raft is named on the
    # command line (pytest_addoption runs for initial conftests only).
    return bool(request.config.getoption("--rewrite", default=False)) or os.environ.get("RAFT_REWRITE") == "1"
