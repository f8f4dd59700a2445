"""Auth over real HTTP against real PostgreSQL and Redis, hostile cases included."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
import uuid
from typing import Any

import jwt
import pytest

from actors.domain.errors import Unauthorized
from actors.services.security import TokenCodec
from server.base.settings import DEV_JWT_SECRET, DEV_REFRESH_SECRET
from tests.conftest import Client, Registrar, auth
from tests.support import unique_email

PASSWORD = "correct horse battery"


async def test_register_returns_user_and_token_pair(client: Client) -> None:
    email = unique_email()
    resp = await client.post("/api/auth/register", json={"email": email, "password": PASSWORD, "name": "Ann"})
    assert resp.status == 201
    body = await resp.json()
    assert body["user"]["email"] == email
    assert body["user"]["role"] == "user"
    assert body["tokenType"] == "Bearer"
    assert body["expiresIn"] > 0
    assert body["user"]["createdAt"].endswith("Z")
    assert "password" not in json.dumps(body["user"]).lower()


async def test_register_never_grants_admin(client: Client) -> None:
    resp = await client.post(
        "/api/auth/register",
        json={"email": unique_email(), "password": PASSWORD, "name": "M", "role": "admin"},
    )
    assert resp.status == 400
    problem = await resp.json()
    assert problem["errors"][0]["field"] == "role"


async def test_duplicate_email_in_any_case_is_409(client: Client, register: Registrar) -> None:
    email = unique_email()
    await register(email=email)
    resp = await client.post(
        "/api/auth/register", json={"email": email.upper(), "password": PASSWORD, "name": "X"}
    )
    assert resp.status == 409
    assert resp.content_type == "application/problem+json"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"email": "not-an-email", "password": PASSWORD, "name": "x"}, "email"),
        ({"email": "a@example.com", "password": "short", "name": "x"}, "password"),
        ({"email": "a@example.com", "password": "x" * 129, "name": "x"}, "password"),
        ({"email": "a@example.com", "password": PASSWORD, "name": ""}, "name"),
        ({"email": "a@example.com", "password": 12345678, "name": "x"}, "password"),
        ({"password": PASSWORD, "name": "x"}, "email"),
    ],
)
async def test_register_rejects_invalid_fields(client: Client, payload: dict[str, Any], field: str) -> None:
    resp = await client.post("/api/auth/register", json=payload)
    assert resp.status == 400
    problem = await resp.json()
    assert problem["status"] == 400
    assert field in [e["field"] for e in problem["errors"]]
    assert problem["requestId"] == resp.headers["X-Request-ID"]


async def test_malformed_json_is_400(client: Client) -> None:
    resp = await client.post(
        "/api/auth/register", data=b'{"email": "a@b.c", ', headers={"Content-Type": "application/json"}
    )
    assert resp.status == 400
    assert (await resp.json())["errors"][0]["field"] == "body"


@pytest.mark.parametrize("payload", [b"[]", b'"text"', b"null", b"42"])
async def test_non_object_json_is_400(client: Client, payload: bytes) -> None:
    resp = await client.post("/api/auth/login", data=payload, headers={"Content-Type": "application/json"})
    assert resp.status == 400


async def test_wrong_content_type_is_415(client: Client) -> None:
    resp = await client.post("/api/auth/register", data="email=a@b.c", headers={"Content-Type": "text/plain"})
    assert resp.status == 415
    assert resp.content_type == "application/problem+json"


async def test_oversized_body_is_413_and_writes_nothing(client: Client) -> None:
    email = unique_email()
    huge = json.dumps({"email": email, "password": PASSWORD, "name": "x" * (2 * 1024 * 1024)}).encode()
    resp = await client.post(
        "/api/auth/register", data=io.BytesIO(huge), headers={"Content-Type": "application/json"}
    )
    assert resp.status == 413
    login = await client.post("/api/auth/login", json={"email": email, "password": PASSWORD})
    assert login.status == 401


async def test_login_unknown_email_and_wrong_password_answer_alike(
    client: Client, register: Registrar
) -> None:
    email = unique_email()
    await register(email=email)
    timings = []
    bodies = []
    for payload in (
        {"email": email, "password": "wrong password"},
        {"email": unique_email(), "password": "x" * 10},
    ):
        started = time.perf_counter()
        resp = await client.post("/api/auth/login", json=payload)
        timings.append(time.perf_counter() - started)
        assert resp.status == 401
        body = await resp.json()
        body.pop("requestId")
        bodies.append(body)
    assert bodies[0] == bodies[1]
    # Both paths run one argon2 verification; an unknown email must not answer instantly.
    assert min(timings) > 0.2 * max(timings)


async def test_login_is_case_insensitive_on_email(client: Client, register: Registrar) -> None:
    email = unique_email()
    await register(email=email)
    resp = await client.post("/api/auth/login", json={"email": email.upper(), "password": PASSWORD})
    assert resp.status == 200


async def test_me_requires_a_valid_access_token(client: Client, register: Registrar) -> None:
    session = await register()
    ok = await client.get("/api/auth/me", headers=auth(session))
    assert ok.status == 200
    assert (await ok.json())["id"] == session["user"]["id"]
    missing = await client.get("/api/auth/me")
    assert missing.status == 401
    assert missing.headers["WWW-Authenticate"] == "Bearer"


def _forge(payload: dict[str, Any], secret: str = DEV_JWT_SECRET, alg: str = "HS256") -> str:
    return jwt.encode(payload, secret, algorithm=alg)


def _claims(user_id: str, **over: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"sub": user_id, "jti": str(uuid.uuid4()), "type": "access", "iat": now, "exp": now + 60}
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def _hs512(payload: dict[str, Any]) -> str:
    """Signed with the right key but another HMAC: the algorithm is pinned, so this is refused too."""
    import hashlib
    import hmac

    def seg(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    signing_input = (
        f"{seg(json.dumps({'alg': 'HS512', 'typ': 'JWT'}).encode())}.{seg(json.dumps(payload).encode())}"
    )
    signature = hmac.new(DEV_JWT_SECRET.encode(), signing_input.encode(), hashlib.sha512).digest()
    return f"{signing_input}.{seg(signature)}"


def _alg_none(payload: dict[str, Any]) -> str:
    def seg(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{seg({'alg': 'none', 'typ': 'JWT'})}.{seg(payload)}."


@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(lambda uid: _forge(_claims(uid, exp=int(time.time()) - 60)), id="expired"),
        pytest.param(lambda uid: _forge(_claims(uid), secret="x" * 40), id="wrong-key"),
        pytest.param(lambda uid: _alg_none(_claims(uid)), id="alg-none"),
        pytest.param(
            lambda uid: _forge(_claims(uid, type="refresh"), secret=DEV_REFRESH_SECRET),
            id="refresh-as-access",
        ),
        pytest.param(lambda uid: _forge(_claims(uid, type="refresh")), id="wrong-type"),
        pytest.param(lambda uid: _forge(_claims(uid, jti=None)), id="missing-jti"),
        pytest.param(lambda uid: _forge(_claims(uid, exp=None)), id="missing-exp"),
        pytest.param(lambda uid: _forge(_claims(uid, iat=None)), id="missing-iat"),
        pytest.param(lambda uid: _forge(_claims(uid, sub=None)), id="missing-sub"),
        pytest.param(lambda uid: _hs512(_claims(uid)), id="other-hmac-alg-same-key"),
        pytest.param(lambda uid: _forge(_claims(uid, type=None)), id="missing-type"),
        pytest.param(lambda uid: _forge(_claims(uid, iat=int(time.time()) + 3600)), id="future-iat"),
        pytest.param(lambda uid: _forge(_claims(str(uuid.uuid4()))), id="unknown-user"),
        pytest.param(lambda uid: _forge(_claims("not-a-uuid")), id="sub-not-uuid"),
        pytest.param(lambda uid: "garbage", id="garbage"),
    ],
)
async def test_hostile_access_tokens_are_401(client: Client, register: Registrar, make_token: Any) -> None:
    session = await register()
    token = make_token(session["user"]["id"])
    resp = await client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 401


async def test_a_token_that_is_not_utf8_is_401(client: Client) -> None:
    # aiohttp reads header bytes that are not UTF-8 as lone surrogates, which PyJWT cannot encode.
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(b"GET /api/auth/me HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer a\xffb\r\n\r\n")
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()
    assert status_line.split()[1] == b"401", status_line


async def test_tampered_payload_is_401(client: Client, register: Registrar) -> None:
    session = await register()
    header, payload, signature = session["accessToken"].split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = str(uuid.uuid4())
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    resp = await client.get(
        "/api/auth/me", headers={"Authorization": f"Bearer {header}.{forged}.{signature}"}
    )
    assert resp.status == 401


async def test_access_token_is_not_a_refresh_token(client: Client, register: Registrar) -> None:
    session = await register()
    resp = await client.post("/api/auth/refresh", json={"refreshToken": session["accessToken"]})
    assert resp.status == 401


async def test_refresh_rotates_and_reuse_revokes_the_family(client: Client, register: Registrar) -> None:
    session = await register()
    first = await client.post("/api/auth/refresh", json={"refreshToken": session["refreshToken"]})
    assert first.status == 200
    rotated = await first.json()
    assert rotated["refreshToken"] != session["refreshToken"]
    me = await client.get("/api/auth/me", headers=auth(rotated))
    assert me.status == 200

    reuse = await client.post("/api/auth/refresh", json={"refreshToken": session["refreshToken"]})
    assert reuse.status == 401
    # The whole family is gone: even the newest token of it no longer refreshes.
    after = await client.post("/api/auth/refresh", json={"refreshToken": rotated["refreshToken"]})
    assert after.status == 401


async def test_concurrent_refresh_of_one_token_has_one_winner(client: Client, register: Registrar) -> None:
    import asyncio

    session = await register()
    results = await asyncio.gather(
        *(client.post("/api/auth/refresh", json={"refreshToken": session["refreshToken"]}) for _ in range(5))
    )
    assert sorted(r.status for r in results).count(200) == 1


async def test_logout_revokes_the_family(client: Client, register: Registrar) -> None:
    session = await register()
    resp = await client.post("/api/auth/logout", json={"refreshToken": session["refreshToken"]})
    assert resp.status == 204
    again = await client.post("/api/auth/refresh", json={"refreshToken": session["refreshToken"]})
    assert again.status == 401
    bad = await client.post("/api/auth/logout", json={"refreshToken": "nope"})
    assert bad.status == 401


async def test_login_rate_limit_per_email_gives_429_with_retry_after(make_client: Any) -> None:
    client = await make_client(auth_rate_per_email=3)
    email = unique_email()
    statuses = []
    for _ in range(5):
        resp = await client.post("/api/auth/login", json={"email": email, "password": "whatever1"})
        statuses.append(resp.status)
    assert statuses[:3] == [401, 401, 401]
    assert statuses[3:] == [429, 429]
    assert 1 <= int(resp.headers["Retry-After"]) <= 61
    # Another email from the same address is not blocked by that email's counter.
    other = await client.post("/api/auth/login", json={"email": unique_email(), "password": "whatever1"})
    assert other.status == 401


async def test_register_rate_limit_per_ip(make_client: Any) -> None:
    client = await make_client(auth_rate_per_ip=2)
    statuses = []
    for _ in range(3):
        resp = await client.post(
            "/api/auth/register", json={"email": unique_email(), "password": PASSWORD, "name": "x"}
        )
        statuses.append(resp.status)
    assert statuses == [201, 201, 429]
    assert "Retry-After" in resp.headers


async def test_login_rate_limit_per_ip(make_client: Any) -> None:
    client = await make_client(auth_rate_per_ip=3)
    statuses = []
    for _ in range(5):  # a new email each time: only the address is shared
        resp = await client.post("/api/auth/login", json={"email": unique_email(), "password": "whatever1"})
        statuses.append(resp.status)
    assert statuses == [401, 401, 401, 429, 429]
    assert 1 <= int(resp.headers["Retry-After"]) <= 61
    assert (await resp.json())["retryAfter"] == int(resp.headers["Retry-After"])


async def test_register_rate_limit_per_email(make_client: Any) -> None:
    client = await make_client(auth_rate_per_email=2)
    email = unique_email()
    statuses = []
    for case in (email, email.upper(), email):  # the same address in any case
        resp = await client.post(
            "/api/auth/register", json={"email": case, "password": PASSWORD, "name": "x"}
        )
        statuses.append(resp.status)
    assert statuses == [201, 409, 429]
    assert "Retry-After" in resp.headers
    # The address is not blocked for other emails.
    other = await client.post(
        "/api/auth/register", json={"email": unique_email(), "password": PASSWORD, "name": "x"}
    )
    assert other.status == 201


async def test_password_hashes_are_argon2id(client: Client, register: Registrar) -> None:
    from server.web.keys import DB

    session = await register(password=PASSWORD)
    async with client.app[DB].connect() as conn:
        stored = await conn.fetchval(
            "SELECT password_hash FROM users WHERE id = $1", uuid.UUID(session["user"]["id"])
        )
    assert stored.startswith("$argon2id$"), stored[:12]
    assert PASSWORD not in stored


async def test_a_forged_forwarded_for_does_not_escape_the_per_ip_login_limit(make_client: Any) -> None:
    # Behind nginx, X-Forwarded-For is "<whatever the client sent>, <the address nginx saw>".
    client = await make_client(trust_proxy=True, auth_rate_per_ip=3)
    statuses = []
    for i in range(5):
        forged = {"X-Forwarded-For": f"10.9.8.{i}, 203.0.113.7", "X-Real-IP": f"10.9.7.{i}"}
        resp = await client.post(
            "/api/auth/login", json={"email": unique_email(), "password": "whatever1"}, headers=forged
        )
        statuses.append(resp.status)
    assert statuses == [401, 401, 401, 429, 429]
    # Another client behind the same proxy has its own bucket.
    other = await client.post(
        "/api/auth/login",
        json={"email": unique_email(), "password": "whatever1"},
        headers={"X-Forwarded-For": "10.9.8.0, 203.0.113.8"},
    )
    assert other.status == 401


def test_a_cached_access_token_is_still_refused_once_expired() -> None:
    """Verified claims are cached per token (actors/services/security.py), but `exp` is checked on every
    use."""
    now = [time.time()]
    codec = TokenCodec(
        access_secret=DEV_JWT_SECRET,
        refresh_secret=DEV_REFRESH_SECRET,
        access_ttl=60,
        refresh_ttl=600,
        clock=lambda: now[0],
    )
    token, claims = codec.issue("access", uuid.uuid4())
    assert codec.decode(token, "access") == claims
    now[0] += 30
    assert codec.decode(token, "access") == claims  # from the cache
    now[0] = claims.exp + 6  # past exp and the 5 s leeway
    with pytest.raises(Unauthorized, match="expired"):
        codec.decode(token, "access")
    assert token not in codec._verified  # dropped: a later use goes through PyJWT's own check again
    with pytest.raises(Unauthorized):  # a cached access token is no refresh token
        codec.decode(token, "refresh")


def test_the_token_cache_is_bounded() -> None:
    codec = TokenCodec(
        access_secret=DEV_JWT_SECRET,
        refresh_secret=DEV_REFRESH_SECRET,
        access_ttl=60,
        refresh_ttl=600,
        cache_size=3,
    )
    tokens = [codec.issue("access", uuid.uuid4())[0] for _ in range(5)]
    for token in tokens:
        codec.decode(token, "access")
    assert len(codec._verified) == 3 and tokens[0] not in codec._verified


async def test_suspension_refuses_a_token_already_verified_and_cached(
    client: Client, register: Registrar, admin: dict[str, Any]
) -> None:
    session = await register()
    assert (await client.get("/api/auth/me", headers=auth(session))).status == 200  # claims cached
    resp = await client.patch(
        f"/api/users/{session['user']['id']}", json={"status": "suspended"}, headers=auth(admin)
    )
    assert resp.status == 200
    assert (await client.get("/api/auth/me", headers=auth(session))).status == 401
