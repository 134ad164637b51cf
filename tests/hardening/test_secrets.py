"""Secrets, cookies and personal data never reach a repr or the logs."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from tests.core.harness import BROWSER_UA, Client
from trackmw import Tracker

KEY = "very-secret-signing-key-0001"
OLD_KEY = "very-secret-signing-key-0000"
TOKEN = "very-secret-dashboard-token-01"
PASSWORD = "very-secret-db-password"
# Port 1 on loopback: nothing listens, so every write fails and is logged.
DOWN_STORE = f"redis://:{PASSWORD}@127.0.0.1:1/0"
SECRETS = (KEY, OLD_KEY, TOKEN, PASSWORD)


def test_reprs_mask_every_secret() -> None:
    tracker = Tracker(secret_keys=[KEY, OLD_KEY], store=DOWN_STORE, dashboard_token=TOKEN)
    try:
        texts = [repr(tracker.settings), str(tracker.settings), repr(tracker)]
        for text in texts:
            for secret in SECRETS:
                assert secret not in text, text
    finally:
        tracker.close()  # nothing buffered: the store is never opened


def test_logs_hold_no_secret_cookie_id_address_or_query(
    kind: str, make_tracker: Callable[..., Tracker], caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("redis")
    caplog.set_level(logging.DEBUG)
    tracker = make_tracker(
        secret_keys=[KEY, OLD_KEY], store=DOWN_STORE, dashboard_token=TOKEN, flush_interval=3600
    )
    client = Client(kind, tracker)
    client.get("/?do=login&arg=user-secret-42")
    cookie = client.jar["trackmw_id"]
    visitor_id = client.get("/").json["id"]
    assert client.get("/_trackmw/pixel.gif?p=/private-page%3Fq%3Dsecret-query").status == 200
    assert tracker.flush() is False  # the store is down: logged
    assert client.get("/_trackmw/me").status == 503  # logged
    assert client.request("DELETE", "/_trackmw/me").status == 503  # logged
    trackmw_logs = "\n".join(
        r.getMessage() + (str(r.exc_info[1]) if r.exc_info else "")
        for r in caplog.records
        if r.name == "trackmw"
    )
    assert "store" in trackmw_logs  # the failures were logged
    everything = caplog.text
    for private in (
        *SECRETS,
        cookie,
        visitor_id,
        "user-secret-42",
        "203.0.113.9",
        BROWSER_UA,
        "secret-query",
        "private-page",
    ):
        assert private not in everything, private
    tracker.pipeline._buffer.clear()  # the store never comes back: let close() finish
