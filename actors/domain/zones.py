"""IANA time zone names: the one check every `timeZone` a client sends goes through (resources, users,
working hours, availability labels)."""

from __future__ import annotations

import zoneinfo
from functools import cache
from zoneinfo import ZoneInfo

from actors.domain.errors import FieldError, ValidationFailed

ZONE_HINT = "must be an IANA time zone name, e.g. Europe/Paris"


@cache
def known_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def check_zone(name: str, field: str = "timeZone") -> ZoneInfo:
    """The zone named `name`; 400 naming `field` for anything `zoneinfo.available_timezones()` lacks
    (only those names: ZoneInfo itself would also take a path-like key such as "posix/Europe/Paris")."""
    if name not in known_zones():
        raise ValidationFailed(f"unknown time zone {name[:64]!r}", [FieldError(field, ZONE_HINT)])
    return ZoneInfo(name)
