"""Users: plain dataclasses in, plain dataclasses out."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.errors import DuplicateEmail, sqlstate
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

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def active(self) -> bool:
        return self.status == "active"


def _user(row: sa.Row[tuple[object, ...]]) -> User:
    return User(**row._asdict())


async def insert_user(
    conn: AsyncConnection, *, email: str, name: str, password_hash: str, role: str = "user"
) -> User:
    try:
        row = (
            await conn.execute(
                sa.insert(users)
                .values(email=email, name=name, password_hash=password_hash, role=role)
                .returning(*users.c)
            )
        ).one()
    except IntegrityError as exc:
        if sqlstate(exc) == "23505":
            raise DuplicateEmail(email) from exc
        raise
    return _user(row)


async def get_user(conn: AsyncConnection, user_id: uuid.UUID) -> User | None:
    row = (await conn.execute(sa.select(users).where(users.c.id == user_id))).one_or_none()
    return _user(row) if row else None


async def get_user_by_email(conn: AsyncConnection, email: str) -> User | None:
    stmt = sa.select(users).where(sa.func.lower(users.c.email) == email.lower())
    row = (await conn.execute(stmt)).one_or_none()
    return _user(row) if row else None


async def list_users(conn: AsyncConnection, *, offset: int, limit: int) -> tuple[list[User], int]:
    total = (await conn.execute(sa.select(sa.func.count()).select_from(users))).scalar_one()
    rows = await conn.execute(
        sa.select(users).order_by(users.c.created_at, users.c.id).offset(offset).limit(limit)
    )
    return [_user(r) for r in rows], int(total)


async def update_user(
    conn: AsyncConnection,
    user_id: uuid.UUID,
    *,
    role: str | None = None,
    status: str | None = None,
    password_hash: str | None = None,
) -> User | None:
    values: dict[str, object] = {"updated_at": sa.func.now()}
    if role is not None:
        values["role"] = role
    if status is not None:
        values["status"] = status
    if password_hash is not None:
        values["password_hash"] = password_hash
    stmt = sa.update(users).where(users.c.id == user_id).values(**values).returning(*users.c)
    row = (await conn.execute(stmt)).one_or_none()
    return _user(row) if row else None
