"""A state machine over visits, consent choices, GPC, erasure, key rotation, store
outages and flushes, driving the real middleware in-process (both adapters).

The model knows the rules of ``trackmw.consent`` (opt-out mode) and the secret keys, so
it predicts every visitor id, every page view and every consent choice. Invariants:

- no identified event without consent at the time (a page view carries the visitor's
  id only when analytics was consented when it happened; no ``trackmw_id`` cookie is
  held without consent);
- an erased visitor has nothing left (store and buffer), and the erasure reports
  exactly what it removed;
- after the final flush, the stored page views and the report equal the model.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import date

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from itsdangerous import BadData, URLSafeTimedSerializer

from tests.core.harness import KINDS, Client
from tests.hardening.flaky import FlakyStore, Switches
from trackmw import Tracker

KEYS = [f"state-machine-key-{i:03d}-abcdef" for i in range(200)]
BROWSERS = 3
PAGES = ("/", "/a", "/b")


@dataclass
class Browser:
    """One visitor's browser: the model's view of what it holds and chose."""

    jar: dict[str, str] = field(default_factory=dict)
    gpc: bool = False
    choice: str | None = None  # None, "accept" or "reject"
    gpc_at_choice: bool = False
    consent_gen: int = 0  # the key generation that signed the consent cookie
    fresh: bool = True  # a response has been seen since the signals last changed


class TrackingMachine(RuleBasedStateMachine):
    """See the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.trackers: list[Tracker] = []
        self.browsers = [Browser() for _ in range(BROWSERS)]
        self.gen = 0
        self.kind = "asgi"
        self.name = uuid.uuid4().hex
        self.switch: Switches = FlakyStore.switches(self.name)
        # What the store must hold: (visitor_id or None, path), and consent choices.
        self.pageviews: list[tuple[str | None, str]] = []
        self.choices: list[tuple[str | None, bool]] = []
        self.erased: set[str] = set()

    # -- helpers --------------------------------------------------------------------------

    @property
    def tracker(self) -> Tracker:
        return self.trackers[-1]

    def new_tracker(self) -> None:
        keys = [KEYS[self.gen]] + ([KEYS[self.gen - 1]] if self.gen else [])
        self.trackers.append(
            Tracker(
                secret_keys=keys,
                store=f"flaky://{self.name}",
                flush_interval=3600,  # flushes happen when the machine says so
                pixel_rate_limit=0,
            )
        )

    def client(self, b: Browser) -> Client:
        client = Client(self.kind, self.tracker)
        client.jar = b.jar
        return client

    def verified_id(self, b: Browser) -> str | None:
        """The id in the browser's cookie, if the current keys verify it."""
        value = b.jar.get("trackmw_id")
        if value is None:
            return None
        for g in (self.gen, self.gen - 1):
            if g < 0:
                continue
            try:
                payload = URLSafeTimedSerializer(KEYS[g], salt="trackmw.visitor").loads(value)
            except BadData:
                continue
            return str(payload[0])
        return None

    def consent_readable(self, b: Browser) -> None:
        """Forget a choice whose cookie the current keys no longer verify."""
        if b.choice is not None and b.consent_gen < self.gen - 1:
            b.choice = None

    def responded(self, b: Browser) -> None:
        """Any response re-issues a readable consent cookie under the newest key (SPEC)."""
        if b.choice is not None:
            b.consent_gen = self.gen
        b.fresh = True

    def analytics(self, b: Browser) -> bool:
        """The consent rules of opt-out mode, with GPC honoured."""
        self.consent_readable(b)
        if b.choice == "reject":
            return False
        if b.gpc:
            return b.choice == "accept" and b.gpc_at_choice
        return True

    def headers(self, b: Browser) -> dict[str, str]:
        return {"sec-gpc": "1"} if b.gpc else {}

    # -- rules ----------------------------------------------------------------------------

    @initialize(kind=st.sampled_from(KINDS))
    def start(self, kind: str) -> None:
        self.kind = kind
        self.new_tracker()

    @rule(i=st.integers(0, BROWSERS - 1), page=st.sampled_from(PAGES))
    def visit(self, i: int, page: str) -> None:
        b = self.browsers[i]
        before = self.verified_id(b)
        expected = self.analytics(b)
        client = self.client(b)
        result = client.get("/", headers=self.headers(b))
        assert result.status == 200
        seen = result.json
        assert seen["analytics"] is expected
        if expected:
            assert seen["id"] is not None
            if before is not None:
                assert (seen["id"], seen["new"]) == (before, False)
            else:
                assert seen["new"] is True
            assert self.verified_id(b) == seen["id"]
        else:
            assert seen["id"] is None
            assert "trackmw_id" not in b.jar
        pixel = client.get(f"/_trackmw/pixel.gif?p={page}", headers=self.headers(b))
        assert pixel.status == 200 and pixel.body[:6] == b"GIF89a"
        self.responded(b)
        self.pageviews.append((seen["id"] if expected else None, page))

    @rule(i=st.integers(0, BROWSERS - 1), accept=st.booleans())
    def choose(self, i: int, accept: bool) -> None:
        b = self.browsers[i]
        before = self.verified_id(b)
        result = self.client(b).request(
            "POST",
            "/_trackmw/consent",
            headers={**self.headers(b), "content-type": "application/x-www-form-urlencoded"},
            body=b"choice=accept" if accept else b"choice=reject",
        )
        assert result.status == 204
        b.choice = "accept" if accept else "reject"
        b.gpc_at_choice = b.gpc
        self.responded(b)
        if accept:
            after = self.verified_id(b)
            assert after is not None
            if before is not None:
                assert after == before
            self.choices.append((after, True))
        else:
            assert "trackmw_id" not in b.jar
            self.choices.append((before, False))

    @rule(i=st.integers(0, BROWSERS - 1))
    def toggle_gpc(self, i: int) -> None:
        self.browsers[i].gpc = not self.browsers[i].gpc
        self.browsers[i].fresh = False

    @rule(i=st.integers(0, BROWSERS - 1))
    def erase(self, i: int) -> None:
        b = self.browsers[i]
        sent = self.verified_id(b)
        jar_before = dict(b.jar)
        self.consent_readable(b)
        result = self.client(b).request("POST", "/_trackmw/me/delete")
        if sent is not None and self.switch.down:
            assert result.status == 503
            assert b.jar == jar_before  # nothing erased: the cookies are kept too
            return
        assert result.status == 200
        self.responded(b)
        held = 0
        if sent is not None:
            held = sum(1 for v, _ in self.pageviews if v == sent)
            held += sum(1 for v, _ in self.choices if v == sent)
            self.pageviews = [(v, p) for v, p in self.pageviews if v != sent]
            self.choices = [(v, a) for v, a in self.choices if v != sent]
            self.erased.add(sent)
            data = self.tracker.store.visitor_data(sent)
            assert data["pageviews"] == [] and data["consents"] == []
        assert result.json == {"erased": held}
        assert "trackmw_id" not in b.jar and "trackmw_prefs" not in b.jar

    @precondition(lambda self: self.gen < len(KEYS) - 1 and not self.switch.down)
    @rule()
    def rotate_keys(self) -> None:
        # A deploy: the old process stops (writing what it buffered), a new one starts
        # with the new key first. (Erasure across live processes: see test_erasure.py.)
        assert self.tracker.close()
        self.gen += 1
        self.new_tracker()

    @rule(down=st.booleans())
    def store_down_or_up(self, down: bool) -> None:
        self.switch.down = down

    @rule()
    def flush(self) -> None:
        waiting = len(self.tracker.pipeline)
        ok = self.tracker.flush()
        assert ok is (not self.switch.down or waiting == 0)
        if ok:
            assert len(self.tracker.pipeline) == 0

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def no_tracking_cookie_without_consent(self) -> None:
        for b in self.browsers:
            # A signal that just appeared is acted on by the next response.
            if b.fresh and not self.analytics(b):
                assert self.verified_id(b) is None

    @invariant()
    def stored_events_are_a_subset_of_the_model(self) -> None:
        """What is written already must be what the model expects (nothing extra, no
        identified event the model did not allow, nothing erased come back)."""
        stored = self._stored()
        assert not (Counter(stored) - Counter(self.pageviews))
        assert not {v for v, _ in stored if v is not None} & self.erased

    def _stored(self) -> list[tuple[str | None, str]]:
        store = self.tracker.store
        assert isinstance(store, FlakyStore)
        return [(pv.visitor_id, pv.path) for pv in store.all_pageviews()]

    def teardown(self) -> None:
        try:
            if not self.trackers:
                return
            self.switch.down = False
            assert self.tracker.flush()
            assert Counter(self._stored()) == Counter(self.pageviews)
            today = self.tracker.today()
            report = self.tracker.stats(today, today)
            ids = {v for v, _ in self.pageviews if v is not None}
            assert report.pageviews == len(self.pageviews)
            assert report.visitors == len(ids)
            assert report.anonymous_pageviews == sum(1 for v, _ in self.pageviews if v is None)
            assert report.consent == {
                "accepted": sum(1 for _, a in self.choices if a),
                "rejected": sum(1 for _, a in self.choices if not a),
            }
            pages = Counter(p for _, p in self.pageviews)
            assert {row["path"]: row["pageviews"] for row in report.pages} == dict(pages)
            assert report.since == today and isinstance(report.since, date)
        finally:
            for t in self.trackers:
                self.switch.down = False
                t.close()


TrackingMachine.TestCase.settings = settings(
    max_examples=50,
    stateful_step_count=20,
    deadline=None,
    database=None,
    # No shrinking: a failing run is reported as found (at most 20 steps), instead of
    # spending minutes making it shorter.
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
)
test_tracking_state_machine = TrackingMachine.TestCase
