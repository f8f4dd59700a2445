"""App keys: typed `web.AppKey`s only; a string key is a test failure outside aiohttp-apigami."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.web_exceptions import NotAppKeyWarning

from tests.conftest import Client


def test_a_string_app_key_in_our_code_fails_the_suite() -> None:
    # pyproject's filterwarnings makes NotAppKeyWarning an error everywhere but in aiohttp_apigami.
    app = web.Application()
    with pytest.raises(NotAppKeyWarning):
        app["a string key"] = 1


async def test_apigamis_string_keys_are_excused_by_module(client: Client) -> None:
    # The app's start-up ran apigami, which stores string keys; the filter excuses that module only.
    assert any(isinstance(key, str) for key in client.app)
