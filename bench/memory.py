"""Bytes of memory per buffered event, through the request path.

``n`` beacon requests (2,000 visitors with their own signed cookies, 300 pages, 40
referrers, a few User-Agents) go through the ASGI middleware into a pipeline that is
not drained; the figure is the memory the buffered hits free when the buffer is
dropped, divided by ``n``. Strings a hit shares with others (an interned User-Agent
or host, a visitor id or page held by a bounded cache) are counted once, not per hit,
which is what they cost. ``bench.stores`` measures the same buffer with hits built
directly, each with strings of its own.
"""

from __future__ import annotations

import asyncio
import gc
import random
import tracemalloc
from typing import Any
from urllib.parse import urlencode

from trackmw.asgi import TrackingMiddleware
from trackmw.signing import CookieSigner

from . import apps
from .inprocess import _discard, _receive, asgi_scope
from .ua import fresh

VISITORS = 2_000
PAGES = 300
REFERRERS = 40


def scopes(n: int, seed: int = 7) -> list[dict[str, Any]]:
    """``n`` beacon requests, each with header bytes of its own, as a server makes them."""
    rng = random.Random(seed)
    signer = CookieSigner([apps.SECRET], "trackmw.visitor", 3600)
    cookies = [signer.dumps([f"bench-visitor-{v:06d}-abcdefgh"]) for v in range(VISITORS)]
    agents = fresh(20, rng)
    referrers = [""] * 10 + [f"https://site{i}.example.net/" for i in range(REFERRERS)]
    out = []
    for _ in range(n):
        query = {"p": f"/articles/{min(int(rng.paretovariate(1.1)), PAGES)}"}
        referrer = rng.choice(referrers)
        if referrer:
            query["r"] = referrer
        scope = asgi_scope("/_trackmw/pixel.gif", urlencode(query),
                           cookie=f"trackmw_id={rng.choice(cookies)}")
        scope["headers"] = [(bytes(k), bytes(v)) for k, v in scope["headers"]]
        scope["headers"][1] = (b"user-agent", rng.choice(agents).encode())
        out.append(scope)
    return out


def bytes_per_event(n: int = 20_000) -> float:
    tracker = apps.make_tracker("memory://", flush_interval=3600, batch_size=10**7,
                                buffer_size=10**7)
    middleware = TrackingMiddleware(apps.raw_gif, tracker)
    requests = scopes(n)
    loop = asyncio.new_event_loop()

    async def run() -> None:
        for scope in requests:
            await middleware(scope, _receive, _discard)

    try:
        gc.collect()
        tracemalloc.start()
        loop.run_until_complete(run())
        requests.clear()  # the requests are gone once answered; only what they left stays
        gc.collect()
        held = tracemalloc.get_traced_memory()[0]
        buffered = len(tracker.pipeline)
        tracker.pipeline._buffer.clear()  # drop the hits, keep everything else
        gc.collect()
        freed = held - tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
    finally:
        loop.close()
        tracker.close()
    if buffered != n:
        raise RuntimeError(f"{buffered} of {n} beacon hits were buffered")
    return freed / n
