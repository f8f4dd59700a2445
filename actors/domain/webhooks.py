"""Outbound webhooks, the pure part: the event catalogue, the retry schedule, URL and address rules,
secrets, signatures and the message body (docs/WEBHOOKS.md). No I/O: the name resolution that URL
checks need is the service's (actors/services/webhooks.py)."""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import json
import random
import secrets
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from standardwebhooks import Webhook

from actors.domain.views import booking_from_snapshot, booking_view, iso

# --- the catalogue -------------------------------------------------------------------------------------

BOOKING_CREATED = "booking.created"
BOOKING_UPDATED = "booking.updated"
BOOKING_CANCELLED = "booking.cancelled"
BOOKING_DELETED = "booking.deleted"
BOOKING_REMINDER = "booking.reminder"
WEBHOOK_TEST = "webhook.test"
# What an endpoint may subscribe to. `webhook.test` is sent on request to one endpoint whatever it
# subscribes to. series.* and resource.* join when those features do.
EVENTS = (BOOKING_CREATED, BOOKING_UPDATED, BOOKING_CANCELLED, BOOKING_DELETED, BOOKING_REMINDER)
ALL_EVENTS = "*"


def update_event(changes: dict[str, Any]) -> str:
    """A change that moves the booking to `cancelled` is `booking.cancelled` (only that event, whatever
    else changed with it); every other change, status moves to in-progress or completed included, is
    `booking.updated`."""
    return BOOKING_CANCELLED if changes.get("status") == "cancelled" else BOOKING_UPDATED


# --- retries -------------------------------------------------------------------------------------------

RETRY_FACTOR = 4
RETRIES = 8  # after the first attempt: 9 attempts in all
MAX_DELAY = timedelta(hours=24)
JITTER = 0.2  # each delay is drawn from ±20 % of its nominal value
DISABLE_AFTER = timedelta(days=5)  # an endpoint failing this long is disabled
TIMEOUT_SECONDS = 10.0
RESPONSE_KEEP_BYTES = 1024


def nominal_delay(retry: int, *, base: float) -> float:
    """Seconds before retry number `retry` (1-based): base * 4^(retry-1), at most 24 h.
    With the default base of 5 s: 5 s, 20 s, 80 s, 5.3 min, 21 min, 85 min, 5.7 h, 22.8 h."""
    if retry < 1:
        raise ValueError("retries count from 1")
    return min(base * float(RETRY_FACTOR ** (retry - 1)), MAX_DELAY.total_seconds())


def retry_delay(retry: int, *, base: float, rng: random.Random | None = None) -> float | None:
    """The jittered delay before retry `retry`, or None once the schedule is spent."""
    if retry > RETRIES:
        return None
    nominal = nominal_delay(retry, base=base)
    draw = (rng or _RNG).uniform(1 - JITTER, 1 + JITTER)
    return nominal * draw


_RNG = random.Random()  # noqa: S311 (jitter, not a secret)


# --- URLs and addresses ----------------------------------------------------------------------------------

MAX_URL_LENGTH = 2048


class UrlRefused(ValueError):
    """The URL may not receive webhooks; the message says why (shown to the caller)."""


def address_problem(address: str) -> str | None:
    """Why a webhook may not be sent to this IP address in production, or None when it may: only
    globally routable unicast addresses are allowed (no loopback, private, link-local — the cloud
    metadata service 169.254.169.254 among them —, shared, reserved, multicast or unspecified ones,
    IPv4-mapped IPv6 judged as the IPv4 address it maps)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified:
        return "is the unspecified address"
    if ip.is_loopback:
        return "is a loopback address"
    if ip.is_link_local:
        return "is a link-local address (the cloud metadata service among them)"
    if ip.is_multicast:
        return "is a multicast address"
    if ip.is_private:
        return "is a private address"
    if ip.is_reserved or not ip.is_global:
        return "is not a public address"
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    scheme: str
    host: str
    port: int


def parse_url(url: str, *, production: bool) -> Target:
    """The URL's scheme, host and port, or UrlRefused. Production takes https only."""
    if len(url) > MAX_URL_LENGTH:
        raise UrlRefused(f"must be at most {MAX_URL_LENGTH} characters")
    if any(c.isspace() or ord(c) < 0x20 for c in url):
        raise UrlRefused("must not contain whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlRefused(f"is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UrlRefused("must be an http(s) URL")
    if production and scheme != "https":
        raise UrlRefused("must use https")
    if not parts.hostname:
        raise UrlRefused("must name a host")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("must not carry credentials (use the signature to authenticate)")
    if parts.fragment:
        raise UrlRefused("must not have a fragment")
    return Target(scheme, parts.hostname, port or (443 if scheme == "https" else 80))


def refuse_addresses(host: str, addresses: Sequence[str]) -> None:
    """UrlRefused when any address of `host` is not public: a name with one private answer among
    public ones could be steered to it."""
    if not addresses:
        raise UrlRefused(f"host {host!r} has no address")
    for address in addresses:
        problem = address_problem(address)
        if problem is not None:
            shown = host if host == address else f"{host!r} resolves to {address}, which"
            raise UrlRefused(f"{shown} {problem}")


# --- secrets, signatures, bodies ---------------------------------------------------------------------

SECRET_PREFIX = "whsec_"  # noqa: S105 (the format's prefix, not a secret)
SECRET_BYTES = 32
ROTATION_OVERLAP = timedelta(hours=24)  # the previous secret keeps signing this long after a rotation


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def message_id(message: uuid.UUID) -> str:
    """The `webhook-id`: one per (event, endpoint), the same on every retry and redelivery."""
    return f"msg_{message.hex}"


def signature(signing_secrets: Sequence[str], msg_id: str, timestamp: datetime, body: bytes) -> str:
    """`webhook-signature`: `v1,<base64 HMAC-SHA256 of id.timestamp.body>` per secret, space-separated
    (during a rotation the new and the previous secret both sign)."""
    return " ".join(Webhook(secret).sign(msg_id, timestamp, body) for secret in signing_secrets)


def headers(
    signing_secrets: Sequence[str], message: uuid.UUID, timestamp: datetime, body: bytes
) -> dict[str, str]:
    msg_id = message_id(message)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": signature(signing_secrets, msg_id, timestamp, body),
        "content-type": "application/json",
    }


def render_data(payload: dict[str, Any]) -> dict[str, Any]:
    """The public `data` of a stored payload: a booking snapshot becomes the API's booking view."""
    data = dict(payload)
    snapshot = data.get("booking")
    if isinstance(snapshot, dict):
        data["booking"] = booking_view(booking_from_snapshot(snapshot))
    return data


def body(event_type: str, created_at: datetime, payload: dict[str, Any]) -> bytes:
    """`{type, timestamp, data}`: the same bytes on every attempt (the event's own time, not the
    attempt's; the attempt's is in `webhook-timestamp`)."""
    return json.dumps(
        {"type": event_type, "timestamp": iso(created_at), "data": render_data(payload)},
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()
