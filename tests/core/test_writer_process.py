"""``writer="process"``: the writer in a child process loses nothing and writes what the
thread would (trackmw.writer).

Real child processes and real SQLite files throughout; the faults are real too: the
child killed with SIGKILL, the parent killed with SIGKILL, a store that cannot be opened.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from trackmw import Tracker
from trackmw.errors import ConfigurationError, StoreError
from trackmw.events import ConsentChoice, Hit
from trackmw.writer import ProcessSink

from ..conftest import SECRET, alive, wait_for, writer_processes
from .harness import BROWSER_UA

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="POSIX signals, and /proc to see a child end"
)


def hit(i: int, visitor: str = "v" * 22, user: str | None = None) -> Hit:
    return Hit(time.time(), visitor, user, f"/p{i % 3}", None, None, BROWSER_UA, "testserver")


def tracker_on(db: Path, **settings: Any) -> Tracker:
    settings.setdefault("flush_interval", 3600)  # the tests flush themselves
    return Tracker(secret_keys=[SECRET], store=f"sqlite:///{db}", writer="process", **settings)


def process_script(db: Path, body: str) -> str:
    """A script for a process of its own: a tracker on ``db`` with a writer process
    (``tracker``, its ``sink``, ``hit()`` to make a hit), then ``body``."""
    prelude = f"""
        import os, signal, time
        import trackmw.writer
        from trackmw import Tracker
        from trackmw.events import Hit
        tracker = Tracker(secret_keys=[{SECRET!r}], store={f"sqlite:///{db}"!r},
                          writer="process", flush_interval=3600)
        sink = tracker.pipeline.sink
        def hit(agent="Mozilla/5.0"):
            return Hit(time.time(), "v" * 22, None, "/a", None, None, agent, "h")
    """
    return textwrap.dedent(prelude) + textwrap.dedent(body)


def dead(pid: int) -> bool:
    """Has ``pid`` ended (a zombie, not yet reaped by its parent, or gone)?"""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def written_after_the_parent_is_killed(db: Path, script: str) -> int:
    """Run ``script``, which prints its writer process's pid and kills itself; once
    the orphaned child has finished, the page views in ``db``."""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == -signal.SIGKILL, run.stderr
    child = int(run.stdout.strip())
    wait_for(lambda: not alive(child), "the orphaned child to finish", timeout=60)
    reader = Tracker(secret_keys=[SECRET], store=f"sqlite:///{db}")
    try:
        return reader.stats().pageviews
    finally:
        reader.close()


def site_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scheme: str, source: str) -> None:
    """Register, for ``scheme://`` URLs, the store class that ``source`` defines (with
    ``os``, ``time``, ``StoreError`` and ``SQLiteStore`` at hand) in a module on this
    process's import path only, as a site registers its own."""
    module = f"site_store_{scheme}"
    prelude = """
        import os, time
        from trackmw.errors import StoreError
        from trackmw.stores.sqlite import SQLiteStore
    """
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(prelude) + textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))  # not in the environment: the child's
    from trackmw.stores import base, register

    name = textwrap.dedent(source).split("class ", 1)[1].split("(", 1)[0]
    monkeypatch.setitem(base._REGISTRY, scheme, f"{module}:{name}")  # undone after
    register(scheme, f"{module}:{name}")


def sink_of(tracker: Tracker) -> ProcessSink:
    sink = tracker.pipeline.sink
    assert isinstance(sink, ProcessSink)
    return sink


def test_a_child_process_normalizes_and_writes_what_the_thread_would(tmp_path: Path) -> None:
    hits = [hit(i, visitor=f"visitor-{i % 4:017d}", user="u1" if i % 4 == 0 else None)
            for i in range(60)]
    choice = ConsentChoice(time.time(), "2026-11-28", "c" * 22, True, False, "1")
    reports = {}
    for writer in ("thread", "process"):
        db = tmp_path / f"{writer}.db"
        tracker = Tracker(secret_keys=[SECRET], store=f"sqlite:///{db}", writer=writer,
                          flush_interval=3600)
        for h in hits:
            tracker.pipeline.add(h)
        tracker.pipeline.add(choice)
        assert tracker.flush()
        assert tracker.pipeline.written == 61
        reports[writer] = tracker.stats().to_dict()
        if writer == "process":
            pid = sink_of(tracker).pid
            assert pid is not None and pid != os.getpid() and alive(pid)
            assert tracker.visitor_data("visitor-" + "0" * 17)["pageviews"]
        assert tracker.close()
    assert reports["process"]["pageviews"] == 60
    assert reports["process"]["consent"] == {"accepted": 1, "rejected": 0}
    assert reports["process"] == reports["thread"]


