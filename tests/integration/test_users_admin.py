"""Admin-only user administration."""

from __future__ import annotations

import uuid
from typing import Any

from tests.conftest import Client, Registrar, auth


async def test_non_admin_gets_403_on_admin_routes(client: Client, register: Registrar) -> None:
    session = await register()
    listing = await client.get("/api/users", headers=auth(session))
    assert listing.status == 403
    patch = await client.patch(
        f"/api/users/{session['user']['id']}", json={"role": "admin"}, headers=auth(session)
    )
    assert patch.status == 403
    me = await client.get("/api/auth/me", headers=auth(session))
    assert (await me.json())["role"] == "user"


async def test_non_admin_gets_403_whatever_the_input(client: Client, register: Registrar) -> None:
    session = await register()
    headers = auth(session)
    uid = session["user"]["id"]
    for query in ("page=0", "limit=abc", "bogus=1"):
        assert (await client.get(f"/api/users?{query}", headers=headers)).status == 403, query
    for path, body in (
        ("/api/users/nope", {"role": "admin"}),
        (f"/api/users/{uid}", {}),
        (f"/api/users/{uid}", {"role": "root"}),
        (f"/api/users/{uid}", [1]),
    ):
        resp = await client.patch(path, json=body, headers=headers)
        assert resp.status == 403, (path, body)
    malformed = await client.patch(
        f"/api/users/{uid}", data=b"{", headers={**headers, "Content-Type": "application/json"}
    )
    assert malformed.status == 403
    for path in (f"/api/booking/{uuid.uuid4()}/history?page=0", "/api/booking/nope/history"):
        assert (await client.get(path, headers=headers)).status == 403, path


async def test_history_of_an_unknown_booking_is_404(client: Client, admin: dict[str, Any]) -> None:
    for bad in (str(uuid.uuid4()), "nope", admin["user"]["id"]):
        resp = await client.get(f"/api/booking/{bad}/history", headers=auth(admin))
        assert resp.status == 404, bad
        assert resp.content_type == "application/problem+json"


async def test_anonymous_gets_401_on_admin_routes(client: Client) -> None:
    assert (await client.get("/api/users")).status == 401


async def test_admin_lists_users_with_correct_meta(
    client: Client, register: Registrar, admin: dict[str, Any]
) -> None:
    for _ in range(3):
        await register()
    resp = await client.get("/api/users?page=1&limit=2", headers=auth(admin))
    assert resp.status == 200
    body = await resp.json()
    meta = body["meta"]
    assert len(body["data"]) == 2
    assert meta["limit"] == 2
    assert meta["totalPages"] == -(-meta["total"] // 2)
    last = await client.get(f"/api/users?page={meta['totalPages']}&limit=2", headers=auth(admin))
    assert len((await last.json())["data"]) == meta["total"] - 2 * (meta["totalPages"] - 1)


async def test_admin_page_and_limit_bounds(client: Client, admin: dict[str, Any]) -> None:
    for q in ("page=0", "limit=10000", "limit=abc", "page=-1", "extra=1"):
        resp = await client.get(f"/api/users?{q}", headers=auth(admin))
        assert resp.status == 400, q


async def test_admin_suspends_a_user_and_their_tokens_stop_working(
    client: Client, register: Registrar, admin: dict[str, Any]
) -> None:
    victim = await register()
    resp = await client.patch(
        f"/api/users/{victim['user']['id']}", json={"status": "suspended"}, headers=auth(admin)
    )
    assert resp.status == 200
    assert (await resp.json())["status"] == "suspended"
    assert (await client.get("/api/auth/me", headers=auth(victim))).status == 401
    refresh = await client.post("/api/auth/refresh", json={"refreshToken": victim["refreshToken"]})
    assert refresh.status == 401


async def test_admin_patch_validation(client: Client, admin: dict[str, Any], register: Registrar) -> None:
    user = await register()
    uid = user["user"]["id"]
    assert (await client.patch(f"/api/users/{uid}", json={"role": "root"}, headers=auth(admin))).status == 400
    assert (await client.patch(f"/api/users/{uid}", json={}, headers=auth(admin))).status == 400
    assert (
        await client.patch("/api/users/not-a-uuid", json={"role": "user"}, headers=auth(admin))
    ).status == 404
    missing = "00000000-0000-4000-8000-000000000000"
    assert (
        await client.patch(f"/api/users/{missing}", json={"role": "user"}, headers=auth(admin))
    ).status == 404
    own = admin["user"]["id"]
    assert (await client.patch(f"/api/users/{own}", json={"role": "user"}, headers=auth(admin))).status == 409


async def test_admin_promotes_a_user(client: Client, admin: dict[str, Any], register: Registrar) -> None:
    user = await register()
    resp = await client.patch(f"/api/users/{user['user']['id']}", json={"role": "admin"}, headers=auth(admin))
    assert resp.status == 200
    listing = await client.get("/api/users", headers=auth(user))
    assert listing.status == 200


async def test_concurrent_ensure_admin_for_one_new_email_makes_one_admin(client: Client) -> None:
    import asyncio

    from server.web.keys import AUTH
    from tests.support import unique_email

    email = unique_email("race-admin")
    results = await asyncio.gather(
        *(client.app[AUTH].ensure_admin(email=email, password="admin password 123") for _ in range(4))
    )
    assert len({u.id for u in results}) == 1
    assert all(u.role == "admin" for u in results)
