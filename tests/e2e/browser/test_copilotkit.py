"""A real CopilotKit React chat (examples/copilotkit-react) in Debian's Chromium, talking to Django.

The example is built with npm + Vite (cached until its sources change) and served by the
same daphne process as the endpoint, so the chat is same-origin. Requests leaving the
machine are blocked: the page must work with nothing but the built files and Django.
After the first answer the chat asks the demo agent's server-side tool (whoami): the page
shows the step the server ran, with its result, then the answer built from it. Then it asks
twice for forget_conversation (confirm=True): the run ends with an AG-UI interrupt, the
page asks a person, and the answer (Approve, then Deny) goes out in the next run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.db import connection

from copilotedge.models import ApiKey, Conversation, UsageRecord
from copilotedge.testing import EmulatorApp, EmulatorServer
from copilotedge.testing.answers import TOOL_RESULT
from tests.browser import launch_chromium
from tests.servers import DaphneServer

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "copilotkit-react"
DIST = EXAMPLE / "dist"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
SOURCES = ("src", "index.html", "vite.config.js", "package.json", "package-lock.json")

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _newest_source() -> float:
    newest = 0.0
    for name in SOURCES:
        path = EXAMPLE / name
        paths = path.rglob("*") if path.is_dir() else [path]
        newest = max([newest, *(p.stat().st_mtime for p in paths if p.is_file())])
    return newest


def build_example() -> Path:
    """``npm ci`` (if needed) and ``vite build`` (if the sources changed since the last build)."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.skip("node and npm are needed to build the CopilotKit example")
    if not (EXAMPLE / "node_modules").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=EXAMPLE, check=True, timeout=900)
    index = DIST / "index.html"
    if not index.is_file() or index.stat().st_mtime < _newest_source():
        subprocess.run([npm, "run", "build"], cwd=EXAMPLE, check=True, timeout=600)
    return DIST


def _conversation_exists(pk) -> bool:
    """Whether the row is there, asked from another thread (Playwright's loop runs on this one)."""

    def exists() -> bool:
        try:
            return Conversation.objects.filter(pk=pk).exists()
        finally:
            connection.close()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(exists).result()


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    # Slow enough that the answer visibly streams in the page.
    with EmulatorServer(EmulatorApp(token_delay=0.06)) as server:
        yield server


