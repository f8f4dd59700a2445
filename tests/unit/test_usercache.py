"""UserCache: pure logic with a fake clock (the cross-process behaviour is in tests/e2e/test_auth_e2e.py)."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime

from actors.services.usercache import UserCache
from storage.users import User

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def user(**changes: object) -> User:
    base = User(uuid.uuid4(), 1, "a@example.com", "A", "h", "user", "active", NOW, NOW)
    return replace(base, **changes)  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_lives_ttl_seconds() -> None:
    clock = Clock()
    cache = UserCache(ttl=5, clock=clock)
    u = user()
    cache.put(u, epoch=cache.epoch)
    clock.now += 4.9
    assert cache.get(u.id) == u
    clock.now += 0.1
    assert cache.get(u.id) is None
    assert len(cache) == 0


def test_a_row_read_before_an_invalidation_is_not_kept() -> None:
    cache = UserCache(ttl=5, clock=Clock())
    stale, other = user(), user()
    epoch = cache.epoch  # a request starts reading `stale` ...
    cache.drop(stale.id)  # ... an admin suspends it meanwhile ...
    cache.put(stale, epoch=epoch)  # ... the old row must not land in the cache
    cache.put(other, epoch=epoch)  # (any invalidation voids every read in flight: they are rare)
    assert cache.get(stale.id) is None and cache.get(other.id) is None
    cache.put(stale, epoch=cache.epoch)
    assert cache.get(stale.id) == stale


def test_drop_and_clear_forget() -> None:
    cache = UserCache(ttl=5, clock=Clock())
    a, b = user(), user()
    for u in (a, b):
        cache.put(u, epoch=cache.epoch)
    cache.drop(a.id)
    assert cache.get(a.id) is None and cache.get(b.id) == b
    cache.clear()
    assert cache.get(b.id) is None


def test_zero_ttl_keeps_nothing_and_size_is_bounded() -> None:
    off = UserCache(ttl=0, clock=Clock())
    u = user()
    off.put(u, epoch=off.epoch)
    assert off.get(u.id) is None

    small = UserCache(ttl=5, max_entries=3, clock=Clock())
    users = [user() for _ in range(5)]
    for u in users:
        small.put(u, epoch=small.epoch)
    assert len(small) == 3
    assert [small.get(u.id) for u in users] == [None, None, *users[2:]]
