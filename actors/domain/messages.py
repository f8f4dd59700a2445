"""The messages the owner's actor takes (a booking's, a series'), and its replies: typed, frozen, no I/O."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# --- a booking ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreateBooking:
    actor_id: uuid.UUID
    owner_seq: int
    fields: Mapping[str, Any]
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class UpdateBooking:
    actor_id: uuid.UUID
    booking_id: uuid.UUID
    changes: Mapping[str, Any]
    if_match: int | None = None
    # The resource whose actor writes this change (the booking's, or the one it moves to); None: personal.
    resource_id: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class DeleteBooking:
    actor_id: uuid.UUID
    booking_id: uuid.UUID
    if_match: int | None = None


@dataclass(frozen=True, slots=True)
class Created:
    booking: dict[str, Any]
    replayed: bool = False


# --- a series -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreateSeries:
    actor_id: uuid.UUID
    owner_seq: int
    fields: Mapping[str, Any]  # the booking fields of the first occurrence, with `recurrence`
    default_zone: str  # the owner's own zone, when the recurrence names none
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class ChangeSeries:
    actor_id: uuid.UUID
    booking_id: uuid.UUID  # the occurrence the change was asked on
    changes: Mapping[str, Any]
    scope: str  # following | all
    if_match: int | None = None  # the series' version


@dataclass(frozen=True, slots=True)
class DeleteSeries:
    actor_id: uuid.UUID
    booking_id: uuid.UUID
    scope: str  # following | all
    if_match: int | None = None


@dataclass(frozen=True, slots=True)
class SeriesWritten:
    view: dict[str, Any]
    replayed: bool = False


# --- a resource booking: the owner's message, to the resource's actor ------------------------------------


@dataclass(frozen=True, slots=True)
class BookResource:
    owner_id: uuid.UUID
    create: CreateBooking


@dataclass(frozen=True, slots=True)
class ChangeResourceBooking:
    owner_id: uuid.UUID
    update: UpdateBooking
