"""Every setting ``copilotedge.conf`` reads is documented in docs/settings.md.

The list comes from conf.py itself (each ``"COPILOTEDGE_…"`` name it reads), so a setting
added there fails here until its row is written.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from django.conf import settings as django_settings
from django.test import override_settings

from copilotedge import conf

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "settings.md"
ROW = re.compile(r"^\| `(COPILOTEDGE_[A-Z0-9_]+)` \|(.*)\|\s*$", re.M)


def read_by_conf() -> list[str]:
    """The setting names conf.py reads, in its order."""
    tree = ast.parse(Path(conf.__file__).read_text())
    names = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and re.fullmatch(r"COPILOTEDGE_[A-Z0-9_]+", node.value)
    ]
    return list(dict.fromkeys(names))


def documented() -> dict[str, list[str]]:
    """Setting -> the cells after its name (default, meaning, check) in docs/settings.md."""
    return {
        m[1]: [cell.strip() for cell in m[2].split(" | ")]
        for m in ROW.finditer(REFERENCE.read_text())
    }


def default_of(name: str) -> str:
    """What conf gives for ``name`` when a site does not set it, for the message below."""
    with override_settings():
        if hasattr(django_settings, name):
            delattr(django_settings, name)
        try:
            return repr(getattr(conf.settings, name.removeprefix("COPILOTEDGE_")))
        except Exception:  # only a hint in a failure message
            return "<the default>"


def test_conf_reads_settings_this_test_can_see() -> None:
    assert len(read_by_conf()) > 50
    assert "COPILOTEDGE_API_KEY_CACHE_SECONDS" in read_by_conf()


def test_every_setting_is_documented_with_default_meaning_and_check() -> None:
    rows = documented()
    missing = [name for name in read_by_conf() if name not in rows]
    lines = "\n".join(
        f"| `{name}` | `{default_of(name)}` | <what it means> | <the check id that reports a "
        "bad value, or none> |"
        for name in missing
    )
    assert not missing, (
        f"docs/settings.md does not document {', '.join(missing)}. Add a row for each to "
        f"the table of its section there:\n{lines}"
    )
    incomplete = [name for name, cells in rows.items() if len(cells) != 3 or not all(cells)]
    assert not incomplete, (
        f"docs/settings.md: the rows of {', '.join(incomplete)} need four cells: "
        "| `NAME` | default | meaning | check |"
    )


def test_the_reference_documents_no_setting_conf_does_not_read() -> None:
    stale = sorted(set(documented()) - set(read_by_conf()))
    assert not stale, (
        f"docs/settings.md documents {', '.join(stale)}, which conf.py no longer reads: "
        "remove their rows."
    )
