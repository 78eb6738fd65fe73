"""The admin usage report on a large ledger: how long the page takes to render.

``run(database_url, rows)`` creates a dedicated database on the PostgreSQL server named
by ``database_url`` (and drops it afterwards), migrates it, generates ``rows`` usage rows
inside PostgreSQL (one ``INSERT … SELECT`` over ``generate_series``: no rows cross the
wire, far faster than COPY from Python), then renders ``/admin/copilotedge/usagereport/
?period=30d`` through Django's full request stack as a signed-in staff user, once cold
and several times warm. Target: under 1 s with 1,000,000 rows.

Django runs in a child process configured for the bench database, so ``run`` can be
called from any process (``make bench`` calls it). ``python -m bench.admin_report``
runs it on ``$DATABASE_URL`` (default: the local ``postgres://postgres@127.0.0.1/test``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/test"
REPORT_URL = "/admin/copilotedge/usagereport/?period=30d"
WARM_RENDERS = 5
USERS = 200
KEYS_PER_USER = 2
SPAN_DAYS = 45  # rows spread over 45 days, so the 30-day period filters some out

# Generated server-side and inserted oldest first, as a ledger fills up: a time in the last
# SPAN_DAYS days, a key (and its owner), a model,
# a protocol, an outcome (95 % ok), 10 % cache hits, token counts and latencies.
_GENERATE = """
INSERT INTO copilotedge_usagerecord (
    request_id, created_at, user_id, api_key_id, conversation_id, protocol, model_requested,
    model_served, prompt_tokens, completion_tokens, total_tokens, token_source, cost,
    cache_hit, cost_saved, outcome, status_code, error_code, latency_ms, ttft_ms, attempts)
SELECT
    gen_random_uuid(),
    at,
    keys.user_id, keys.id, NULL, protocols[1 + floor(random() * 5)::int], model, model,
    prompt, completion, prompt + completion,
    CASE WHEN random() < 0.1 THEN 'estimated' ELSE 'upstream' END,
    CASE WHEN hit THEN 0 ELSE round((prompt * 0.3 + completion * 0.9) / 1e6, 8) END,
    hit,
    CASE WHEN hit THEN round((prompt * 0.3 + completion * 0.9) / 1e6, 8) ELSE 0 END,
    outcome,
    CASE outcome WHEN 'ok' THEN 200 WHEN 'cancelled' THEN 499 ELSE 502 END,
    CASE WHEN outcome IN ('error', 'incomplete') THEN 'upstream_error' ELSE '' END,
    100 + floor(random() * 4900)::int,
    CASE WHEN outcome = 'error' THEN NULL ELSE 40 + floor(random() * 1500)::int END,
    CASE WHEN hit THEN 0 ELSE 1 END
FROM (
    SELECT g,
           now() - random() * interval '{span} days' AS at,
           1 + floor(random() * {keys})::int AS key_index,
           (ARRAY[{models}])[1 + floor(random() * {model_count})::int] AS model,
           ARRAY['openai', 'run', 'agui', 'graphql', 'websocket'] AS protocols,
           50 + floor(random() * 1950)::int AS prompt,
           10 + floor(random() * 790)::int AS completion,
           random() < 0.1 AS hit,
           (ARRAY['ok', 'ok', 'ok', 'ok', 'ok', 'ok', 'ok', 'ok', 'ok', 'ok', 'ok', 'ok', 'ok',
                  'ok', 'ok', 'ok', 'ok', 'ok', 'ok', 'error', 'incomplete', 'cancelled']
           )[1 + floor(random() * 22)::int] AS outcome
    FROM generate_series(1, {rows}) AS g
) AS generated
JOIN (SELECT id, user_id, row_number() OVER (ORDER BY id) AS key_index
      FROM copilotedge_apikey) AS keys USING (key_index)
ORDER BY at
"""
_UNIQUE_CONSTRAINTS = """
SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
WHERE conrelid = 'copilotedge_usagerecord'::regclass AND contype = 'u'
"""
_PLAIN_INDEXES = """
SELECT indexname, indexdef FROM pg_indexes
WHERE tablename = 'copilotedge_usagerecord' AND indexname NOT LIKE '%%_pkey'
  AND indexname NOT IN (SELECT conname FROM pg_constraint)
