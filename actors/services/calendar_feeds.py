"""Calendar feeds: secret iCalendar URLs a calendar app subscribes to (docs/CALENDAR.md). The rules and the
fetch, independent of HTTP; actors/domain/ics.py renders.

A feed's URL is `/cal/<token>.ics` with `token = bkcal_<prefix>_<secret>`: the prefix (12 hex characters)
is public, names the feed in listings and finds its row; the secret (`secrets.token_urlsafe(32)`, 256
bits) is shown once, when the feed is created or rotated, and only its SHA-256 is stored (as for API
keys, actors/services/api_keys.py). Every refusal — malformed, unknown prefix, wrong secret, revoked, owner
suspended, resource gone — is the same "no feed" to the caller; the reason goes to the log, with the
public prefix only. Feeds are managed by their owner only (an admin's role gives no access to anyone
else's feeds: a feed URL is a credential of its owner's).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
import time
import unicodedata
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial

from actors.domain import ics
from actors.domain.errors import Conflict, FieldError, NotFound, ValidationFailed
from storage import calendar_feeds as store
from storage.calendar_feeds import CalendarFeed
from storage.db import Connection, Database
from storage.resources import get_resource
from storage.users import User

log = logging.getLogger(__name__)

SCHEME = "bkcal_"
PREFIX_CHARS = 12  # 48 bits: collisions are retried, and the prefix is not the secret
SECRET_BYTES = 32
MAX_NAME_CHARS = 100
MAX_LIVE_FEEDS = 20  # per user; revoked feeds do not count
# What a feed shows: bookings that ended at most this long ago, and everything after (no end): recent
# history for a calendar app, without every booking the user ever had.
WINDOW = timedelta(days=90)
TOUCH_INTERVAL = timedelta(minutes=1)
CACHED_BODIES = 64  # rendered feeds kept per process, by ETag: an unchanged feed is not rendered again
KINDS = ("bookings", "resource")
_TOKEN = re.compile(rf"bkcal_([0-9a-f]{{{PREFIX_CHARS}}})_([A-Za-z0-9_-]{{43}})")
_TOKEN_LENGTH = len(SCHEME) + PREFIX_CHARS + 1 + 43
_DUMMY_HASH = hashlib.sha256(b"no such feed").hexdigest()


@dataclass(frozen=True, slots=True)
class NewToken:
    feed: CalendarFeed
    token: str  # `bkcal_…`: exists only here, never stored or logged

    @property
    def path(self) -> str:
        return feed_path(self.token)


@dataclass(frozen=True, slots=True)
class FeedBody:
    etag: str
    body: bytes | None  # None: the client's If-None-Match names this ETag (304)


def feed_path(token: str) -> str:
    return f"/cal/{token}.ics"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def parse(presented: str) -> tuple[str, str] | None:
    """(prefix, secret) of a well-formed token, else None. Cheap on hostile input: the length is checked
    before the pattern, and non-ASCII never matches."""
    if len(presented) != _TOKEN_LENGTH or not presented.isascii():
        return None
    found = _TOKEN.fullmatch(presented)
    return (found.group(1), found.group(2)) if found else None


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 If-None-Match: `*`, or any listed entity tag equal to ours by the weak comparison."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    return any(tag.strip().removeprefix("W/") == etag for tag in if_none_match.split(","))


def valid_name(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= MAX_NAME_CHARS or any(unicodedata.category(c)[0] == "C" for c in name):
        raise ValidationFailed(
            "invalid feed name", [FieldError("name", f"1-{MAX_NAME_CHARS} printable characters")]
        )
    return name


class CalendarFeedService:
    def __init__(
        self,
        db: Database,
        *,
        touch_interval: timedelta = TOUCH_INTERVAL,
        max_live: int = MAX_LIVE_FEEDS,
        window: timedelta = WINDOW,
    ) -> None:
        self._db = db
        self.touch_interval = touch_interval
        self.max_live = max_live
        self.window = window
        self._touched: dict[uuid.UUID, float] = {}  # feed id → monotonic time of this process's last write
        self._bodies: OrderedDict[uuid.UUID, tuple[str, bytes]] = OrderedDict()  # feed id → (ETag, body)

    # --- the owner's management --------------------------------------------------------------------------

    async def list_feeds(self, user: User) -> list[CalendarFeed]:
        async with self._db.connect() as conn:
            return await store.list_live(conn, user.id)

    async def create(
        self, user: User, *, kind: str, resource_id: uuid.UUID | None = None, name: str | None = None
    ) -> NewToken:
        if kind not in KINDS:
            raise ValidationFailed("invalid feed kind", [FieldError("kind", "bookings or resource")])
        if (kind == "resource") != (resource_id is not None):
            raise ValidationFailed(
                "invalid feed",
                [FieldError("resourceId", "required for a resource feed, and only there")],
            )
        if name is not None:
            name = valid_name(name)
        for _ in range(3):
            prefix, secret = secrets.token_hex(PREFIX_CHARS // 2), secrets.token_urlsafe(SECRET_BYTES)
            try:
                async with self._db.begin() as conn:
                    if resource_id is not None:
                        resource = await get_resource(conn, resource_id)
                        if resource is None:
                            raise NotFound("resource not found")
                        if not resource.active:
                            raise Conflict("resource retired: it takes no new feeds")
                        default_name = resource.name[:MAX_NAME_CHARS]
                    else:
                        default_name = "My bookings"
                    await store.lock_owner(conn, user.id)
                    if await store.count_live(conn, user.id) >= self.max_live:
                        raise Conflict(f"at most {self.max_live} live calendar feeds per user; revoke one")
                    feed = await store.insert_feed(
                        conn,
                        user_id=user.id,
                        kind=kind,
                        resource_id=resource_id,
                        name=name or default_name,
                        prefix=prefix,
                        secret_hash=hash_secret(secret),
                    )
            except store.DuplicatePrefix:
                continue
            log.info("calendar feed %s created (%s)", feed.prefix, feed.kind)
            return NewToken(feed, f"{SCHEME}{prefix}_{secret}")
        raise RuntimeError("three prefix collisions in a row: the random source is broken")

    async def rotate(self, user: User, feed_id: uuid.UUID) -> NewToken:
        """A new token for the feed; the old one is refused from the next fetch on."""
        for _ in range(3):
            prefix, secret = secrets.token_hex(PREFIX_CHARS // 2), secrets.token_urlsafe(SECRET_BYTES)
            try:
                async with self._db.begin() as conn:
                    feed = await store.rotate(
                        conn, feed_id=feed_id, user_id=user.id, prefix=prefix, secret_hash=hash_secret(secret)
                    )
            except store.DuplicatePrefix:
                continue
            if feed is None:
                raise NotFound("calendar feed not found")
            log.info("calendar feed %s rotated (now %s)", feed.id, feed.prefix)
            return NewToken(feed, f"{SCHEME}{prefix}_{secret}")
        raise RuntimeError("three prefix collisions in a row: the random source is broken")

    async def revoke(self, user: User, feed_id: uuid.UUID) -> None:
        async with self._db.begin() as conn:
            feed = await store.revoke(conn, feed_id=feed_id, user_id=user.id)
        if feed is None:
            raise NotFound("calendar feed not found")
        self._bodies.pop(feed.id, None)
        log.info("calendar feed %s revoked", feed.prefix)

    # --- the fetch ---------------------------------------------------------------------------------------

    async def fetch(self, token: str, *, if_none_match: str | None = None) -> FeedBody | None:
        """The feed's iCalendar text and strong ETag (no body when `if_none_match` names it); None when the
        token is not a live feed's, whatever the reason (logged)."""
        parsed = parse(token)
        if parsed is None:
            log.info("calendar feed refused: malformed token")
            return None
        prefix, secret = parsed
        async with self._db.connect() as conn:
            found = await store.get_by_prefix(conn, prefix)
            # Compare even when the prefix is unknown, so every refusal does the same work.
            matches = hmac.compare_digest(hash_secret(secret), found[1] if found else _DUMMY_HASH)
            reason = None
            if found is None:
                reason = "unknown prefix"
            elif not matches:
                reason = "wrong secret"
            elif found[0].revoked_at is not None:
                reason = "revoked"
            elif found[2].status != "active":
                reason = "owner suspended"
            if found is None or reason is not None:
                log.info("calendar feed %s refused: %s", prefix, reason)
                return None
            feed, _, owner = found
            since = datetime.now(UTC) - self.window
            render: Callable[[], bytes]
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                if feed.kind == "bookings":
                    series, rows = await store.bookings_feed_rows(conn, user_id=feed.user_id, since=since)
                    etag = ics.bookings_etag(feed.name, series, rows)
                    render = partial(ics.render_bookings, feed.name, series, rows)
                else:
                    assert feed.resource_id is not None  # noqa: S101 (ck_calendar_feeds_kind_resource)
                    found_busy = await store.resource_feed_rows(
                        conn, resource_id=feed.resource_id, since=since
                    )
                    if found_busy is None:
                        log.info("calendar feed %s refused: resource gone", prefix)
                        return None
                    busy, titles = found_busy[1], owner.role == "admin"
                    etag = ics.resource_etag(feed.name, busy, viewer=feed.user_id, titles=titles)
                    render = partial(ics.render_resource, feed.name, busy, viewer=feed.user_id, titles=titles)
            await self._touch(conn, feed)
        if etag_matches(if_none_match, etag):
            return FeedBody(etag, None)
        cached = self._bodies.get(feed.id)
        if cached is not None and cached[0] == etag:
            self._bodies.move_to_end(feed.id)
            return FeedBody(etag, cached[1])
        # Rendering is CPU work (hundreds of ms for thousands of events): off the event loop.
        body = await asyncio.to_thread(render)
        self._bodies[feed.id] = (etag, body)
        self._bodies.move_to_end(feed.id)
        while len(self._bodies) > CACHED_BODIES:
            self._bodies.popitem(last=False)
        return FeedBody(etag, body)

    async def _touch(self, conn: Connection, feed: CalendarFeed) -> None:
        now = time.monotonic()
        last = self._touched.get(feed.id)
        if last is not None and now - last < self.touch_interval.total_seconds():
            return
        if len(self._touched) > 10_000:  # bounded: a flood of feeds costs a few extra writes, not memory
            self._touched.clear()
        self._touched[feed.id] = now
        await store.touch(conn, feed.id, interval=self.touch_interval)
