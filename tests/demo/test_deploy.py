"""The production layout in deploy/ passes Django's deployment checks."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.servers import ROOT

ALLOWED = {"security.W005", "security.W021"}  # HSTS for subdomains and preload: the operator's call


def deploy_check(**extra: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "COPILOTEDGE_"))}
    for line in (ROOT / "deploy" / "env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            env[name] = value
    env.update(DJANGO_SETTINGS_MODULE="project.settings", **extra)
    env["DJANGO_SECRET_KEY"] = "a-real-looking-secret-" + "k" * 20 + "0123456789abcdefghij"
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return result.stdout + result.stderr


def test_the_example_environment_passes_check_deploy() -> None:
    output = deploy_check()
    found = {word.strip("():") for word in output.split() if word.startswith("(security.")}
    assert found <= ALLOWED, output


def test_the_proxy_overwrites_x_forwarded_for_and_the_app_reads_it() -> None:
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in nginx
    assert "$proxy_add_x_forwarded_for" not in nginx
    unit = (ROOT / "deploy" / "copilotedge@.service").read_text()
    [start] = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert "--proxy-headers" not in start
    assert "COPILOTEDGE_TRUST_X_FORWARDED_FOR=true" in (ROOT / "deploy" / "env.example").read_text()


def test_the_demo_reads_trust_x_forwarded_for_from_its_environment() -> None:
    code = "from project import settings; print(settings.COPILOTEDGE_TRUST_X_FORWARDED_FOR)"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "COPILOTEDGE_"))}
    seen = {}
    for value in ("true", "false"):
        result = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT, env={**env, "COPILOTEDGE_TRUST_X_FORWARDED_FOR": value},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        seen[value] = result.stdout.strip()
    assert seen == {"true": "True", "false": "False"}


def test_hsts_for_subdomains_and_preload_can_be_turned_on() -> None:
    output = deploy_check(DJANGO_HSTS_INCLUDE_SUBDOMAINS="true", DJANGO_HSTS_PRELOAD="true")
    assert "(security." not in output, output
