"""``trackmw``: stats as tables, JSON and CSV; export, erase and purge; errors.

Called as ``main([...])`` with a seeded SQLite file, and as the installed script.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from trackmw.cli import main
from trackmw.events import ConsentChoice, PageView
from trackmw.stores.sqlite import SQLiteStore

SCRIPT = Path(sys.executable).parent / "trackmw"
D1, D2 = "2026-11-10", "2026-11-11"


def pv(
    day: str,
    visitor: str | None,
    path: str,
    *,
    user: str | None = None,
    ref: str | None = None,
    camp: str | None = None,
    browser: str = "Chrome",
    os_name: str = "Windows",
    device: str = "desktop",
    bot: bool = False,
) -> PageView:
    ts = 1_794_312_000.0 + (86_400 if day == D2 else 0)
    if visitor is None:
        return PageView(ts, day, None, None, path, ref, camp, None, None, None, bot)
    return PageView(ts, day, visitor, user, path, ref, camp, browser, os_name, device, bot)


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """A SQLite file with a small, hand-countable report for 2026-11-10..11."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    store = SQLiteStore(url)
    store.write(
        [
            pv(D1, "vA", "/", ref="news.example.org"),
            pv(D1, "vA", "/about"),
            pv(
                D1,
                "vB",
                "/",
                user="alice",
                camp="mail-1",
                browser="Mobile Safari",
                os_name="iOS",
                device="mobile",
            ),
            pv(D1, None, "/", ref="t.co"),
            pv(D1, None, "/", bot=True),
            pv(D2, "vA", "/about"),
            pv(D2, "vD", "/", user="bob", browser="Mobile Safari", os_name="iOS", device="mobile"),
        ],
        [
            ConsentChoice(1_794_312_000.0, D1, "vA", True, True, "1"),
            ConsentChoice(1_794_312_000.0, D2, "vX", False, False, "1"),
        ],
    )
    store.close()
    return url


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_json_is_the_specs_document(capsys: pytest.CaptureFixture[str], store_url: str) -> None:
    code, out, _ = run(
        capsys, "stats", "--store", store_url, "--since", D1, "--until", D2, "--json"
    )
    assert code == 0
    doc = json.loads(out)
    assert list(doc) == [
        "since",
        "until",
        "pageviews",
        "visitors",
        "registered_visitors",
        "anonymous_pageviews",
        "bot_hits",
        "days",
        "pages",
        "browsers",
        "os",
        "devices",
        "referrers",
        "campaigns",
        "consent",
    ]
    assert (doc["pageviews"], doc["visitors"], doc["registered_visitors"]) == (6, 3, 2)
    assert (doc["anonymous_pageviews"], doc["bot_hits"]) == (1, 1)
    assert doc["days"] == [
        {"day": D1, "pageviews": 4, "visitors": 2},
        {"day": D2, "pageviews": 2, "visitors": 2},
    ]
    assert doc["pages"][0] == {"path": "/", "pageviews": 4, "visitors": 3}
    assert doc["consent"] == {"accepted": 1, "rejected": 1}


def test_the_table_is_aligned_with_a_per_day_chart(
    capsys: pytest.CaptureFixture[str], store_url: str
) -> None:
    code, out, _ = run(capsys, "stats", "--store", store_url, "--since", D1, "--until", D2)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"Visitors from {D1} to {D2}"
    assert "  6  page views" in lines and "  3  visitors" in lines
    assert "  1  bot hits" in lines and "  1  consent rejected" in lines
    spark = next(line for line in lines if line.startswith("page views  "))
    assert len(spark) == len("page views  ") + 2  # one mark per day
    # The per-day rows: the day, the counts right-aligned, a bar for the larger day.
    day_rows = [line for line in lines if line.startswith("2026-11-1")]
    assert len(day_rows) == 2
    assert day_rows[0].split()[:3] == [D1, "4", "2"] and day_rows[1].split()[:3] == [D2, "2", "2"]
    assert day_rows[0].index(" 4 ") == day_rows[1].index(" 2 ")  # right-aligned counts
    assert day_rows[0].count("█") == 30 and day_rows[1].count("█") == 15
    # Breakdown tables: columns line up under their headers.
    start = lines.index(f"pages ({D1} to {D2})")
    header, rule, first = lines[start + 1], lines[start + 2], lines[start + 3]
    assert header.split() == ["page", "page", "views", "visitors"]
    assert set(rule.replace(" ", "")) == {"-"}
    assert len(first) == len(header)
    assert first.split() == ["/", "4", "3"]


def test_by_prints_one_breakdown(capsys: pytest.CaptureFixture[str], store_url: str) -> None:
    code, out, _ = run(
        capsys, "stats", "--store", store_url, "--since", D1, "--until", D2, "--by", "browser"
    )
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("browsers")
    assert lines[3].split() == ["Mobile", "Safari", "2"]
    assert lines[4].split() == ["Chrome", "1"]
    assert "page views" not in out