"""


def _with_database(url: str, name: str) -> str:
    return urlunparse(urlparse(url)._replace(path=f"/{name}"))


def _admin_connection(url: str) -> Any:
    import psycopg

    parts = urlparse(url)
    return psycopg.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5432,
        user=parts.username or "postgres",
        password=parts.password or None,
        dbname=parts.path.lstrip("/") or "postgres",
        autocommit=True,
    )


def run(database_url: str, rows: int = 1_000_000) -> dict[str, Any]:
    """Generate ``rows`` usage rows in a fresh bench database and time the 30-day report."""
    if not database_url.startswith(("postgres://", "postgresql://")):
        raise ValueError("The admin report benchmark needs a PostgreSQL DATABASE_URL.")
    name = f"copilotedge_bench_report_{os.getpid()}"
    with _admin_connection(database_url) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        child = subprocess.run(
            [sys.executable, "-m", "bench.admin_report", "--worker", "--rows", str(rows)],
            cwd=ROOT,
            env={
                **os.environ,
                "DATABASE_URL": _with_database(database_url, name),
                "PYTHONPATH": str(ROOT),
            },
            capture_output=True,
            text=True,
            check=False,
        )
        if child.returncode != 0:
            raise RuntimeError(f"the benchmark worker failed:\n{child.stderr}")
        result: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
    finally:
        with _admin_connection(database_url) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return result


def _configure_django(database_url: str) -> None:
    import django
    from django.conf import settings

    parts = urlparse(database_url)
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench-only",
        ALLOWED_HOSTS=["testserver"],
        USE_TZ=True,
        TIME_ZONE="UTC",
        ROOT_URLCONF="project.urls",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        INSTALLED_APPS=[
            "django.contrib.admin",
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "django.contrib.messages",
            "django.contrib.staticfiles",
            "copilotedge",
        ],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.middleware.common.CommonMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            "django.contrib.messages.middleware.MessageMiddleware",
        ],
        TEMPLATES=[
            {
                "BACKEND": "django.template.backends.django.DjangoTemplates",
                "APP_DIRS": True,
                "OPTIONS": {
                    "context_processors": [
                        "django.template.context_processors.request",
                        "django.contrib.auth.context_processors.auth",
                        "django.contrib.messages.context_processors.messages",
                    ]
                },
            }
        ],
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": parts.path.lstrip("/"),
                "USER": parts.username or "postgres",
                "PASSWORD": parts.password or "",
                "HOST": parts.hostname or "127.0.0.1",
                "PORT": str(parts.port or 5432),
            }
        },
        STATIC_URL="static/",
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
    )
    django.setup()


def _generate(rows: int) -> tuple[float, int]:
    from django.contrib.auth import get_user_model
    from django.db import connection

    from copilotedge.defaults import DEFAULT_PRICES
    from copilotedge.models import ApiKey

    users = get_user_model().objects.bulk_create(
        get_user_model()(username=f"user{n:04d}") for n in range(USERS)
    )
    ApiKey.objects.bulk_create(
        ApiKey(user=user, name=f"key {k}", prefix=f"ce_{u:04d}{k}", hashed_key=f"{u:060d}{k:04d}")
        for u, user in enumerate(users)
        for k in range(KEYS_PER_USER)
    )
    models = list(DEFAULT_PRICES)
    sql = _GENERATE.format(
        span=SPAN_DAYS,
        keys=USERS * KEYS_PER_USER,
        rows=rows,
        model_count=len(models),
        models=", ".join(f"'{model}'" for model in models),
    )
    started = time.perf_counter()
    with connection.cursor() as cursor:
        # Building the migrations' indexes once after the load beats updating them per
        # row; each is recreated from its own definition.
        cursor.execute(_UNIQUE_CONSTRAINTS)
        constraints = cursor.fetchall()
        cursor.execute(_PLAIN_INDEXES)
        indexes = cursor.fetchall()
        for name, _ in constraints:
            cursor.execute(f'ALTER TABLE copilotedge_usagerecord DROP CONSTRAINT "{name}"')
        for name, _ in indexes:
            cursor.execute(f'DROP INDEX "{name}"')
        cursor.execute(sql)
        cursor.execute("SET maintenance_work_mem = '256MB'")
        for name, definition in constraints:
            cursor.execute(
                f'ALTER TABLE copilotedge_usagerecord ADD CONSTRAINT "{name}" {definition}'
            )
        for _, definition in indexes:
            cursor.execute(definition)
        cursor.execute("VACUUM ANALYZE copilotedge_usagerecord")
        cursor.execute("SELECT count(*) FROM copilotedge_usagerecord")
        count = cursor.fetchone()[0]
    return time.perf_counter() - started, count


def _render() -> dict[str, Any]:
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client

    staff = get_user_model().objects.create_superuser("bench-admin", password="x")
    client = Client()
    client.force_login(staff)
    queries: list[tuple[float, str]] = []

    def timed(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            queries.append(((time.perf_counter() - started) * 1000, sql))

    timings = []
    with connection.execute_wrapper(timed):
        for _ in range(1 + WARM_RENDERS):
            queries.clear()
            started = time.perf_counter()
            response = client.get(REPORT_URL)
            timings.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                raise RuntimeError(f"the report answered {response.status_code}")
    slowest = sorted(queries, reverse=True)[:3]
    return {
        "cold_ms": round(timings[0], 1),
        "warm_median_ms": round(statistics.median(timings[1:]), 1),
        "warm_max_ms": round(max(timings[1:]), 1),
        "queries": len(queries),
        "slowest_queries_ms": [round(ms, 1) for ms, _ in slowest],
        "page_bytes": len(response.content),
        "rows_in_period": _rows_in_period(),
    }


def _rows_in_period() -> int:
    from copilotedge.usage.report import Period

    return Period.parse("30d").records().count()


def _worker(rows: int) -> None:
    _configure_django(os.environ["DATABASE_URL"])
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    seconds, count = _generate(rows)
    result = {"rows": count, "generate_s": round(seconds, 1), **_render()}
    result["target_ms"] = 1000
    result["ok"] = result["warm_median_ms"] < 1000
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", DEFAULT_URL))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.rows)
        return
    print(json.dumps(run(args.database_url, args.rows), indent=2))


if __name__ == "__main__":
    main()