# The first run builds the example (npm ci + vite build): more than the suite's 120 s.
@pytest.mark.timeout(900)
def test_copilotkit_chat_streams_in_a_real_browser(emulator, user) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    dist = build_example()
    _, token = ApiKey.create_key(user, name="browser")
    # Stored conversations of alice's for forget_conversation: one approved, one denied.
    forgotten = Conversation.objects.create(user=user, title="Approved to forget")
    kept = Conversation.objects.create(user=user, title="Denied to forget")
    overrides = {
        "COPILOTEDGE_API_BASE_URL": emulator.api_base_url,
        "COPILOTEDGE_ACCOUNT_ID": "emulator",
        "COPILOTEDGE_API_TOKEN": "emulator",
        "TEST_EXAMPLE_DIST": str(dist),
        # The demo's agent, with its server-side tools (project/settings.py).
        "COPILOTEDGE_AGENTS": {
            "default": {
                "name": "default",
                "tools": [
                    "project.tools.whoami",
                    "project.tools.my_usage",
                    "project.tools.forget_conversation",
                ],
            },
        },
    }
    # Not the ``browser`` fixture: the test writes a key before Chromium opens and reads
    # the ledger after it closes, which it could not do with Chromium open all along.
    with DaphneServer(overrides) as site, launch_chromium() as browser:
        page = browser.new_page(viewport={"width": 1000, "height": 800})
        blocked: list[str] = []

        def only_local(route) -> None:
            if route.request.url.startswith(site.url):
                route.continue_()
            else:
                blocked.append(route.request.url)
                route.abort()

        page.route("**/*", only_local)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        calls: list[str] = []
        bodies: list[dict] = []

        def on_request(request) -> None:
            calls.append(f"{request.method} {request.url}")
            if request.url.endswith("/agent/default/run"):
                bodies.append(json.loads(request.post_data or "{}"))

        page.on("request", on_request)
        page.goto(f"{site.url}/example/?key={token}")
        box = page.locator("textarea").first
        box.wait_for(timeout=30_000)
        # The chat takes input once CopilotKit has found the runtime (GET …/info) and
        # connected the agent to its thread (…/connect); wait for that traffic to settle.
        page.wait_for_load_state("networkidle")
        # A message sent while CopilotKit still settles its thread (it may retry …/connect
        # after the network went quiet) is dropped without a trace: send until it shows.
        # Once a run has gone out, the message was taken: a slow machine only shows it late,
        # and sending again would start a second run.
        sent = page.locator(".copilotKitUserMessage", has_text="Hello from Chromium")
        run = f"POST {site.url}/copilotedge/copilotkit/agent/default/run"
        for _ in range(10):
            box.fill("Hello from Chromium")
            box.press("Enter")
            try:
                sent.wait_for(timeout=2_000)
                break
            except PlaywrightTimeout:
                if run in calls:
                    break
        sent.wait_for(timeout=30_000)

        # Sample the assistant's message while it streams in, until it has been still for 1 s.
        assistant = page.locator(".copilotKitAssistantMessage").last
        seen: list[str] = []
        still_since = time.monotonic()
        deadline = still_since + 30
        while time.monotonic() < deadline:
            text = assistant.inner_text() if assistant.count() else ""
            if text.strip() and (not seen or text != seen[-1]):
                seen.append(text)
                still_since = time.monotonic()
            elif seen and "Hello from Chromium" in seen[-1] and time.monotonic() - still_since > 1:
                break
            time.sleep(0.03)
        final = assistant.inner_text()

        # The demo agent's server tool: the chat shows the step the server ran (the
        # example renders tool calls) and the model's answer built from its result.
        runs_before = calls.count(run)
        box.fill("Who am I? CALL:whoami{}")
        box.press("Enter")
        step = page.locator('.tool-step[data-tool="whoami"][data-status="complete"]')
        step.wait_for(timeout=30_000)
        step_text = step.inner_text()
        answer = page.locator(".copilotKitAssistantMessage", has_text="Tool result: alice")
        answer.last.wait_for(timeout=30_000)
        # The send button says when the run is over: the answer is complete then.
        page.locator('[data-copilotkit-in-progress="false"]').wait_for(timeout=30_000)
        tool_answer = answer.last.inner_text()
        answer_has_step = answer.last.locator(".tool-step").count() > 0
        runs_after_whoami = calls.count(run)

        # A confirm=True tool: the run ends with an interrupt, the page asks a person, and
        # the answer goes out in the next run, which runs (or denies) the call.
        def forget(conversation, button: str, expected: str) -> tuple[str, bool, str]:
            box.fill(
                f'Forget it. CALL:forget_conversation{{"conversation_id": "{conversation.pk}"}}'
            )
            box.press("Enter")
            prompt = page.locator('.approval[data-tool="forget_conversation"]')
            prompt.wait_for(timeout=30_000)
            question = prompt.inner_text()
            if button == "Approve":
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "copilotkit-approval.png"), full_page=True)
            waiting = _conversation_exists(conversation.pk)
            prompt.get_by_role("button", name=button).click()
            prompt.wait_for(state="detached", timeout=30_000)
            answer = page.locator(".copilotKitAssistantMessage", has_text=expected).last
            answer.wait_for(timeout=30_000)
            page.locator('[data-copilotkit-in-progress="false"]').wait_for(timeout=30_000)
            return question, waiting, answer.inner_text()

        deleted = f"Deleted the conversation {forgotten.pk}."
        approve_question, approve_waiting, approved = forget(forgotten, "Approve", deleted)
        runs_after_approve = calls.count(run)
        deny_question, deny_waiting, denied = forget(kept, "Deny", "did not approve")
        forget_steps = page.locator('.tool-step[data-tool="forget_conversation"]')
        forget_steps = [forget_steps.nth(i).inner_text() for i in range(forget_steps.count())]
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "copilotkit-chat.png"), full_page=True)
        server_log = site.stop()

    assert "Hello from the Workers AI emulator" in final, (final, errors, server_log)
    assert "Hello from Chromium" in final
    partial = [text for text in seen if text.strip() and text != final]
    assert len(partial) >= 2, f"the answer did not stream: {seen}"
    assert "Traceback" not in server_log, server_log
    assert "whoami" in step_text and "done" in step_text, step_text
    assert step_text.splitlines()[-1] == "alice", step_text
    assert "Tool result: alice" in tool_answer and not answer_has_step, tool_answer
    assert runs_after_whoami == runs_before + 1, calls
    # Each forget_conversation took two runs: the interrupted one and the one answering it.
    assert runs_after_approve == runs_after_whoami + 2, calls
    assert calls.count(run) == runs_after_approve + 2, calls
    for question, conversation in ((approve_question, forgotten), (deny_question, kept)):
        assert "forget_conversation" in question and str(conversation.pk) in question, question
    # Nothing ran before the person answered.
    assert approve_waiting and deny_waiting
    # The answering runs sent the standard resume entry, with the person's answer.
    resumes = [body["resume"] for body in bodies if body.get("resume")]
    assert [[(e["status"], e["payload"]) for e in r] for r in resumes] == [
        [("resolved", {"approved": True})],
        [("resolved", {"approved": False})],
    ], resumes
    assert f"{TOOL_RESULT} {deleted}" in approved, approved
    assert not Conversation.objects.filter(pk=forgotten.pk).exists()
    assert "did not approve" in denied and "forget_conversation" in denied, denied
    assert "Deleted" not in denied, denied
    assert Conversation.objects.filter(pk=kept.pk).exists()
    # The chat shows both calls done, with the results the answering runs sent.
    assert len(forget_steps) == 2, forget_steps
    assert "done" in forget_steps[0] and deleted in forget_steps[0], forget_steps
    assert "done" in forget_steps[1] and "did not approve" in forget_steps[1], forget_steps
    # CopilotKit found the runtime with GET …/info and ran the agent over AG-UI.
    assert f"GET {site.url}/copilotedge/copilotkit/info" in calls
    assert f"POST {site.url}/copilotedge/copilotkit/agent/default/connect" in calls
    assert f"POST {site.url}/copilotedge/copilotkit/agent/default/run" in calls
    assert blocked == [], f"the page reached beyond the site: {blocked}"
    records = list(UsageRecord.objects.filter(protocol="agui").order_by("created_at", "pk"))
    assert len(records) == calls.count(run) >= 1, (records, calls)
    assert all(record.outcome == "ok" and record.user_id == user.pk for record in records)
    # whoami ran within its run: one row, two upstream steps, its tool call counted. A
    # confirm=True call is counted on the run that answered its interrupt, denied or not;
    # the interrupted run made its one upstream call.
    steps = [(r.steps, r.tool_calls) for r in records[-5:]]
    assert steps == [(2, 1), (1, 0), (1, 1), (1, 0), (1, 1)], steps
    assert os.path.getsize(ARTIFACTS / "copilotkit-chat.png") > 0
    assert os.path.getsize(ARTIFACTS / "copilotkit-approval.png") > 0
