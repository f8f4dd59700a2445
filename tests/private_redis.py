"""A redis-server of a test's own, so it can really be killed, restarted on the same port and flushed.

The machine's shared Redis must never be stopped or flushed; a test that needs an outage starts one of
these (the `private_redis` fixture in conftest.py, skipped where no `redis-server` is installed).
`start`, `stop` and `shutdown` wait for the server, so async code calls them through
`asyncio.to_thread` (`hang` and `resume` only send a signal).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from redis import Redis as SyncRedis
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.support import off_the_loop

REDIS_SERVER = shutil.which("redis-server")


class PrivateRedis:
    def __init__(self, tmp: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = tmp
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start (again) on the same port, empty (no persistence), and wait until it accepts connections."""
        off_the_loop("PrivateRedis.start")
        self.popen = subprocess.Popen(
            [
                str(REDIS_SERVER),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            cwd=self.dir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.02)
        raise AssertionError("private redis-server did not start")

    def stop(self) -> None:
        """SIGKILL: the abrupt loss a crash or an OOM kill causes (no goodbye to clients)."""
        off_the_loop("PrivateRedis.stop")
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGCONT)  # a hung server must die too
            self.popen.kill()
            self.popen.wait(5)

    def hang(self) -> None:
        """SIGSTOP: connects still complete (the kernel's backlog) but nothing is ever answered."""
        assert self.popen is not None
        self.popen.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.popen is not None
        self.popen.send_signal(signal.SIGCONT)

    def shutdown(self) -> None:
        """SHUTDOWN NOSAVE: an operator's stop (the server closes every client connection, saves nothing)."""
        off_the_loop("PrivateRedis.shutdown")
        if self.popen is None or self.popen.poll() is not None:
            return
        client = SyncRedis.from_url(self.url, socket_timeout=2)
        try:
            client.shutdown(nosave=True)
        except RedisConnectionError:  # the server hangs up as it goes: that is the answer
            pass
        finally:
            client.close()
        self.popen.wait(5)
