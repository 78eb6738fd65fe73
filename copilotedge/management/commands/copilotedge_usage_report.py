"""``copilotedge_usage_report``: the admin's usage report on the command line."""

from __future__ import annotations

import csv
import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from copilotedge.usage import report

FORMATS = ("table", "csv", "json")


class Command(BaseCommand):
    help = "Usage per day, model, user or API key, computed exactly as the admin report."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--since",
            default="7d",
            help="Period: 7d (whole days ending today), 24h, 2w, 90m or an ISO date. Default: 7d.",
        )
        parser.add_argument("--by", choices=report.GROUPINGS, default=report.BY_DAY)
        parser.add_argument("--format", choices=FORMATS, default="table", dest="output")

    def handle(self, *args: Any, since: str, by: str, output: str, **options: Any) -> None:
        try:
            period = report.Period.parse(since)
        except ValueError as error:
            raise CommandError(str(error)) from None
        data = report.build(period, top=0)
        table = {
            report.BY_DAY: data.daily,
            report.BY_MODEL: data.models,
            report.BY_USER: data.users,
            report.BY_KEY: data.keys,
        }[by]
        rows = [row.as_dict(by) for row in table]
        totals = data.totals.as_dict()
        if output == "json":
            document = {
                "since": period.since.isoformat(),
                "until": period.until.isoformat(),
                "by": by,
                "rows": [{k: report.plain(v) for k, v in row.items()} for row in rows],
                "totals": {k: report.plain(v) for k, v in totals.items()},
            }
            self.stdout.write(json.dumps(document, indent=2))
        elif output == "csv":
            writer = csv.writer(self.stdout, lineterminator="\n")
            writer.writerow([by, *report.Row.COLUMNS])
            writer.writerows(row.csv_values(by) for row in table)
        else:
            self._table(by, rows, totals)

    def _table(self, by: str, rows: list[dict[str, Any]], totals: dict[str, Any]) -> None:
        header = [by, *report.Row.COLUMNS]
        total_line = ["TOTAL", *(totals[column] for column in report.Row.COLUMNS)]
        lines = [header, *(list(row.values()) for row in rows), total_line]
        cells = [[str(report.plain(cell)) for cell in line] for line in lines]
        widths = [max(len(line[i]) for line in cells) for i in range(len(header))]

        def render(line: list[str]) -> str:
            first = line[0].ljust(widths[0])
            rest = (cell.rjust(width) for cell, width in zip(line[1:], widths[1:], strict=True))
            return "  ".join([first, *rest]).rstrip()

        self.stdout.write(render(cells[0]))
        self.stdout.write("  ".join("-" * width for width in widths))
        for line in cells[1:-1]:
            self.stdout.write(render(line))
        self.stdout.write("  ".join("-" * width for width in widths))
        self.stdout.write(render(cells[-1]))
        for name in ("error_rate", "cache_hit_rate"):
            self.stdout.write(f"{name}: {totals[name] * 100:.1f}%")
        for name in ("latency_p50_ms", "latency_p95_ms", "ttft_p50_ms", "ttft_p95_ms"):
            value = totals[name]
            self.stdout.write(f"{name}: {'-' if value is None else f'{value:.0f}'}")
