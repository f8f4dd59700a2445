"""The database: one asyncpg pool per process; statements are SQLAlchemy Core, compiled once.

SQLAlchemy Core defines the tables (Alembic checks migrations against them) and builds every statement;
each statement is compiled to asyncpg's `$n` SQL once, at import, and run straight on asyncpg. Measured
on the create path (docs/BENCHMARKS.md): executing through SQLAlchemy's AsyncEngine cost 2.2 ms of CPU
per booking, the same statements on asyncpg 0.4 ms.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any, NoReturn, TypeAlias, cast

import asyncpg
import sqlalchemy as sa
from asyncpg.pool import PoolConnectionProxy
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement

from storage.errors import translated

log = logging.getLogger(__name__)

Record = asyncpg.Record
# A pooled connection, or one opened directly (tools, tests): the same interface.
Connection: TypeAlias = "asyncpg.Connection[Record] | PoolConnectionProxy[Record]"

_DIALECT = asyncpg_dialect()  # type: ignore[no-untyped-call]


def P(name: str, type_: Any = None) -> sa.BindParameter[Any]:
    """A named statement parameter, given at execution (`Query.fetch(conn, name=value)`)."""
    return sa.bindparam(name, type_=type_, required=False)


class Query:
    """A Core statement compiled once; named parameters in, asyncpg positional arguments out.

    Parameters are the statement's `bindparam(name)`s; literal values written into the statement are
    compiled in as constants. A missing or unknown parameter is a programming error (KeyError/TypeError).
    """

    __slots__ = ("_slots", "names", "sql")

    def __init__(self, statement: ClauseElement) -> None:
        compiled = cast(
            SQLCompiler,
            statement.compile(dialect=_DIALECT, compile_kwargs={"render_postcompile": True}),
        )
        self.sql = str(compiled)
        named = {name for name, bind in compiled.binds.items() if not bind.unique}
        self._slots = tuple(
            (name, name in named, compiled.params.get(name)) for name in compiled.positiontup or ()
        )
        self.names = frozenset(named)

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        unknown = params.keys() - self.names
        if unknown:
            raise TypeError(f"unknown query parameters {sorted(unknown)}")
        return [params[name] if named else constant for name, named, constant in self._slots]

    async def fetch(self, conn: Connection, **params: Any) -> list[Record]:
        return await conn.fetch(self.sql, *self.args(params))

    async def fetchrow(self, conn: Connection, **params: Any) -> Record | None:
        return await conn.fetchrow(self.sql, *self.args(params))

    async def fetchval(self, conn: Connection, **params: Any) -> Any:
        return await conn.fetchval(self.sql, *self.args(params))

    async def execute(self, conn: Connection, **params: Any) -> int:
        """Run the statement; the number of rows it touched."""
        status = await conn.execute(self.sql, *self.args(params))
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0


@cache
def versioned_update(table: sa.Table, names: frozenset[str]) -> Query:
    """UPDATE `table` SET the named columns (parameters of the same names), version + 1, updated_at =
    now() WHERE id = :id RETURNING the row: the one shape of a change to a versioned row."""
    return Query(
        sa.update(table)
        .where(table.c.id == P("id"))
        .values(
            {
                **{name: P(name) for name in sorted(names)},
                "version": table.c.version + 1,
                "updated_at": sa.func.now(),
            }
        )
        .returning(*table.c)
    )


@dataclass(frozen=True, slots=True)
class Paged:
    page: Query  # the page's rows, each with the `total` of every matching row
    count: Query  # the total alone, for a page past the end


def paged(
    table: sa.Table, *, where: Sequence[sa.ColumnElement[bool]], order_by: Sequence[sa.ColumnElement[Any]]
) -> Paged:
    """A page of `table` and the total in one statement: one round trip and one snapshot, so the
    total always agrees with the page. Takes `offset` and `limit` besides the filter's parameters."""
    total = sa.select(sa.func.count()).select_from(table).where(*where)
    page = (
        sa.select(table, total.scalar_subquery().label("total"))
        .where(*where)
        .order_by(*order_by)
        .offset(P("offset"))
        .limit(P("limit"))
    )
    return Paged(Query(page), Query(total))


async def page_of(
    query: Paged, conn: Connection, *, offset: int, limit: int, **params: Any
) -> tuple[int, list[dict[str, Any]]]:
    """(total, rows without the total column)."""
    rows = await query.page.fetch(conn, offset=offset, limit=limit, **params)
    if not rows:
        return int(await query.count.fetchval(conn, **params)), []
    total = int(rows[0]["total"])
    return total, [{k: v for k, v in row.items() if k != "total"} for row in rows]


class _Connection(asyncpg.Connection):
    """No reset query on release: nothing here uses session state (no LISTEN, advisory locks or SET
    outside a transaction), and the reset is a round trip per release. Open transactions are still
    rolled back by asyncpg."""

    def get_reset_query(self) -> str:
        return ""


async def _init_connection(conn: Connection) -> None:
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(kind, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


def asyncpg_url(url: str) -> str:
    """asyncpg takes postgresql:// and postgres://; SQLAlchemy's driver-qualified scheme is accepted too."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def _raise_translated(exc: asyncpg.PostgresError) -> NoReturn:
    mapped = translated(exc)
    if mapped is None:
        raise exc
    raise mapped from exc


class Database:
    """The process's pool. `connect()` lends a connection; `begin()` one inside a transaction."""

    def __init__(self, pool: asyncpg.Pool, *, timeout: float) -> None:
        self.pool = pool
        self.timeout = timeout

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        pool_size: int = 10,
        timeout: float = 5.0,  # noqa: ASYNC109 (the limit for every connect, acquire and query)
        name: str = "booking",
    ) -> Database:
        """A lazy pool: nothing connects until the first query, so a process starts while the
        database is down and serves 503 until it is back."""
        pool = await asyncpg.create_pool(
            asyncpg_url(url),
            min_size=0,
            max_size=pool_size,
            timeout=timeout,
            command_timeout=timeout * 2,
            connection_class=_Connection,
            init=_init_connection,
            server_settings={"timezone": "UTC", "application_name": name},
        )
        return cls(pool, timeout=timeout)

    async def _acquire(self) -> PoolConnectionProxy[Record]:
        """A pooled connection within the timeout. Not asyncpg's `acquire(timeout=)`: below Python 3.12
        that wraps every acquire in a Task of its own (asyncpg.compat.wait_for), a cost on every
        request; a timeout scope in the caller's task bounds the same wait (docs/BENCHMARKS.md)."""
        async with asyncio.timeout(self.timeout):
            proxy: PoolConnectionProxy[Record] = await self.pool.acquire()
        return proxy

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[Connection]:
        try:
            conn = await self._acquire()
            try:
                yield conn
            finally:
                await self.pool.release(conn)
        except asyncpg.PostgresError as exc:
            _raise_translated(exc)

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[Connection]:
        """A transaction; an overlap or a deadlock (in a statement or at the commit) comes out as
        storage.errors.Overlap / Deadlock, after the rollback."""
        async with self.connect() as conn, conn.transaction():
            yield conn

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.pool.close(), self.timeout)
        except TimeoutError:
            log.warning("database pool did not close within %.1fs; terminating", self.timeout)
            self.pool.terminate()
