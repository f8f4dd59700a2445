"""The seed README's session through real nginx (the repo's ops/nginx/dev.conf) in front of two web
processes, the job service, a reminder worker and the scheduler, at the seed's paths."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import pytest
from aiohttp import web

from handlers.common import client_ip
from handlers.ws import origin_allowed
from server.base.settings import Settings
from server.web.keys import SETTINGS
from tests import nginx_support
from tests.processes import BOOKING, ROOT, free_ports, start_web, stop, wait_healthy
from tests.support import unique_email, wait_for
from tests.ws_support import ask, next_frame

# Generous: set-up may first install Debian's nginx; every wait inside has its own deadline.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ADMIN_PASSWORD = "admin password 123"


class Proc(NamedTuple):
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")


class Stack(NamedTuple):
    base: str  # nginx
    web: list[str]  # the web processes' own URLs
    nginx: Proc
    admin_email: str


def spawn(name: str, args: list[str], env: dict[str, str], log_dir: Path) -> Proc:
    log = log_dir / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            args, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    return Proc(name, popen, log)


def wait_until(check: Any, what: str, proc: Proc, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.popen.poll() is None, f"{proc.name} exited with {proc.popen.returncode}:\n{proc.text()}"
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}:\n{proc.text()[-3000:]}")


def answers(url: str, *statuses: int) -> bool:
    """`url` answers 200 (or one of `statuses`)."""
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 (our own URL)
            return bool(resp.status == 200)
    except urllib.error.HTTPError as exc:
        return exc.code in statuses
    except (urllib.error.URLError, OSError):
        return False


def halt(procs: list[Proc]) -> None:
    for proc in procs:
        if proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait(timeout=5)
    alive = [p.name for p in procs if p.popen.poll() is None]
    assert not alive, f"still running: {alive}"


@pytest.fixture
def stack(database_url: str, redis_url: str, tmp_path: Path) -> Iterator[Stack]:
    nginx, reason = nginx_support.nginx_binary()
    if nginx is None:
        pytest.skip(reason)
    env = {
        **{k: v for k, v in os.environ.items() if k != "WS_ALLOWED_ORIGINS"},
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": f"ngx{uuid.uuid4().hex[:10]}:",
        "NODE_ENV": "test",
        "DB_POOL_SIZE": "3",
        "TRUST_PROXY": "true",
        # Not "*": a socket's Origin must be this list or the host the browser loaded the page from.
        "CORS_ORIGINS": "https://app.example.com",
        "AUTH_RATE_LIMIT_PER_IP": "1000",
        "AUTH_RATE_LIMIT_PER_EMAIL": "1000",
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    }
    admin_email = unique_email("admin")
    created = subprocess.run(
        [str(BOOKING), "create-admin", "--email", admin_email],
        env={**env, "ADMIN_PASSWORD": ADMIN_PASSWORD},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert created.returncode == 0, created.stderr

    procs: list[Proc] = []
    webs = start_web(2, {k: v for k, v in env.items() if k != "LOG_LEVEL"})
    try:
        job_port, nginx_port = free_ports(2)
        jobs = spawn(
            "jobs", [str(BOOKING), "jobs", "--host", "127.0.0.1", "--port", str(job_port)], env, tmp_path
        )
        procs.append(jobs)
        worker = spawn("worker", [str(BOOKING), "worker", "--grace", "3"], env, tmp_path)
        procs.append(worker)
        scheduler_args = ["scheduler", "--update-interval", "1", "--reconcile-interval", "1"]
        scheduler = spawn("scheduler", [str(BOOKING), *scheduler_args], env, tmp_path)
        procs.append(scheduler)

        prefix = tmp_path / "nginx"
        conf = nginx_support.write_config(
            prefix,
            "dev",
            web=[w.base_url.removeprefix("http://") for w in webs],
            jobs=[f"127.0.0.1:{job_port}"],
            listen=f"127.0.0.1:{nginx_port}",
        )
        proxy = spawn("nginx", nginx_support.command(nginx, prefix, conf, foreground=True), env, tmp_path)
        procs.append(proxy)

        # /jobs/health is admin-only; an answering 401 means the job service is up.
        job_health = f"http://127.0.0.1:{job_port}/jobs/health"
        wait_until(lambda: answers(job_health, 401), "the job service answering", jobs)
        wait_until(lambda: "reminder worker ready" in worker.text(), "worker ready", worker)
        wait_until(lambda: "reminder scheduler ready" in scheduler.text(), "scheduler ready", scheduler)
        base = f"http://127.0.0.1:{nginx_port}"
        wait_healthy(base, time.monotonic() + 20, proxy.popen)
        yield Stack(base, [w.base_url for w in webs], proxy, admin_email)
    finally:
        try:
            halt(procs)
        finally:
            exits = stop(webs)
            assert all(e.code is not None for e in exits)


def future(days: int, hour: int) -> str:
    day = datetime.now(UTC).date() + timedelta(days=days)
    return f"{day}T{hour:02d}:00:00Z"


async def test_seed_session_through_nginx(stack: Stack) -> None:
    base, ws_base = stack.base, stack.base.replace("http://", "ws://")
    email, password = unique_email("seed"), "password123"
    async with aiohttp.ClientSession() as http:
        # Health, through nginx to both web processes (round robin), with the request id passed through.
        for n in range(4):
            async with http.get(f"{base}/health", headers={"X-Request-ID": f"e2e-{n}"}) as resp:
                assert resp.status == 200, await resp.text()
                assert resp.headers["X-Request-ID"] == f"e2e-{n}"
        async with http.get(f"{base}/health") as resp:
            assert len(resp.headers["X-Request-ID"]) == 32, "nginx's own id when the client sends none"

        # Register, login (the seed's bodies).
        body = {"email": email, "password": password, "name": "Test User"}
        async with http.post(f"{base}/api/auth/register", json=body) as resp:
            assert resp.status == 201, await resp.text()
        async with http.post(f"{base}/api/auth/login", json={"email": email, "password": password}) as resp:
            assert resp.status == 200, await resp.text()
            session = await resp.json()
        token, user_id = session["accessToken"], session["user"]["id"]
        bearer = {"Authorization": f"Bearer {token}"}

        # Create a booking, list it.
        booking = {"title": "Test Booking", "startTime": future(1, 10), "endTime": future(1, 11)}
        async with http.post(f"{base}/api/booking", json=booking, headers=bearer) as resp:
            assert resp.status == 201, await resp.text()
            created = await resp.json()
        async with http.get(f"{base}/api/booking?page=1&limit=10", headers=bearer) as resp:
            assert resp.status == 200
            listed = await resp.json()
        assert [b["id"] for b in listed["data"]] == [created["id"]]

        # gzip on a large JSON answer; Swagger's document is served under /api/ unchanged.
        async with http.get(f"{base}/api/docs/openapi.json", headers={"Accept-Encoding": "gzip"}) as resp:
            assert resp.status == 200
            assert resp.headers.get("Content-Encoding") == "gzip"
            assert "paths" in await resp.json()

        # A page from another site may not open a socket; the app says so before upgrading.
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{ws_base}/ws/?token={token}", origin="https://evil.example")
        assert refused.value.status == 403

        # The wscat session, with ?token= (the query string survives the proxy), from a page served by
        # this very nginx: same site, so accepted — the app compares Origin with the Host nginx passes.
        async with http.ws_connect(f"{ws_base}/ws/?token={token}", origin=base) as ws:
            joined = await ask(ws, "join-user-room", {"userId": user_id}, id="1")
            assert joined["event"] == "join-user-room", joined
            data = {"title": "Test Booking", "startTime": future(2, 10), "endTime": future(2, 11)}
            made = await ask(ws, "create-booking", data, id="2")
            assert made["event"] == "create-booking", made
            booking_id = made["data"]["id"]
            got = await ask(ws, "get-bookings", {"userId": user_id}, id="3")
            assert got["event"] == "get-bookings", got
            assert {b["id"] for b in got["data"]["data"]} == {created["id"], booking_id}
            updated = await ask(ws, "update-booking", {"id": booking_id, "title": "Updated Title"}, id="4")
            assert updated["event"] == "update-booking" and updated["data"]["title"] == "Updated Title", (
                updated
            )
            deleted = await ask(ws, "delete-booking", {"id": booking_id}, id="5")
            assert deleted == {"event": "delete-booking", "data": {"id": booking_id}, "id": "5"}, deleted

            # A reminder: start 3 s ahead, reminder at the start; it reaches this socket through nginx.
            start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=4)
            soon = {
                "title": "Soon",
                "startTime": start.isoformat().replace("+00:00", "Z"),
                "endTime": (start + timedelta(minutes=30)).isoformat().replace("+00:00", "Z"),
                "reminderMinutesBefore": 0,
            }
            async with http.post(f"{base}/api/booking", json=soon, headers=bearer) as resp:
                assert resp.status == 201, await resp.text()
                soon_id = (await resp.json())["id"]
            try:
                async with asyncio.timeout(20):
                    while True:
                        frame = await next_frame(ws, within=None)
                        if frame["event"] == "booking.reminder" and soon_id in str(frame["data"]):
                            break
            except TimeoutError:
                pytest.fail("no booking.reminder arrived through nginx within 20 s")

        # The job service at the seed's /jobs/metrics (prefix kept), admin only.
        async with http.get(f"{base}/jobs/metrics", headers=bearer) as resp:
            assert resp.status == 403, await resp.text()
        login = {"email": stack.admin_email, "password": ADMIN_PASSWORD}
        async with http.post(f"{base}/api/auth/login", json=login) as resp:
            assert resp.status == 200, await resp.text()
            admin_token = (await resp.json())["accessToken"]
        async with http.get(
            f"{base}/jobs/metrics", headers={"Authorization": f"Bearer {admin_token}"}
        ) as resp:
            assert resp.status == 200, await resp.text()
        async with http.get(
            f"{base}/jobs/health", headers={"Authorization": f"Bearer {admin_token}"}
        ) as resp:
            assert resp.status == 200, await resp.text()

        # Unknown prefixes stop at nginx.
        async with http.get(f"{base}/nope") as resp:
            assert resp.status == 404

    # Both web processes served traffic (nginx logs the upstream of every request, never the token).
    # nginx writes an access-log line when it finalizes the request, which may be after the client
    # has the response: wait for the lines rather than read the log once.
    async def both_upstreams_logged() -> bool:
        log = stack.nginx.text()
        return all(f"up={upstream.removeprefix('http://')}" in log for upstream in stack.web)

    await wait_for(both_upstreams_logged, within=5, what="nginx logging both web upstreams")
    assert "token=" not in stack.nginx.text()


async def test_the_per_ip_limit_keys_on_the_address_nginx_saw(make_client: Any, tmp_path: Path) -> None:
    """ops/nginx/dev.conf and handlers.common.client_ip agree: rotating a forged X-Forwarded-For (or
    X-Real-IP) through real nginx does not escape the per-IP login limit."""
    nginx, reason = await asyncio.to_thread(nginx_support.nginx_binary)  # may install it: minutes
    if nginx is None:
        pytest.skip(reason)
    app = await make_client(trust_proxy=True, auth_rate_per_ip=3)
    dead, port = free_ports(2)
    conf = nginx_support.write_config(
        tmp_path,
        "dev",
        web=[f"127.0.0.1:{app.server.port}"],
        jobs=[f"127.0.0.1:{dead}"],
        listen=f"127.0.0.1:{port}",
    )
    command = nginx_support.command(nginx, tmp_path, conf, foreground=True)
    # The app runs on this event loop: nginx is started, awaited and stopped without blocking it.
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:

            async def proxying() -> bool:
                assert proc.returncode is None, "nginx exited"
                try:
                    async with http.get(f"{base}/health") as resp:
                        return resp.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await wait_for(proxying, within=10, what="nginx to start proxying")
            statuses = []
            for i in range(5):
                forged = {"X-Forwarded-For": f"10.9.8.{i}", "X-Real-IP": f"10.9.7.{i}"}
                body = {"email": unique_email(), "password": "whatever1"}
                async with http.post(f"{base}/api/auth/login", json=body, headers=forged) as resp:
                    statuses.append(resp.status)
            assert statuses == [401, 401, 401, 429, 429]
    finally:
        if proc.returncode is None:
            proc.terminate()
        async with asyncio.timeout(10):
            await proc.wait()


# ---------------------------------------------------------------- what nginx forwards, location by location

FORWARDED = ("Host", "X-Real-IP", "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Request-ID")


def seen_by_app(request: web.Request) -> dict[str, Any]:
    """What reached the upstream, and what the app's own helpers make of it (client_ip with
    TRUST_PROXY on, and the WebSocket Origin check with no allow-list: same site only)."""
    return {
        "path": request.path,
        "headers": {name: request.headers.get(name) for name in FORWARDED},
        "client_ip": client_ip(request),
        "origin_allowed": origin_allowed(request, ()),
    }


async def echo_http(request: web.Request) -> web.Response:
    return web.json_response(seen_by_app(request))


async def echo_ws(request: web.Request) -> web.WebSocketResponse:
    seen = seen_by_app(request)
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.send_json(seen)
    await ws.close()
    return ws


@pytest.fixture
async def echo_upstream() -> AsyncIterator[str]:
    """An upstream (`host:port`) that answers every request, WebSocket upgrades on /ws/ included, with
    `seen_by_app` of it."""
    app = web.Application()
    app[SETTINGS] = Settings(trust_proxy=True)
    app.router.add_get("/ws/", echo_ws)
    app.router.add_route("*", "/{tail:.*}", echo_http)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


class Nginx(NamedTuple):
    base: str  # where clients go: http:// for dev, https:// for prod
    plain: str  # the plain-HTTP listener
    internal: str  # prod's internal listener (/metrics); unused by dev
    output: Callable[[], str] = str  # what nginx printed so far (its access log is stdout)


@contextlib.asynccontextmanager
async def running_nginx(name: str, prefix: Path, upstream: str) -> AsyncIterator[Nginx]:
    """The repo's `<name>.conf` in front of `upstream` (as both the web and the jobs upstream)."""
    binary, reason = await asyncio.to_thread(nginx_support.nginx_binary)
    if binary is None:
        pytest.skip(reason)
    http_port, https_port, internal_port = free_ports(3)
    tls = None
    base = f"http://127.0.0.1:{http_port}"
    if name == "prod":
        cert, key = await asyncio.to_thread(nginx_support.self_signed_cert, prefix)  # openssl: a second
        tls = (f"127.0.0.1:{https_port}", cert, key)
        base = f"https://127.0.0.1:{https_port}"
    conf = nginx_support.write_config(
        prefix,
        name,
        web=[upstream],
        jobs=[upstream],
        listen=f"127.0.0.1:{http_port}",
        tls=tls,
        internal=f"127.0.0.1:{internal_port}",
    )
    proc = spawn("nginx", nginx_support.command(binary, prefix, conf, foreground=True), {}, prefix)
    try:
        async with aiohttp.ClientSession() as http:

            async def listening() -> bool:
                assert proc.popen.poll() is None, f"nginx exited:\n{proc.text()}"
                try:
                    # nginx answers /nope itself (404 in dev, a redirect in prod's plain server).
                    async with http.get(f"http://127.0.0.1:{http_port}/nope", allow_redirects=False):
                        return True
                except aiohttp.ClientConnectionError:
                    return False

            await wait_for(listening, within=10, what="nginx to listen")
        yield Nginx(base, f"http://127.0.0.1:{http_port}", f"http://127.0.0.1:{internal_port}", proc.text)
    finally:
        await asyncio.to_thread(halt, [proc])  # the upstream runs on this loop while nginx stops