@pytest.mark.parametrize(
    ("by", "field"),
    [
        ("page", "pages"),
        ("referrer", "referrers"),
        ("campaign", "campaigns"),
        ("browser", "browsers"),
        ("os", "os"),
        ("device", "devices"),
    ],
)
def test_by_with_json_prints_that_list(
    capsys: pytest.CaptureFixture[str], store_url: str, by: str, field: str
) -> None:
    _, full, _ = run(capsys, "stats", "--store", store_url, "--since", D1, "--until", D2, "--json")
    code, out, _ = run(
        capsys, "stats", "--store", store_url, "--since", D1, "--until", D2, "--json", "--by", by
    )
    assert code == 0
    assert json.loads(out) == json.loads(full)[field]


def test_csv_per_day(capsys: pytest.CaptureFixture[str], store_url: str) -> None:
    code, out, _ = run(capsys, "stats", "--store", store_url, "--since", D1, "--until", D2, "--csv")
    assert code == 0
    assert list(csv.reader(io.StringIO(out))) == [
        ["day", "pageviews", "visitors"],
        [D1, "4", "2"],
        [D2, "2", "2"],
    ]


def test_csv_of_a_breakdown(capsys: pytest.CaptureFixture[str], store_url: str) -> None:
    code, out, _ = run(
        capsys, "stats", "--store", store_url, "--since", D1, "--until", D2, "--csv", "--by", "page"
    )
    assert code == 0
    assert list(csv.reader(io.StringIO(out))) == [
        ["page", "pageviews", "visitors"],
        ["/", "4", "3"],
        ["/about", "2", "1"],
    ]


def test_store_defaults_to_trackmw_store(
    capsys: pytest.CaptureFixture[str], store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRACKMW_STORE", store_url)
    code, out, _ = run(capsys, "stats", "--since", D1, "--until", D2, "--json")
    assert code == 0 and json.loads(out)["pageviews"] == 6


def test_store_defaults_to_trackmw_db_in_the_current_directory(
    capsys: pytest.CaptureFixture[str],
    store_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TRACKMW_STORE", raising=False)
    monkeypatch.chdir(tmp_path)
    os.rename(tmp_path / "cli.db", tmp_path / "trackmw.db")
    code, out, _ = run(capsys, "stats", "--since", D1, "--until", D2, "--json")
    assert code == 0 and json.loads(out)["visitors"] == 3


def test_the_default_range_is_30_days_to_today_in_the_timezone(
    capsys: pytest.CaptureFixture[str], store_url: str
) -> None:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    zone = "Pacific/Kiritimati"
    before = datetime.now(ZoneInfo(zone)).date()
    code, out, _ = run(capsys, "stats", "--store", store_url, "--json", "--timezone", zone)
    after = datetime.now(ZoneInfo(zone)).date()
    doc = json.loads(out)
    until = date.fromisoformat(doc["until"])
    assert code == 0 and until in (before, after)
    assert date.fromisoformat(doc["since"]) == until - timedelta(days=29)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--since", "2026-13-01"], "since"),
        (["--until", "tomorrow"], "until"),
        (["--since", D2, "--until", D1], "after"),
        (["--timezone", "Mars/Olympus"], "time zone"),
        (["--until", "0001-01-05"], "no 30 days before it"),  # the calendar's first month
    ],
)
def test_bad_input_exits_2_with_a_clear_message(
    capsys: pytest.CaptureFixture[str], store_url: str, argv: list[str], message: str
) -> None:
    code, out, err = run(capsys, "stats", "--store", store_url, *argv)
    assert code == 2 and out == ""
    assert message in err and err.startswith("trackmw stats:")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("nosuch://x", "unknown scheme"),
        ("not a url", "not a store URL"),
        ("sqlite:///does/not/exist.db", "does not exist"),
    ],
)
def test_bad_store_urls_exit_2(capsys: pytest.CaptureFixture[str], url: str, message: str) -> None:
    code, _, err = run(capsys, "stats", "--store", url)
    assert code == 2 and message in err
    assert not os.path.exists("does/not/exist.db")


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--by", "planet"]) == 2
    assert main([]) == 2
    assert main(["stats", "--json", "--csv"]) == 2
    capsys.readouterr()


def test_export_prints_the_visitors_data(
    capsys: pytest.CaptureFixture[str], store_url: str
) -> None:
    code, out, _ = run(capsys, "export", "--store", store_url, "--visitor", "vA")
    assert code == 0
    doc = json.loads(out)
    assert doc["id"] == "vA"
    assert [p["page"] for p in doc["pageviews"]] == ["/", "/about", "/about"]
    assert len(doc["consents"]) == 1 and doc["consents"][0]["analytics"] is True


