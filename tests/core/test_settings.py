"""Every setting is validated at construction, with a ValueError naming it."""

from __future__ import annotations

from typing import Any

import pytest

from trackmw import ConfigurationError, Tracker

from ..conftest import SECRET

GOOD = {"secret_keys": [SECRET], "store": "memory://"}


@pytest.mark.parametrize(
    ("override", "setting"),
    [
        ({"secret_keys": []}, "secret_keys"),
        ({"secret_keys": ["short"]}, "secret_keys"),
        ({"secret_keys": [SECRET, 123]}, "secret_keys"),
        ({"store": "mysql://x"}, "store"),
        ({"store": "trackmw.db"}, "store"),
        ({"store": "sqlite://relative-without-slash"}, "store"),
        ({"cookie_domain": "com"}, "cookie_domain"),
        ({"cookie_domain": "co.uk"}, "cookie_domain"),
        ({"cookie_domain": "github.io"}, "cookie_domain"),
        ({"cookie_domain": "example.com; path=/"}, "cookie_domain"),
        ({"cookie_domain": "exa mple.com"}, "cookie_domain"),
        ({"cookie_domain": "example.com,evil.com"}, "cookie_domain"),
        ({"cookie_domain": "exam\x01ple.com"}, "cookie_domain"),
        ({"cookie_domain": "-bad-.com"}, "cookie_domain"),
        ({"cookie_domain": "localhost"}, "cookie_domain"),
        ({"consent": "maybe"}, "consent"),
        ({"count_rejected": "some"}, "count_rejected"),
        ({"cookie_samesite": "None"}, "cookie_samesite"),
        ({"cookie_samesite": "lax"}, "cookie_samesite"),
        ({"policy_version": ""}, "policy_version"),
        ({"dashboard_token": "short"}, "dashboard_token"),
        ({"prefix": "_trackmw"}, "prefix"),
        ({"exclude_paths": ("static",)}, "exclude_paths"),
        ({"buffer_size": 0}, "buffer_size"),
        ({"batch_size": -1}, "batch_size"),
        ({"flush_interval": 0}, "flush_interval"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"retention_days": 0}, "retention_days"),
        ({"redis_uniques": "approx"}, "redis_uniques"),
        ({"pixel_rate_limit": -1}, "pixel_rate_limit"),
        ({"authorize": "yes"}, "authorize"),
    ],
)
def test_bad_settings_fail_at_construction(override: dict[str, Any], setting: str) -> None:
    with pytest.raises(ValueError, match=setting) as info:
        Tracker(**{**GOOD, **override})
    assert isinstance(info.value, ConfigurationError)
    assert info.value.setting == setting


def test_unknown_keyword_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        Tracker(**GOOD, no_such_setting=1)


def test_settings_are_frozen() -> None:
    tracker = Tracker(**GOOD)
    with pytest.raises(AttributeError):
        tracker.settings.consent = "opt-in"  # type: ignore[misc]


def test_secrets_are_not_in_reprs() -> None:
    tracker = Tracker(**GOOD, dashboard_token="dashboard-token-0123456789")
    text = repr(tracker.settings) + repr(tracker)
    assert "dashboard-token" not in text


def test_cookie_domain_is_normalized() -> None:
    assert Tracker(**GOOD, cookie_domain=".Example.COM").settings.cookie_domain == "example.com"


def test_from_env_reads_every_kind_of_setting() -> None:
    env = {
        "TRACKMW_SECRET_KEYS": f"{SECRET}, older-key-0123456789abc",
        "TRACKMW_STORE": "memory://",
        "TRACKMW_COOKIE_DOMAIN": "example.com",
        "TRACKMW_CONSENT": "opt-in",
        "TRACKMW_HONOR_DNT": "false",
        "TRACKMW_EXCLUDE_PATHS": "/static,/assets",
        "TRACKMW_BUFFER_SIZE": "500",
        "TRACKMW_FLUSH_INTERVAL": "0.5",
        "TRACKMW_COOKIE_SECURE": "auto",
        "TRACKMW_TIMEZONE": "Europe/Paris",
    }
    s = Tracker.from_env(env).settings
    assert s.secret_keys == (SECRET, "older-key-0123456789abc")
    assert (s.cookie_domain, s.consent, s.honor_dnt) == ("example.com", "opt-in", False)
    assert s.exclude_paths == ("/static", "/assets")
    assert (s.buffer_size, s.flush_interval, s.cookie_secure, s.timezone) == (
        500,
        0.5,
        None,
        "Europe/Paris",
    )


def test_from_env_overrides_win_and_missing_keys_are_named() -> None:
    with pytest.raises(ValueError, match="TRACKMW_SECRET_KEYS"):
        Tracker.from_env({})
    s = Tracker.from_env({"TRACKMW_SECRET_KEYS": SECRET}, store="memory://", consent="opt-in")
    assert s.settings.consent == "opt-in"


@pytest.mark.parametrize(
    ("var", "value"), [("TRACKMW_BUFFER_SIZE", "lots"), ("TRACKMW_HONOR_GPC", "perhaps")]
)
def test_from_env_bad_values_name_the_variable(var: str, value: str) -> None:
    with pytest.raises(ValueError, match=var):
        Tracker.from_env({"TRACKMW_SECRET_KEYS": SECRET, "TRACKMW_STORE": "memory://", var: value})
