"""``python -m bench``: every variant in one run, a table of medians and ratios.

>>> python -m bench                    # everything (a few minutes)   # doctest: +SKIP
>>> python -m bench --quick --only inprocess                        # doctest: +SKIP

Ratios are against a baseline measured in the same run, never against a figure from
elsewhere. ``bench/results.json`` gets one entry per figure:
``{"name", "label", "value", "unit", "baseline", "baseline_value", "ratio", "target",
"met"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SECTIONS = ("inprocess", "wire", "ua", "memory", "stores", "report")
#: Run only when asked for with ``--only`` (slow, and needs Valgrind).
OPTIONAL = ("instructions", "wire-instructions")
RESULTS = Path(__file__).resolve().parent / "results.json"


@dataclass
class Figure:
    name: str
    label: str
    value: float
    unit: str
    baseline: str | None = None
    baseline_value: float | None = None
    target: str | None = None  # e.g. "<= 1.10x" or ">= 100000"
    met: bool | None = None
    ratio: float | None = None


def paired(name: str, label: str, samples: dict[str, list[float]], unit: str,
           baseline: str | None, baseline_key: str | None = None) -> Figure:
    """A figure from per-round samples: the median, and the median of per-round ratios."""
    mine = samples[name]
    figure = Figure(name, label, statistics.median(mine), unit, baseline_key or baseline)
    if baseline is not None:
        base = samples[baseline]
        figure.baseline_value = statistics.median(base)
        figure.ratio = statistics.median(a / b for a, b in zip(mine, base, strict=True))
    return figure


#: The targets of issue 6: (figure, "ratio" or "value", "<=" or ">=", limit).
TARGETS = {
    "asgi.trackmw.returning": ("ratio", "<=", 1.10),
    "asgi.trackmw.new": ("ratio", "<=", 1.6),
    "pixel.returning": ("ratio", "<=", 4.0),
    "pixel.wrapped": ("ratio", "<=", 4.0),
    "wsgi.trackmw.returning": ("ratio", "<=", 1.10),
    "wire.asgi.trackmw": ("ratio", ">=", 0.95),
    "wire.pixel": ("ratio", ">=", 0.85),
    "wire.pixel.wrapped": ("ratio", ">=", 0.85),
    "wire.pixel.process": ("ratio", ">=", 0.85),
    "ua.cold": ("value", "<=", 50.0),
    "stores.sqlite": ("value", ">=", 100_000),
    "stores.redis": ("value", ">=", 200_000),
    "stores.redis_cluster": ("value", ">=", 200_000),
    "stores.postgres": ("value", ">=", 50_000),
    "report.sqlite_30d": ("value", "<=", 100.0),
    "memory.bytes_per_event": ("value", "<=", 300),
}


def judge(f: Figure) -> None:
    target = TARGETS.get(f.name)
    if target is None:
        return
    kind, op, limit = target
    x = f.ratio if kind == "ratio" else f.value
    f.target = f"{op} {limit:g}{'x' if kind == 'ratio' else ''}"
    if x is not None:
        f.met = x <= limit if op == "<=" else x >= limit


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- sections ------------------------------------------------------------------------------------


def section_inprocess(quick: bool, tmp: str) -> tuple[list[Figure], list[str]]:
    from . import inprocess

    loop = asyncio.new_event_loop()
    try:
        variants, notes = inprocess.build(loop, tmp)
        rounds, seconds = (3, 0.05) if quick else (15, 0.1)
        samples = inprocess.measure(variants, rounds, seconds, log)
    finally:
        loop.close()
    out = [paired(v.name, v.label, samples, "µs/request", v.baseline) for v in variants]
    return out, notes + [f"in-process: {rounds} rounds of ~{seconds}s batches per variant, "
                         f"each in chunks of {inprocess.CHUNK:,} requests with the buffered "
                         "hits written between chunks, untimed; CPU time of the calling thread"]


def section_wire(quick: bool, tmp: str) -> tuple[list[Figure], list[str]]:
    from . import wire

    if not os.path.exists(wire.WRK):
        return [], ["wire skipped: wrk is not installed (apt-get install wrk)"]
    servers, skipped = wire.servers(tmp)
    notes = [] if skipped is None else [f"wire: Flask-Track-Usage skipped: {skipped}"]
    try:
        wire.start(servers, tmp)
        rounds, seconds = (1, 1) if quick else (7, 2)
        measured = wire.measure(servers, rounds, seconds, 32, log)
    finally:
        wire.stop(servers)
    rps = {name: pair[0] for name, pair in measured.items()}
    p99 = {name: pair[1] for name, pair in measured.items()}
    out = []
    for s in servers:
        out.append(paired(s.name, s.label, rps, "requests/s", s.baseline))
        out.append(paired(s.name, s.label + ", p99", p99, "ms", s.baseline,
                          s.baseline + ".p99" if s.baseline else None))
        out[-1].name = s.name + ".p99"
    return out, notes + [f"wire: wrk -t1 -c32 -d{seconds}s, {rounds} rounds; one worker per server"]


def section_ua(quick: bool, tmp: str) -> tuple[list[Figure], list[str]]:
    from . import ua

    medians = ua.measure(3 if quick else 9)
    return [
        Figure("ua.cold", "User-Agent classification, cold (new string)", medians["ua.cold"],
               "µs"),
        Figure("ua.cached", "User-Agent classification, cached", medians["ua.cached"], "µs"),
    ], []


def section_memory(quick: bool, tmp: str) -> tuple[list[Figure], list[str]]:
    from . import memory

    n = 5_000 if quick else 20_000
    return [Figure("memory.bytes_per_event", "memory per buffered event (pixel request path)",
                   memory.bytes_per_event(n), "bytes")], []


def section_instructions(quick: bool, tmp: str) -> tuple[list[Figure], list[str]]:
    from . import inprocess, instructions

    try:
        counts = instructions.run(quick)
    except instructions.Unavailable as exc:
        return [], [f"instructions skipped: {exc}"]
    loop = asyncio.new_event_loop()
    try:  # the labels and baselines of the timed section's variants
        variants = {v.name: v for v in inprocess.build(loop, tmp)[0]}
    finally:
        loop.close()
    out = []
    for name, n in counts.items():
        if name in instructions.WRITER:
            out.append(Figure(f"instr.{name}", instructions.WRITER[name][0], n / 1000,
                              "k instructions/hit"))
            continue
        v = variants[name]
        baseline = v.baseline if v.baseline in counts else None
        out.append(Figure(f"instr.{name}", v.label, n / 1000, "k instructions/request",
                          None if baseline is None else f"instr.{baseline}",
                          None if baseline is None else counts[baseline] / 1000,
                          ratio=None if baseline is None else n / counts[baseline]))
    return out, ["instructions: callgrind's count per request (many requests less few, "
                 "PYTHONHASHSEED=0); not time: a cache miss counts as one instruction"]


def section_wire_instructions(quick: bool, tmp: str) -> tuple[list[Figure], list[str]]:
    from . import wire_instructions

    try:
        counts = wire_instructions.run(tmp, quick, log)
    except wire_instructions.Unavailable as exc:
        return [], [f"wire-instructions skipped: {exc}"]
    out = []
    for name, (s, n, others) in counts.items():
        baseline = s.baseline if s.baseline in counts else None
        base = None if baseline is None else counts[baseline][1]
        out.append(Figure(f"instr.{name}", s.label, n / 1000, "k instructions/request",
                          None if baseline is None else f"instr.{baseline}",
                          None if base is None else base / 1000,
                          ratio=None if base is None else n / base))
        if others >= 50:  # a writer thread's work (none for a server recording nothing)
            out.append(Figure(f"instr.{name}.threads", f"{s.label}: outside the main thread",
                              others / 1000, "k instructions/request"))
    return out, ["wire-instructions: callgrind's count for the whole server process over a "
                 "wrk run, per request served; not time (the kernel's work is not counted): "
                 "a rate ratio, if time went with instructions, is the inverse of the ratio"]


def _module(name: str) -> Any:
    try:
        return importlib.import_module(f"bench.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"bench.{name}":
            return None
        raise


def section_stores(quick: bool, tmp: str) -> tuple[list[Figure], list[str]]:
    stores = _module("stores")
    if stores is None or not hasattr(stores, "run"):
        return [], ["stores skipped: bench/stores.py (write rates, bytes/event) is not there"]
    result = stores.run(quick=quick, quiet=True)
    out, notes = [], []
    baselines = result.get("baselines", {})
    for name, rate in baselines.items():
        out.append(Figure(f"stores.{name}", f"plain {name} writes (see notes)", rate,
                          "events/s"))
    for name, rate in result.get("writes", {}).items():
        if rate is None:
            notes.append(f"stores: {name} not reachable, skipped")
            continue
        figure = Figure(f"stores.{name}", f"{name} writes (indexes and rollups included)",
                        rate, "events/s")
        ratio = result.get("ratios", {}).get(name)
        if ratio is not None:
            base = stores.BASELINES[name]
            figure.baseline, figure.baseline_value = f"stores.{base}", baselines[base]
            figure.ratio = ratio
        out.append(figure)
    if result.get("bytes_per_event") is not None:
        out.append(Figure("memory.bytes_per_event.direct",
                          "memory per buffered Hit built directly, no interning",
                          result["bytes_per_event"], "bytes"))
    return out, notes + list(result.get("notes", []))


def section_report(quick: bool, tmp: str) -> tuple[list[Figure], list[str]]:
    report = _module("report_1m")
    if report is None:
        return [], ["report skipped: bench/report_1m.py is not there yet"]
    events = 100_000 if quick else 1_000_000
    suffix = ".quick" if quick else ""  # smaller data: never the full run's figures
    r = report.run(os.path.join(tmp, "report.db"), events, quiet=True)
    n = f"{r['events']:,}"
    figures = [
        Figure("report.sqlite_30d" + suffix, f"SQLite 30-day report over {n} events (cold)",
               r["report_ms_cold"], "ms"),
        Figure("report.sqlite_30d.warm" + suffix,
               f"SQLite 30-day report over {n} events (warm)", r["report_ms_warm"], "ms"),
        Figure("report.sqlite_fill" + suffix, f"SQLite writes while filling {n} events",
               r["events_per_second"], "events/s"),
        Figure("report.sqlite_fill.full" + suffix, "SQLite writes, the fill's last fifth (a "
               "store with history)", r["events_per_second_full"], "events/s"),
    ]
    notes = ["report: the fill writes its events in time order, in batches of 1,000, as a "
             "live site does"]
    servers = report.on_servers(events, quiet=True)
    labels = {"redis": "Redis (HyperLogLog uniques)", "postgres": "PostgreSQL"}
    for name, label in labels.items():
        timed = servers.get(name)
        if timed is not None:
            figures += [
                Figure(f"report.{name}_30d" + suffix,
                       f"{label} 30-day report over {n} events (cold)",
                       timed["report_ms_cold"], "ms"),
                Figure(f"report.{name}_30d.warm" + suffix,
                       f"{label} 30-day report over {n} events (warm)",
                       timed["report_ms_warm"], "ms"),
            ]
    return figures, notes + servers["notes"]


RUNNERS = {
    "inprocess": section_inprocess,
    "wire": section_wire,
    "ua": section_ua,
    "memory": section_memory,
    "stores": section_stores,
    "report": section_report,
    "instructions": section_instructions,
    "wire-instructions": section_wire_instructions,
}


# -- output ------------------------------------------------------------------------------


def fmt(x: float) -> str:
    if x >= 1000:
        return f"{x:,.0f}"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def table(figures: list[Figure]) -> str:
    rows = [("figure", "median", "unit", "vs", "ratio", "target", "met")]
    for f in figures:
        rows.append((
            f.label,
            fmt(f.value),
            f.unit,
            f.baseline or "",
            f"{f.ratio:.2f}x" if f.ratio is not None else "",
            f.target or "",
            "" if f.met is None else ("yes" if f.met else "NO"),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for i, r in enumerate(rows):
        cells = [c.ljust(w) if j in (0, 2, 3, 5) else c.rjust(w)
                 for j, (c, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("| " + " | ".join(cells) + " |")
        if i == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from trackmw.asgi import SPEEDUPS

    speedups = "with" if SPEEDUPS else "without"
    return (f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}, trackmw {speedups} its C speedups")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds: a smoke test")
    parser.add_argument("--only", action="append", choices=SECTIONS + OPTIONAL,
                        metavar="SECTION",
                        help=f"run only this section (repeatable): {', '.join(SECTIONS)}; "
                        f"or {', '.join(OPTIONAL)}, which runs only when named")
    parser.add_argument("--out", default=str(RESULTS), help="where to write the JSON results")
    args = parser.parse_args(argv)
    sections = args.only or list(SECTIONS)
    figures: list[Figure] = []
    notes: list[str] = []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="trackmw-bench-") as tmp:
        for name in sections:
            log(f"{name} ...")
            got, more = RUNNERS[name](args.quick, tmp)
            figures += got
            notes += more
    for f in figures:
        judge(f)
    print(f"trackmw benchmarks: {machine()}; {time.time() - started:.0f}s"
          f"{' (--quick)' if args.quick else ''}")
    print(table(figures))
    for note in notes:
        print(f"note: {note}")
    missed = [f.name for f in figures if f.met is False]
    if any(f.met is not None for f in figures):
        print("targets: all met" if not missed else f"targets missed: {', '.join(missed)}")
    document = [
        {"name": f.name, "label": f.label, "value": round(f.value, 3), "unit": f.unit,
         "baseline": f.baseline,
         "baseline_value": None if f.baseline_value is None else round(f.baseline_value, 3),
         "ratio": None if f.ratio is None else round(f.ratio, 4), "target": f.target,
         "met": f.met}
        for f in figures
    ]
    Path(args.out).write_text(json.dumps(document, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
