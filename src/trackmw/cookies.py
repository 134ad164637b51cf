"""The only ``Cookie`` parser and ``Set-Cookie`` writer in trackmw.

Parsing rules, chosen for hostile headers:

- Only a pair whose name is exactly ``trackmw_id`` (or another trackmw name) counts.
  ``=trackmw_id=X``, ``"trackmw_id"=X`` or ``xtrackmw_id=X`` are other names
  (the pattern of CVE-2023-23934, where a nameless cookie shadowed a real one).
- Every value of a repeated name is returned, in header order; the caller keeps the
  first one whose signature verifies, so a planted duplicate cannot shadow ours.
- No unquoting: trackmw's own values never need quotes, so a quoted value is simply
  not ours. That makes parsing one linear pass (CPython's ``http.cookies`` unquote was
  quadratic on ``"\\"\\"…`` input: CVE-2024-7592).
- Headers over ``MAX_COOKIE_HEADER`` bytes are ignored as a whole.
"""

from __future__ import annotations

import functools
import re

__all__ = [
    "MAX_COOKIE_HEADER",
    "cookie_attributes",
    "delete_cookie_header",
    "parse_cookies",
    "set_cookie_header",
]

MAX_COOKIE_HEADER = 16_384
_NAMES = ("trackmw_id", "trackmw_consent", "trackmw_prefs", "trackmw_dash")
#: trackmw's cookie values: signer output, base64url and dots (checked in C).
_safe_value = re.compile(r"[A-Za-z0-9_.\-]*").fullmatch


def parse_cookies(header: str | None, names: tuple[str, ...] = _NAMES) -> dict[str, list[str]]:
    """Values of trackmw's cookies in ``header``, by exact name, in order.

    >>> parse_cookies('a=1; trackmw_id=x.y; =trackmw_id=bad; trackmw_id=z')
    {'trackmw_id': ['x.y', 'z']}
    """
    found: dict[str, list[str]] = {}
    if not header or "trackmw_" not in header or len(header) > MAX_COOKIE_HEADER:
        return found
    for part in header.split(";"):
        name, sep, value = part.partition("=")
        if not sep:
            continue
        name = name.strip(" \t")
        if name not in names:
            continue
        value = value.strip(" \t")
        if value and _safe_value(value) is not None:
            found.setdefault(name, []).append(value)
    return found


def set_cookie_header(
    name: str,
    value: str,
    *,
    max_age: int,
    domain: str | None,
    secure: bool,
    httponly: bool,
    samesite: str,
    path: str = "/",
) -> str:
    """One ``Set-Cookie`` header value.

    Written here rather than by ``werkzeug.http.dump_cookie`` because it runs on the
    request path of every new visitor (werkzeug's takes ~18 µs, this ~1 µs), and the
    values are always signer output from a cookie-safe alphabet (checked below).

    >>> set_cookie_header("trackmw_id", "v.1", max_age=60, domain=None, secure=False,
    ...                   httponly=True, samesite="Lax")
    'trackmw_id=v.1; Max-Age=60; Path=/; HttpOnly; SameSite=Lax'
    """
    if _safe_value(value) is None:
        raise ValueError(f"cookie value for {name} has characters that need quoting")
    return f"{name}={value}" + cookie_attributes(max_age, path, domain, secure, httponly, samesite)


@functools.lru_cache(maxsize=64)
def cookie_attributes(
    max_age: int, path: str, domain: str | None, secure: bool, httponly: bool, samesite: str
) -> str:
    """The attributes after a cookie's value: the same few for every cookie of a site."""
    parts = [f"; Max-Age={max_age}; Path={path}"]
    if domain:
        parts.append(f"; Domain={domain}")
    if max_age == 0:
        parts.append("; Expires=Thu, 01 Jan 1970 00:00:00 GMT")
    if secure:
        parts.append("; Secure")
    if httponly:
        parts.append("; HttpOnly")
    parts.append(f"; SameSite={samesite}")
    return "".join(parts)


def delete_cookie_header(
    name: str,
    *,
    domain: str | None,
    secure: bool,
    httponly: bool,
    samesite: str,
    path: str = "/",
) -> str:
    """A ``Set-Cookie`` that deletes ``name`` (same ``Domain`` and ``Path`` as when set)."""
    return set_cookie_header(
        name,
        "",
        max_age=0,
        domain=domain,
        secure=secure,
        httponly=httponly,
        samesite=samesite,
        path=path,
    )
