"""Tracker settings: defaults, validation and ``from_env``.

Every setting is a keyword of ``Tracker(...)`` and a ``TRACKMW_<NAME>`` environment
variable for ``Tracker.from_env()``. Settings are validated once, here, and frozen: a bad
value fails at start with a ``ConfigurationError`` (a ``ValueError``) naming the setting,
never later on a request.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import ConfigurationError

__all__ = ["Settings"]

#: 13 months, the longest lifetime European regulators accept for an audience cookie.
THIRTEEN_MONTHS = 396 * 24 * 3600
MIN_KEY_LENGTH = 16

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
# A short list of public suffixes a site could mistype as its cookie domain. Browsers
# refuse such cookies (or worse, scope them to every site under the suffix).
_PUBLIC_SUFFIXES = frozenset(
    """
    com net org edu gov mil int info biz name pro io co me tv app dev page test example
    invalid localhost local eu uk de fr nl be ch at it es pl se no dk fi ie pt cz ru jp
    cn kr in br au ca us nz za mx ar
    co.uk org.uk ac.uk gov.uk me.uk ltd.uk plc.uk net.uk com.au net.au org.au edu.au
    co.jp ne.jp or.jp co.nz org.nz co.za com.br com.cn com.mx co.in co.kr
    github.io herokuapp.com appspot.com vercel.app netlify.app pages.dev
    blogspot.com cloudfront.net azurewebsites.net fly.dev onrender.com
    """.split()
)


def _check_domain(value: str) -> str:
    domain = value.strip().lower().lstrip(".")
    if (
        not domain
        or any(c in value for c in ';, \t\r\n"\\')
        or any(ord(c) < 32 or ord(c) == 127 for c in value)
    ):
        raise ConfigurationError(
            "cookie_domain", f"{value!r} is not a host name (no ';', ',', spaces or controls)"
        )
    labels = domain.split(".")
    if len(domain) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ConfigurationError("cookie_domain", f"{value!r} is not a valid host name")
    if domain in _PUBLIC_SUFFIXES or "." not in domain and domain != "localhost":
        raise ConfigurationError(
            "cookie_domain",
            f"{value!r} is a public suffix; browsers refuse cookies for it. "
            "Use your site's own domain, e.g. 'example.com'.",
        )
    if domain == "localhost":
        raise ConfigurationError(
            "cookie_domain", "'localhost' cannot carry a Domain attribute; leave it unset"
        )
    return domain


@dataclass(frozen=True, repr=False)
class Settings:
    """The validated, frozen settings of one ``Tracker``.

    >>> Settings(secret_keys=("x" * 32,), store="memory://").consent
    'opt-out'
    """

    secret_keys: tuple[str, ...]
    store: str = "sqlite:///trackmw.db"
    cookie_domain: str | None = None
    consent: Literal["opt-out", "opt-in"] = "opt-out"
    policy_version: str = "1"
    dashboard_token: str | None = field(default=None, repr=False)
    prefix: str = "/_trackmw"
    exclude_paths: tuple[str, ...] = ("/static",)
    count_rejected: Literal["anonymous", "none"] = "anonymous"
    honor_dnt: bool = True
    honor_gpc: bool = True
    trust_proxy: bool = False
    cookie_max_age: int = THIRTEEN_MONTHS
    cookie_secure: bool | None = None  # None: Secure exactly when the request is https
    cookie_samesite: Literal["Lax", "Strict", "None"] = "Lax"
    count_server_side: bool = False
    privacy_url: str = "/privacy"
    timezone: str = "UTC"
    buffer_size: int = 100_000
    batch_size: int = 1_000
    flush_interval: float = 1.0
    writer: Literal["thread", "process"] = "thread"
    retention_days: int | None = None
    redis_uniques: Literal["hll", "exact"] = "hll"
    max_report_days: int = 366
    pixel_rate_limit: int = 120  # counted hits per visitor per minute; 0 disables
    pixel_rate_limit_status: int = 200
    allowed_hosts: tuple[str, ...] | None = None
    authorize: Callable[[Any], bool] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        keys = self.secret_keys
        if isinstance(keys, str):
            keys = (keys,)
        keys = tuple(keys)
        if not keys:
            raise ConfigurationError("secret_keys", "at least one secret key is required")
        for key in keys:
            if not isinstance(key, str) or len(key) < MIN_KEY_LENGTH:
                raise ConfigurationError(
                    "secret_keys", f"every key must be a string of {MIN_KEY_LENGTH}+ characters"
                )
        object.__setattr__(self, "secret_keys", keys)

        from .stores import store_class  # late: stores import settings' types

        store = store_class(self.store)  # an unknown scheme raises ConfigurationError

        if self.cookie_domain is not None:
            object.__setattr__(self, "cookie_domain", _check_domain(self.cookie_domain))
        _one_of("consent", self.consent, ("opt-out", "opt-in"))
        _one_of("count_rejected", self.count_rejected, ("anonymous", "none"))
        _one_of("cookie_samesite", self.cookie_samesite, ("Lax", "Strict", "None"))
        _one_of("redis_uniques", self.redis_uniques, ("hll", "exact"))
        _one_of("writer", self.writer, ("thread", "process"))
        if self.writer == "process" and store.in_process(self.store):
            raise ConfigurationError(
                "writer",
                f"{store.__name__} keeps its data in this process, where a writer process "
                "cannot write; use writer='thread' (the default)",
            )
        if self.cookie_samesite == "None" and self.cookie_secure is not True:
            raise ConfigurationError(
                "cookie_samesite", "SameSite=None needs cookie_secure=True (browsers drop it)"
            )
        if not isinstance(self.policy_version, str) or not self.policy_version.strip():
            raise ConfigurationError("policy_version", "must be a non-empty string")
        if len(self.policy_version) > 32:
            raise ConfigurationError("policy_version", "must be at most 32 characters")
        if self.dashboard_token is not None and len(self.dashboard_token) < MIN_KEY_LENGTH:
            raise ConfigurationError(
                "dashboard_token", f"must be at least {MIN_KEY_LENGTH} characters"
            )
        prefix = self.prefix.rstrip("/")
        if not prefix.startswith("/") or "?" in prefix or "#" in prefix or " " in prefix:
            raise ConfigurationError("prefix", f"{self.prefix!r} must be a path like '/_trackmw'")
        object.__setattr__(self, "prefix", prefix)
        excl = (self.exclude_paths,) if isinstance(self.exclude_paths, str) else self.exclude_paths
        excl = tuple(p.rstrip("/") or "/" for p in excl)
        for p in excl:
            if not p.startswith("/"):
                raise ConfigurationError("exclude_paths", f"{p!r} must start with '/'")
        object.__setattr__(self, "exclude_paths", excl)
        for name in ("buffer_size", "batch_size", "cookie_max_age", "max_report_days"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(name, f"must be a positive integer, not {value!r}")
        if not isinstance(self.pixel_rate_limit, int) or self.pixel_rate_limit < 0:
            raise ConfigurationError("pixel_rate_limit", "must be an integer >= 0 (0: no limit)")
        _one_of("pixel_rate_limit_status", self.pixel_rate_limit_status, (200, 429))
        if self.retention_days is not None and (
            not isinstance(self.retention_days, int) or self.retention_days < 1
        ):
            raise ConfigurationError("retention_days", "must be a positive number of days")
        if not isinstance(self.flush_interval, int | float) or not (
            0.01 <= self.flush_interval <= 3600
        ):
            raise ConfigurationError("flush_interval", "must be between 0.01 and 3600 seconds")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise ConfigurationError(
                "timezone", f"{self.timezone!r} is not an IANA time zone name"
            ) from None
        if self.allowed_hosts is not None:
            hosts = (
                (self.allowed_hosts,) if isinstance(self.allowed_hosts, str) else self.allowed_hosts
            )
            object.__setattr__(self, "allowed_hosts", tuple(h.lower() for h in hosts))
        if self.authorize is not None and not callable(self.authorize):
            raise ConfigurationError("authorize", "must be a callable taking the request")

    def __repr__(self) -> str:
        """Every setting, with the secrets masked (keys, token, the store's password)."""
        from .stores.base import redact

        shown: list[str] = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "secret_keys":
                text = f"<{len(value)} keys>"
            elif f.name == "dashboard_token":
                text = "None" if value is None else "'***'"
            elif f.name == "store":
                text = repr(redact(value))
            else:
                text = repr(value)
            shown.append(f"{f.name}={text}")
        return f"Settings({', '.join(shown)})"

    @property
    def tzinfo(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read ``TRACKMW_*`` variables; keyword ``overrides`` win over the environment."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get("TRACKMW_" + f.name.upper())
            if raw is None or f.name == "authorize":
                continue
            values[f.name] = _parse_env(f.name, str(f.type), raw)
        values.update(overrides)
        if "secret_keys" not in values:
            raise ConfigurationError(
                "secret_keys", "set TRACKMW_SECRET_KEYS (comma-separated, newest first)"
            )
        return cls(**values)


def _one_of(name: str, value: object, allowed: Sequence[object]) -> None:
    if value not in allowed:
        choices = ", ".join(repr(a) for a in allowed)
        raise ConfigurationError(name, f"{value!r} is not one of {choices}")


def _parse_env(name: str, type_: str, raw: str) -> Any:
    if type_.startswith("tuple"):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if type_.startswith("bool"):
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        if "None" in type_ and lowered in ("", "auto", "none"):
            return None
        raise ConfigurationError(name, f"TRACKMW_{name.upper()}={raw!r} is not a boolean")
    if type_.startswith("int"):
        if "None" in type_ and raw.strip().lower() in ("", "none"):
            return None
        try:
            return int(raw)
        except ValueError:
            raise ConfigurationError(
                name, f"TRACKMW_{name.upper()}={raw!r} is not an integer"
            ) from None
    if type_.startswith("float"):
        try:
            return float(raw)
        except ValueError:
            raise ConfigurationError(
                name, f"TRACKMW_{name.upper()}={raw!r} is not a number"
            ) from None
    if "None" in type_ and raw.strip() == "":
        return None
    return raw
