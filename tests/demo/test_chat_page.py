"""The demo's chat page in Debian's Chromium: sign in, stream, stop, reload, resume.

The demo project (``project.asgi``) runs under daphne on the suite's test database and
talks to the Workers AI emulator; Playwright drives Chromium against it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.db import connection, connections

from copilotedge.models import Conversation, Message
from copilotedge.testing import EmulatorApp, EmulatorServer
from tests.browser import launch_chromium, requires_chromium
from tests.servers import ROOT, free_port, wait_for_port

T = TypeVar("T")
TOKENS = 30
GREETING = "Hello from the Workers AI emulator."
# The emulator's per-request fault marker: 0.15 s a token makes an answer take ~4.5 s.
SLOW = " [[fault:slow:0.15]]"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    requires_chromium,
]


def database_url() -> str:
    settings = connection.settings_dict
    if connection.vendor == "postgresql":
        user = settings["USER"] or "postgres"
        return f"postgres://{user}@{settings['HOST']}:{settings['PORT']}/{settings['NAME']}"
    return f"sqlite:///{settings['NAME']}"


@pytest.fixture
def demo_site() -> Iterator[str]:
    """The demo project under daphne, upstream the emulator; yields its base URL."""
    port = free_port()
    with EmulatorServer(EmulatorApp(tokens=TOKENS, token_delay=0.01)) as emulator:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "DJANGO_DEBUG": "false",
            "DATABASE_URL": database_url(),
            "CLOUDFLARE_API_BASE_URL": emulator.api_base_url,
            "CLOUDFLARE_ACCOUNT_ID": "emulator",
            "CLOUDFLARE_API_TOKEN": "emulator",
            "PYTHONPATH": str(ROOT),
        }
        with tempfile.TemporaryFile() as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                 "project.asgi:application"],
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
            )  # fmt: skip
            try:
                wait_for_port(port)
                yield f"http://127.0.0.1:{port}"
            finally:
                process.terminate()
                process.wait(10)
                stderr.seek(0)
                log = stderr.read().decode(errors="replace")
                assert "Traceback" not in log, log


@pytest.fixture
def page(demo_site: str) -> Iterator[object]:
    # Hashed for the demo's hashers (the suite's settings use a fast one the demo lacks).
    password = PBKDF2PasswordHasher().encode("demo", PBKDF2PasswordHasher().salt())
    get_user_model().objects.create(username="demo", password=password)
    with launch_chromium() as browser:
        page = browser.new_page(base_url=demo_site)
        page.set_default_timeout(15_000)
        yield page


@pytest.fixture
def in_thread() -> Iterator[Callable[[Callable[[], T]], T]]:
    """Run ORM code off the thread where Playwright's event loop runs."""
    with ThreadPoolExecutor(1) as pool:
        yield lambda work: pool.submit(work).result()
        pool.submit(connections.close_all).result()


def last_answer() -> Message:
    answer = Message.objects.filter(role="assistant").order_by("-created_at", "-sequence").first()
    assert answer is not None
    return answer


