"""The Procfile runner: parsing (unit) and real `sh` process trees (processes, no mocks)."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import pytest

from server.local.supervisor import ProcfileError, expand, parse_procfile, run

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_SECONDS = 15.0

# --- parse_procfile / expand ---------------------------------------------------------------------


def test_parse_keeps_order_and_ignores_comments_and_blank_lines() -> None:
    text = (
        "# the platform reads this\n\n"
        "release: booking migrate\r\n"
        "  web:   booking serve  \n\n"
        "# end\n"
        "worker: booking worker\n"
    )
    entries = parse_procfile(text)
    assert list(entries.items()) == [
        ("release", "booking migrate"),
        ("web", "booking serve"),
        ("worker", "booking worker"),
    ]


def test_parse_keeps_colons_inside_the_command() -> None:
    assert parse_procfile("jobs: sh -c 'echo a:b' --bind=0.0.0.0:$JOB_PORT") == {
        "jobs": "sh -c 'echo a:b' --bind=0.0.0.0:$JOB_PORT"
    }


def test_parse_accepts_an_empty_file() -> None:
    assert parse_procfile("\n# nothing yet\n") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("web booking serve", "line 1: expected 'name: command'"),
        ("web: serve\nweb: serve again", "line 2: process 'web' is defined twice"),
        ("\nworker:   ", "line 2: process 'worker' has no command"),
        ("my web: serve", "invalid process name 'my web'"),
        (": serve", "invalid process name ''"),
        ("web.1: serve", "invalid process name 'web.1'"),
    ],
)
def test_parse_rejects_malformed_lines(text: str, message: str) -> None:
    with pytest.raises(ProcfileError, match=re.escape(message)):
        parse_procfile(text)


def test_expand_numbers_instances_and_keeps_order() -> None:
    procfile = {"web": "serve", "jobs": "jobs", "worker": "work"}
    assert expand(procfile, {"web": 2, "worker": 0}) == [
        ("web.1", "serve"),
        ("web.2", "serve"),
        ("jobs.1", "jobs"),
    ]


def test_expand_rejects_unknown_names_and_negative_counts() -> None:
    with pytest.raises(ProcfileError, match="no such process in the Procfile: wbe"):
        expand({"web": "serve"}, {"wbe": 2})
    with pytest.raises(ProcfileError, match="must be >= 0"):
        expand({"web": "serve"}, {"web": -1})


# --- run: real process trees ---------------------------------------------------------------------


def alive(pid: int) -> bool:
    """Exists and is not a zombie (init may take seconds to reap reparented grandchildren)."""
    result = subprocess.run(
        ["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True, check=False
    )
    state = result.stdout.strip()
    return bool(state) and not state.startswith("Z")


def wait_all_gone(pids: list[int]) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while (survivors := [pid for pid in pids if alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in survivors:  # fail, but leave nothing behind for the next test
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"still running after {DEADLINE_SECONDS} s: {survivors}"


def pids_in(output: str) -> list[int]:
    return [int(pid) for pid in re.findall(r"\bpid=(\d+)", output)]


def wait_for_file(path: Path) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


# Each shell reports its own pid and its background child's; the nested one adds a grandchild
# in the same process group, which only a group-wide signal reaches.
def tree_commands(ready_dir: Path) -> list[tuple[str, str]]:
    return [
        ("web.1", f"echo pid=$$; sleep 300 & echo pid=$!; touch {ready_dir}/web; wait"),
        (
            "worker.1",
            f"echo pid=$$; "
            f"sh -c 'echo pid=$$; sleep 300 & echo pid=$!; touch {ready_dir}/worker; wait' & wait",
        ),
    ]


class SupervisorProcess:
    """`server.local.supervisor.run` in a child Python, so signals reach it as they would from a terminal."""

    def __init__(self, processes: list[tuple[str, str]], grace_seconds: float) -> None:
        code = (
            "import json, os, sys\n"
            "from server.local.supervisor import run\n"
            "processes = [tuple(p) for p in json.loads(sys.argv[1])]\n"
            "sys.exit(run(processes, dict(os.environ), grace_seconds=float(sys.argv[2])))\n"
        )
        self.process = subprocess.Popen(
            [sys.executable, "-X", "dev", "-c", code, json.dumps(processes), str(grace_seconds)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def finish(self) -> tuple[int, str]:
        try:
            output, _ = self.process.communicate(timeout=DEADLINE_SECONDS)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.communicate()
        return self.process.returncode, output


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_stop_signal_ends_every_process_including_grandchildren(tmp_path: Path, signum: int) -> None:
    supervisor = SupervisorProcess(tree_commands(tmp_path), grace_seconds=5)
    wait_for_file(tmp_path / "web")
    wait_for_file(tmp_path / "worker")

    supervisor.process.send_signal(signum)
    code, output = supervisor.finish()

    assert code == 0, output
    pids = pids_in(output)
    assert len(pids) == 5, output
    wait_all_gone(pids)
    assert f"received {signal.Signals(signum).name}, stopping all" in output
    assert "Warning" not in output  # -X dev surfaces unclosed transports and unawaited coroutines


def test_group_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    stubborn = f"trap '' TERM; echo pid=$$; sleep 300 & echo pid=$!; touch {tmp_path}/ready; wait"
    supervisor = SupervisorProcess([("stubborn.1", stubborn)], grace_seconds=0.5)
    wait_for_file(tmp_path / "ready")

    supervisor.process.send_signal(signal.SIGINT)
    code, output = supervisor.finish()

    assert "killing stubborn.1 (still running after SIGTERM)" in output
    assert code == 0, output
    wait_all_gone(pids_in(output))


def test_second_signal_kills_without_waiting_for_the_grace_period(tmp_path: Path) -> None:
    stubborn = f"trap '' TERM; echo pid=$$; sleep 300 & echo pid=$!; touch {tmp_path}/ready; wait"
    supervisor = SupervisorProcess([("stubborn.1", stubborn)], grace_seconds=300)
    wait_for_file(tmp_path / "ready")
    assert supervisor.process.stdout is not None

    supervisor.process.send_signal(signal.SIGINT)
    seen = []
    for line in supervisor.process.stdout:  # the first signal has been handled once this shows
        seen.append(line)
        if "stopping all" in line:
            break
    started = time.monotonic()
    supervisor.process.send_signal(signal.SIGINT)
    code, rest = supervisor.finish()

    assert time.monotonic() - started < DEADLINE_SECONDS
    assert "killing stubborn.1" in rest
    assert code == 0
    wait_all_gone(pids_in("".join(seen)))


def test_failing_process_stops_the_others_and_its_exit_code_is_returned(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    processes = [
        *tree_commands(tmp_path),
        (
            "failing.1",
            f"until [ -e {tmp_path}/web ] && [ -e {tmp_path}/worker ]; do sleep 0.02; done; exit 3",
        ),
    ]

    code = run(processes, dict(os.environ), grace_seconds=5)

    output = capfd.readouterr().out
    assert code == 3, output
    assert "failing.1 exited with code 3, stopping the others" in output
    pids = pids_in(output)
    assert len(pids) == 5, output
    wait_all_gone(pids)


def test_a_process_killed_by_a_signal_reports_128_plus_the_signal() -> None:
    assert run([("crash.1", "kill -KILL $$")], dict(os.environ), grace_seconds=1) == 128 + signal.SIGKILL


def test_output_lines_carry_padded_names_and_no_colour_off_a_terminal(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    processes = [
        ("web.1", f"until [ -e {tmp_path}/ready ]; do sleep 0.02; done; echo hello; printf 'no newline'"),
        ("worker.10", f"echo 'to stderr' >&2; touch {tmp_path}/ready; exec sleep 300"),
    ]

    code = run(processes, dict(os.environ), grace_seconds=5)

    output = capfd.readouterr().out
    assert code == 0, output
    lines = output.splitlines()
    assert "web.1     | hello" in lines
    assert "web.1     | no newline" in lines
    assert "worker.10 | to stderr" in lines
    assert "system    | web.1 exited with code 0, stopping the others" in lines
    assert "\x1b[" not in output


def test_environment_reaches_the_shell_so_port_expands(capfd: pytest.CaptureFixture[str]) -> None:
    code = run([("web.1", "echo listening on $PORT")], {**os.environ, "PORT": "5123"}, grace_seconds=1)

    assert code == 0
    assert "web.1  | listening on 5123" in capfd.readouterr().out.splitlines()


@pytest.mark.parametrize(("extra_env", "coloured"), [({}, True), ({"NO_COLOR": "1"}, False)])
def test_names_are_coloured_only_on_a_terminal_without_no_color(
    extra_env: dict[str, str], coloured: bool
) -> None:
    main, terminal = pty.openpty()
    code = (
        "import os\nfrom server.local.supervisor import run\n"
        "raise SystemExit(run([('web.1', 'echo hello')], dict(os.environ), grace_seconds=1))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"} | extra_env
    with subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, env=env, stdout=terminal, stderr=terminal
    ) as child:
        os.close(terminal)
        output = b""
        with suppress(OSError):  # reading a pty whose other end closed raises EIO on Linux
            while chunk := os.read(main, 4096):
                output += chunk
        os.close(main)
        assert child.wait(DEADLINE_SECONDS) == 0

    text = output.decode()
    assert "hello" in text
    assert ("\x1b[" in text) is coloured
