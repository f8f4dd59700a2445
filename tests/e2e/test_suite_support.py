"""The suite's own machinery: the wait helpers, the guard that keeps blocking helpers off an event loop,
the `booking` the process helpers start (the running environment's, so `make bench VENV=…` works), and
pytest's strict settings."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import sysconfig
import textwrap
import time
import uuid
from pathlib import Path

import psutil
import pytest

from tests.processes import BOOKING, ROOT
from tests.support import all_exited, off_the_loop, wait_for

# --- wait_for ------------------------------------------------------------------------------------------


async def test_wait_for_returns_the_first_truthy_value() -> None:
    calls = 0

    async def third_time() -> str | None:
        nonlocal calls
        calls += 1
        return "ready" if calls == 3 else None

    assert await wait_for(third_time, within=2, interval=0.001) == "ready"
    assert calls == 3


async def test_wait_for_fails_by_name_and_cuts_a_predicate_that_hangs() -> None:
    async def never() -> bool:
        await asyncio.Event().wait()  # a predicate that never answers: the limit must still hold
        return True

    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"timed out after 0\.2s waiting for the answer"):
        await wait_for(never, within=0.2, what="the answer")
    assert time.monotonic() - started < 1.0


async def test_a_timeout_of_the_predicate_itself_is_not_reported_as_the_wait_running_out() -> None:
    async def times_out() -> bool:
        raise TimeoutError("the predicate's own")

    with pytest.raises(TimeoutError, match="the predicate's own"):
        await wait_for(times_out, within=5)


async def test_wait_for_nests_inside_a_callers_timeout() -> None:
    async def never() -> bool:
        return False

    with pytest.raises(TimeoutError):  # the caller's limit, shorter, ends it: not wait_for's message
        async with asyncio.timeout(0.1):
            await wait_for(never, within=5)


# --- all_exited ------------------------------------------------------------------------------------------


async def test_all_exited_sees_exits_zombies_included_and_names_survivors() -> None:
    # subprocess.Popen, never waited for: once `true` ends it stays a zombie (asyncio reaps only the
    # children it started itself).
    quick = await asyncio.to_thread(subprocess.Popen, ["true"])
    slow = await asyncio.to_thread(subprocess.Popen, ["sleep", "30"])
    try:
        await all_exited([quick.pid], within=5, what="`true` to exit")
        assert psutil.Process(quick.pid).status() == psutil.STATUS_ZOMBIE
        with pytest.raises(AssertionError, match=rf"\[{slow.pid}\] running"):
            await all_exited([quick.pid, slow.pid], within=0.2)
        slow.send_signal(signal.SIGTERM)
        await all_exited([quick.pid, slow.pid], within=5)
    finally:
        for proc in (quick, slow):
            proc.kill()
            await asyncio.to_thread(proc.wait)
    await all_exited([quick.pid, slow.pid], within=1)  # reaped: nothing left to wait for


# --- off_the_loop -------------------------------------------------------------------------------------------


async def test_blocking_helpers_refuse_the_event_loop_and_run_in_a_thread() -> None:
    with pytest.raises(AssertionError, match=r"start_web blocks: from async code call it through"):
        off_the_loop("start_web")
    await asyncio.to_thread(off_the_loop, "start_web")  # no loop runs on a worker thread


def test_blocking_helpers_run_in_plain_tests() -> None:
    off_the_loop("start_web")


# --- the booking the helpers start -----------------------------------------------------------------------


def test_booking_is_this_environments_console_script() -> None:
    assert Path(sys.executable).parent / "booking" == BOOKING
    assert BOOKING.is_file() and os.access(BOOKING, os.X_OK)


def other_venv(root: Path) -> Path:
    """A second environment at `root` sharing this one's packages (a .pth adds our site-packages), with
    a `booking` console script of its own; its bin directory."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=60)
    (site_packages,) = (root / "lib").glob("python*/site-packages")
    ours = sysconfig.get_path("purelib")
    (site_packages / "_shared_with_the_checkout.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    bin_dir = root / "bin"
    script = BOOKING.read_text().splitlines()
    (bin_dir / "booking").write_text("\n".join([f"#!{bin_dir / 'python'}", *script[1:]]) + "\n")
    (bin_dir / "booking").chmod(0o755)
    return bin_dir


def test_make_bench_with_another_venv_starts_that_venvs_booking(
    tmp_path: Path, database_url: str, redis_url: str
) -> None:
    """`make bench VENV=…` runs `$(VENV)/bin/python -m bench`; from there the process helpers (which
    bench starts its servers with) must start `$(VENV)/bin/booking`, not the checkout's .venv one."""
    venv = tmp_path / "other-venv"  # a shebang line cannot hold a space
    bin_dir = other_venv(venv)
    dry = subprocess.run(
        ["make", "-n", "bench", f"VENV={venv}", "ARGS=--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert f"{bin_dir}/python -m bench --quick" in dry.stdout.splitlines(), dry.stdout

    # What bench does with it: start a real `booking serve` through tests.processes, from that python.
    probe = textwrap.dedent(
        f"""
        import psutil
        from bench.common import BOOKING as bench_booking
        from tests.processes import BOOKING, start_web, stop, web_env
        (web,) = start_web(1, web_env({database_url!r}, {redis_url!r}, "venv{uuid.uuid4().hex[:8]}:"))
        try:
            print(BOOKING, bench_booking, psutil.Process(web.process.pid).cmdline()[1], sep="\\n")
        finally:
            assert all(e.code == 0 for e in stop([web]))
        """
    )
    done = subprocess.run(
        [str(bin_dir / "python"), "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [str(bin_dir / "booking")] * 3, done.stdout


# --- pytest's strict settings ------------------------------------------------------------------------


def test_an_xpass_and_an_unknown_marker_fail_the_run(tmp_path: Path) -> None:
    """pyproject.toml's strict_xfail, strict_markers and strict_config, applied to a file of its own."""
    probe = tmp_path / "test_probe.py"
    probe.write_text(
        "import pytest\n\n"
        "@pytest.mark.xfail(reason='expected to fail')\n"
        "def test_passes_unexpectedly():\n    pass\n"
    )

    def pytest_on(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        config = ["-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path)]
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *config, *extra, str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    run = pytest_on(probe)
    assert run.returncode == 1 and "XPASS(strict)" in run.stdout, run.stdout
    probe.write_text("import pytest\n\n@pytest.mark.not_registered\ndef test_marked():\n    pass\n")
    run = pytest_on(probe)
    assert run.returncode != 0 and "'not_registered' not found in `markers`" in run.stdout, run.stdout
    probe.write_text("def test_plain():\n    pass\n")
    run = pytest_on(probe, "-o", "no_such_option=1")
    assert run.returncode != 0 and "Unknown config option: no_such_option" in run.stderr, run.stderr
