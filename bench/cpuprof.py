"""`booking` under cProfile with the process's CPU clock, profiling only between two signals:

    python -m bench.cpuprof OUT booking-args…   (SIGUSR1: start profiling; SIGUSR2: stop and write OUT)

`python -m cProfile` times by the wall clock from start-up to exit, so on a busy machine whatever ran
when the process was descheduled looks expensive, and imports and start-up fill the top of the table;
this profiles the load window only, in CPU time (bench/profile.py).
"""

from __future__ import annotations

import cProfile
import signal
import sys
import time
from types import FrameType

from server.cli import main


def run(out: str, argv: list[str]) -> None:
    profile = cProfile.Profile(time.process_time)

    def start(_signum: int, _frame: FrameType | None) -> None:
        profile.enable()

    def stop(_signum: int, _frame: FrameType | None) -> None:
        profile.disable()
        profile.dump_stats(out)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    sys.argv = ["booking", *argv]
    main()


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2:])
