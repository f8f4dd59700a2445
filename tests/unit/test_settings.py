"""Settings: production refuses missing, default or short secrets, naming the variable (unit)."""

from __future__ import annotations

import pytest

from server.base.settings import DEV_JWT_SECRET, Settings, SettingsError

GOOD_A = "a" * 48
GOOD_B = "b" * 48
PROD = {
    "NODE_ENV": "production",
    "DATABASE_URL": "postgresql://u:p@db:5432/booking",
    "REDIS_URL": "redis://redis:6379/0",
    "JWT_SECRET_KEY": GOOD_A,
    "REFRESH_JWT_SECRET_KEY": GOOD_B,
}


def test_production_accepts_strong_distinct_secrets() -> None:
    settings = Settings.from_env(PROD)
    assert settings.production
    assert settings.log_json
    assert settings.sqlalchemy_url.startswith("postgresql+asyncpg://")


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"JWT_SECRET_KEY": ""}, "JWT_SECRET_KEY"),
        ({"REFRESH_JWT_SECRET_KEY": ""}, "REFRESH_JWT_SECRET_KEY"),
        ({"JWT_SECRET_KEY": "short-secret"}, "JWT_SECRET_KEY"),
        ({"JWT_SECRET_KEY": DEV_JWT_SECRET}, "JWT_SECRET_KEY"),
        (
            {"REFRESH_JWT_SECRET_KEY": "your-refresh-jwt-secret-key-0123456789abcdef"},
            "REFRESH_JWT_SECRET_KEY",
        ),
        ({"REFRESH_JWT_SECRET_KEY": GOOD_A}, "REFRESH_JWT_SECRET_KEY"),
        ({"DATABASE_URL": ""}, "DATABASE_URL"),
        ({"REDIS_URL": ""}, "REDIS_URL"),
    ],
)
def test_production_refuses_weak_configuration(override: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env({**PROD, **override})


def test_app_env_is_an_alias_for_node_env() -> None:
    env = {k: v for k, v in PROD.items() if k != "NODE_ENV"} | {"APP_ENV": "production"}
    assert Settings.from_env(env).production


def test_development_has_working_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.environment == "development"
    assert settings.port == 5000
    assert settings.job_port == 5001


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"PORT": "http"}, "PORT"),
        ({"PORT": "70000"}, "PORT"),
        ({"NODE_ENV": "staging"}, "NODE_ENV"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"TRUST_PROXY": "maybe"}, "TRUST_PROXY"),
    ],
)
def test_invalid_values_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(env)


def test_serve_refuses_to_start_in_production_with_default_secret() -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, **PROD, "JWT_SECRET_KEY": "too-short"}
    proc = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve"], env=env, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode != 0
    assert "JWT_SECRET_KEY" in proc.stderr
