"""Management commands, run the way an operator runs them."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

from copilotedge.models import ApiKey, hash_key
from tests.servers import ROOT

pytestmark = pytest.mark.django_db


def create_key(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("copilotedge_create_key", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_create_key_creates_the_user_and_prints_only_the_key() -> None:
    out, err = create_key("--user", "carol")
    (line,) = out.splitlines()
    assert line.startswith("ce_")
    assert "carol" in err
    key = ApiKey.objects.get(hashed_key=hash_key(line))
    assert line.startswith(key.prefix)
    user = get_user_model().objects.get(username="carol")
    assert key.user == user
    assert not user.has_usable_password()
    assert not user.is_staff
    assert (key.requests_per_minute, key.tokens_per_minute, key.monthly_budget) == (None,) * 3


def test_create_key_for_an_existing_user_with_limits(user: Any) -> None:
    out, err = create_key(
        "--user", "alice", "--rpm", "10", "--tpm", "5000", "--budget", "12.50", "--staff"
    )
    assert err == ""
    key = ApiKey.objects.get(hashed_key=hash_key(out.strip()))
    assert key.user == user
    assert (key.requests_per_minute, key.tokens_per_minute) == (10, 5000)
    assert key.monthly_budget == Decimal("12.50")
    user.refresh_from_db()
    assert user.is_staff
    assert user.check_password("pw")  # an existing user's password is left alone


def test_each_call_makes_a_new_key(user: Any) -> None:
    first, _ = create_key("--user", "alice")
    second, _ = create_key("--user", "alice")
    assert first != second
    assert ApiKey.objects.filter(user=user).count() == 2


@pytest.mark.parametrize(
    "args",
    [
        ["--rpm", "0"],
        ["--rpm", "ten"],
        ["--tpm", "-5"],
        ["--budget", "lots"],
        ["--budget", "-1"],
        ["--budget", "NaN"],
    ],
)
def test_bad_limits_are_refused(args: list[str]) -> None:
    with pytest.raises(CommandError):
        create_key("--user", "dave", *args)
    assert not ApiKey.objects.exists()


@pytest.mark.parametrize(
    ("budget", "says"),
    [("0.0001", "2 decimal places"), ("12345678901.5", "digits"), ("1e-9", "decimal places")],
)
def test_a_budget_the_key_cannot_hold_is_refused(budget: str, says: str) -> None:
    with pytest.raises(CommandError, match=says):
        create_key("--user", "dave", "--budget", budget)
    assert not ApiKey.objects.exists()


def test_user_is_required() -> None:
    with pytest.raises(CommandError, match="--user"):
        create_key()


def test_manage_py_prints_one_line(tmp_path: Any) -> None:
    # As the README runs it: the demo project on a fresh SQLite database.
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}", "PATH": "/usr/bin:/bin"}
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    done = subprocess.run(
        [*manage, "copilotedge_create_key", "--user", "demo", "--rpm", "5"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    (line,) = done.stdout.splitlines()
    assert line.startswith("ce_") and len(line) > 40