def test_close_ends_the_child_and_a_later_batch_starts_another(tmp_path: Path) -> None:
    tracker = tracker_on(tmp_path / "x.db")
    tracker.pipeline.add(hit(0))
    assert tracker.flush()
    first = sink_of(tracker).pid
    assert first is not None
    assert tracker.close()
    assert sink_of(tracker).pid is None
    assert not alive(first)  # exited, and reaped
    tracker.pipeline.add(hit(1))
    assert tracker.flush()
    second = sink_of(tracker).pid
    assert second is not None and second != first
    assert tracker.stats().pageviews == 2
    assert tracker.close()


def test_an_erasure_waits_for_the_child_and_nothing_comes_back(tmp_path: Path) -> None:
    tracker = tracker_on(tmp_path / "x.db")
    gone, kept = "g" * 22, "k" * 22
    for i in range(10):
        tracker.pipeline.add(hit(i, visitor=gone))
        tracker.pipeline.add(hit(i, visitor=kept))
    assert tracker.flush()  # written by the child
    for i in range(5):
        tracker.pipeline.add(hit(i, visitor=gone))  # still buffered here
    sink = sink_of(tracker)
    sink.send([hit(9, visitor=gone)], [])  # taken by the child, maybe held by its store
    assert tracker.erase(gone) == 16
    assert tracker.flush()
    assert tracker.visitor_data(gone)["pageviews"] == []
    assert tracker.stats().pageviews == 10
    assert tracker.close()


def test_a_killed_child_is_replaced_and_what_it_took_is_written_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tracker = tracker_on(tmp_path / "x.db")
    sink = sink_of(tracker)
    sink.send([hit(i) for i in range(10)], [])  # the child's; its store holds them
    first = sink.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: dead(first), "the child to die")
    for i in range(10, 15):
        tracker.pipeline.add(hit(i))
    with caplog.at_level(logging.WARNING, logger="trackmw"):
        assert tracker.flush()  # a new child: the dead one's batch first, then these
    assert f"writer process {first} exited (code -9); starting another" in caplog.text
    assert sink.pid not in (None, first)
    assert tracker.stats().pageviews == 15
    assert sink.held() == 0
    assert tracker.close()


def test_what_a_child_wrote_is_not_sent_to_the_next(tmp_path: Path) -> None:
    tracker = tracker_on(tmp_path / "x.db")
    for i in range(5):
        tracker.pipeline.add(hit(i))
    assert tracker.flush()  # written: the sink owes nothing
    first = sink_of(tracker).pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: dead(first), "the child to die")
    assert sink_of(tracker).held() == 0
    tracker.pipeline.add(hit(5))
    assert tracker.flush()  # in a new child, sent only the new hit
    assert tracker.stats().pageviews == 6
    assert tracker.close()


def test_a_child_whose_parent_is_killed_writes_what_it_holds(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    script = process_script(db, """
        sink.send([hit()] * 25, [])
        print(sink.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # no atexit, no close
    """)
    assert written_after_the_parent_is_killed(db, script) == 25


def test_the_child_ignores_the_signals_sent_to_its_process_group(tmp_path: Path) -> None:
    tracker = tracker_on(tmp_path / "x.db")
    tracker.pipeline.add(hit(0))
    assert tracker.flush()
    pid = sink_of(tracker).pid
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    os.kill(pid, signal.SIGINT)
    tracker.pipeline.add(hit(1))
    assert tracker.flush()
    assert sink_of(tracker).pid == pid  # the same child
    assert tracker.stats().pageviews == 2
    assert tracker.close()


def test_the_childs_store_errors_are_logged_here_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "not-yet"
    tracker = tracker_on(missing / "x.db")
    for i in range(3):
        tracker.pipeline.add(hit(i))
    with caplog.at_level(logging.ERROR, logger="trackmw"):
        assert not tracker.pipeline.flush()
    assert len(tracker.pipeline) == 3  # kept
    assert any("x.db" in r.getMessage() for r in caplog.records), caplog.text
    missing.mkdir()
    assert tracker.pipeline.flush()
    assert tracker.stats().pageviews == 3
    assert tracker.close()


def test_a_child_that_cannot_start_leaves_the_events_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    tracker = tracker_on(tmp_path / "x.db")
    tracker.pipeline.add(hit(0))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))
    with caplog.at_level(logging.ERROR, logger="trackmw"):
        assert not tracker.flush()
    assert "could not start the writer process" in caplog.text
    assert len(tracker.pipeline) == 1
    monkeypatch.undo()
    assert tracker.flush()
    assert tracker.stats().pageviews == 1
    assert tracker.close()


