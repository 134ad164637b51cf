"""``trackmw``: read counts and serve visitors' requests from the command line.

>>> main(["stats", "--store", "memory://", "--since", "2026-11-01",
...       "--until", "2026-11-02", "--json"])  # doctest: +ELLIPSIS
{"since": "2026-11-01", "until": "2026-11-02", "pageviews": 0, ...}
0

Commands (``--store`` defaults to ``$TRACKMW_STORE``, then ``sqlite:///trackmw.db``; the
store is opened directly, no secret key is needed):

- ``trackmw stats [--since DATE] [--until DATE] [--json | --csv] [--by KIND] [--timezone TZ]``
  prints the report: tables and a per-day chart for people, the SPEC's JSON document,
  or CSV (per day, or of one breakdown with ``--by``). Days are the tracker's local
  days; ``--timezone`` (default ``$TRACKMW_TIMEZONE``, then UTC) only decides which day
  is today, for the default range (the last 30 days).
- ``trackmw export --visitor ID`` prints everything held about a visitor as JSON.
- ``trackmw erase --visitor ID [--user USER]`` erases it and says how much was removed.
- ``trackmw purge --older-than DAYS`` deletes events and consent records older than that.

Exit status: 0 done, 1 the store failed, 2 bad usage (a bad date, URL or zone).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .dashboard.ranges import RangeError, report_range, today
from .errors import ConfigurationError, StoreError
from .report import Report, days_before
from .stores import Store, open_store

__all__ = ["main"]

DEFAULT_STORE = "sqlite:///trackmw.db"
#: ``--by`` kinds: (report field, name column, name key, count columns).
BREAKDOWNS: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "page": ("pages", "page", "path", ("pageviews", "visitors")),
    "referrer": ("referrers", "referrer", "name", ("pageviews",)),
    "campaign": ("campaigns", "campaign", "name", ("pageviews",)),
    "browser": ("browsers", "browser", "name", ("visitors",)),
    "os": ("os", "os", "name", ("visitors",)),
    "device": ("devices", "device", "name", ("visitors",)),
}
BARS = "▁▂▃▄▅▆▇█"
T = TypeVar("T")


class UsageError(Exception):
    """Bad input from the command line: exit status 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trackmw", description="Visitor counts and visitors' data requests for trackmw."
    )
    parser.add_argument("--version", action="version", version=f"trackmw {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def store_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--store",
            metavar="URL",
            help="store URL (default: $TRACKMW_STORE, then sqlite:///trackmw.db)",
        )

    stats = sub.add_parser("stats", help="print the visitor report")
    store_arg(stats)
    stats.add_argument("--since", metavar="DATE", help="first day, YYYY-MM-DD")
    stats.add_argument("--until", metavar="DATE", help="last day, YYYY-MM-DD (default: today)")
    fmt = stats.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="the report as JSON")
    fmt.add_argument("--csv", action="store_true", help="CSV: per day, or the --by breakdown")
    stats.add_argument("--by", choices=sorted(BREAKDOWNS), help="one breakdown only")
    stats.add_argument(
        "--timezone",
        metavar="TZ",
        help="IANA zone for 'today' (default: $TRACKMW_TIMEZONE, then UTC)",
    )

    export = sub.add_parser("export", help="print everything held about a visitor (JSON)")
    store_arg(export)
    export.add_argument("--visitor", required=True, metavar="ID")

    erase = sub.add_parser("erase", help="erase everything held about a visitor")
    store_arg(erase)
    erase.add_argument("--visitor", required=True, metavar="ID")
    erase.add_argument("--user", metavar="USER_ID", help="also erase this linked user's rows")

    purge = sub.add_parser("purge", help="delete events older than DAYS days")
    store_arg(purge)
    purge.add_argument("--older-than", required=True, type=int, metavar="DAYS")
    purge.add_argument(
        "--timezone",
        metavar="TZ",
        help="IANA zone for 'today' (default: $TRACKMW_TIMEZONE, then UTC)",
    )
    return parser


