"""`booking up` (what `make run` calls) with the repository's Procfile on a machine with no PostgreSQL
or Redis configured: every process comes up on embedded servers, the README's calls work, and Ctrl-C
leaves no process behind."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import time
from pathlib import Path

import aiohttp
import psutil
import pytest

from tests.support import unique_email, wait_for
from tests.test_embedded import postgres_processes, running

ROOT = Path(__file__).resolve().parent.parent
BOOKING = ROOT / ".venv" / "bin" / "booking"

pytestmark = [pytest.mark.e2e, pytest.mark.embedded]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_booking_up_runs_the_whole_procfile_and_ctrl_c_leaves_nothing(tmp_path: Path) -> None:
    shutil.copy(ROOT / "Procfile", tmp_path / "Procfile")
    port, job_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(PORT=str(port), JOB_PORT=str(job_port), DB_POOL_SIZE="3", NODE_ENV="development")
    log = (tmp_path / "up.log").open("w")
    up = await asyncio.create_subprocess_exec(
        str(BOOKING), "up", "--procfile", str(tmp_path / "Procfile"),
        cwd=tmp_path, env=env, stdout=log, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    seen: set[int] = set()
    try:
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:

            async def healthy() -> bool:
                seen.update(c.pid for c in psutil.Process(up.pid).children(recursive=True))
                try:
                    async with http.get(f"{base}/health") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_for(healthy, timeout=90, interval=0.25, what="/health through booking up")
            email = unique_email("up")
            body = {"email": email, "password": "password123", "name": "Up"}
            async with http.post(f"{base}/api/auth/register", json=body) as resp:
                assert resp.status == 201
            async with http.post(
                f"{base}/api/auth/login", json={"email": email, "password": "password123"}
            ) as resp:
                token = (await resp.json())["accessToken"]
            async with http.get(f"{base}/api/auth/me", headers={"Authorization": f"Bearer {token}"}) as resp:
                assert (await resp.json())["email"] == email

            async def jobs_answers() -> bool:
                try:
                    async with http.get(f"http://127.0.0.1:{job_port}/jobs/health") as resp:
                        return resp.status == 401  # up, and refusing anonymous callers
                except aiohttp.ClientError:
                    return False

            await wait_for(jobs_answers, timeout=30, what="the job service")
        output = (tmp_path / "up.log").read_text()
        for name in ("web.1", "jobs.1", "worker.1", "scheduler.1"):
            assert f"{name} " in output, f"{name} never logged:\n{output}"
        seen.update(c.pid for c in psutil.Process(up.pid).children(recursive=True))

        up.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(up.wait(), 30)
    finally:
        if up.returncode is None:
            up.kill()
            await up.wait()
        log.close()

    assert code == 0, (tmp_path / "up.log").read_text()
    deadline = time.monotonic() + 10
    while any(running(pid) for pid in seen) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert [pid for pid in seen if running(pid)] == []
    assert postgres_processes(tmp_path / ".data" / "postgres") == []
