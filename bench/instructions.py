"""Instructions per request, counted by Valgrind's callgrind: the in-process variants'
cost as a figure that does not move with the machine's load.

On a shared VM the timed figures move by several percent from run to run, and by more
from one machine (or one day) to the next, which makes a change of a few percent hard
to see. An instruction count repeats to a few hundred instructions in eighty thousand.
It is not time: a cache miss counts as one instruction, so a ratio of counts is a lower
bound of the timed ratio, and the targets stay with the timed section.

Each variant runs in a child process under ``valgrind --tool=callgrind``, twice: after
the same warm-up, ``few`` requests and ``many`` requests. The difference divided by
``many - few`` is what one request costs; start-up, imports and building the apps cancel
out. Children run with ``PYTHONHASHSEED=0`` and leave through ``os._exit``, so no exit
handler (the pipelines' last flush) is counted; their writers never write meanwhile
(``bench.inprocess`` sets them a long flush interval), so, as in the timed section, a
figure is the request path's cost.

The background writer's work is counted the same way, per hit normalized and written
to SQLite (``WRITER``): the request path's figures leave it out, as the timed section's
do, and the stores section's write rates start from page views already normalized. Both
of a writer's runs make the same hits, ``many`` of them, and write ``few`` or ``many``:
making a hit in Python is not the writer's work and cancels out.

``python -m bench --only instructions`` (not part of a plain ``make bench``: it takes
several minutes), or ``python -m bench.instructions`` alone. Needs ``valgrind`` on the
PATH (``apt-get install valgrind``); without it the section is skipped with a note.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: The variants counted: each of the timed section's targets with its baseline, and the
#: floors. (The peers are left out: they are not ours, and each run is slow.)
VARIANTS = (
    "asgi.bare",
    "asgi.noop",
    "asgi.trackmw.returning",
    "asgi.trackmw.new",
    "gif.raw",
    "gif.middleware",
    "pixel.returning",
    "pixel.wrapped",
    "wsgi.flask",
    "wsgi.trackmw.returning",
)
WARM_UP = 50

#: The background writer's work per hit, normalizing it and writing it to SQLite, for
#: two streams of hits: one visitor's beacons (the wire pixel's), and many visitors'
#: mixed pages and referrers. (label, visitors, pages, whether every third has a referrer)
WRITER = {
    "writer.beacons": ("writer: one visitor's beacons, written to SQLite", 1, 1, False),
    "writer.mixed": ("writer: 3,000 visitors' hits on 97 pages, written to SQLite",
                     3_000, 97, True),
}
WRITER_WARM_UP = 5_000

_REFS = re.compile(r"(?:Collected\s*:|I\s+refs:)\s*([\d,]+)")


class Unavailable(Exception):
    """Valgrind is not installed, or a child could not be counted."""


def total_instructions(stderr: str) -> int:
    """The instructions callgrind counted, from what it printed at the end of a run."""
    found = _REFS.findall(stderr)
    if not found:
        raise Unavailable(f"no instruction count in callgrind's output: {stderr[-500:]!r}")
    return int(found[-1].replace(",", ""))


def _count(name: str, n: int, made: int = 0) -> int:
    """Instructions of one child run of ``name`` (its own store directory); a writer's
    child makes ``made`` hits and writes ``n`` of them."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise Unavailable("valgrind is not installed (apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="trackmw-instr-") as store_dir:
        done = subprocess.run(
            [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
             "-m", "bench.instructions", "--child", name, f"{n}/{made}" if made else str(n),
             store_dir],
            cwd=ROOT, env=dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=str(ROOT)),
            capture_output=True, text=True, timeout=1800,
        )
    if done.returncode != 0:
        raise Unavailable(f"{name}: the counted run failed: {done.stderr[-2000:]}")
    return total_instructions(done.stderr)


def per_unit(name: str, few: int, many: int) -> float:
    """Instructions one request (or one hit written) of variant ``name`` costs (``many``
    runs less ``few``)."""
    made = many if name in WRITER else 0
    return (_count(name, many, made) - _count(name, few, made)) / (many - few)


