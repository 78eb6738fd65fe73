"""``copilotedge_usage_report``: the admin report's numbers on the command line."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from django.test import Client

from tests.helpers import SampleLedger

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("copilotedge_usage_report", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def auditor(sample_ledger: SampleLedger, django_user_model: Any) -> Client:
    member = django_user_model.objects.create_user("auditor", password="pw", is_staff=True)
    member.user_permissions.add(Permission.objects.get(codename="view_usagerecord"))
    client = Client()
    client.force_login(member)
    return client


@pytest.mark.parametrize("by", ["day", "model", "user", "key"])
def test_csv_is_the_admin_reports_table(auditor: Client, by: str) -> None:
    admin_csv = auditor.get(f"/admin/copilotedge/usagereport/export/{by}.csv", {"period": "7d"})
    assert run(
        "--since", "7d", "--by", by, "--format", "csv"
    ) == admin_csv.content.decode().replace("\r\n", "\n")


def test_json_has_rows_and_the_admin_reports_totals(auditor: Client) -> None:
    document = json.loads(run("--since", "7d", "--by", "model", "--format", "json"))
    assert document["by"] == "model"
    assert [(r["model"], r["requests"], r["cost"]) for r in document["rows"]] == [
        (SampleLedger.MODEL_A, 4, "0.00300000"),
        (SampleLedger.MODEL_B, 1, "0.00000000"),
    ]
    admin_totals = next(
        csv.DictReader(
            io.StringIO(
                auditor.get(
                    "/admin/copilotedge/usagereport/export/totals.csv", {"period": "7d"}
                ).content.decode()
            )
        )
    )
    totals = document["totals"]
    for name, value in admin_totals.items():
        assert str(totals[name]) == value, name
    assert totals["latency_p95_ms"] == SampleLedger.latency_p95_ms
    assert totals["error_rate"] == 0.2


def test_table_by_user(sample_ledger: SampleLedger) -> None:
    lines = run("--by", "user").splitlines()
    assert lines[0].split() == [
        "user",
        "requests",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "cost",
        "cost_saved",
        "errors",
        "cache_hits",
    ]
    assert lines[2].split()[:2] == ["alice", "4"] and lines[3].split()[:2] == ["bob", "1"]
    assert lines[5].split()[:2] == ["TOTAL", "5"]
    assert "error_rate: 20.0%" in lines and "latency_p50_ms: 200" in lines


def test_the_period_is_checked(sample_ledger: SampleLedger) -> None:
    with pytest.raises(CommandError, match="not a period"):
        run("--since", "last tuesday")
    # A shorter period sees fewer rows: only the three of the last minute in 1h.
    assert json.loads(run("--since", "1h", "--format", "json"))["totals"]["requests"] == 3


@pytest.mark.parametrize("by", ["user", "key"])
def test_csv_cells_never_start_a_formula(auditor: Client, django_user_model: Any, by: str) -> None:
    from copilotedge.models import ApiKey, UsageRecord

    names = ['=HYPERLINK("http://x")', "+1+1", "-2", "@SUM(A1)", "\tTAB"]
    for name in names:
        member = django_user_model.objects.create_user(name)
        key, _ = ApiKey.create_key(member, name=name)
        UsageRecord.objects.create(protocol="openai", user=member, api_key=key, outcome="ok")
    exported = [
        run("--since", "7d", "--by", by, "--format", "csv"),
        auditor.get(
            f"/admin/copilotedge/usagereport/export/{by}.csv", {"period": "7d"}
        ).content.decode(),
    ]
    for body in exported:
        cells = [row[0] for row in csv.reader(io.StringIO(body, newline=""))][1:]
        if by == "user":
            assert {"'" + name for name in names} <= set(cells)
        assert not [cell for cell in cells if cell.startswith(("=", "+", "-", "@", "\t", "\r"))]
