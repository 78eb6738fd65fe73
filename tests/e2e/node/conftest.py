"""Fixtures for the node tests: Node and the JavaScript clients in tests/e2e/node/js."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def node() -> str:
    """The ``node`` executable; skips the test when node or npm is missing."""
    node = shutil.which("node")
    if node is None or shutil.which("npm") is None:
        pytest.skip(
            "node and npm are needed for the JavaScript client tests (apt-get install nodejs npm)"
        )
    return node


@pytest.fixture(scope="session")
def js_clients(node: str) -> Path:
    """tests/e2e/node/js with its packages: ``npm ci`` from the committed lockfile, once
    (``make test`` does it up front)."""
    directory = Path(__file__).resolve().parent / "js"
    if not (directory / "node_modules").is_dir():
        npm = shutil.which("npm")
        assert npm is not None  # the node fixture skipped otherwise
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=directory, check=True, timeout=600
        )
    return directory