def test_erase_removes_the_visitor_and_says_how_much(
    capsys: pytest.CaptureFixture[str], store_url: str
) -> None:
    code, out, _ = run(capsys, "erase", "--store", store_url, "--visitor", "vA")
    assert code == 0 and out == "erased 4 records of visitor vA\n"  # 3 page views, 1 consent
    _, out, _ = run(capsys, "export", "--store", store_url, "--visitor", "vA")
    assert json.loads(out) == {"id": "vA", "pageviews": [], "consents": [], "user_ids": []}
    _, out, _ = run(capsys, "stats", "--store", store_url, "--since", D1, "--until", D2, "--json")
    doc = json.loads(out)
    assert (doc["pageviews"], doc["visitors"]) == (3, 2)


def test_erase_with_a_user_removes_its_rows_too(
    capsys: pytest.CaptureFixture[str], store_url: str
) -> None:
    code, out, _ = run(
        capsys, "erase", "--store", store_url, "--visitor", "nobody", "--user", "bob"
    )
    assert code == 0 and out == "erased 1 record of visitor nobody and user bob\n"
    _, out, _ = run(capsys, "stats", "--store", store_url, "--since", D1, "--until", D2, "--json")
    assert json.loads(out)["registered_visitors"] == 1


def test_purge_deletes_old_days(capsys: pytest.CaptureFixture[str], store_url: str) -> None:
    days = (date.today() - date.fromisoformat(D2)).days
    code, out, _ = run(capsys, "purge", "--store", store_url, "--older-than", str(days))
    assert code == 0
    assert out.startswith("purged 6 records from before 2026-11-11")  # day 1: 5 views, 1 choice
    _, out, _ = run(capsys, "stats", "--store", store_url, "--since", D1, "--until", D2, "--json")
    doc = json.loads(out)
    assert doc["days"][0] == {"day": D1, "pageviews": 0, "visitors": 0}
    assert (doc["pageviews"], doc["visitors"]) == (2, 2)


@pytest.mark.parametrize("back", [-1, 0, 1])  # around the calendar's first day
def test_purge_takes_days_back_to_the_year_1_and_no_further(
    capsys: pytest.CaptureFixture[str], store_url: str, back: int
) -> None:
    days = datetime.now(UTC).date().toordinal() - 1 + back  # 0: back to 0001-01-01
    code, out, err = run(
        capsys, "purge", "--store", store_url, "--timezone", "UTC", "--older-than", str(days)
    )
    if back <= 0:
        assert code == 0 and out.startswith("purged 0 records from before 0001-01-0")
    else:
        assert code == 2 and err.startswith("trackmw purge: --older-than")


def test_purge_refuses_negative_days(capsys: pytest.CaptureFixture[str], store_url: str) -> None:
    code, _, err = run(capsys, "purge", "--store", store_url, "--older-than", "-1")
    assert code == 2 and err.startswith("trackmw purge: --older-than")


def test_the_progress_indicator_stays_off_when_stderr_is_not_a_terminal(
    capsys: pytest.CaptureFixture[str], store_url: str
) -> None:
    code, _, err = run(capsys, "stats", "--store", store_url, "--since", D1, "--until", D2)
    assert code == 0 and err == ""


def test_the_progress_indicator_shows_on_a_terminal_for_slow_reports() -> None:
    import threading

    from trackmw.cli import _with_progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    shown = threading.Event()

    class Watched(Terminal):
        def write(self, s: str) -> int:
            if "computing" in s:
                shown.set()
            return super().write(s)

    stream = Watched()
    # The "slow report" waits until the spinner has shown itself: no timing assumption.
    assert _with_progress(lambda: shown.wait(30) and 42, stream, "computing the report") == 42
    assert "computing the report" in stream.getvalue()
    assert stream.getvalue().endswith("\r")  # the line is cleared at the end
    quick = Terminal()
    assert _with_progress(lambda: 7, quick, "computing the report") == 7
    assert quick.getvalue() == ""


# -- the installed script ------------------------------------------------------------------


def script(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *argv], capture_output=True, text=True, timeout=120, env=env, check=False
    )


def test_the_installed_script_prints_json(store_url: str) -> None:
    assert SCRIPT.is_file(), "the console script is installed with the package"
    done = script("stats", "--store", store_url, "--since", D1, "--until", D2, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["visitors"] == 3


def test_the_installed_script_prints_tables(store_url: str) -> None:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    done = script("stats", "--store", store_url, "--since", D1, "--until", D2, env=env)
    assert done.returncode == 0 and "Visitors from 2026-11-10" in done.stdout
    assert "█" in done.stdout


def test_the_installed_script_falls_back_to_ascii_bars(store_url: str) -> None:
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    done = script("stats", "--store", store_url, "--since", D1, "--until", D2, env=env)
    assert done.returncode == 0, done.stderr
    assert "#" in done.stdout and "█" not in done.stdout


def test_the_installed_script_exits_2_on_bad_dates(store_url: str) -> None:
    done = script("stats", "--store", store_url, "--since", "nope")
    assert done.returncode == 2 and "since" in done.stderr and done.stdout == ""


def test_the_installed_script_erases(store_url: str) -> None:
    done = script("erase", "--store", store_url, "--visitor", "vB")
    assert done.returncode == 0 and done.stdout == "erased 1 record of visitor vB\n"
