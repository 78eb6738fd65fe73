"""What the package index shows: metadata, the long description, the licence, the changelog."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import copilotedge

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
LINK = re.compile(r"\]\(([^)]+)\)")


def test_the_version_has_one_source() -> None:
    assert "version" not in PROJECT and "version" in PROJECT["dynamic"]
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["dynamic"]["version"] == {"attr": "copilotedge.__version__"}
    assert f"## [{copilotedge.__version__}]" in (ROOT / "CHANGELOG.md").read_text()


def test_the_licence_is_the_mit_licence_the_metadata_names() -> None:
    assert PROJECT["license"] == "MIT"
    assert PROJECT["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


def test_classifiers_say_which_pythons_and_django() -> None:
    classifiers = set(PROJECT["classifiers"])
    for version in ("3.11", "3.12", "3.13"):
        assert f"Programming Language :: Python :: {version}" in classifiers
    assert {"Framework :: Django :: 5.2", "Framework :: AsyncIO", "Typing :: Typed"} <= classifiers
    assert set(PROJECT["urls"]) >= {"Homepage", "Source", "Changelog", "Issues"}


def test_every_dependency_has_an_upper_bound() -> None:
    extras = [dep for deps in PROJECT["optional-dependencies"].values() for dep in deps]
    unbounded = [dep for dep in [*PROJECT["dependencies"], *extras] if "<" not in dep]
    assert not unbounded


def test_the_long_description_links_absolutely() -> None:
    assert PROJECT["readme"] == "docs/pypi.md"
    description = (ROOT / PROJECT["readme"]).read_text()
    relative = [url for url in LINK.findall(description) if not url.startswith("https://")]
    assert not relative, f"a package index cannot follow these links: {relative}"
    assert "pip install copilotedge" in description
    assert "make run" not in description


def test_the_sdist_leaves_the_test_suite_out() -> None:
    manifest = (ROOT / "MANIFEST.in").read_text().splitlines()
    assert "prune tests" in manifest
    assert "graft docs" in manifest