def test_chat_page_streams_stops_and_resumes_after_reload(page, in_thread):
    from playwright.sync_api import expect

    # Signing in.
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next=/$"))
    page.fill("input[name=username]", "demo")
    page.fill("input[name=password]", "demo")
    page.click("button[type=submit]")
    expect(page.locator("#status")).to_have_text("Connected as demo.")
    # The stylesheet is served (DEBUG is off): the page is laid out as a grid.
    assert page.eval_on_selector(".app", "e => getComputedStyle(e).display") == "grid"

    # A streamed answer.
    page.fill("#prompt", "Hello there")
    page.click("#send")
    answer = page.locator(".message.assistant").last
    expect(answer).to_contain_text(GREETING)
    expect(answer).not_to_have_class("message assistant streaming")
    expect(page.locator("#conversations li")).to_have_text(["Hello there"])
    stored = in_thread(last_answer)
    assert stored.status == "complete"
    assert answer.inner_text() == stored.content
    assert len(stored.content.split()) == TOKENS

    # Stop a slow answer part way.
    page.fill("#prompt", "Tell me more" + SLOW)
    page.click("#send")
    slow = page.locator(".message.assistant").last
    expect(slow).to_contain_text(GREETING)
    page.click("#stop")
    expect(slow).to_have_class("message assistant cancelled")
    expect(page.locator("#send")).to_be_enabled()
    stopped = in_thread(last_answer)
    assert stopped.status == "cancelled"
    assert 0 < len(stopped.content.split()) < TOKENS

    # Reload: the conversation is there, with both answers as stored.
    page.reload()
    expect(page.locator("#status")).to_have_text("Connected as demo.")
    expect(page.locator(".message.user")).to_have_text(["Hello there", "Tell me more" + SLOW])
    expect(page.locator(".message.assistant.cancelled")).to_have_count(1)
    expect(page.locator("#conversations li.current")).to_have_text("Hello there")

    # Reload while an answer is generated: it picks up where it was and completes.
    page.fill("#prompt", "One more" + SLOW)
    page.click("#send")
    expect(page.locator(".message.assistant").last).to_contain_text("You said")
    page.reload()
    resumed = page.locator(".message.assistant").last
    expect(resumed).to_have_class("message assistant streaming")
    expect(resumed).not_to_have_class("message assistant streaming", timeout=20_000)
    last = in_thread(last_answer)
    assert last.status == "complete"
    assert in_thread(Conversation.objects.count) == 1
    assert resumed.inner_text() == last.content
    assert len(last.content.split()) == TOKENS


def test_chat_page_shows_tool_steps_and_asks_for_approval(page, in_thread):
    from playwright.sync_api import expect

    page.goto("/")
    page.fill("input[name=username]", "demo")
    page.fill("input[name=password]", "demo")
    page.click("button[type=submit]")
    expect(page.locator("#status")).to_have_text("Connected as demo.")

    # "Who am I?": the tool step shows above the answer, which quotes its result.
    page.fill("#prompt", "Who am I? CALL:whoami{}")
    page.click("#send")
    step = page.locator(".tool-step").last
    expect(step.locator(".tool-call")).to_have_text("Tool: whoami({})")
    expect(step.locator(".tool-result")).to_have_text("demo")
    answer = page.locator(".message.assistant").last
    expect(answer).not_to_have_class("message assistant streaming")
    expect(answer).to_contain_text("Tool result: demo")

    # A tool that needs approval: denied, then approved.
    demo = in_thread(lambda: get_user_model().objects.get(username="demo"))
    other = in_thread(lambda: Conversation.objects.create(user=demo, title="Old chat"))
    ask = f'CALL:forget_conversation{{"conversation_id": "{other.pk}"}}'
    page.fill("#prompt", ask)
    page.click("#send")
    asked = page.locator(".tool-step").last
    expect(asked.locator(".tool-confirm")).to_contain_text("needs your approval")
    asked.locator("button.deny").click()
    expect(asked.locator(".tool-result")).to_contain_text("did not approve")
    expect(page.locator("#send")).to_be_enabled()
    assert in_thread(Conversation.objects.filter(pk=other.pk).exists)

    page.fill("#prompt", ask)
    page.click("#send")
    approved = page.locator(".tool-step").last
    approved.locator("button.approve").click()
    expect(approved.locator(".tool-result")).to_have_text(f"Deleted the conversation {other.pk}.")
    expect(page.locator("#send")).to_be_enabled()
    assert not in_thread(Conversation.objects.filter(pk=other.pk).exists)

    # Reload: the stored conversation shows its tool steps with their results.
    page.reload()
    expect(page.locator("#status")).to_have_text("Connected as demo.")
    expect(page.locator(".tool-step .tool-result")).to_have_text(
        ["demo", re.compile("did not approve"), f"Deleted the conversation {other.pk}."]
    )
    expect(page.locator(".message.assistant").first).to_contain_text("Tool result: demo")
