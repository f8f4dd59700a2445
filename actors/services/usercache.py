"""A short-lived, per-process copy of user rows for checking access tokens.

Every authenticated request needs the caller's current role and status; reading the row each time was
a database round trip per request (measured: ~18 % of a booking create's CPU, in the web process and in
PostgreSQL alike). Entries live `ttl` seconds at most. Role and status changes drop the entry here and,
through the event bus, in every other web process at once; after the bus loses Redis it drops
everything (it may have missed a change), so `ttl` only bounds staleness while Redis is unreachable.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from storage.users import User


class UserCache:
    def __init__(
        self, *, ttl: float, max_entries: int = 50_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._entries: dict[uuid.UUID, tuple[float, User]] = {}
        # Bumped by every drop or clear: a row read before an invalidation must not be stored after it.
        self.epoch = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, user_id: uuid.UUID) -> User | None:
        entry = self._entries.get(user_id)
        if entry is None:
            return None
        if self._clock() >= entry[0]:
            del self._entries[user_id]
            return None
        return entry[1]

    def put(self, user: User, *, epoch: int) -> None:
        """Keep `user`, read when `self.epoch` was `epoch`, unless an invalidation came since."""
        if self.ttl <= 0 or epoch != self.epoch:
            return
        if len(self._entries) >= self._max:  # the oldest insertion goes first
            del self._entries[next(iter(self._entries))]
        self._entries.pop(user.id, None)
        self._entries[user.id] = (self._clock() + self.ttl, user)

    def drop(self, user_id: uuid.UUID) -> None:
        self.epoch += 1
        self._entries.pop(user_id, None)

    def clear(self) -> None:
        self.epoch += 1
        self._entries.clear()
