"""The request path's shortcuts give what the general path gives."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_plus

import pytest
from itsdangerous import URLSafeTimedSerializer

from trackmw.pixel import _unquote_plus
from trackmw.signing import CookieSigner

KEY = "test-secret-key-0123456789"


@pytest.mark.parametrize(
    "payload",
    [
        ["abc"],
        ['a"b\\c\n\x01é€', "user-7"],
        ["0123456789abcdefghijkl"],
        {"c": 1, "v": "1"},
        {"long": "x" * 200},
    ],
)
def test_signed_values_are_plain_itsdangerous_tokens(payload: Any) -> None:
    token = CookieSigner([KEY], "trackmw.visitor", 3600).dumps(payload)
    assert URLSafeTimedSerializer(KEY, salt="trackmw.visitor").loads(token) == payload


def test_itsdangerous_tokens_load() -> None:
    token = URLSafeTimedSerializer(KEY, salt="trackmw.visitor").dumps({"big": "y" * 300})
    loaded = CookieSigner([KEY], "trackmw.visitor", 3600).loads(token)
    assert loaded is not None and loaded.payload == {"big": "y" * 300}


@pytest.mark.parametrize(
    "text", ["", "a+b", "%2Fdocs%3Fx%3D1", "%ZZ%4", "%C3%A9%E2%82%AC%FF", "a\\x41%41", "é%41"]
)
def test_pixel_decoding_is_unquote_plus(text: str) -> None:
    assert _unquote_plus(text) == unquote_plus(text, errors="replace")