def test_what_a_site_hook_prints_as_the_child_starts_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(
        "import sys\nprint('hello from a site hook', flush=True)\n"
        "sys.stdout.buffer.write(bytes(range(256)))\nsys.stdout.flush()\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(hooks))  # the child's environment
    tracker = tracker_on(tmp_path / "x.db")
    tracker.pipeline.add(hit(0))
    assert tracker.flush()
    assert tracker.stats().pageviews == 1
    assert tracker.close()


def test_a_child_whose_replies_carry_something_else_is_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tracker = tracker_on(tmp_path / "x.db")
    tracker.pipeline.add(hit(0))
    assert tracker.flush()
    sink = sink_of(tracker)
    first = sink.pid
    assert first is not None and sink._proc is not None and sink._proc.stdout is not None
    # Write into the replies' pipe as a stray print in the child would (a 4 GB length).
    pipe = os.readlink(f"/proc/self/fd/{sink._proc.stdout.fileno()}")
    (fd,) = [f for f in os.listdir(f"/proc/{first}/fd")
             if os.readlink(f"/proc/{first}/fd/{f}") == pipe]
    with open(f"/proc/{first}/fd/{fd}", "wb") as stray:
        stray.write(b"\xff\xff\xff\xff\xff and more")
    tracker.pipeline.add(hit(1))
    with caplog.at_level(logging.WARNING, logger="trackmw"):
        assert tracker.flush()  # not stuck reading 4 GB: a new child
    assert f"writer process {first} answered out of turn" in caplog.text
    assert sink.pid not in (None, first)
    assert dead(first)
    assert tracker.stats().pageviews == 2
    assert tracker.close()


def test_the_childs_log_records_reach_this_process(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tracker = tracker_on(tmp_path / "x.db")
    bad = Hit(time.time(), "v" * 22, None, "/a", None, None, BROWSER_UA, "h")._replace(ts=1e300)
    tracker.pipeline.add(bad)  # cannot be normalized: logged and left out, in the child
    tracker.pipeline.add(hit(0))
    with caplog.at_level(logging.ERROR, logger="trackmw"):
        assert tracker.flush()
    assert "could not be normalized" in caplog.text
    assert tracker.pipeline.written == 1  # as the thread counts: the one written
    assert tracker.stats().pageviews == 1
    assert tracker.close()


def test_a_forked_process_starts_its_own_child(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    script = process_script(db, """
        tracker.pipeline.add(hit())
        assert tracker.flush()
        parents = tracker.pipeline.sink.pid
        pid = os.fork()
        if pid == 0:
            for _ in range(3):
                tracker.pipeline.add(hit())
            ok = tracker.flush()
            mine = tracker.pipeline.sink.pid
            ok = ok and mine not in (None, parents) and tracker.close()
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        tracker.pipeline.add(hit())
        assert tracker.flush()
        assert tracker.pipeline.sink.pid == parents
        assert tracker.stats().pageviews == 5
        assert tracker.close()
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


@pytest.mark.parametrize("store", ["memory://", "sqlite:///:memory:"])
def test_a_store_in_this_process_cannot_have_a_writer_process(store: str) -> None:
    with pytest.raises(ConfigurationError, match="writer"):
        Tracker(secret_keys=[SECRET], store=store, writer="process")


def test_the_writer_setting_is_checked_and_read_from_the_environment(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="writer"):
        Tracker(secret_keys=[SECRET], store="memory://", writer="fork")
    tracker = Tracker.from_env(
        {"TRACKMW_SECRET_KEYS": SECRET, "TRACKMW_STORE": f"sqlite:///{tmp_path}/x.db",
         "TRACKMW_WRITER": "process"}
    )
    assert tracker.settings.writer == "process"
    assert isinstance(tracker.pipeline.sink, ProcessSink)
    assert Tracker(secret_keys=[SECRET], store="memory://").settings.writer == "thread"
    tracker.close()


# -- faults found by review ------------------------------------------------------------------


def test_a_child_whose_parent_dies_waiting_for_a_reply_writes_what_it_holds(
    tmp_path: Path,
) -> None:
    db = tmp_path / "x.db"
    script = process_script(db, """
        for b in range(4):
            sink.send([hit()] * 1000, [])  # held by the child's store
        print(sink.pid, flush=True)
        def killed(*args):  # dies as the request is sent, before its reply is read
            os.kill(os.getpid(), signal.SIGKILL)
        trackmw.writer._read_exact = killed
        # 1,000 User-Agents the child has not seen: it is still at work when this dies
        agents = [f"Mozilla/5.0 (X11; Linux x86_64) Chrome/{i}.0" for i in range(1000)]
        sink.send([hit(agent) for agent in agents], [])
    """)
    assert written_after_the_parent_is_killed(db, script) == 5000


def test_a_backlog_sent_to_a_child_that_dies_midway_is_written_once(tmp_path: Path) -> None:
    tracker = tracker_on(tmp_path / "x.db")
    pipeline = tracker.pipeline
    for b in range(12):
        for i in range(1000):
            pipeline._buffer.append(hit(i)._replace(page=f"/batch{b:02d}"))
    sink = sink_of(tracker)
    send, sent = sink.send, []

    def dies_before_the_eighth(pageviews: Any, consents: Any) -> None:
        sent.append(len(pageviews))
        if len(sent) == 8:
            os.kill(sink.pid or 0, signal.SIGKILL)
            wait_for(lambda: dead(sink.pid or 0), "the child to die")
        send(pageviews, consents)

    sink.send = dies_before_the_eighth  # type: ignore[method-assign]
    assert tracker.flush()
    report = tracker.stats()
    assert report.pageviews == 12_000
    assert {p["path"]: p["pageviews"] for p in report.to_dict()["pages"]} == {
        f"/batch{b:02d}": 1000 for b in range(12)
    }
    assert tracker.close()


def test_a_resend_that_fails_ends_the_new_child_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A SQLite store that refuses batches while a file says it is down (the fault: a
    # store that refuses the batches a new child is sent again).
    site_store(tmp_path, monkeypatch, "refusing", """
        class RefusingStore(SQLiteStore):
            def send(self, pageviews, consents):
                if os.path.exists(self.path_of(self.url) + ".down"):
                    raise StoreError("down for a moment")
                super().send(pageviews, consents)
    """)
    db = tmp_path / "x.db"
    tracker = Tracker(secret_keys=[SECRET], store=f"refusing:///{db}", writer="process",
                      flush_interval=3600)
    sink = sink_of(tracker)
    # The child's store holds up to 5,000 events: the third batch has it write the first
    # two, and hold the third.
    for b in range(3):
        sink.send([hit(i)._replace(page=f"/batch{b}") for i in range(2000)], [])
    first = sink.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: dead(first), "the child to die")
    down = tmp_path / "x.db.down"
    down.touch()
    with caplog.at_level(logging.ERROR, logger="trackmw"), pytest.raises(StoreError, match="down"):
        sink.sync()  # a new child, which refuses what it is sent again: ended
    assert sink.pid is None
    assert sink.held() == 2000  # still owed: not counted as written
    down.unlink()
    sink.sync()  # another one, sent the third batch again (the first two were written)
    report = tracker.stats()
    assert {p["path"]: p["pageviews"] for p in report.to_dict()["pages"]} == {
        f"/batch{b}": 2000 for b in range(3)
    }
    assert tracker.close()


def test_a_tracker_that_records_nothing_starts_no_child(tmp_path: Path) -> None:
    before = writer_processes(os.getpid())
    tracker = tracker_on(tmp_path / "x.db")
    assert tracker.stats().pageviews == 0
    assert tracker.flush()
    assert tracker.visitor_data("v" * 22)["pageviews"] == []
    assert sink_of(tracker).pid is None
    assert writer_processes(os.getpid()) <= before
    assert tracker.close()
    assert writer_processes(os.getpid()) <= before


def test_a_store_registered_here_is_found_by_the_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site_store(tmp_path, monkeypatch, "audited", """
        class AuditedStore(SQLiteStore):
            def send(self, pageviews, consents):
                with open(self.path_of(self.url) + ".audit", "a") as fh:
                    fh.write(f"{len(pageviews)}\\n")
                super().send(pageviews, consents)
    """)
    db = tmp_path / "x.db"
    tracker = Tracker(secret_keys=[SECRET], store=f"audited:///{db}", writer="process",
                      flush_interval=3600)
    for i in range(7):
        tracker.pipeline.add(hit(i))
    assert tracker.flush()
    assert (tmp_path / "x.db.audit").read_text() == "7\n"  # written by the child
    assert tracker.stats().pageviews == 7
    assert tracker.close()


def test_settings_of_str_subclasses_reach_the_child(tmp_path: Path) -> None:
    class Text(str):
        pass

    tracker = Tracker(secret_keys=[SECRET], store=Text(f"sqlite:///{tmp_path}/x.db"),
                      writer="process", exclude_paths=(Text("/static"),), flush_interval=3600)
    tracker.pipeline.add(hit(0)._replace(page=Text("/a"), host=Text("h")))
    assert tracker.flush()
    assert tracker.stats().pageviews == 1
    assert tracker.close()


def test_a_child_that_stops_answering_is_ended_and_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import trackmw.writer

    monkeypatch.setattr(trackmw.writer, "REPLY_WAIT", 1.0)
    tracker = tracker_on(tmp_path / "x.db")
    tracker.pipeline.add(hit(0))
    assert tracker.flush()
    stopped = sink_of(tracker).pid
    assert stopped is not None
    os.kill(stopped, signal.SIGSTOP)  # hung: alive, and silent
    tracker.pipeline.add(hit(1))
    with caplog.at_level(logging.WARNING, logger="trackmw"):
        assert tracker.flush()
    assert f"writer process {stopped} did not answer in 1s" in caplog.text
    assert dead(stopped)
    assert tracker.stats().pageviews == 2
    assert tracker.close()


def test_the_child_gets_no_secret_through_its_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRACKMW_SECRET_KEYS", SECRET)
    monkeypatch.setenv("TRACKMW_DASHBOARD_TOKEN", "a-dashboard-token-0123")
    monkeypatch.setenv("TRACKMW_STORE", f"sqlite:///{tmp_path}/x.db")
    monkeypatch.setenv("TRACKMW_WRITER", "process")
    tracker = Tracker.from_env()
    tracker.pipeline.add(hit(0))
    assert tracker.flush()
    pid = sink_of(tracker).pid
    with open(f"/proc/{pid}/environ", "rb") as fh:
        environ = fh.read()
    assert b"TRACKMW_" not in environ and SECRET.encode() not in environ
    assert b"a-dashboard-token-0123" not in environ
    assert tracker.close()


def test_an_interpreter_that_cannot_start_the_child_is_said_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    tracker = tracker_on(tmp_path / "x.db")
    tracker.pipeline.add(hit(0))
    monkeypatch.setattr(sys, "frozen", True, raising=False)  # as PyInstaller sets it
    with caplog.at_level(logging.ERROR, logger="trackmw"):
        assert not tracker.flush()
    assert "cannot start the writer process; use writer='thread'" in caplog.text
    monkeypatch.undo()
    assert tracker.flush()
    assert tracker.close()


def test_a_process_with_many_files_open_still_writes(tmp_path: Path) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"this machine allows {hard} open files; the test needs 1,200")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    opened = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]  # a busy server's
    try:
        tracker = tracker_on(tmp_path / "x.db")
        tracker.pipeline.add(hit(0))
        assert tracker.flush()  # the child's pipes are past fd 1,024
        proc = sink_of(tracker)._proc
        assert proc is not None and proc.stdout is not None and proc.stdout.fileno() > 1024
        assert tracker.stats().pageviews == 1
        assert tracker.close()
    finally:
        for fd in opened:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_child_at_work_longer_than_the_wait_is_not_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import trackmw.writer

    monkeypatch.setattr(trackmw.writer, "REPLY_WAIT", 1.0)
    site_store(tmp_path, monkeypatch, "slow", """
        class SlowStore(SQLiteStore):  # as a long schema upgrade on the first write
            def send(self, pageviews, consents):
                time.sleep(3)
                super().send(pageviews, consents)
    """)
    tracker = Tracker(secret_keys=[SECRET], store=f"slow:///{tmp_path}/x.db", writer="process",
                      flush_interval=3600)
    tracker.pipeline.add(hit(0))
    with caplog.at_level(logging.WARNING, logger="trackmw"):
        assert tracker.flush()  # 3 s of work, saying so each quarter of a second
    assert "did not answer" not in caplog.text
    assert tracker.stats().pageviews == 1
    assert tracker.close()


def test_a_dead_childs_requests_do_not_kill_a_process_that_dies_of_sigpipe(
    tmp_path: Path,
) -> None:
    script = process_script(tmp_path / "x.db", """
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # as some command-line apps do
        tracker.pipeline.add(hit())
        assert tracker.flush()
        first = sink.pid
        os.kill(first, signal.SIGKILL)
        while open(f"/proc/{first}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
            time.sleep(0.01)  # dead: its end of the requests' channel is closed
        tracker.pipeline.add(hit())
        assert tracker.flush()  # an error, then a new child: not a SIGPIPE
        assert sink.pid != first
        assert tracker.stats().pageviews == 2
        assert tracker.close()
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, (run.returncode, run.stderr)
