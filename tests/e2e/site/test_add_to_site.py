"""The README's "Add it to your site", run as written in a brand-new site.

The app is built into a wheel and installed, with its declared dependencies only, into a
fresh virtualenv; ``django-admin startproject mysite`` makes the site and the snippets
marked ``<!-- add-to-site: NAME -->`` in README.md are applied to it. Then the site
migrates, creates an admin user and a key, and ``runserver`` (daphne) serves it, with
``manage.py copilotedge_emulator`` (from the same virtualenv) as the upstream. The
``openai`` SDK streams, a WebSocket client chats and the admin shows the usage report.

pip needs a package index (PyPI, or its cache); without one the tests skip, saying so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import openai
import pytest
from websockets.sync.client import connect

from tests.servers import free_port

pytestmark = pytest.mark.site

ROOT = Path(__file__).resolve().parents[3]
README = ROOT / "README.md"
#: What building the app needs (MANIFEST.in and pyproject.toml say what goes in).
SOURCES = ("pyproject.toml", "MANIFEST.in", "LICENSE", "README.md", "CHANGELOG.md", "docs")
SNIPPET = re.compile(
    r"<!-- add-to-site: (?P<name>[\w.-]+) -->\n```\w*\n(?P<code>.*?)^```", re.S | re.M
)
EMULATOR_BASE = "http://127.0.0.1:8788/client/v4"  # as the README's emulator snippet says
#: pip's words when it cannot reach a package index.
OFFLINE = (
    "Could not find a version that satisfies",
    "No matching distribution found",
    "NewConnectionError",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "Max retries exceeded",
)
PASSWORD = "an admin password for the test"


def readme_snippets() -> dict[str, str]:
    snippets = {m["name"]: m["code"] for m in SNIPPET.finditer(README.read_text())}
    for name in ("settings.py", "urls.py", "asgi.py", "shell", "settings-emulator.py"):
        assert name in snippets, f"README.md has no <!-- add-to-site: {name} --> snippet"
    return snippets


def check_exit(args: list[str], code: int, output: str, *, needs_index: bool) -> None:
    """Fail the test on a failed command (skip it when pip could not reach an index)."""
    if code and needs_index and any(sign in output for sign in OFFLINE):
        pytest.skip(f"pip cannot reach a package index: {output.strip().splitlines()[-1]}")
    assert code == 0, f"{' '.join(args)} failed:\n{output}"


def run(args: list[str], cwd: Path, env: dict[str, str], *, needs_index: bool = False) -> str:
    """``args``' standard output, once it succeeded."""
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    check_exit(args, done.returncode, done.stdout + done.stderr, needs_index=needs_index)
    return done.stdout


@dataclass
class Site:
    directory: Path
    env: dict[str, str]
    url: str
    key: str

    def manage(self, *args: str) -> str:
        python = str(self.directory.parent / "venv" / "bin" / "python")
        return run([python, "manage.py", *args], self.directory, self.env)