def run(quick: bool = False) -> dict[str, float]:
    """Instructions per request of each of ``VARIANTS``, and per hit written of each of
    ``WRITER``, as many children at a time as there are cores (a count does not depend
    on what else runs)."""
    few, many = (200, 600) if quick else (1_000, 3_000)
    hits = (2_000, 6_000) if quick else (10_000, 30_000)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        futures = {name: pool.submit(per_unit, name, few, many) for name in VARIANTS}
        futures |= {name: pool.submit(per_unit, name, *hits) for name in WRITER}
        return {name: future.result() for name, future in futures.items()}


def _writer_child(name: str, n: int, store_dir: str, made: int = 0) -> None:
    """Normalize and write ``n`` hits of stream ``name`` to SQLite after a warm-up, the
    way the writer thread drains the buffer (batches of 1,000, SQLite writing five to a
    transaction), and leave at once. ``made``: how many hits to make (at least ``n``),
    so that two runs writing different numbers of hits make the same ones."""
    from trackmw.events import Hit
    from trackmw.pipeline import Pipeline
    from trackmw.stores import open_store

    from .apps import HOST, UA

    _, visitors, pages, referrers = WRITER[name]
    pipeline = Pipeline(lambda: open_store(f"sqlite:///{store_dir}/writer.db"),
                        flush_interval=3600, batch_size=1_000, buffer_size=10**7)
    start = 1_795_820_400.0

    def stream(first: int, count: int) -> list[Hit]:
        return [
            Hit(start + i * 0.0123, f"V{i * 7919 % visitors:021d}", None, f"/a/{i % pages}",
                "https://news.example/x" if referrers and i % 3 == 0 else None, None, UA, HOST)
            for i in range(first, first + count)
        ]

    # The request path's appends, without waking the writer thread: this thread drains,
    # so that the batches, and the count, are the same from run to run.
    pipeline._buffer.extend(stream(0, WRITER_WARM_UP))
    pipeline.drain()
    hits = stream(WRITER_WARM_UP, max(n, made))
    pipeline._buffer.extend(hits[:n])
    if not pipeline.drain() or len(pipeline):
        print(f"{name}: the writer did not write every hit", file=sys.stderr, flush=True)
        os._exit(1)
    _leave()


def _child(name: str, requests: int, store_dir: str) -> None:
    """Build the in-process variants, check ``name`` answers right, warm it up, run it
    ``requests`` times and leave at once (no exit handler: nothing more is counted)."""
    from . import inprocess

    loop = asyncio.new_event_loop()
    variants, _ = inprocess.build(loop, store_dir)
    variant = {v.name: v for v in variants}[name]
    problem = variant.check()
    if problem is not None:
        print(f"{name} answered wrongly: {problem}", file=sys.stderr, flush=True)
        os._exit(1)
    variant.call(WARM_UP)
    # As the timed section does before each sample: a full collection falling inside
    # one of the two counted runs and not the other would count as the requests' cost
    # (9k instructions a pixel, from a one-variant change in what the bench builds).
    gc.collect()
    variant.call(requests)
    _leave()


def _leave() -> None:
    """Exit at once: no exit handler (the pipelines' last flush) is counted."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer requests: a smoke test")
    parser.add_argument("--child", nargs=3, metavar=("VARIANT", "REQUESTS", "DIR"),
                        help=argparse.SUPPRESS)  # a writer's REQUESTS: N or N/MADE
    args = parser.parse_args(argv)
    if args.child:
        name, requests, store_dir = args.child
        if name in WRITER:
            n, _, made = requests.partition("/")
            _writer_child(name, int(n), store_dir, int(made or 0))
        else:
            _child(name, int(requests), store_dir)
    for name, n in run(args.quick).items():
        unit = "hit written" if name in WRITER else "request"
        print(f"{name:24} {n / 1000:8.1f} k instructions/{unit}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