def _version() -> str:
    from . import __version__

    return __version__


def _zone(name: str | None) -> ZoneInfo:
    name = name or os.environ.get("TRACKMW_TIMEZONE") or "UTC"
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(f"--timezone: {name!r} is not an IANA time zone name") from None


def _open(url: str | None) -> Store:
    url = url or os.environ.get("TRACKMW_STORE") or DEFAULT_STORE
    try:
        if url.lower().startswith("sqlite://"):
            from .stores.sqlite import SQLiteStore

            path = SQLiteStore.path_of(url)
            if path != ":memory:" and not os.path.exists(path):
                raise UsageError(f"--store: {path} does not exist (is the URL right?)")
        return open_store(url)
    except ConfigurationError as exc:
        raise UsageError(f"--store: {exc}") from None


def _with_progress(work: Callable[[], T], stream: TextIO, label: str) -> T:
    """Run ``work``; if it takes over a second and ``stream`` is a terminal, show a spinner."""
    if not stream.isatty():
        return work()
    done = threading.Event()

    def spin() -> None:
        if done.wait(1.0):
            return
        start = time.monotonic()
        frames = "|/-\\"
        i = 0
        while not done.wait(0.1):
            stream.write(f"\r{frames[i % 4]} {label} ({time.monotonic() - start + 1:.0f}s)")
            stream.flush()
            i += 1
        stream.write("\r" + " " * (len(label) + 12) + "\r")
        stream.flush()

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    try:
        return work()
    finally:
        done.set()
        spinner.join()


# -- output -----------------------------------------------------------------------------


