"""Types of the optional C speedups (``_speedups.c``); see ``trackmw.asgi``."""

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Self

from .cookiestate import CookieState
from .core import Core
from .visitor import Visitor

_Scope = MutableMapping[str, Any]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

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
    caches: tuple[
        dict[Any, tuple[float, float, CookieState]],
        dict[str | bytes, dict[str, str]],
        dict[str | bytes, str],
        dict[str | bytes, str],
        type[tuple[Any, ...]],
    ],
    core: Core,
    now: float,
    /,
) -> int | None: ...

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
