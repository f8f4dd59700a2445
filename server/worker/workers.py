"""`booking worker` and `booking scheduler`: taskiq run in-process, with a bounded SIGTERM shutdown.

The taskiq CLI's stream worker was seen ignoring SIGTERM for over 20 s; here a signal cancels the
receiver (messages are acknowledged only after the task ran, so an interrupted one is redelivered or
re-enqueued by the scheduler once its lease passed): the tasks get `grace` seconds to stop, the shutdown
steps at most another `grace`, so the process exits within twice `grace` whatever happens.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import timedelta
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from taskiq.api import run_receiver_task

from server.base.settings import Settings
from server.bus import redisconf
from server.bus.events import EventBus
from server.worker import broker as broker_mod
from server.worker import webhook_delivery
from server.worker.broker import make_broker
from server.worker.tasks import ReminderScheduler, Republisher, every, register
from storage.db import Database

log = logging.getLogger(__name__)


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def run_until_stopped(
    stop: asyncio.Event, jobs: list[Coroutine[Any, Any, None]], *, grace: float, what: str
) -> int:
    """Run `jobs` until `stop` is set or one of them ends; the exit code: 0 when asked to stop, 1 when a
    job ended by itself (a crash must not read as a clean stop to a supervisor that restarts on failure)."""
    tasks = [asyncio.create_task(job) for job in jobs]
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({*tasks, stopper}, return_when=asyncio.FIRST_COMPLETED)
    crashed = bool(done - {stopper})
    for task in done - {stopper}:
        if not task.cancelled() and task.exception() is not None:
            log.error("%s stopped unexpectedly", what, exc_info=task.exception())
        else:
            log.error("%s: a loop ended by itself", what)
    log.info("%s stopping", what)
    for task in (*tasks, stopper):
        task.cancel()
    _, pending = await asyncio.wait(tasks, timeout=grace)
    if pending:
        log.warning("%s: %d task(s) did not stop within %.1fs; exiting anyway", what, len(pending), grace)
    return 1 if crashed and not stop.is_set() else 0


async def finish(steps: Sequence[Callable[[], Awaitable[object]]], *, grace: float, what: str) -> None:
    """Run the shutdown steps in order within `grace` seconds in all. A step that fails or overruns is
    logged, never raised: SIGTERM asked for a stop, and a non-zero exit would read as a crash to the
    supervisor (acknowledged messages and the scheduler's lease make an unfinished step safe)."""
    try:
        async with asyncio.timeout(grace):
            for step in steps:
                try:
                    await step()
                except Exception:
                    log.exception("%s: a shutdown step failed", what)
    except TimeoutError:
        log.warning("%s: shutdown did not finish within %.1fs; exiting anyway", what, grace)


def _quiet_intended_cancel(record: logging.LogRecord) -> bool:
    """taskiq's receiver warns "The listenig task was cancelled." whenever its task is cancelled, which
    is how SIGTERM stops it here: an intended stop, logged by us at INFO ("worker stopping")."""
    return record.getMessage() != "The listenig task was cancelled."


async def run_worker(settings: Settings, *, max_tasks: int = 500, grace: float = 5.0) -> int:
    stop = _stop_event()
    logging.getLogger("taskiq.receiver").addFilter(_quiet_intended_cancel)
    broker = make_broker(settings)
    register(broker, settings)
    webhook_delivery.register(broker, settings)  # after: its start-up uses the database pool
    broker.is_worker_process = True
    await broker.startup()  # WORKER_STARTUP: engine, Redis, event bus
    log.info("reminder worker ready on %s", broker.queue_name)
    try:
        code = await run_until_stopped(
            stop,
            [run_receiver_task(broker, max_async_tasks=max_tasks, run_startup=False)],
            grace=grace,
            what="worker",
        )
    finally:
        await finish([broker.shutdown], grace=grace, what="worker")  # WORKER_SHUTDOWN
    log.info("worker stopped")
    return code


DROP_OLD_SECONDS = 30.0


async def drop_old_schedule(redis: Redis, prefix: str) -> None:
    """Delete the Redis schedule a previous version kept (`<prefix>schedule:*`), once at start-up.
    Redis down or slow only leaves the dead keys until the next start: logged, never raised."""
    try:
        async with asyncio.timeout(DROP_OLD_SECONDS):
            deleted = await broker_mod.drop_old_schedule(redis, prefix)
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("old Redis reminder schedule not checked (%s)", type(exc).__name__)
        return
    if deleted:
        log.info("old Redis reminder schedule: %d key(s) deleted", deleted)


async def run_scheduler(
    settings: Settings,
    *,
    update_interval: float = 1.0,
    reconcile_interval: float = 2.0,
    lease: float = 5.0,
    grace: float = 5.0,
) -> int:
    stop = _stop_event()
    db = await Database.open(settings.database_url, pool_size=4, timeout=settings.db_timeout)
    broker = make_broker(settings)
    await broker.startup()
    redis = redisconf.connect(settings)
    await drop_old_schedule(redis, settings.redis_prefix)
    scheduler = ReminderScheduler(
        db=db, broker=broker, interval=update_interval, lease=timedelta(seconds=lease)
    )
    republisher = Republisher(db=db, bus=EventBus(redis, prefix=settings.redis_prefix))
    dispatcher = webhook_delivery.Dispatcher(
        db=db, kick=webhook_delivery.kicker(broker), config=webhook_delivery.DeliveryConfig.of(settings)
    )
    log.info("reminder scheduler ready (tick every %.1fs, lease %.1fs)", update_interval, lease)
    try:
        code = await run_until_stopped(
            stop,
            [
                scheduler.run(),
                republisher.run(reconcile_interval),
                every(settings.webhook_poll_seconds, dispatcher.once, "webhook dispatcher"),
            ],
            grace=grace,
            what="scheduler",
        )
    finally:
        steps: list[Callable[[], Awaitable[object]]] = [
            scheduler.stop,
            broker.shutdown,
            redis.aclose,
            db.close,
        ]
        await finish(steps, grace=grace, what="scheduler")
    log.info("scheduler stopped")
    return code
