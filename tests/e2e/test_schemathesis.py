"""Property-based API tests: schemathesis generates requests for every operation of the OpenAPI document
served by a real `booking serve` process (and by a real `booking jobs` process), sends them with a real
admin's bearer token, and checks that nothing answers 5xx, that every status code and response body
(and content type) is the documented one. The stateful phase follows the document's links (a created
booking's id into GET/PATCH/DELETE). Marked `slow`: `make test-slow` runs it, `make test` does not.

It drives the `st` command line (a stable interface) rather than schemathesis' pytest plugin, whose
lazy-fixture path relies on pytest internals that pytest 9.2 removed. Bugs it finds are fixed in the
code, never by loosening the document.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.processes import BOOKING, ROOT, free_ports, start_web, stop
from tests.support import unique_email

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(600)]

ST = Path(sys.executable).parent / "st"
CHECKS = "not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance"
EXAMPLES = 25  # per operation and phase: the whole run stays around half a minute per document
PASSWORD = "schemathesis password 1"


def _post_json(url: str, payload: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 (our own server)
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
        data: dict[str, Any] = json.loads(resp.read())
        return data


@pytest.fixture(scope="module")
def web(database_url: str, redis_url: str) -> Iterator[tuple[str, dict[str, str], str]]:
    """(base URL, env, a real admin's access token) of one real web process."""
    email = unique_email("st-admin")
    env = {
        "APP_ENV": "test",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": f"st{uuid.uuid4().hex[:8]}:",
        # Generated traffic is a burst from one address and one user: keep the limiters out of the way.
        "AUTH_RATE_LIMIT_PER_IP": "1000000",
        "AUTH_RATE_LIMIT_PER_EMAIL": "1000000",
        "API_RATE_LIMIT_PER_USER": "1000000",
        "ADMIN_EMAIL": email,
        "ADMIN_PASSWORD": PASSWORD,
    }
    procs = start_web(1, env)
    try:
        base = procs[0].base_url
        session = _post_json(f"{base}/api/auth/login", {"email": email, "password": PASSWORD})
        yield base, env, session["accessToken"]
    finally:
        stop(procs)


@pytest.fixture(scope="module")
def jobs_base(web: tuple[str, dict[str, str], str]) -> Iterator[str]:
    """One real `booking jobs` process next to the web process (same database, Redis and admin)."""
    (port,) = free_ports(1)
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [str(BOOKING), "jobs", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env={**os.environ, "LOG_LEVEL": "WARNING", **web[1]},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                assert process.poll() is None, "booking jobs exited"
                try:
                    with urllib.request.urlopen(f"{base}/jobs/docs/openapi.json", timeout=1):  # noqa: S310
                        break
                except OSError:
                    assert time.monotonic() < deadline, "booking jobs did not start"
                    time.sleep(0.1)
            yield base
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def schemathesis_run(document_url: str, token: str, tmp_path: Path) -> None:
    command = [
        str(ST),
        "run",
        document_url,
        "--checks",
        CHECKS,
        "--header",
        f"Authorization: Bearer {token}",
        "--max-examples",
        str(EXAMPLES),
        "--seed",
        "20261202",  # reproducible: a failure here fails again with the same input
        "--generation-database",
        "none",
        "--request-timeout",
        "10",
        "--workers",
        "1",
        "--no-color",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    done = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=540, check=False, env=os.environ.copy()
    )
    summary = done.stdout[-6000:] + done.stderr[-2000:]
    assert done.returncode == 0, summary
    assert "passed" in done.stdout and "failed" not in done.stdout.split("SUMMARY")[-1], summary


def test_web_api(web: tuple[str, dict[str, str], str], tmp_path: Path) -> None:
    schemathesis_run(f"{web[0]}/api/docs/openapi.json", web[2], tmp_path)


def test_jobs_api(jobs_base: str, web: tuple[str, dict[str, str], str], tmp_path: Path) -> None:
    schemathesis_run(f"{jobs_base}/jobs/docs/openapi.json", web[2], tmp_path)