def _can_encode(stream: TextIO, text: str) -> bool:
    try:
        text.encode(stream.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def sparkline(values: Sequence[int], bars: str = BARS) -> str:
    """One character per value, from the lowest bar to the highest.

    >>> sparkline([0, 1, 2, 4, 8])
    '▁▂▃▅█'
    """
    top = max(values, default=0)
    if top <= 0:
        return bars[0] * len(values)
    steps = len(bars) - 1
    return "".join(bars[round(v * steps / top)] if v else bars[0] for v in values)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], numeric: set[int]) -> list[str]:
    cells = [[str(h) for h in headers]] + [
        [f"{v:,}" if isinstance(v, int) else str(v) for v in row] for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = []
    for n, row in enumerate(cells):
        parts = [
            c.rjust(widths[i]) if i in numeric else c.ljust(widths[i]) for i, c in enumerate(row)
        ]
        out.append("  ".join(parts).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def render_text(report: Report, by: str | None, unicode: bool) -> str:
    """The report for people: totals, per-day chart, aligned tables."""
    doc = report.to_dict()
    lines: list[str] = []
    if by is None:
        lines.append(f"Visitors from {doc['since']} to {doc['until']}")
        lines.append("")
        totals = [
            ("page views", doc["pageviews"]),
            ("visitors", doc["visitors"]),
            ("registered visitors", doc["registered_visitors"]),
            ("anonymous page views", doc["anonymous_pageviews"]),
            ("bot hits", doc["bot_hits"]),
            ("consent accepted", doc["consent"]["accepted"]),
            ("consent rejected", doc["consent"]["rejected"]),
        ]
        width = max(len(f"{v:,}") for _, v in totals)
        lines += [f"  {v:>{width},}  {label}" for label, v in totals]
        days = doc["days"]
        bars = BARS if unicode else " .:-=+*#"
        lines.append("")
        lines.append("page views  " + sparkline([d["pageviews"] for d in days], bars))
        lines.append("visitors    " + sparkline([d["visitors"] for d in days], bars))
        if len(days) <= 62:
            lines.append("")
            lines += _day_bars(days, "█" if unicode else "#")
        for kind in BREAKDOWNS:
            lines.append("")
            lines += _breakdown(doc, kind)
    else:
        lines += _breakdown(doc, by)
    return "\n".join(lines) + "\n"


def _day_bars(days: list[dict[str, Any]], block: str) -> list[str]:
    top = max((d["pageviews"] for d in days), default=0) or 1
    rows = [
        (d["day"], d["pageviews"], d["visitors"], block * round(30 * d["pageviews"] / top))
        for d in days
    ]
    return _table(("day", "page views", "visitors", ""), rows, {1, 2})


def _breakdown(doc: dict[str, Any], kind: str) -> list[str]:
    field, name_col, name_key, counts = BREAKDOWNS[kind]
    rows = doc[field]
    title = f"{field} ({doc['since']} to {doc['until']})"
    if not rows:
        return [title, "  (none)"]
    headers = (name_col, *(c.replace("pageviews", "page views") for c in counts))
    table = _table(
        headers, [(r[name_key], *(r[c] for c in counts)) for r in rows], set(range(1, len(headers)))
    )
    return [title, *table]


def write_csv(report: Report, by: str | None, out: TextIO) -> None:
    """Per-day rows, or the rows of one breakdown."""
    doc = report.to_dict()
    writer = csv.writer(out, lineterminator="\n")
    if by is None:
        writer.writerow(["day", "pageviews", "visitors"])
        writer.writerows([d["day"], d["pageviews"], d["visitors"]] for d in doc["days"])
        return
    field, name_col, name_key, counts = BREAKDOWNS[by]
    writer.writerow([name_col, *counts])
    writer.writerows([r[name_key], *(r[c] for c in counts)] for r in doc[field])


# -- commands ------------------------------------------------------------------------------


def _stats(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    tz = _zone(args.timezone)
    try:
        since, until = report_range(args.since, args.until, tz=tz)
    except RangeError as exc:
        raise UsageError(str(exc)) from None
    store = _open(args.store)
    try:
        report = _with_progress(lambda: store.report(since, until), err, "computing the report")
    finally:
        store.close()
    if args.json:
        doc = report.to_dict()
        data = doc[BREAKDOWNS[args.by][0]] if args.by else doc
        out.write(json.dumps(data, ensure_ascii=False) + "\n")
    elif args.csv:
        write_csv(report, args.by, out)
    else:
        out.write(render_text(report, args.by, _can_encode(out, BARS)))
    return 0


def _export(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    store = _open(args.store)
    try:
        data = store.visitor_data(args.visitor)
    finally:
        store.close()
    out.write(json.dumps({"id": args.visitor, **data}, ensure_ascii=False, indent=2) + "\n")
    return 0


def _erase(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    store = _open(args.store)
    try:
        removed = store.erase(args.visitor, args.user)
    finally:
        store.close()
    who = f"visitor {args.visitor}" + (f" and user {args.user}" if args.user else "")
    out.write(f"erased {removed} record{'s' if removed != 1 else ''} of {who}\n")
    return 0


def _purge(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.older_than < 0:
        raise UsageError("--older-than: must be 0 or more days")
    try:
        before = days_before(today(_zone(args.timezone)), args.older_than)
    except ValueError as exc:
        raise UsageError(f"--older-than: {exc}") from None
    store = _open(args.store)
    try:
        removed = store.purge(before)
    finally:
        store.close()
    out.write(f"purged {removed} record{'s' if removed != 1 else ''} from before {before}\n")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, TextIO, TextIO], int]] = {
    "stats": _stats,
    "export": _export,
    "erase": _erase,
    "purge": _purge,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``trackmw`` with ``argv`` (default: the process's arguments); the exit status."""
    out, err = sys.stdout, sys.stderr
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return COMMANDS[args.command](args, out, err)
    except UsageError as exc:
        err.write(f"trackmw {args.command}: {exc}\n")
        return 2
    except StoreError as exc:
        err.write(f"trackmw {args.command}: the store failed: {exc}\n")
        return 1
    except BrokenPipeError:  # e.g. piped into head
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
