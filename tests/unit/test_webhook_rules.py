"""Webhooks, the pure part: the retry schedule, signatures (checked with the standardwebhooks library's
own verify), the message body and the address rules behind the SSRF guard. No I/O beyond name lookup."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from actors.domain import webhooks as rules
from actors.services.webhooks import check_url
from storage.bookings import Booking

# --- retries ---------------------------------------------------------------------------------------------


def test_the_schedule_grows_fourfold_from_the_base_to_about_a_day() -> None:
    nominal = [rules.nominal_delay(n, base=5) for n in range(1, rules.RETRIES + 1)]
    assert nominal == [5, 20, 80, 320, 1280, 5120, 20480, 81920]
    assert nominal[-1] <= 24 * 3600
    assert rules.nominal_delay(20, base=5) == 24 * 3600  # capped


def test_each_delay_is_jittered_within_twenty_percent_and_the_schedule_ends() -> None:
    rng = random.Random(7)
    for retry in range(1, rules.RETRIES + 1):
        nominal = rules.nominal_delay(retry, base=5)
        draws = [rules.retry_delay(retry, base=5, rng=rng) for _ in range(200)]
        assert all(d is not None and 0.8 * nominal <= d <= 1.2 * nominal for d in draws)
        assert len({round(d or 0, 6) for d in draws}) > 100  # really jittered
    assert rules.retry_delay(rules.RETRIES + 1, base=5) is None


def test_retries_count_from_one() -> None:
    with pytest.raises(ValueError, match="from 1"):
        rules.nominal_delay(0, base=5)


# --- signatures ------------------------------------------------------------------------------------------


def test_headers_verify_with_the_standardwebhooks_library() -> None:
    secret = rules.new_secret()
    message = uuid.uuid4()
    now = datetime.now(UTC)
    body = rules.body("webhook.test", now, {"message": "hello"})
    headers = rules.headers([secret], message, now, body)
    assert headers["webhook-id"] == f"msg_{message.hex}"
    assert headers["webhook-timestamp"] == str(int(now.timestamp()))
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(body, headers) == {
        "type": "webhook.test",
        "timestamp": rules.iso(now),
        "data": {"message": "hello"},
    }


def test_a_changed_body_id_or_timestamp_fails_verification() -> None:
    secret = rules.new_secret()
    now = datetime.now(UTC)
    body = rules.body("webhook.test", now, {"n": 1})
    headers = rules.headers([secret], uuid.uuid4(), now, body)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"1", b"2"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, {**headers, "webhook-id": "msg_other"})
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, {**headers, "webhook-timestamp": str(int(now.timestamp()) - 1)})
    with pytest.raises(WebhookVerificationError):
        Webhook(rules.new_secret()).verify(body, headers)


def test_during_a_rotation_both_secrets_sign() -> None:
    new, old = rules.new_secret(), rules.new_secret()
    now = datetime.now(UTC)
    body = rules.body("webhook.test", now, {})
    headers = rules.headers([new, old], uuid.uuid4(), now, body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(new).verify(body, headers)
    Webhook(old).verify(body, headers)


def test_secrets_are_whsec_with_32_random_bytes() -> None:
    import base64

    made = {rules.new_secret() for _ in range(50)}
    assert len(made) == 50
    for secret in made:
        assert secret.startswith("whsec_")
        assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32


def test_the_body_renders_a_booking_snapshot_as_the_api_view() -> None:
    start = datetime(2031, 1, 2, 10, 0, tzinfo=UTC)
    booking = Booking(
        id=uuid.uuid4(),
        user_id=uuid.uuid4(),
        user_seq=3,
        title="Sync",
        description=None,
        location="Room 1",
        notes=None,
        start_time=start,
        end_time=start + timedelta(hours=1),
        status="scheduled",
        reminder_minutes_before=10,
        reminder_sent_at=None,
        version=2,
        created_at=start - timedelta(days=1),
        updated_at=start - timedelta(hours=1),
    )
    import json

    created = datetime(2030, 5, 5, 12, 0, 0, 123456, tzinfo=UTC)
    sent = json.loads(rules.body("booking.updated", created, {"booking": booking.snapshot()}))
    assert sent["type"] == "booking.updated"
    assert sent["timestamp"] == "2030-05-05T12:00:00.123456Z"
    assert sent["data"]["booking"] == {
        "id": str(booking.id),
        "userId": str(booking.user_id),
        "title": "Sync",
        "description": None,
        "location": "Room 1",
        "notes": None,
        "startTime": "2031-01-02T10:00:00Z",
        "endTime": "2031-01-02T11:00:00Z",
        "status": "scheduled",
        "reminderMinutesBefore": 10,
        "reminderSentAt": None,
        "version": 2,
        "createdAt": "2031-01-01T10:00:00Z",
        "updatedAt": "2031-01-02T09:00:00Z",
        "resourceId": None,
        "attendees": [],
        "seriesId": None,
        "occurrenceStart": None,
    }
    # A snapshot stored before resources existed (no resource or attendee keys) renders the same.
    old = {
        k: v
        for k, v in booking.snapshot().items()
        if k
        not in ("resource_id", "attendees", "resource_seq", "busy_start", "busy_end", "resource_exclusive")
    }
    assert json.loads(rules.body("booking.updated", created, {"booking": old}))["data"] == sent["data"]


def test_cancelling_is_its_own_event_every_other_change_an_update() -> None:
    assert rules.update_event({"status": "cancelled"}) == "booking.cancelled"
    assert rules.update_event({"status": "cancelled", "title": "x"}) == "booking.cancelled"
    assert rules.update_event({"status": "completed"}) == "booking.updated"
    assert rules.update_event({"title": "x"}) == "booking.updated"


# --- addresses and URLs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("fd00:ec2::254", "private"),
        ("100.64.0.1", ""),
        ("0.0.0.0", "unspecified"),  # noqa: S104 (an address under test, not a bind)
        ("::", "unspecified"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "link-local"),
        ("::ffff:10.1.2.3", "private"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", ""),
        ("255.255.255.255", ""),
        ("not an address", "not an IP"),
    ],
)
def test_non_public_addresses_are_refused(address: str, why: str) -> None:
    """`why`: a word of the reason (empty: any reason; Python counts reserved ranges as private)."""
    problem = rules.address_problem(address)
    assert problem is not None and why in problem


@pytest.mark.parametrize("address", ["93.184.215.14", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert rules.address_problem(address) is None


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://example.com/", "http(s)"),
        ("http://example.com/", "https"),
        ("https:///path", "host"),
        ("https://user:pw@example.com/", "credentials"),
        ("https://example.com/#frag", "fragment"),
        ("https://example.com:99999/", "valid URL"),
        ("https://exa mple.com/", "whitespace"),
        ("https://example.com/" + "a" * 2048, "2048"),
        ("not-a-url", "http(s)"),
    ],
)
def test_malformed_or_insecure_urls_are_refused_in_production(url: str, why: str) -> None:
    with pytest.raises(rules.UrlRefused, match=why.replace("(", r"\(").replace(")", r"\)")):
        rules.parse_url(url, production=True)


def test_development_takes_http() -> None:
    assert rules.parse_url("http://127.0.0.1:8080/hook", production=False) == rules.Target(
        "http", "127.0.0.1", 8080
    )


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/",
        "https://[::1]/",
        "https://169.254.169.254/latest/meta-data/",
        "https://10.0.0.1/",
        "https://[::ffff:127.0.0.1]/",
        "https://localhost/",
        "https://2130706433/",  # 127.0.0.1 as one number
    ],
)
async def test_check_url_refuses_what_is_or_resolves_to_a_private_address(url: str) -> None:
    with pytest.raises(rules.UrlRefused):
        await check_url(url, production=True)


async def test_check_url_refuses_a_name_that_does_not_resolve() -> None:
    with pytest.raises(rules.UrlRefused, match="does not resolve"):
        await check_url("https://no-such-host.invalid/", production=True)


async def test_check_url_lets_loopback_through_outside_production() -> None:
    await check_url("http://127.0.0.1:9/", production=False)
    await check_url("http://localhost:9/", production=False)
