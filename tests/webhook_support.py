"""A real webhook receiver for tests: an aiohttp app on 127.0.0.1 that records every request and answers
as each path is told to (a status script, a hang), plus helpers to create endpoints through the API."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks import Webhook

from tests.conftest import Client, auth


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() on arrival

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    def json(self) -> Any:
        return json.loads(self.body)

    def verify(self, secret: str) -> Any:
        """The standardwebhooks library's own check; the parsed body."""
        return Webhook(secret).verify(self.body, self.headers)


@dataclass
class Receiver:
    base_url: str = ""
    received: list[Received] = field(default_factory=list)
    scripts: dict[str, list[int]] = field(default_factory=dict)  # path → statuses to answer, in order
    hanging: set[str] = field(default_factory=set)  # paths that never answer (until released)
    hang_next: dict[str, int] = field(default_factory=dict)  # path → how many requests to hang first
    in_flight: dict[str, int] = field(default_factory=dict)
    most_in_flight: dict[str, int] = field(default_factory=dict)  # the most requests open at once, by path
    answer_body: dict[str, bytes] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path}"

    def at(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        self.received.append(Received(path, dict(request.headers), await request.read(), time.monotonic()))
        self.in_flight[path] = self.in_flight.get(path, 0) + 1
        self.most_in_flight[path] = max(self.most_in_flight.get(path, 0), self.in_flight[path])
        try:
            return await self._answer(path)
        finally:
            self.in_flight[path] -= 1

    async def _answer(self, path: str) -> web.StreamResponse:
        if path in self.hanging or self.hang_next.get(path, 0) > 0:
            if self.hang_next.get(path, 0) > 0:
                self.hang_next[path] -= 1
            await self.release.wait()
            return web.Response(status=504)
        script = self.scripts.get(path)
        status = script.pop(0) if script else 200
        if 300 <= status < 400:
            return web.Response(status=status, headers={"Location": self.url("redirected")})
        return web.Response(status=status, body=self.answer_body.get(path, b"ok"))


@asynccontextmanager
async def running_receiver() -> AsyncIterator[Receiver]:
    """A receiver listening on 127.0.0.1 (a free port) until the block ends."""
    recv = Receiver()
    app = web.Application()
    app.router.add_post("/{path:.*}", recv.handle)
    # A request the sender gave up on (closed) ends here too, so `in_flight` counts open ones only.
    runner = web.AppRunner(app, shutdown_timeout=0.5, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    recv.base_url = f"http://127.0.0.1:{port}"
    try:
        yield recv
    finally:
        recv.release.set()
        await runner.cleanup()


async def add_endpoint(
    client: Client, user: dict[str, Any], url: str, events: list[str] | None = None, **extra: Any
) -> dict[str, Any]:
    resp = await client.post(
        "/api/webhooks", json={"url": url, "events": events or ["*"], **extra}, headers=auth(user)
    )
    assert resp.status == 201, await resp.text()
    data: dict[str, Any] = await resp.json()
    return data
