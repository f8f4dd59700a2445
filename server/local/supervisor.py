"""A small Procfile runner: prefixed output, one process group per entry, nothing left behind.

Like foreman or honcho, trimmed to what `booking up` and the end-to-end tests need. Each command
runs in its own process group because stopping only the direct child would orphan whatever it
spawned (a shell's children, a worker's forks); signalling the group reaches them all.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

logger = logging.getLogger(__name__)

SHUTDOWN_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_COLOURS = (36, 33, 32, 35, 34, 31)  # cyan, yellow, green, magenta, blue, red
_READ_CHUNK = 64 * 1024
_MAX_LINE = 256 * 1024
_POLL_SECONDS = 0.05
# After SIGKILL the kernel ends processes at once; this only bounds waiting for that to show.
_KILL_WAIT_SECONDS = 5.0
# A descendant that left the process group (setsid) can hold the output pipe open forever.
_DRAIN_SECONDS = 2.0


class ProcfileError(ValueError):
    """The Procfile (or a concurrency request) is malformed; the message says where."""


@dataclass(frozen=True, slots=True)
class Outcome:
    exit_code: int
    signal: int | None  # the signal that asked the supervisor to stop, if one did


def parse_procfile(text: str) -> dict[str, str]:
    """`name: command` lines, in order; blank lines and `#` comments are ignored."""
    entries: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, command = line.partition(":")
        name, command = name.strip(), command.strip()
        if not colon:
            raise ProcfileError(f"Procfile line {number}: expected 'name: command', got {line!r}")
        if not _NAME.fullmatch(name):
            raise ProcfileError(f"Procfile line {number}: invalid process name {name!r}")
        if not command:
            raise ProcfileError(f"Procfile line {number}: process {name!r} has no command")
        if name in entries:
            raise ProcfileError(f"Procfile line {number}: process {name!r} is defined twice")
        entries[name] = command
    return entries


def expand(procfile: dict[str, str], concurrency: dict[str, int]) -> list[tuple[str, str]]:
    """One `(name.N, command)` per instance; an entry absent from `concurrency` runs once."""
    unknown = sorted(set(concurrency) - set(procfile))
    if unknown:
        raise ProcfileError(f"no such process in the Procfile: {', '.join(unknown)}")
    processes: list[tuple[str, str]] = []
    for name, command in procfile.items():
        count = concurrency.get(name, 1)
        if count < 0:
            raise ProcfileError(f"concurrency for {name!r} must be >= 0, got {count}")
        processes.extend((f"{name}.{index}", command) for index in range(1, count + 1))
    return processes


def run(processes: list[tuple[str, str]], env: dict[str, str], *, grace_seconds: float = 10.0) -> int:
    """Run until one process exits or a stop signal arrives; return the first failing exit code."""
    return asyncio.run(supervise(processes, env, grace_seconds=grace_seconds)).exit_code


async def supervise(
    processes: list[tuple[str, str]], env: dict[str, str], *, grace_seconds: float = 10.0
) -> Outcome:
    """The async core of `run`, also telling whether a signal ended the run."""
    if not processes:
        raise ProcfileError("nothing to run")
    loop = asyncio.get_running_loop()
    printer = _Printer([name for name, _ in processes], sys.stdout)
    stop_requested: asyncio.Future[int] = loop.create_future()
    kill_now = asyncio.Event()

    def on_signal(signum: int) -> None:
        if stop_requested.done():
            kill_now.set()  # a second Ctrl-C means "stop waiting"
        else:
            stop_requested.set_result(signum)

    children: list[_Child] = []
    exit_order: list[_Child] = []
    with _signal_handlers(loop, on_signal):
        try:
            for name, command in processes:
                children.append(await _Child.spawn(name, command, env, printer, exit_order))
            await asyncio.wait(
                [stop_requested, *(c.waiter for c in children)], return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            trigger = exit_order[0] if exit_order and not stop_requested.done() else None
            if stop_requested.done():
                printer.system(f"received {signal.Signals(stop_requested.result()).name}, stopping all")
            elif trigger is not None:
                others = ", stopping the others" if len(children) > 1 else ""
                printer.system(f"{trigger.name} exited with code {trigger.exit_code}{others}")
            await _stop_all(children, grace_seconds, kill_now, printer)
    signum = stop_requested.result() if stop_requested.done() else None
    return Outcome(exit_code=_exit_code(exit_order, trigger), signal=signum)


class _Child:
    def __init__(self, name: str, process: asyncio.subprocess.Process, pump: asyncio.Task[None]) -> None:
        self.name = name
        self.process = process
        self.pump = pump
        self.waiter: asyncio.Task[int] = asyncio.create_task(process.wait(), name=f"wait:{name}")
        self.signalled = False  # whether its group got a signal from us before it exited

    @classmethod
    async def spawn(
        cls, name: str, command: str, env: dict[str, str], printer: _Printer, exit_order: list[_Child]
    ) -> _Child:
        process = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            # Own group: our signals reach its descendants, and the terminal's Ctrl-C does not
            # reach it directly, so shutdown happens once, in order, from here.
            process_group=0,
        )
        if process.stdout is None:  # pragma: no cover  (PIPE was requested)
            raise RuntimeError("subprocess has no stdout pipe")
        pump = asyncio.create_task(_pump(process.stdout, name, printer), name=f"output:{name}")
        child = cls(name, process, pump)
        child.waiter.add_done_callback(lambda _: exit_order.append(child))
        logger.debug("started %s (pid %d): %s", name, process.pid, command)
        return child

    @property
    def pgid(self) -> int:
        return self.process.pid

    @property
    def exit_code(self) -> int:
        code = self.process.returncode
        if code is None:
            raise RuntimeError(f"{self.name} is still running")
        return 128 - code if code < 0 else code


def _exit_code(exit_order: list[_Child], trigger: _Child | None) -> int:
    # Deaths by the signals we sent while stopping are expected, not failures.
    ours = (128 + signal.SIGTERM, 128 + signal.SIGKILL)
    for child in exit_order:
        code = child.exit_code
        if code != 0 and (child is trigger or not (child.signalled and code in ours)):
            return code
    return 0


async def _stop_all(
    children: list[_Child], grace_seconds: float, kill_now: asyncio.Event, printer: _Printer
) -> None:
    _signal_groups(children, signal.SIGTERM)
    stubborn = await _wait_stopped(children, grace_seconds, kill_now)
    if stubborn:
        printer.system(f"killing {', '.join(c.name for c in stubborn)} (still running after SIGTERM)")
        _signal_groups(stubborn, signal.SIGKILL)
        await _wait_stopped(stubborn, _KILL_WAIT_SECONDS, asyncio.Event())
    await asyncio.gather(*(c.waiter for c in children))
    _, unfinished = await asyncio.wait([c.pump for c in children], timeout=_DRAIN_SECONDS)
    for pump in unfinished:
        pump.cancel()
    await asyncio.gather(*unfinished, return_exceptions=True)
    for child in _running(children):
        logger.error("process group of %s (%d) survived SIGKILL", child.name, child.pgid)


async def _wait_stopped(children: list[_Child], seconds: float, interrupt: asyncio.Event) -> list[_Child]:
    """Wait until every group is empty, `seconds` pass or `interrupt` is set; return the rest."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    # Group membership has no event to await, so poll it; `interrupt` still ends the wait at once.
    while (running := _running(children)) and loop.time() < deadline and not interrupt.is_set():
        with suppress(TimeoutError):
            await asyncio.wait_for(interrupt.wait(), _POLL_SECONDS)
    return running


