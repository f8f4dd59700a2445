"""The checkout's run lock (server/local/runlock.py): one holder at a time; a dead holder's lock is free."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server.local.runlock import CheckoutBusy, RunLock, checkout_root, read_holder

ROOT = Path(__file__).resolve().parents[2]


def test_a_second_holder_is_refused_with_the_first_ones_pid_until_it_lets_go(tmp_path: Path) -> None:
    with RunLock.acquire(tmp_path / ".data", "booking up") as lock:
        lock.publish(database_url="postgresql://postgres@/booking?host=/x")
        with pytest.raises(CheckoutBusy) as busy:
            RunLock.acquire(tmp_path / ".data", "booking up")
        assert busy.value.holder.pid == os.getpid()
        assert busy.value.holder.database_url == "postgresql://postgres@/booking?host=/x"
        assert busy.value.refusal() == (
            f"booking up is already running in this checkout, pid {os.getpid()}; stop it with Ctrl-C there"
        )
    assert read_holder(tmp_path / ".data" / "run.lock").pid is None  # emptied on release
    RunLock.acquire(tmp_path / ".data", "booking migrate").release()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    code = (
        "import sys, time\nfrom pathlib import Path\nfrom server.local.runlock import RunLock\n"
        "RunLock.acquire(Path(sys.argv[1]), 'booking up')\nprint('held', flush=True)\ntime.sleep(300)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / ".data")], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(CheckoutBusy) as busy:
            RunLock.acquire(tmp_path / ".data", "booking up")
        assert busy.value.holder.pid == holder.pid
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    # The pid is still written in the file, but the kernel dropped the lock with the process.
    assert read_holder(tmp_path / ".data" / "run.lock").pid == holder.pid
    deadline = time.monotonic() + 10
    while True:
        try:
            RunLock.acquire(tmp_path / ".data", "booking up").release()
            break
        except CheckoutBusy:
            assert time.monotonic() < deadline, "the lock outlived its killed holder"
            time.sleep(0.05)


def test_a_cli_holder_is_named_in_the_refusal(tmp_path: Path) -> None:
    with RunLock.acquire(tmp_path, "booking create-admin"), pytest.raises(CheckoutBusy) as busy:
        RunLock.acquire(tmp_path, "booking up")
    assert busy.value.refusal() == (
        f"`booking create-admin` (pid {os.getpid()}) is using this checkout's embedded database; "
        "run this again when it has finished"
    )


def test_the_checkout_is_the_nearest_directory_with_a_procfile(tmp_path: Path) -> None:
    (tmp_path / "Procfile").write_text("web: true\n")
    (tmp_path / "docs" / "deep").mkdir(parents=True)
    assert checkout_root(tmp_path / "docs" / "deep") == tmp_path.resolve()
    assert checkout_root(tmp_path) == tmp_path.resolve()
