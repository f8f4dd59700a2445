"""Users: plain dataclasses in, plain dataclasses out."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from functools import cache

import asyncpg
import sqlalchemy as sa

from storage.db import Connection, P, Query, Record
from storage.errors import DuplicateEmail
from storage.tables import users


@dataclass(frozen=True, slots=True)
class User:
    id: uuid.UUID
    seq: int
    email: str
    name: str
    password_hash: str
    role: str
    status: str
    created_at: datetime
    updated_at: datetime
    time_zone: str = "UTC"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def active(self) -> bool:
        return self.status == "active"


def _user(row: Record) -> User:
    return User(**row)


_INSERT = Query(
    sa.insert(users)
    .values(email=P("email"), name=P("name"), password_hash=P("password_hash"), role=P("role"))
    .returning(*users.c)
)
_BY_ID = Query(sa.select(users).where(users.c.id == P("id")))
_BY_EMAIL = Query(sa.select(users).where(sa.func.lower(users.c.email) == sa.func.lower(P("email", sa.Text))))
_COUNT = Query(sa.select(sa.func.count()).select_from(users))
_PAGE = Query(sa.select(users).order_by(users.c.created_at, users.c.id).offset(P("offset")).limit(P("limit")))


async def insert_user(
    conn: Connection, *, email: str, name: str, password_hash: str, role: str = "user"
) -> User:
    try:
        row = await _INSERT.fetchrow(conn, email=email, name=name, password_hash=password_hash, role=role)
    except asyncpg.UniqueViolationError as exc:
        raise DuplicateEmail(email) from exc
    assert row is not None  # noqa: S101 (INSERT ... RETURNING returns the row)
    return _user(row)


async def get_user(conn: Connection, user_id: uuid.UUID) -> User | None:
    row = await _BY_ID.fetchrow(conn, id=user_id)
    return _user(row) if row else None


_BY_IDS = Query(sa.select(users).where(users.c.id == sa.func.any(P("ids", type_=sa.ARRAY(users.c.id.type)))))


async def get_users_by_ids(conn: Connection, user_ids: list[uuid.UUID]) -> list[User]:
    return [_user(row) for row in await _BY_IDS.fetch(conn, ids=user_ids)]


async def get_user_by_email(conn: Connection, email: str) -> User | None:
    row = await _BY_EMAIL.fetchrow(conn, email=email)
    return _user(row) if row else None


async def list_users(conn: Connection, *, offset: int, limit: int) -> tuple[list[User], int]:
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        total = int(await _COUNT.fetchval(conn))
        rows = await _PAGE.fetch(conn, offset=offset, limit=limit) if offset < total else []
    return [_user(r) for r in rows], total


@cache
def _update(fields: frozenset[str]) -> Query:
    values: dict[str, object] = {name: P(name) for name in sorted(fields)}
    return Query(
        sa.update(users)
        .where(users.c.id == P("id"))
        .values(**values, updated_at=sa.func.now())
        .returning(*users.c)
    )


async def update_user(
    conn: Connection,
    user_id: uuid.UUID,
    *,
    role: str | None = None,
    status: str | None = None,
    password_hash: str | None = None,
    name: str | None = None,
    time_zone: str | None = None,
) -> User | None:
    """Set the fields given (None: unchanged); None when there is no such user."""
    given = {
        "role": role,
        "status": status,
        "password_hash": password_hash,
        "name": name,
        "time_zone": time_zone,
    }
    changes = {k: v for k, v in given.items() if v is not None}
    row = await _update(frozenset(changes)).fetchrow(conn, id=user_id, **changes)
    return _user(row) if row else None
