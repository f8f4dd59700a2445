"""Marshmallow schemas of accounts: register, log in, refresh, the user and its changes (handlers/auth.py,
handlers/users.py)."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from handlers.schemas import PageMeta, Strict, _desc

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
    time_zone = fields.String(
        required=True,
        data_key="timeZone",
        metadata=_desc("IANA name; the default zone of availability labels (UTC until set)"),
    )
    created_at = fields.DateTime(required=True, data_key="createdAt")
    updated_at = fields.DateTime(required=True, data_key="updatedAt")


class MePatch(Strict):
    name = fields.String(validate=validate.Length(min=1, max=100))
    time_zone = fields.String(
        data_key="timeZone",
        validate=validate.Length(min=1, max=64),
        metadata=_desc("IANA time zone name (zoneinfo), e.g. Europe/Berlin"),
    )


class SessionOut(Schema):
    user = fields.Nested(UserOut, required=True)
    access_token = fields.String(required=True, data_key="accessToken")
    refresh_token = fields.String(required=True, data_key="refreshToken")
    token_type = fields.String(required=True, metadata=_desc("Always `Bearer`"), data_key="tokenType")
    expires_in = fields.Integer(
        required=True, metadata=_desc("Access-token lifetime in seconds"), data_key="expiresIn"
    )


# --- users (admin) ------------------------------------------------------------------------------


class UserPatch(Strict):
    role = fields.String(validate=validate.OneOf(["user", "admin"]))
    status = fields.String(validate=validate.OneOf(["active", "suspended"]))


class UserPage(Schema):
    data = fields.List(fields.Nested(UserOut), required=True)
    meta = fields.Nested(PageMeta, required=True)
