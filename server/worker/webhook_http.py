"""Webhook delivery's HTTP side: one POST to an endpoint, its answer classified, and the SSRF guard (a
resolver that refuses non-public addresses in production) (docs/WEBHOOKS.md)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from actors.domain import webhooks as rules


class AddressRefused(OSError):
    """A name resolved to an address webhooks may not be sent to (raised inside aiohttp's connector,
    which wraps OSErrors from the resolver)."""


class GuardedResolver(AbstractResolver):
    """Resolves with the system resolver and, in production, refuses a name with any non-public
    address. aiohttp connects to exactly the addresses returned here, so the check and the connection
    use the same answer: a name re-pointed at a private address after creation (DNS rebinding) gets no
    request."""

    def __init__(self, *, production: bool) -> None:
        self._production = production

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, family=family)
        results: list[ResolveResult] = [
            {
                "hostname": host,
                "host": str(info[4][0]),
                "port": int(info[4][1]),
                "family": info[0],
                "proto": info[2],
                "flags": socket.AI_NUMERICHOST,
            }
            for info in infos
        ]
        if self._production:
            try:
                rules.refuse_addresses(host, [r["host"] for r in results])
            except rules.UrlRefused as exc:
                raise AddressRefused(str(exc)) from None
        return results

    async def close(self) -> None:
        return None


def client_session(*, production: bool, timeout: float) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        resolver=GuardedResolver(production=production),
        family=socket.AF_UNSPEC,
        limit=0,  # the per-endpoint limit is the claim's; the worker's task limit bounds the rest
        ttl_dns_cache=None,  # resolve (and check) on every new connection
        use_dns_cache=False,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout),
        trust_env=False,  # never through a proxy from the environment
        auto_decompress=False,
    )


@dataclass(frozen=True, slots=True)
class Answer:
    outcome: str  # delivered | failed | gone | refused
    status: int | None
    latency_ms: float
    body: str | None
    error: str | None


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _storable(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace").replace("\x00", "\ufffd")


async def post(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], body: bytes, *, production: bool
) -> Answer:
    """One attempt. A 2xx is delivered; 410 is gone; any other status, a redirect (never followed), a
    connection error or no answer within the session's timeout is a failure; in production, a URL that
    is or resolves to a non-public address is refused with no request made."""
    started = time.monotonic()

    def elapsed() -> float:
        return round((time.monotonic() - started) * 1000, 3)

    try:
        target = rules.parse_url(url, production=production)
        if production and _is_literal(target.host):
            # A literal address never reaches the resolver; a name is checked there (GuardedResolver).
            rules.refuse_addresses(target.host, [target.host])
    except rules.UrlRefused as exc:
        return Answer("refused", None, elapsed(), None, f"refused: {exc}")
    timeout = session.timeout.total or rules.TIMEOUT_SECONDS
    try:
        async with (
            asyncio.timeout(timeout),
            session.post(url, data=body, headers=headers, allow_redirects=False) as resp,
        ):
            kept = b""
            while len(kept) < rules.RESPONSE_KEEP_BYTES:
                chunk = await resp.content.read(rules.RESPONSE_KEEP_BYTES - len(kept))
                if not chunk:
                    break
                kept += chunk
            status = resp.status
    except TimeoutError:
        return Answer("failed", None, elapsed(), None, f"no answer within {timeout:g}s")
    except aiohttp.ClientConnectorError as exc:
        cause = exc.os_error
        if isinstance(cause, AddressRefused):
            return Answer("refused", None, elapsed(), None, f"refused: {cause}")
        return Answer("failed", None, elapsed(), None, f"connection failed: {cause}"[:500])
    except (aiohttp.ClientError, OSError) as exc:
        return Answer("failed", None, elapsed(), None, f"{type(exc).__name__}: {exc}"[:500])
    text = _storable(kept)
    if 200 <= status < 300:
        return Answer("delivered", status, elapsed(), text, None)
    if status == 410:
        return Answer("gone", status, elapsed(), text, "410 Gone: the endpoint was disabled")
    why = "a redirect (not followed)" if 300 <= status < 400 else f"HTTP {status}"
    return Answer("failed", status, elapsed(), text, why)
