"""Cold User-Agent classification: fresh strings, so no cache can answer.

Real traffic repeats a few thousand User-Agent strings, and ``classify`` caches them;
a cold classification is what each new string costs the background writer (it is never
on the request path). Every string here is new: browser templates with random version
numbers.
"""

from __future__ import annotations

import random
import statistics
import time

from trackmw.useragent import classify

TEMPLATES = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/{a}.0.{b}.{c} Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS {a}_{c} like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/{a}.{c} Mobile/15E{b} Safari/604.1",
    "Mozilla/5.0 (Linux; Android {c}; SM-S9{b}B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/{a}.0.{b}.{c} Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:{a}.0) Gecko/20100101 Firefox/{a}.{c}",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_{c}) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/{a}.{c} Safari/605.1.15",
    "Mozilla/5.0 (iPad; CPU OS {a}_{c} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/{a}.0 Mobile/15E{b} Safari/604.1",
    "Mozilla/5.0 (compatible; Googlebot/2.{c}; +http://www.google.com/bot.html) {b}",
)


def fresh(n: int, rng: random.Random) -> list[str]:
    return [
        rng.choice(TEMPLATES).format(
            a=rng.randrange(10, 200), b=rng.randrange(10**6), c=rng.randrange(100)
        )
        for _ in range(n)
    ]


def measure(rounds: int, per_round: int = 300) -> dict[str, float]:
    """Median µs for one cold ``classify``, and for one cached."""
    rng = random.Random(6)
    classify(fresh(1, rng)[0])  # load the matchers once, outside the timing
    cold, warm = [], []
    for _ in range(rounds):
        strings = fresh(per_round, rng)
        start = time.perf_counter()
        for ua in strings:
            classify(ua)
        cold.append((time.perf_counter() - start) / per_round * 1e6)
        start = time.perf_counter()
        for ua in strings:
            classify(ua)
        warm.append((time.perf_counter() - start) / per_round * 1e6)
    return {"ua.cold": statistics.median(cold), "ua.cached": statistics.median(warm)}