def _signal_groups(children: Iterable[_Child], signum: int) -> None:
    for child in children:
        if child.process.returncode is None:
            child.signalled = True
        # The group can outlive its leader (`cmd &` in a shell), so signal it even after the
        # leader exited; the kernel keeps that id reserved while any member is alive.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pgid, signum)


def _running(children: list[_Child]) -> list[_Child]:
    live = live_process_groups({c.pgid for c in children})
    return [c for c in children if c.process.returncode is None or c.pgid in live]


def live_process_groups(pgids: set[int]) -> set[int]:
    """Which of these process groups still have a member that is not a zombie."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        return {pgid for pgid in pgids if _group_exists(pgid)}
    live: set[int] = set()
    for entry in proc.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(entry.name)
            # Zombies wait for init to reap them (seconds, in some containers) but are gone
            # for every purpose that matters here.
            if fields and fields[0] != "Z" and int(fields[2]) in pgids:
                live.add(int(fields[2]))
    return live


def pid_running(pid: int) -> bool:
    """Whether this process exists and is not a zombie."""
    if Path("/proc/self/stat").exists():
        fields = _stat_fields(str(pid))
        return bool(fields) and fields[0] != "Z"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stat_fields(pid: str) -> list[str]:
    try:
        stat = Path("/proc", pid, "stat").read_text()
    except OSError:
        return []
    # The command name may contain spaces and parentheses; fields resume after the last ')'.
    return stat.rpartition(")")[2].split()


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def _pump(stream: asyncio.StreamReader, name: str, printer: _Printer) -> None:
    pending = b""
    while chunk := await stream.read(_READ_CHUNK):
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            printer.line(name, line)
        if len(pending) > _MAX_LINE:
            printer.line(name, pending)
            pending = b""
    if pending:
        printer.line(name, pending)


class _Printer:
    def __init__(self, names: list[str], out: TextIO) -> None:
        self._out = out
        self._width = max(len(name) for name in [*names, "system"])
        colour = out.isatty() and "NO_COLOR" not in os.environ
        self._colours = {
            name: _COLOURS[index % len(_COLOURS)] if colour else None for index, name in enumerate(names)
        }
        self._colours["system"] = 1 if colour else None  # bold
        self._broken = False

    def line(self, name: str, raw: bytes) -> None:
        text = raw.rstrip(b"\r").decode("utf-8", errors="replace")
        label = name.ljust(self._width)
        colour = self._colours.get(name)
        if colour is not None:
            label = f"\x1b[{colour}m{label}\x1b[0m"
        self._write(f"{label} | {text}\n")

    def system(self, message: str) -> None:
        self.line("system", message.encode())

    def _write(self, text: str) -> None:
        if self._broken:
            return
        try:
            self._out.write(text)
            self._out.flush()
        except BrokenPipeError:
            # Whoever read our output went away; the processes still deserve a clean stop.
            self._broken = True


@contextmanager
def _signal_handlers(loop: asyncio.AbstractEventLoop, callback: Callable[[int], None]) -> Iterator[None]:
    """Route shutdown signals to the loop, then restore whatever handlers were there before."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; the caller then owns signals
        return
    previous = {signum: signal.getsignal(signum) for signum in SHUTDOWN_SIGNALS}
    for signum in SHUTDOWN_SIGNALS:
        loop.add_signal_handler(signum, callback, signum)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            loop.remove_signal_handler(signum)
            # remove_signal_handler resets to the default, which would undo the caller's own.
            if handler is not None:
                signal.signal(signum, handler)
