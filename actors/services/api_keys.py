"""API keys for service-to-service calls to the job service: the rules, independent of HTTP.

A key is `bk_<prefix>_<secret>`: the prefix (12 hex characters) is public, names the key in listings and
finds its row; the secret (`secrets.token_urlsafe(32)`, 256 bits) is shown once, at creation, and only its
SHA-256 is stored. Every refusal (malformed, unknown, wrong secret, expired, revoked) is the same
Unauthorized a bad access token gets; the reason goes to the log, with the public prefix only.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from actors.domain.errors import FieldError, NotFound, Unauthorized, ValidationFailed
from storage import api_keys as store
from storage.api_keys import ApiKey
from storage.db import Database

log = logging.getLogger(__name__)

SCHEME = "bk_"
PREFIX_CHARS = 12  # 48 bits: collisions are retried, and the prefix is not the secret
SECRET_BYTES = 32
MAX_NAME_CHARS = 100
MAX_EXPIRY_DAYS = 3650
TOUCH_INTERVAL = timedelta(minutes=1)
# token_urlsafe(32) is exactly 43 characters of the base64url alphabet, which includes `_`: the prefix
# (hex) never does, so the first two underscores split the key unambiguously.
_KEY = re.compile(rf"bk_([0-9a-f]{{{PREFIX_CHARS}}})_([A-Za-z0-9_-]{{43}})")
_INVALID = "invalid token"  # word for word what a forged access token gets
_DUMMY_HASH = hashlib.sha256(b"no such key").hexdigest()


@dataclass(frozen=True, slots=True)
class NewKey:
    key: ApiKey
    token: str  # the whole `bk_…` key; exists only here, never stored or logged


def looks_like_key(value: str) -> bool:
    """Whether a bearer credential is meant as an API key rather than a JWT (which starts with `ey`)."""
    return value.startswith(SCHEME)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def parse(presented: str) -> tuple[str, str] | None:
    """(prefix, secret) of a well-formed key, else None. Cheap on hostile input: the length is checked
    before the pattern, and non-ASCII never matches."""
    if len(presented) != len(SCHEME) + PREFIX_CHARS + 1 + 43 or not presented.isascii():
        return None
    found = _KEY.fullmatch(presented)
    return (found.group(1), found.group(2)) if found else None


def valid_name(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= MAX_NAME_CHARS or any(unicodedata.category(c)[0] == "C" for c in name):
        raise ValidationFailed(
            "invalid API key name",
            [FieldError("name", f"1-{MAX_NAME_CHARS} printable characters")],
        )
    return name


class ApiKeyService:
    def __init__(self, db: Database, *, touch_interval: timedelta = TOUCH_INTERVAL) -> None:
        self._db = db
        self.touch_interval = touch_interval
        # key id → monotonic time this process last recorded a use: at most one write per key per
        # interval from here, whatever the request rate (the UPDATE also checks, across processes).
        self._touched: dict[uuid.UUID, float] = {}

    async def create(self, *, name: str, expires_in_days: int | None = None) -> NewKey:
        name = valid_name(name)
        expires_at = None
        if expires_in_days is not None:
            if isinstance(expires_in_days, bool) or not 1 <= expires_in_days <= MAX_EXPIRY_DAYS:
                raise ValidationFailed(
                    "invalid expiry",
                    [FieldError("expiresInDays", f"a whole number of days, 1-{MAX_EXPIRY_DAYS}")],
                )
            expires_at = datetime.now(UTC) + timedelta(days=expires_in_days)
        for _ in range(3):
            prefix = secrets.token_hex(PREFIX_CHARS // 2)
            secret = secrets.token_urlsafe(SECRET_BYTES)
            try:
                async with self._db.begin() as conn:
                    key = await store.insert_api_key(
                        conn, name=name, prefix=prefix, secret_hash=hash_secret(secret), expires_at=expires_at
                    )
            except store.DuplicatePrefix:
                continue
            return NewKey(key, f"{SCHEME}{prefix}_{secret}")
        raise RuntimeError("three prefix collisions in a row: the random source is broken")

    async def list_keys(self) -> list[ApiKey]:
        async with self._db.connect() as conn:
            return await store.list_api_keys(conn)

    async def revoke(self, prefix: str) -> ApiKey:
        """Revoke by prefix (a full key is accepted too, so a leaked key can be pasted as found)."""
        parsed = parse(prefix.strip())
        prefix = parsed[0] if parsed else prefix.strip().removeprefix(SCHEME)
        key = None
        if re.fullmatch(rf"[0-9a-f]{{{PREFIX_CHARS}}}", prefix):
            async with self._db.begin() as conn:
                key = await store.revoke(conn, prefix)
        if key is None:
            raise NotFound("no API key has this prefix")
        return key

    async def authenticate(self, presented: str) -> ApiKey:
        parsed = parse(presented)
        if parsed is None:
            log.info("API key refused: malformed")
            raise Unauthorized(_INVALID)
        prefix, secret = parsed
        async with self._db.connect() as conn:
            found = await store.get_by_prefix(conn, prefix)
        # Compare even when the prefix is unknown, so both refusals do the same work.
        matches = hmac.compare_digest(hash_secret(secret), found[1] if found else _DUMMY_HASH)
        if found is None:
            reason = "unknown prefix"
        elif not matches:
            reason = "wrong secret"
        else:
            reason = found[0].state_at(datetime.now(UTC))  # active, expired or revoked
        if found is None or reason != "active":
            log.info("API key %s refused: %s", prefix, reason)
            raise Unauthorized(_INVALID)
        await self._touch(found[0])
        return found[0]

    async def _touch(self, key: ApiKey) -> None:
        now = time.monotonic()
        last = self._touched.get(key.id)
        if last is not None and now - last < self.touch_interval.total_seconds():
            return
        self._touched[key.id] = now
        async with self._db.connect() as conn:
            await store.touch(conn, key.id, interval=self.touch_interval)
