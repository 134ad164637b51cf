"""What a request's cookies say about its visitor, read once per distinct header.

``CookieReader.state`` verifies the ``trackmw_*`` cookies of a ``Cookie`` header,
decides consent (with the request's DNT and GPC signals) and caches the result as an
immutable ``CookieState`` shared by every request that sends the same trackmw cookies
(``state_key``): a site's own cookies beside them, a session re-signed each second
say, do not make a returning visitor's request read and verify them again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .consent import Consent, ConsentRecord, decide
from .cookies import parse_cookies
from .signing import MAX_SKEW, CookieSigner, SignedValue

if TYPE_CHECKING:
    from .settings import Settings

__all__ = [
    "CONSENT_COOKIE",
    "ID_COOKIE",
    "PREFS_COOKIE",
    "CookieReader",
    "CookieState",
    "state_key",
]

ID_COOKIE = "trackmw_id"
CONSENT_COOKIE = "trackmw_consent"
PREFS_COOKIE = "trackmw_prefs"
#: Distinct ``Cookie`` headers whose state is kept (dropped all at once when full).
_STATE_CACHE = 10_000
#: Longer ``Cookie`` headers are read each time rather than kept (at most ~40 MB held).
_CACHED_HEADER = 4096
#: The cookies a state rests on (``CookieReader._read_state``).
_STATE_NAMES = (ID_COOKIE, CONSENT_COOKIE, PREFS_COOKIE)
#: What ``state_key`` reads a header by, for a header of text and one of bytes: the
#: names' common start, the names, the separators, the blanks, and the keys' joint.
_TEXT_KEY: Any = ("trackmw_", _STATE_NAMES, ";", "=", " \t", "; ")
_BYTES_KEY: Any = (
    b"trackmw_", tuple(name.encode("ascii") for name in _STATE_NAMES), b";", b"=", b" \t", b"; "
)


def state_key(cookie: Any) -> Any:
    """What of a ``Cookie`` header (text, or bytes as ASGI servers give it) its state
    rests on: its ``trackmw_id``, ``trackmw_consent`` and ``trackmw_prefs`` pairs, in
    header order, each as ``name=value`` with the blanks around both taken off, joined
    by ``"; "``. The header itself when that is all it is (no copy); ``None`` for none.

    ``parse_cookies`` reads those pairs alone, and the state only what it returns for
    those names: two headers with the same key have the same state, whatever else
    they carry. (A site's own cookies change under a returning visitor: Starlette's
    ``SessionMiddleware`` and Flask's permanent sessions sign theirs again every
    second.) The C speedups compute the same key (``trackmw._speedups``).

    >>> state_key("theme=dark; trackmw_id=a.b ;sid=9; trackmw_consent=c.d")
    'trackmw_id=a.b; trackmw_consent=c.d'
    """
    if cookie is None:
        return None
    marker, names, split, eq, blanks, join = (
        _BYTES_KEY if isinstance(cookie, bytes) else _TEXT_KEY
    )  # the same steps on bytes as on text
    if marker not in cookie:
        return cookie[:0] if cookie else cookie  # every such header has the one state
    pairs = []
    for part in cookie.split(split):
        name, sep, value = part.partition(eq)
        if sep and (name := name.strip(blanks)) in names:
            pairs.append(name + eq + value.strip(blanks))
    key = join.join(pairs)
    return cookie if key == cookie else key


def _text(cookie: str | bytes | None) -> str:
    """A ``Cookie`` header (or key) as text, decoded as ASGI servers encode it."""
    return cookie.decode("latin-1") if isinstance(cookie, bytes) else cookie or ""


class CookieState:
    """What one ``Cookie`` header (with the request's signals) says about its visitor.

    Immutable and shared between the requests that send the same header. ``quiet``: a
    visitor built from it, left untouched by the app, needs no ``Set-Cookie`` at all
    (a returning visitor), so the adapters need not even build the ``Visitor``.
    """

    __slots__ = (
        "record",
        "consent",
        "signals",
        "sent_id",
        "user_id",
        "id_signed_at",
        "id_stale",
        "id_sent",
        "prefs_payload",
        "prefs_sent",
        "consent_stale",
        "prefs_stale",
        "quiet",
        "fresh",
        "beacon_id",
    )

    def __init__(
        self,
        *,
        record: ConsentRecord | None,
        consent: Consent,
        signals: tuple[bool, bool],
        sent_id: str | None,
        user_id: str | None,
        id_stale: bool,
        id_sent: bool,
        prefs_payload: Any,
        prefs_sent: bool,
        consent_stale: bool = False,
        prefs_stale: bool = False,
        id_signed_at: float | None = None,
    ) -> None:
        self.record = record
        self.consent = consent
        self.signals = signals
        self.sent_id = sent_id
        self.user_id = user_id
        self.id_signed_at = id_signed_at  # when the id cookie was first signed
        self.id_stale = id_stale
        self.id_sent = id_sent
        self.prefs_payload = prefs_payload
        self.prefs_sent = prefs_sent
        # Signed with an older key: re-issued under the newest, or the next rotation
        # would drop them (and with them the visitor's choice).
        self.consent_stale = consent_stale and record is not None
        self.prefs_stale = prefs_stale and consent.preferences and prefs_payload is not None
        # The cookie rules at the top of core.py, for a visitor nobody changed.
        if consent.analytics:
            id_ok = sent_id is not None and not id_stale
        else:
            id_ok = not id_sent
        others_ok = (
            not (prefs_sent and not consent.preferences)
            and not self.consent_stale
            and not self.prefs_stale
        )
        self.quiet = id_ok and others_ok
        # A new visitor the app leaves alone: its only cookie is the new id (``new_id_cookie``).
        self.fresh = consent.analytics and sent_id is None and others_ok
        # The id a beacon counts on the quick path (``Core.quick_beacon``): a returning
        # visitor's who consented to analytics and needs no cookie; else None.
        self.beacon_id = sent_id if self.quiet and consent.analytics else None


class CookieReader:
    """The signers of the three cookie kinds, and the cache of states by header and by
    the header's trackmw cookies (``state_key``)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        keys = settings.secret_keys
        max_age = settings.cookie_max_age
        self.id_signer = CookieSigner(keys, "trackmw.visitor", max_age)
        self.consent_signer = CookieSigner(keys, "trackmw.consent", max_age)
        self.prefs_signer = CookieSigner(keys, "trackmw.prefs", max_age)
        #: Cached states by ``state_key`` of the ``Cookie`` header (a tuple with the
        #: signals when one is on), each as ``(not_before, not_after, state)``: the
        #: window in which every value the state rests on is fresh, then the state (the
        #: C speedups read this too). A header that is not its own key is kept as well,
        #: with its key's entry, so that the Python paths look a repeated one up at once.
        self.states: dict[Any, tuple[float, float, CookieState]] = {}

    def state(self, cookie: str | bytes | None, dnt: bool, gpc: bool, now: float) -> CookieState:
        """What a ``Cookie`` header and the honoured signals say (cached).

        ``cookie`` may be the raw header (bytes, as ASGI servers give it): it is decoded
        only when its state is not cached. The same trackmw cookies always say the
        same thing (``state_key``), except that their signed values age: a state is
        cached with the time window in which all of them are fresh, and one where a
        value was rejected for its age is never cached. So a returning visitor costs one
        dict lookup and two comparisons, or, when the header is new but its trackmw
        cookies are not, the key's reading and one more lookup.
        """
        signals = dnt or gpc
        key: Any = (cookie, dnt, gpc) if signals else cookie
        states = self.states
        cached = states.get(key)
        if cached is not None and cached[0] <= now <= cached[1]:
            return cached[2]
        if cookie is not None and len(cookie) > _CACHED_HEADER:
            return self._read_state(_text(cookie), dnt, gpc, now)[2]  # each time, never kept
        own = state_key(cookie)
        own_key: Any = key
        if own is not cookie:
            own_key = (own, dnt, gpc) if signals else own
            found = states.get(own_key)
            if found is not None and found[0] <= now <= found[1]:
                self._keep(key, found, now)  # this header too, for the Python paths
                return found[2]
        entry = self._read_state(_text(own), dnt, gpc, now)
        if own_key is not key:
            # This header too, for the Python paths; before the key, so that a cache
            # full at this header is cleared before the key's entry, not after it.
            self._keep(key, entry, now)
        # A key may be longer than its header (a ";" becomes "; "): never one past the
        # cached size, which a header equal to it must not find.
        if own is None or len(own) <= _CACHED_HEADER:
            self._keep(own_key, entry, now)
        return entry[2]

    def _keep(self, key: Any, entry: tuple[float, float, CookieState], now: float) -> None:
        """Cache ``entry`` under ``key`` if its window holds now."""
        if entry[0] <= now <= entry[1]:
            states = self.states
            if len(states) >= _STATE_CACHE:
                states.clear()
            states[key] = entry

    def _read_state(
        self, cookie: str, dnt: bool, gpc: bool, now: float
    ) -> tuple[float, float, CookieState]:
        """The state of a ``Cookie`` header's text, as ``states`` keeps it: after the
        window in which every value it accepted is fresh (empty when one was rejected
        for its age)."""
        cookies = parse_cookies(cookie)
        window = [float("-inf"), float("inf")]  # when every accepted value is fresh

        def load(signer: CookieSigner, value: str) -> SignedValue | None:
            signed = signer.verify(value)
            if signed is None:
                return None  # a bad signature is bad forever
            if not signer.fresh(signed, now):
                window[0], window[1] = float("inf"), float("-inf")  # time-dependent: no cache
                return None
            window[0] = max(window[0], signed.signed_at - MAX_SKEW)
            window[1] = min(window[1], signed.signed_at + signer.max_age)
            return signed

        record: ConsentRecord | None = None
        consent_stale = False
        for value in cookies.get(CONSENT_COOKIE, ()):
            signed = load(self.consent_signer, value)
            if signed is not None:
                record = ConsentRecord.from_payload(signed.payload)
                if record is not None:
                    consent_stale = signed.stale_key
                    break
        s = self.settings
        consent = decide(record, mode=s.consent, policy_version=s.policy_version, dnt=dnt, gpc=gpc)
        id_values = cookies.get(ID_COOKIE)
        sent_id = user_id = id_signed_at = None
        id_stale = False
        for value in id_values or ():
            signed = load(self.id_signer, value)
            if signed is not None and _valid_id_payload(signed.payload):
                sent_id = signed.payload[0]
                user_id = signed.payload[1] if len(signed.payload) > 1 else None
                id_signed_at = signed.signed_at
                id_stale = signed.stale_key
                break
        prefs_payload: Any = None
        prefs_stale = False
        prefs_values = cookies.get(PREFS_COOKIE)
        if prefs_values and consent.preferences:
            for value in prefs_values:
                signed = load(self.prefs_signer, value)
                if signed is not None:
                    prefs_payload = signed.payload
                    prefs_stale = signed.stale_key
                    break
        state = CookieState(
            record=record,
            consent=consent,
            signals=(dnt, gpc),
            sent_id=sent_id,
            user_id=user_id,
            id_signed_at=id_signed_at,
            id_stale=id_stale,
            id_sent=id_values is not None,
            prefs_payload=prefs_payload,
            prefs_sent=prefs_values is not None,
            consent_stale=consent_stale,
            prefs_stale=prefs_stale,
        )
        return float(window[0]), float(window[1]), state


def _valid_id_payload(payload: Any) -> bool:
    return (
        isinstance(payload, list)
        and 1 <= len(payload) <= 2
        and all(isinstance(x, str) for x in payload)
        and 16 <= len(payload[0]) <= 64
    )
