"""Over the wire, in instructions: each wire target's whole server process under
callgrind, loaded by ``wrk``, and its count divided by the requests served.

The wire section's timed figures are what the targets are about, but on a shared VM
they move by tens of percent from one ``wrk`` run to the next (the VM's speed swings
within seconds), so that a ratio of a few percent is hard to see in them. What the
server spends on a request, counted by callgrind, repeats from run to run: everything
the process runs, uvloop, httptools, the app, trackmw's writer thread and the SQLite
library included. It is not time: a cache miss or a system call counts as nothing more
than its instructions, and the kernel's work is not counted at all.

For each server (``VARIANTS``): start it under ``valgrind --tool=callgrind
--separate-threads=yes``, load it with ``wrk`` long enough for its caches, its writer
and the writer's User-Agent parser to warm up, wait until it is idle, zero the counters
(``callgrind_control -z``), run ``wrk -t1 -c8``, wait for the writer to write that
run's hits (its flush interval, then idle again), dump the counters
(``callgrind_control -d``) and divide their total by the requests ``wrk`` counted. The
threads other than the main one are reported on their own: in a tracked server, that is
the writer.

Under callgrind the server runs some fifty times slower, so the writer finds fewer hits
at each flush than at full speed (a few hundred instead of a batch of 1,000): its
per-batch work is shared by fewer hits, and the writer's share is, if anything, larger
here than at full speed.

``python -m bench --only wire-instructions`` (not part of a plain ``make bench``: it
takes about six minutes), or ``python -m bench.wire_instructions``. Needs ``valgrind``
(with ``callgrind_control``) and ``wrk`` (``apt-get install valgrind wrk``); without
them the section is skipped with a note.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from . import wire

#: The servers counted: each wire target with its baseline, and the floor for any
#: middleware.
VARIANTS = (
    "wire.asgi.bare",
    "wire.asgi.noop",
    "wire.asgi.trackmw",
    "wire.gif.raw",
    "wire.pixel",
    "wire.pixel.wrapped",
    "wire.pixel.process",
)
CONNECTIONS = 8
#: A server under callgrind may take a minute or more to start on a slow VM.
START_TIMEOUT = 300.0

_TOTALS = re.compile(r"^totals:\s+(\d+)", re.MULTILINE)
_REQUESTS = re.compile(r"(\d+) requests in ")


class Unavailable(Exception):
    """Valgrind, callgrind_control or wrk is not installed, or a count failed."""


def dump_totals(text: str) -> int:
    """The instructions a callgrind dump file counted (its ``totals:`` line)."""
    found = _TOTALS.search(text)
    if found is None:
        raise Unavailable("no totals line in callgrind's dump")
    return int(found.group(1))


def requests_served(wrk_output: str) -> int:
    """The requests a ``wrk`` run counted, from what it printed."""
    found = _REQUESTS.search(wrk_output)
    if found is None:
        raise Unavailable(f"could not read wrk's output: {wrk_output[-500:]!r}")
    return int(found.group(1))


def thread_dumps(out_dir: Path, pid: int) -> dict[int, Path]:
    """The files of callgrind's first dump of process ``pid``, by thread number (1 is
    the main thread): ``cg.<pid>.1-<thread>``."""
    found = {}
    for path in out_dir.glob(f"cg.{pid}.1-*"):
        thread = path.name.rsplit("-", 1)[1]
        if thread.isdigit():
            found[int(thread)] = path
    return found


def _tools() -> tuple[str, str]:
    valgrind, control = shutil.which("valgrind"), shutil.which("callgrind_control")
    if valgrind is None or control is None:
        raise Unavailable("valgrind is not installed (apt-get install valgrind)")
    if not Path(wire.WRK).exists():
        raise Unavailable("wrk is not installed (apt-get install wrk)")
    return valgrind, control


def count(server: wire.Server, store_dir: str, warm: int, seconds: int,
          log: Callable[[str], None] = print) -> tuple[float, float]:
    """(instructions a request, of which in threads other than the main one) of
    ``server``, run under callgrind as the module's docstring says."""
    valgrind, control = _tools()
    with tempfile.TemporaryDirectory(prefix="trackmw-cgwire-") as out:
        out_dir = Path(out)
        counted = dataclasses.replace(server, command=[
            valgrind, "--tool=callgrind", "--separate-threads=yes",
            f"--callgrind-out-file={out_dir}/cg.%p", *server.command])
        try:
            wire.start([counted], store_dir, START_TIMEOUT)
            assert counted.proc is not None
            pid = counted.proc.pid
            wire.wrk(counted, warm, CONNECTIONS)
            _idle(counted)
            subprocess.run([control, "-z", str(pid)], check=True, capture_output=True)
            served = requests_served(wire.wrk(counted, seconds, CONNECTIONS))
            # The writer writes what is left of the run at its next flush (every second
            # by default), then the server is idle again.
            time.sleep(2.0)
            _idle(counted)
            subprocess.run([control, "-d", str(pid)], check=True, capture_output=True)
            totals = _wait_for_dumps(out_dir, pid)
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            raise Unavailable(f"{server.name}: {exc}") from exc
        finally:
            wire.stop([counted])
    main = totals.get(1)
    if main is None or served <= 0:
        raise Unavailable(f"{server.name}: no count for the main thread ({sorted(totals)})")
    others = sum(n for thread, n in totals.items() if thread != 1)
    log(f"  {server.name}: {served:,} requests, {(main + others) / served / 1000:.1f}k "
        "instructions each")
    return (main + others) / served, others / served


def _idle(server: wire.Server) -> None:
    """Wait until the server has been idle a moment (slowly, as under callgrind)."""
    wire.settle([server], timeout=60.0)


def _wait_for_dumps(out_dir: Path, pid: int, timeout: float = 60.0) -> dict[int, int]:
    """The first dump's totals by thread, once callgrind has written every thread's
    file to its end (its ``totals:`` line) and the main thread's is among them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            totals = {thread: dump_totals(path.read_text())
                      for thread, path in thread_dumps(out_dir, pid).items()}
        except Unavailable:  # a file still being written
            totals = {}
        if 1 in totals:
            return totals
        time.sleep(0.5)
    raise Unavailable(f"callgrind wrote no dump for process {pid}")


def run(store_dir: str, quick: bool = False,
        log: Callable[[str], None] = print) -> dict[str, tuple[wire.Server, float, float]]:
    """(server, instructions a request, of which outside the main thread) of each of
    ``VARIANTS``, one server at a time (``wrk`` and the server take a core each)."""
    warm, seconds = (3, 3) if quick else (8, 15)  # whole seconds, as wrk takes them
    servers = {s.name: s for s in wire.servers(store_dir)[0]}
    return {name: (servers[name], *count(servers[name], store_dir, warm, seconds, log))
            for name in VARIANTS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.wire_instructions",
                                     description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shorter runs: a smoke test")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="trackmw-cgwire-") as store_dir:
        counts = run(store_dir, args.quick)
    for name, (_, n, others) in counts.items():
        print(f"{name:20} {n / 1000:8.1f} k instructions/request ({others / 1000:.1f}k "
              "outside the main thread)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
