"""Tokens (PyJWT, HS256 pinned) and passwords (argon2id).

Verified access-token claims are kept per token (a bounded LRU, `TokenCodec.cache_size`) so a client's
requests verify its token once: PyJWT's decode was ~0.15 ms of each request's CPU. The cache keeps only
what the signature proved; expiry is checked again on every use, and the user's role and status are
still read from `UserCache` / the database by `AuthService.authenticate` each time (suspension bites at
once). Refresh tokens are never cached (each is used once).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from actors.domain.errors import Unauthorized

ALGORITHM = "HS256"
REQUIRED_CLAIMS = ["exp", "iat", "sub", "jti", "type"]
TokenType = Literal["access", "refresh"]
LEEWAY = 5  # seconds of clock skew accepted on `exp`

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters
# Verified against when the email is unknown, so both paths cost one argon2 verification.
_DUMMY_HASH = _hasher.hash("not-a-real-password-" + uuid.uuid4().hex)


@dataclass(frozen=True, slots=True)
class TokenClaims:
    sub: uuid.UUID
    jti: uuid.UUID
    type: TokenType
    exp: int


class TokenCodec:
    def __init__(
        self,
        *,
        access_secret: str,
        refresh_secret: str,
        access_ttl: int,
        refresh_ttl: int,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secrets: dict[TokenType, str] = {"access": access_secret, "refresh": refresh_secret}
        self.ttl: dict[TokenType, int] = {"access": access_ttl, "refresh": refresh_ttl}
        self.cache_size = cache_size
        self._clock = clock  # wall clock, as `exp` is
        self._verified: OrderedDict[str, TokenClaims] = OrderedDict()  # access token -> its claims

    def issue(
        self, kind: TokenType, user_id: uuid.UUID, *, jti: uuid.UUID | None = None
    ) -> tuple[str, TokenClaims]:
        now = int(time.time())
        claims = TokenClaims(sub=user_id, jti=jti or uuid.uuid4(), type=kind, exp=now + self.ttl[kind])
        payload: dict[str, Any] = {
            "sub": str(claims.sub),
            "jti": str(claims.jti),
            "type": kind,
            "iat": now,
            "exp": claims.exp,
        }
        return jwt.encode(payload, self._secrets[kind], algorithm=ALGORITHM), claims

    def decode(self, token: str, kind: TokenType) -> TokenClaims:
        """Verify signature, algorithm, required claims and type; any failure is the same 401."""
        if kind == "access" and (cached := self._verified.get(token)) is not None:
            if cached.exp <= self._clock() - LEEWAY:  # PyJWT's rule: expired once exp + leeway has passed
                del self._verified[token]
                raise Unauthorized("token expired")
            self._verified.move_to_end(token)
            return cached
        claims = self._verify(token, kind)
        if kind == "access" and self.cache_size > 0:
            self._verified[token] = claims
            if len(self._verified) > self.cache_size:
                self._verified.popitem(last=False)
        return claims

    def _verify(self, token: str, kind: TokenType) -> TokenClaims:
        if not token.isascii():  # a JWT is base64url; PyJWT would fail to encode a lone surrogate
            raise Unauthorized("invalid token")
        try:
            payload = jwt.decode(
                token,
                self._secrets[kind],
                algorithms=[ALGORITHM],
                options={"require": REQUIRED_CLAIMS},
                leeway=LEEWAY,
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.PyJWTError:
            raise Unauthorized("invalid token") from None
        if payload.get("type") != kind:
            raise Unauthorized("invalid token type")
        try:
            return TokenClaims(
                sub=uuid.UUID(str(payload["sub"])),
                jti=uuid.UUID(str(payload["jti"])),
                type=kind,
                exp=int(payload["exp"]),
            )
        except (ValueError, TypeError):
            raise Unauthorized("invalid token") from None


async def hash_password(password: str) -> str:
    # argon2 is deliberately slow; keep it off the event loop.
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    def _verify() -> bool:
        try:
            return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
        except (VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(_verify)