def start(
    args: list[str], cwd: Path, env: dict[str, str], log: IO[bytes]
) -> subprocess.Popen[bytes]:
    # A file, not a pipe: a pipe nobody reads would block a chatty server.
    return subprocess.Popen(args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_for(process: subprocess.Popen[bytes], log: IO[bytes], ready: Any, what: str) -> Any:
    """``ready()``'s first truthy value; fails with the process's output if it ends first."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        if process.poll() is not None:
            break
        time.sleep(0.1)
    log.seek(0)
    pytest.fail(f"{what} did not start:\n{log.read().decode(errors='replace')}")


def emulator_base(log: IO[bytes]) -> str | None:
    log.seek(0)
    match = re.search(rb"COPILOTEDGE_API_BASE_URL=(\S+)", log.read())
    return match[1].decode() if match else None


def answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/copilotedge/health?probe=liveness", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    snippets = readme_snippets()
    work = tmp_path_factory.mktemp("site")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PYTHON"))}
    env.pop("VIRTUAL_ENV", None)
    # Build from a copy, so the build leaves nothing in the checkout.
    source = work / "source"
    shutil.copytree(
        ROOT / "copilotedge", source / "copilotedge", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in SOURCES:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip"]
    run([sys.executable, "-m", "venv", "--without-pip", str(work / "venv")], work, env)
    venv = work / "venv" / "bin"
    install = [*pip, "--python", str(venv / "python"), "install", "--quiet", "--no-compile"]
    # While the wheel builds, pip fetches and installs what it declares (the same list,
    # from pyproject.toml); installing the wheel below then has only itself left to do.
    declared = tomllib.loads((source / "pyproject.toml").read_text())["project"]["dependencies"]
    warm_up = subprocess.Popen(
        [*install, *declared], cwd=work, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    build = [*pip, "wheel", "--no-deps", "--quiet", "-w", str(work / "dist"), str(source)]
    try:
        run(build, work, env, needs_index=True)
    finally:
        output, _ = warm_up.communicate(timeout=300)
    check_exit(warm_up.args, warm_up.returncode, output, needs_index=True)
    [wheel] = (work / "dist").glob("copilotedge-*.whl")
    # The app with its own requirements, nothing else: no uvicorn, no openai, no test tools.
    run([*install, str(wheel)], work, env, needs_index=True)
    env["PATH"] = f"{venv}{os.pathsep}{env.get('PATH', '')}"
    directory = work / "mysite"
    directory.mkdir()
    run([str(venv / "django-admin"), "startproject", "mysite", str(directory)], work, env)
    with (directory / "mysite" / "settings.py").open("a") as settings:
        settings.write("\n" + snippets["settings.py"])
    with (directory / "mysite" / "urls.py").open("a") as urls:
        urls.write("\n" + snippets["urls.py"])
    (directory / "mysite" / "asgi.py").write_text(snippets["asgi.py"])

    logs = [(work / name).open("w+b") for name in ("emulator.log", "server.log")]
    python = str(venv / "python")
    processes = [
        start([python, "manage.py", "copilotedge_emulator", "--port", "0"], directory, env, logs[0])
    ]
    try:
        # The README's commands, while the emulator starts.
        site = Site(directory, env, "", "")
        site.manage("migrate")
        superuser = {
            "DJANGO_SUPERUSER_PASSWORD": PASSWORD,
            "DJANGO_SUPERUSER_EMAIL": "admin@example.com",
        }
        site.env = {**env, **superuser}
        site.manage("createsuperuser", "--noinput", "--username", "admin")
        site.env = env
        site.key = site.manage("copilotedge_create_key", "--user", "admin").strip()
        base = wait_for(processes[0], logs[0], lambda: emulator_base(logs[0]), "the emulator")
        assert EMULATOR_BASE in snippets["settings-emulator.py"]
        with (directory / "mysite" / "settings.py").open("a") as settings:
            settings.write("\n" + snippets["settings-emulator.py"].replace(EMULATOR_BASE, base))
        port = free_port()
        site.url = f"http://127.0.0.1:{port}"
        processes.append(
            start(
                [python, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
                directory,
                env,
                logs[1],
            )
        )
        wait_for(processes[1], logs[1], lambda: answers(site.url), "runserver")
        yield site
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)
        for log in logs:
            log.close()


def test_the_readme_sets_django_up_before_importing_the_app() -> None:
    """What broke the asgi.py snippet once: copilotedge.routing imports models."""
    asgi = readme_snippets()["asgi.py"]
    assert "from django.core.asgi import get_asgi_application" in asgi
    assert asgi.index("get_asgi_application()") < asgi.index("copilotedge")
    shell = readme_snippets()["shell"]
    for command in ("migrate", "copilotedge_create_key", "runserver"):
        assert f"manage.py {command}" in shell
    assert '"daphne"' in readme_snippets()["settings.py"]


def test_manage_py_check_is_clean(site: Site) -> None:
    output = site.manage("check")
    assert "copilotedge.E" not in output
    for warning in ("W012", "W032", "W060"):
        assert f"copilotedge.{warning}" not in output


def test_asgi_py_imports_the_way_an_asgi_server_loads_it(site: Site) -> None:
    """``daphne mysite.asgi:application`` imports the module before Django is set up
    (``runserver`` sets it up first, so it alone would not tell)."""
    python = str(site.directory.parent / "venv" / "bin" / "python")
    probe = "import mysite.asgi; print(type(mysite.asgi.application).__name__)"
    assert run([python, "-c", probe], site.directory, site.env).strip() == "Lifespan"


def test_the_emulator_command_runs_without_uvicorn(site: Site) -> None:
    assert "--token-delay" in site.manage("copilotedge_emulator", "--help")
    python = str(site.directory.parent / "venv" / "bin" / "python")
    probe = (
        "import importlib.util, copilotedge; "
        "print(importlib.util.find_spec('uvicorn'), copilotedge.__version__)"
    )
    assert run([python, "-c", probe], site.directory, site.env).split() == ["None", read_version()]


def read_version() -> str:
    match = re.search(r'__version__ = "(.+)"', (ROOT / "copilotedge" / "__init__.py").read_text())
    assert match
    return match[1]


def test_the_openai_sdk_streams(site: Site) -> None:
    client = openai.OpenAI(base_url=f"{site.url}/copilotedge/v1", api_key=site.key, max_retries=0)
    stream = client.chat.completions.create(
        model="@cf/meta/llama-3.1-8b-instruct",
        messages=[{"role": "user", "content": "Hello from a new site"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("Hello from the Workers AI emulator")
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_a_websocket_client_chats(site: Site) -> None:
    url = site.url.replace("http://", "ws://") + "/ws/copilotedge/chat/"
    with connect(url, additional_headers={"Origin": site.url}, open_timeout=10) as socket:
        socket.send(json.dumps({"type": "auth", "token": site.key}))
        assert json.loads(socket.recv(10)) == {"type": "ready", "user": "admin"}
        socket.send(
            json.dumps({"type": "chat", "id": "1", "messages": [{"role": "user", "content": "Hi"}]})
        )
        seen = []
        while not seen or seen[-1]["type"] not in ("done", "error"):
            seen.append(json.loads(socket.recv(10)))
    assert seen[0]["type"] == "start"
    assert seen[-1]["type"] == "done", seen[-1]
    text = "".join(m["content"] for m in seen if m["type"] == "delta")
    assert text.startswith("Hello from the Workers AI emulator")


def test_the_admin_shows_the_usage_report(site: Site) -> None:
    with httpx.Client(base_url=site.url, follow_redirects=True, timeout=10) as browser:
        # One answer of its own, so the report has a row whatever ran before.
        answer = browser.post(
            "/copilotedge/v1/chat/completions",
            headers={"Authorization": f"Bearer {site.key}"},
            json={"messages": [{"role": "user", "content": "Hi"}]},
        )
        assert answer.status_code == 200
        login = browser.get("/admin/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text)
        assert token
        signed_in = browser.post(
            "/admin/login/?next=/admin/",
            data={"username": "admin", "password": PASSWORD, "csrfmiddlewaretoken": token[1]},
            headers={"Referer": f"{site.url}/admin/login/"},
        )
        assert signed_in.status_code == 200 and "Log out" in signed_in.text
        report = browser.get("/admin/copilotedge/usagereport/")
    assert report.status_code == 200
    assert "Usage report" in report.text
    assert "@cf/meta/llama-3.1-8b-instruct" in report.text