@pytest.mark.parametrize("name", ["dev", "prod"])
async def test_websocket_gets_the_same_proxy_headers_as_http(
    name: str, echo_upstream: str, tmp_path: Path
) -> None:
    """/ws/ sets Upgrade/Connection of its own, which in nginx drops every server-level
    proxy_set_header unless the location includes them again (ops/nginx/proxy_headers.conf)."""
    async with running_nginx(name, tmp_path, echo_upstream) as nginx, aiohttp.ClientSession() as http:
        host = nginx.base.split("://")[1]

        async def through_both(headers: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
            async with http.get(f"{nginx.base}/api/echo", headers=headers, ssl=False) as resp:
                assert resp.status == 200, await resp.text()
                via_http = await resp.json()
            ws_url = nginx.base.replace("http", "ws", 1) + "/ws/"
            async with http.ws_connect(ws_url, headers=headers, ssl=False) as ws:
                via_ws = await ws.receive_json(timeout=5)
            assert (via_http["path"], via_ws["path"]) == ("/api/echo", "/ws/")
            return via_http, via_ws

        # A browser page loaded from this nginx: its Origin is this host.
        page = {"Origin": nginx.base, "X-Request-ID": "proxy-headers-1"}
        via_http, via_ws = await through_both(page)
        assert via_ws["headers"] == via_http["headers"]
        assert via_ws["headers"] == {
            "Host": host,
            "X-Real-IP": "127.0.0.1",
            "X-Forwarded-For": "127.0.0.1",
            "X-Forwarded-Proto": "https" if name == "prod" else "http",
            "X-Forwarded-Host": "127.0.0.1",
            "X-Request-ID": "proxy-headers-1",
        }
        # The app's same-site check passes on the socket (it compares Origin with Host), and the client
        # address it reads is the peer nginx saw.
        assert via_ws["origin_allowed"] is True and via_http["origin_allowed"] is True
        assert via_ws["client_ip"] == via_http["client_ip"] == "127.0.0.1"

        # No X-Request-ID from the client: nginx makes one, on the socket too.
        via_http, via_ws = await through_both({"Origin": nginx.base})
        assert len(via_ws["headers"]["X-Request-ID"]) == 32

        # A client-supplied X-Forwarded-For is kept, with the address nginx saw appended: the
        # right-most entry is the one nginx vouches for, and it is X-Real-IP.
        via_http, via_ws = await through_both({"Origin": nginx.base, "X-Forwarded-For": "203.0.113.7"})
        for seen in (via_http, via_ws):
            assert seen["headers"]["X-Forwarded-For"] == "203.0.113.7, 127.0.0.1"
            assert seen["headers"]["X-Forwarded-For"].split(",")[-1].strip() == seen["headers"]["X-Real-IP"]


@pytest.mark.parametrize("name", ["dev", "prod"])
async def test_calendar_feeds_are_proxied_and_logged_without_their_path(
    name: str, echo_upstream: str, tmp_path: Path
) -> None:
    """/cal/<token>.ics reaches the app with its path whole, and nginx's access line leaves the path (the
    feed's credential) out, where every other location logs it."""
    token = f"bkcal_{'a' * 12}_{uuid.uuid4().hex}{uuid.uuid4().hex[:11]}"
    async with running_nginx(name, tmp_path, echo_upstream) as nginx, aiohttp.ClientSession() as http:
        async with http.get(f"{nginx.base}/cal/{token}.ics", ssl=False) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["path"] == f"/cal/{token}.ics"
        async with http.get(f"{nginx.base}/api/echo-{token[:20]}", ssl=False) as resp:
            assert resp.status == 200

        async def logged() -> bool:
            return "/cal/*" in nginx.output() and f"/api/echo-{token[:20]}" in nginx.output()

        await wait_for(logged, what="both access lines")
        assert token not in nginx.output() and token[-43:] not in nginx.output()


async def test_prod_metrics_are_refused_publicly_and_served_on_the_internal_listener(
    echo_upstream: str, tmp_path: Path
) -> None:
    """Even from 127.0.0.1 — behind docker's userland proxy any outside client can look local or
    private — the public server refuses /metrics; only the internal (unpublished) listener proxies it."""
    async with running_nginx("prod", tmp_path, echo_upstream) as nginx, aiohttp.ClientSession() as http:
        async with http.get(f"{nginx.base}/metrics", ssl=False) as resp:
            assert resp.status == 403, await resp.text()
        async with http.get(f"{nginx.plain}/metrics", allow_redirects=False) as resp:
            assert resp.status == 301 and resp.headers["Location"].startswith("https://")
        async with http.get(f"{nginx.internal}/metrics") as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["path"] == "/metrics"
        # The internal listener serves nothing else.
        for path in ("/api/booking", "/health", "/jobs/metrics", "/ws/"):
            async with http.get(f"{nginx.internal}{path}") as resp:
                assert resp.status == 404, path
        # The public API is unaffected.
        async with http.get(f"{nginx.base}/health", ssl=False) as resp:
            assert resp.status == 200
