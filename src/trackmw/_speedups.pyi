"""Types of the optional C speedups (``_speedups.c``); see ``trackmw.asgi``."""

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Generic, Self, TypeVar, overload

from .cookiestate import CookieState
from .core import Core
from .events import ConsentChoice, Hit, PageView
from .pipeline import Pipeline
from .ratelimit import RateLimiter
from .visitor import Visitor

_Scope = MutableMapping[str, Any]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

def state_key(cookie: bytes | None, /) -> bytes | None: ...
def cached_state(
    scope: _Scope,
    prefixes: tuple[str, ...],
    states: dict[Any, tuple[float, float, CookieState]],
    now: float,
    /,
) -> CookieState | None: ...

def beacon_headers(
    headers: list[tuple[bytes, bytes]], /
) -> tuple[bytes | None, bytes, bytes] | None: ...

def beacon(
    scope: _Scope,
    caches: tuple[Any, ...],
    core: Core,
    now: float,
    /,
) -> int | None: ...

def allow(limiter: RateLimiter, key: str, now: float, /) -> bool: ...
def add(pipeline: Pipeline, item: Hit | ConsentChoice, /) -> None: ...
def normalize_run(
    items: list[Any] | tuple[Any, ...],
    start: int,
    fixed: dict[Any, Any],
    lo: float,
    hi: float,
    day: str,
    hit_type: type[Hit],
    pageview_type: type[PageView],
    pageviews: list[PageView],
    /,
) -> int: ...
def group_run(
    pageviews: list[Any] | tuple[Any, ...],
    start: int,
    groups: dict[Any, list[Any]],
    pageview_type: type[PageView],
    ms_from: float,
    ms_to: float,
    /,
) -> int: ...
def tally_run(
    pageviews: list[Any] | tuple[Any, ...],
    start: int,
    tallies: dict[str, list[Any]],
    pageview_type: type[PageView],
    /,
) -> int: ...
def plan_run(
    pageviews: list[Any] | tuple[Any, ...],
    start: int,
    day: Any,
    lists: dict[str, list[Any]],
    pageview_type: type[PageView],
    quote: Callable[[str], str],
    quoted: dict[str, str],
    /,
) -> int: ...
def views_json(
    views: list[Any], quote: Callable[[str], str], quoted: dict[str, str], /
) -> str | None: ...
def copy_pageviews(
    pageviews: list[Any] | tuple[Any, ...],
    pageview_type: type[PageView],
    days: dict[str, int],
    /,
) -> bytes | None: ...
def pg_columns(rows: dict[Any, Any], types: str, days: dict[str, int], /) -> list[bytes] | None: ...
def hmac_key(name: str, key: bytes, /) -> object | None: ...
def sign_token(inner: Any, outer: Any, text: bytes, stamp: bytes, sep: bytes, /) -> str | None: ...
def sign_ids(
    inner: Any, outer: Any, ids: list[str], stamp: bytes, sep: bytes, /
) -> list[str] | None: ...
def add_cookies(
    message: MutableMapping[str, Any], added: list[tuple[bytes, bytes]], cookies: list[str], /
) -> dict[str, Any] | None: ...

class LazyBase:
    _core: Core
    _state: CookieState
    visitor: Visitor | None
    issued_id: str | None
    _scope: _Scope | None
    _send: _Send
    def __new__(cls, core: Core, scope: _Scope, state: CookieState, send: _Send) -> Self: ...
    @classmethod
    def enter(
        cls,
        scope: _Scope,
        prefixes: tuple[str, ...],
        states: dict[Any, tuple[float, float, CookieState]],
        now: float,
        core: Core,
        send: _Send,
        /,
    ) -> Self | None: ...
    def send_quiet(self, message: MutableMapping[str, Any], /) -> Awaitable[None]: ...

_F = TypeVar("_F", bound=Callable[..., Awaitable[None]])

class Plan:
    app: Callable[..., Awaitable[None]]
    lazy_type: type[LazyBase]
    def __new__(
        cls,
        app: Callable[..., Awaitable[None]],
        prefixes: tuple[str, ...],
        states: dict[Any, tuple[float, float, CookieState]],
        core: Core,
        lazy_type: type[LazyBase],
        quiet_ok: bool,
        globals: dict[str, Any],
        over: Callable[[MutableMapping[str, Any]], Awaitable[None]],
        failed: Callable[[BaseException], None],
        pixel_path: str,
        beacon_caches: tuple[Any, ...] | None,
        pixel_start: dict[str, Any],
        pixel_body: dict[str, Any],
        settle: Callable[[Any, MutableMapping[str, Any]], None] | None = None,
    ) -> Self: ...

class Entry(Generic[_F]):
    __wrapped__: _F
    def __init__(self, func: _F, /) -> None: ...
    @overload
    def __get__(self, obj: None, owner: type | None = None) -> _F: ...
    @overload
    def __get__(
        self, obj: object, owner: type | None = None
    ) -> Callable[[_Scope, Callable[[], Awaitable[Any]], _Send], Awaitable[None]]: ...
    def __call__(
        self, obj: Any, scope: _Scope, receive: Any, send: _Send, /
    ) -> Awaitable[None]: ...
