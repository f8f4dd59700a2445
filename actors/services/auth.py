"""Authentication and user administration: the rules, independent of HTTP."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from actors.domain.errors import Conflict, FieldError, Forbidden, NotFound, Unauthorized, ValidationFailed
from actors.domain.zones import check_zone
from actors.services.security import TokenCodec, hash_password, verify_password
from actors.services.usercache import UserCache
from storage import tokens, users
from storage.db import Connection, Database
from storage.errors import DuplicateEmail
from storage.users import User

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Session:
    user: User
    access_token: str
    refresh_token: str
    expires_in: int


class AuthService:
    def __init__(
        self,
        db: Database,
        codec: TokenCodec,
        *,
        cache: UserCache | None = None,
        announce: Callable[[uuid.UUID], Awaitable[None]] | None = None,
    ) -> None:
        self._db = db
        self.codec = codec
        self.cache = cache
        self._announce = announce  # tells the other processes that a user's row changed

    async def register(self, *, email: str, password: str, name: str) -> Session:
        password_hash = await hash_password(password)
        async with self._db.begin() as conn:
            try:
                user = await users.insert_user(conn, email=email, name=name, password_hash=password_hash)
            except DuplicateEmail:
                raise Conflict("an account with this email already exists") from None
            return await self._session(conn, user)

    async def login(self, *, email: str, password: str) -> Session:
        async with self._db.connect() as conn:
            user = await users.get_user_by_email(conn, email)
        ok = await verify_password(user.password_hash if user else None, password)
        if not ok or user is None:
            raise Unauthorized("invalid email or password")
        if not user.active:
            raise Unauthorized("invalid email or password")
        async with self._db.begin() as conn:
            return await self._session(conn, user)

    async def refresh(self, refresh_token: str) -> Session:
        claims = self.codec.decode(refresh_token, "refresh")
        new_token, new_claims = self.codec.issue("refresh", claims.sub)
        async with self._db.begin() as conn:
            rotation = await tokens.rotate(
                conn, jti=claims.jti, new_jti=new_claims.jti, new_expires_at=_at(new_claims.exp)
            )
        # The reuse revocation above committed; only now refuse.
        if rotation.outcome is not tokens.RotateOutcome.ROTATED or rotation.user_id != claims.sub:
            if rotation.outcome is tokens.RotateOutcome.REUSED:
                log.warning(
                    "refresh token reuse detected; family revoked", extra={"user_id": str(claims.sub)}
                )
            raise Unauthorized("refresh token is no longer valid")
        async with self._db.connect() as conn:
            user = await users.get_user(conn, claims.sub)
        if user is None or not user.active:
            raise Unauthorized("refresh token is no longer valid")
        access, _ = self.codec.issue("access", user.id)
        return Session(user, access, new_token, self.codec.ttl["access"])

    async def logout(self, refresh_token: str) -> None:
        claims = self.codec.decode(refresh_token, "refresh")
        async with self._db.begin() as conn:
            family = await tokens.family_of(conn, claims.jti)
            if family is None:
                raise Unauthorized("refresh token is no longer valid")
            await tokens.revoke_family(conn, family, reason="logout")

    async def authenticate(self, access_token: str) -> User:
        """The user behind an access token; suspended or deleted users are refused."""
        claims = self.codec.decode(access_token, "access")
        user = self.cache.get(claims.sub) if self.cache is not None else None
        if user is None:
            epoch = self.cache.epoch if self.cache is not None else 0
            async with self._db.connect() as conn:
                user = await users.get_user(conn, claims.sub)
            if user is not None and self.cache is not None:
                self.cache.put(user, epoch=epoch)
        if user is None or not user.active:
            raise Unauthorized("invalid token")
        return user

    async def _changed(self, user_id: uuid.UUID) -> None:
        """A user's row changed (committed: role, status, name, zone): forget it here and everywhere else."""
        if self.cache is not None:
            self.cache.drop(user_id)
        if self._announce:
            await self._announce(user_id)

    async def list_users(self, actor: User, *, page: int, limit: int) -> tuple[list[User], int]:
        _require_admin(actor)
        async with self._db.connect() as conn:
            return await users.list_users(conn, offset=(page - 1) * limit, limit=limit)

    async def update_user(
        self, actor: User, user_id: uuid.UUID, *, role: str | None, status: str | None
    ) -> User:
        _require_admin(actor)
        if actor.id == user_id and (role == "user" or status == "suspended"):
            raise Conflict("admins cannot demote or suspend themselves")
        async with self._db.begin() as conn:
            user = await users.update_user(conn, user_id, role=role, status=status)
            if user is None:
                raise NotFound("user not found")
            if status == "suspended":
                await tokens.revoke_user_families(conn, user_id, reason="suspended")
        await self._changed(user_id)
        return user

    async def update_profile(self, actor: User, *, name: str | None, time_zone: str | None) -> User:
        """The caller's own name and time zone; every web process uses the new values from the next
        request on (the cached row is dropped everywhere, like a role change)."""
        if name is None and time_zone is None:
            raise ValidationFailed("nothing to change", [FieldError("body", "give name and/or timeZone")])
        if time_zone is not None:
            check_zone(time_zone)
        async with self._db.begin() as conn:
            user = await users.update_user(conn, actor.id, name=name, time_zone=time_zone)
        if user is None:
            raise Unauthorized("invalid token")  # deleted since its token was checked
        await self._changed(actor.id)
        return user

    async def ensure_admin(self, *, email: str, password: str, name: str = "Administrator") -> User:
        """Create the admin, or promote and re-password an existing account (idempotent)."""
        password_hash = await hash_password(password)
        try:
            async with self._db.begin() as conn:
                if await users.get_user_by_email(conn, email) is None:
                    return await users.insert_user(
                        conn, email=email, name=name, password_hash=password_hash, role="admin"
                    )
        except DuplicateEmail:
            pass  # another process created it between our read and our insert: promote that one
        async with self._db.begin() as conn:
            existing = await users.get_user_by_email(conn, email)
            updated = existing and await users.update_user(
                conn, existing.id, role="admin", status="active", password_hash=password_hash
            )
            if not updated:
                raise Conflict(f"could not create or promote {email}; retry")
        await self._changed(updated.id)
        return updated

    async def _session(self, conn: Connection, user: User) -> Session:
        access, _ = self.codec.issue("access", user.id)
        refresh, claims = self.codec.issue("refresh", user.id)
        await tokens.start_family(conn, user_id=user.id, jti=claims.jti, expires_at=_at(claims.exp))
        return Session(user, access, refresh, self.codec.ttl["access"])


def _require_admin(user: User) -> None:
    if not user.is_admin:
        raise Forbidden("admin role required")


def _at(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)
