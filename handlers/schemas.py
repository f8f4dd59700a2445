"""Marshmallow schemas: request validation (REST and WebSocket) and the OpenAPI document."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, fields, validate


class Strict(Schema):
    class Meta:
        unknown = RAISE


def _desc(text: str, **extra: Any) -> dict[str, Any]:
    return {"description": text, **extra}


# --- auth ---------------------------------------------------------------------------------------


class RegisterRequest(Strict):
    email = fields.Email(required=True, validate=validate.Length(max=254), metadata=_desc("Unique, any case"))
    password = fields.String(
        required=True, validate=validate.Length(min=8, max=128), load_only=True, metadata=_desc("8-128 chars")
    )
    name = fields.String(required=True, validate=validate.Length(min=1, max=100))


class LoginRequest(Strict):
    email = fields.String(required=True, validate=validate.Length(min=1, max=254))
    password = fields.String(required=True, validate=validate.Length(min=1, max=128), load_only=True)


class RefreshRequest(Strict):
    refresh_token = fields.String(
        required=True, validate=validate.Length(min=1, max=4096), data_key="refreshToken"
    )


class UserOut(Schema):
    id = fields.UUID(required=True)
    email = fields.String(required=True)
    name = fields.String(required=True)
    role = fields.String(required=True, validate=validate.OneOf(["user", "admin"]))
    status = fields.String(required=True, validate=validate.OneOf(["active", "suspended"]))
    created_at = fields.DateTime(required=True, data_key="createdAt")
    updated_at = fields.DateTime(required=True, data_key="updatedAt")


class SessionOut(Schema):
    user = fields.Nested(UserOut, required=True)
    access_token = fields.String(required=True, data_key="accessToken")
    refresh_token = fields.String(required=True, data_key="refreshToken")
    token_type = fields.String(required=True, metadata=_desc("Always `Bearer`"), data_key="tokenType")
    expires_in = fields.Integer(
        required=True, metadata=_desc("Access-token lifetime in seconds"), data_key="expiresIn"
    )


# --- users (admin) ------------------------------------------------------------------------------


class PageQuery(Strict):
    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=1_000_000))
    limit = fields.Integer(load_default=10, validate=validate.Range(min=1, max=100))


class UserPatch(Strict):
    role = fields.String(validate=validate.OneOf(["user", "admin"]))
    status = fields.String(validate=validate.OneOf(["active", "suspended"]))


class PageMeta(Schema):
    total = fields.Integer(required=True)
    page = fields.Integer(required=True)
    limit = fields.Integer(required=True)
    total_pages = fields.Integer(required=True, data_key="totalPages")


class UserPage(Schema):
    data = fields.List(fields.Nested(UserOut), required=True)
    meta = fields.Nested(PageMeta, required=True)


# --- errors & operations ------------------------------------------------------------------------


class FieldErrorOut(Schema):
    field = fields.String(required=True)
    message = fields.String(required=True)


class Problem(Schema):
    type = fields.String(required=True)
    title = fields.String(required=True)
    status = fields.Integer(required=True)
    detail = fields.String(required=True)
    request_id = fields.String(required=True, data_key="requestId")
    errors = fields.List(fields.Nested(FieldErrorOut))
    conflicting_id = fields.UUID(
        metadata=_desc("On 409 overlap: the booking in the way"), data_key="conflictingId"
    )
    retry_after = fields.Integer(metadata=_desc("On 429: seconds to wait"), data_key="retryAfter")


class HealthChecks(Schema):
    database = fields.String(required=True)
    redis = fields.String(required=True)


class HealthOut(Schema):
    status = fields.String(required=True, validate=validate.OneOf(["ok", "degraded"]))
    checks = fields.Nested(HealthChecks, required=True)
    version = fields.String(required=True)
