"""The framework-neutral core: a plain request description in, an outcome out.

No I/O happens here: the ASGI and WSGI adapters describe the request as a
``Request``, ask ``Core`` for the ``Visitor`` (or, under the prefix, for a whole
``Response``), and when the app's response starts, ask ``Core.finish`` which headers to
add. Events go to the pipeline, which only appends to a buffer.

Cookie rules, applied when a response starts (``Core.cookie_headers``):

| cookie            | set when                            | deleted when                       |
|-------------------|-------------------------------------|------------------------------------|
| ``trackmw_id``    | analytics consented, and the id is  | analytics not consented and the    |
|                   | new, signed with an older key, or   | browser sent one                   |
|                   | its linked user changed             |                                    |
| ``trackmw_consent`` | the visitor chose in this request | never (a choice is kept, even a    |
|                   |                                     | rejection)                         |
| ``trackmw_prefs`` | preferences consented and changed   | preferences not consented and      |
|                   |                                     | sent, or emptied                   |

Every response that sets or deletes one gets ``Vary: Cookie`` and ``Cache-Control:
private`` (unless the app already said ``no-store`` or ``private``), so a shared cache
never hands one visitor's cookie to another.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .consent import Consent, ConsentRecord, decide
from .cookies import delete_cookie_header, parse_cookies, set_cookie_header
from .events import MAX_CAMPAIGN, MAX_LEN, MAX_UA, UNKNOWN_PAGE, ConsentChoice, Hit
from .pipeline import local_day
from .pixel import GIF, PIXEL_HEADERS, page_from_referer, parse_pixel_query
from .ratelimit import RateLimiter
from .signing import MAX_SKEW, CookieSigner, SignedValue
from .visitor import Visitor

if TYPE_CHECKING:
    from .pipeline import Pipeline
    from .settings import Settings

__all__ = ["CookieState", "Core", "Request", "Response"]

log = logging.getLogger("trackmw")

#: Distinct ``Cookie`` headers whose state is kept (dropped all at once when full).
_STATE_CACHE = 10_000

ID_COOKIE = "trackmw_id"
CONSENT_COOKIE = "trackmw_consent"
PREFS_COOKIE = "trackmw_prefs"


#: The request headers the core reads for app pages and the pixel.
PAGE_HEADERS = (
    "cookie",
    "host",
    "user-agent",
    "referer",
    "dnt",
    "sec-gpc",
    "sec-purpose",
    "purpose",
    "x-moz",
    "x-forwarded-proto",
    "x-forwarded-for",
)
#: ... and for trackmw's own endpoints (same-origin checks, the stats API's token).
ENDPOINT_HEADERS = (*PAGE_HEADERS, "origin", "sec-fetch-site", "authorization", "accept")


@dataclass(slots=True)
class Request:
    """What the core needs to know about one HTTP request.

    ``headers`` has lower-case names; repeated ``Cookie`` headers are joined with
    ``"; "``. ``native`` is the framework's own request object (or a function making
    it), handed to the ``authorize`` setting.
    """

    method: str
    path: str
    query: str = ""
    scheme: str = "http"
    headers: dict[str, str] = field(default_factory=dict)
    client: str | None = None
    native: Any = None
    now: float = 0.0

    @property
    def host(self) -> str:
        return self.headers.get("host", "").lower()


@dataclass(slots=True)
class Response:
    """A complete response from one of trackmw's own endpoints."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""


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
        "id_stale",
        "id_sent",
        "prefs_payload",
        "prefs_sent",
        "consent_stale",
        "prefs_stale",
        "not_before",
        "not_after",
        "quiet",
        "fresh",
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
        not_before: float,
        not_after: float,
        consent_stale: bool = False,
        prefs_stale: bool = False,
    ) -> None:
        self.record = record
        self.consent = consent
        self.signals = signals
        self.sent_id = sent_id
        self.user_id = user_id
        self.id_stale = id_stale
        self.id_sent = id_sent
        self.prefs_payload = prefs_payload
        self.prefs_sent = prefs_sent
        # Signed with an older key: re-issued under the newest, or the next rotation
        # would drop them (and with them the visitor's choice).
        self.consent_stale = consent_stale and record is not None
        self.prefs_stale = prefs_stale and consent.preferences and prefs_payload is not None
        self.not_before = not_before
        self.not_after = not_after
        # The cookie rules at the top of this module, for a visitor nobody changed.
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
        # A new visitor the app leaves alone: its only cookie is the new id (``id_cookie``).
        self.fresh = consent.analytics and sent_id is None and others_ok


class Core:
    """Decides, for one request, the visitor, the cookies and the events."""

    def __init__(self, settings: Settings, pipeline: Pipeline) -> None:
        self.settings = settings
        self.pipeline = pipeline
        keys = settings.secret_keys
        max_age = settings.cookie_max_age
        self.id_signer = CookieSigner(keys, "trackmw.visitor", max_age)
        self.consent_signer = CookieSigner(keys, "trackmw.consent", max_age)
        self.prefs_signer = CookieSigner(keys, "trackmw.prefs", max_age)
        self.prefix = settings.prefix
        self._prefix_slash = settings.prefix + "/"
        self.pixel_path = settings.prefix + "/pixel.gif"
        self.rate_limiter = RateLimiter(settings.pixel_rate_limit)
        self._excluded = settings.exclude_paths
        self._states: dict[Any, CookieState] = {}
        from .endpoints import Endpoints  # endpoints use Core; import late

        self.endpoints = Endpoints(self)
        from .dashboard import install as install_dashboard  # stats API and dashboard

        install_dashboard(self)

    # -- routing ------------------------------------------------------------------------

    def owns(self, path: str) -> bool:
        """Is ``path`` one of trackmw's own endpoints?"""
        return path.startswith(self._prefix_slash) or path == self.prefix

    def excluded(self, path: str) -> bool:
        """Is ``path`` under ``exclude_paths`` (no cookie work at all)?"""
        for prefix in self._excluded:
            if path.startswith(prefix) and (
                len(path) == len(prefix) or path[len(prefix)] == "/" or prefix == "/"
            ):
                return True
        return False

    # -- the visitor ----------------------------------------------------------------------

    def new_id(self) -> str:
        """A fresh random visitor id: 128 bits from the OS's CSPRNG."""
        return secrets.token_urlsafe(16)

    def signals(self, req: Request) -> tuple[bool, bool]:
        """(DNT, GPC) as honoured by the settings: exactly ``"1"`` counts."""
        headers = req.headers
        return self.signal_flags(headers.get("dnt"), headers.get("sec-gpc"))

    def signal_flags(self, dnt: str | None, gpc: str | None) -> tuple[bool, bool]:
        """(DNT, GPC) from the two headers' values (``None`` when absent)."""
        s = self.settings
        return (
            s.honor_dnt and dnt is not None and dnt.strip() == "1",
            s.honor_gpc and gpc is not None and gpc.strip() == "1",
        )

    def visitor(self, req: Request) -> Visitor:
        """The ``Visitor`` of ``req``: cookies verified, consent decided, id issued if due."""
        dnt, gpc = self.signals(req)
        state = self.state(req.headers.get("cookie"), dnt, gpc, req.now or time.time())
        return self.visitor_from_state(req, state)

    def state(self, cookie: str | None, dnt: bool, gpc: bool, now: float) -> CookieState:
        """What a ``Cookie`` header and the honoured signals say (cached by their text).

        The same header always says the same thing, except that its signed values age:
        a cached state keeps the time window in which all of them are fresh, and one
        where a value was rejected for its age is never cached. So a returning visitor
        costs one dict lookup and two comparisons here.
        """
        if not cookie or "trackmw_" not in cookie:
            cookie = ""  # every visitor without our cookies is in the same state
        key: Any = (cookie, dnt, gpc) if dnt or gpc else cookie
        state = self._states.get(key)
        if state is not None and state.not_before <= now <= state.not_after:
            return state
        state = self._read_state(cookie, dnt, gpc, now)
        if state.not_before <= now <= state.not_after:
            states = self._states
            if len(states) >= _STATE_CACHE:
                states.clear()
            states[key] = state
        return state

    def _read_state(self, cookie: str, dnt: bool, gpc: bool, now: float) -> CookieState:
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
        sent_id = user_id = None
        id_stale = False
        for value in id_values or ():
            signed = load(self.id_signer, value)
            if signed is not None and _valid_id_payload(signed.payload):
                sent_id = signed.payload[0]
                user_id = signed.payload[1] if len(signed.payload) > 1 else None
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
        return CookieState(
            record=record,
            consent=consent,
            signals=(dnt, gpc),
            sent_id=sent_id,
            user_id=user_id,
            id_stale=id_stale,
            id_sent=id_values is not None,
            prefs_payload=prefs_payload,
            prefs_sent=prefs_values is not None,
            not_before=window[0],
            not_after=window[1],
            consent_stale=consent_stale,
            prefs_stale=prefs_stale,
        )

    def visitor_from_state(
        self, req: Request, state: CookieState, issued_id: str | None = None
    ) -> Visitor:
        """The request's ``Visitor``: the state's, with a new id issued when due.

        ``issued_id``: the new id already sent in this response's cookie (``id_cookie``).
        """
        visitor_id = user_id = None
        id_dirty = state.id_stale
        if state.consent.analytics:
            if state.sent_id is None:
                visitor_id, id_dirty = issued_id or self.new_id(), True
            else:
                visitor_id, user_id = state.sent_id, state.user_id
        visitor = Visitor(
            self,
            req,
            visitor_id=visitor_id,
            is_new=visitor_id is not None and state.sent_id is None,
            user_id=user_id,
            id_sent=state.id_sent,
            id_dirty=id_dirty,
            record=state.record,
            consent=state.consent,
            signals=state.signals,
            prefs_payload=state.prefs_payload,
            prefs_sent=state.prefs_sent,
            sent_id=state.sent_id,
        )
        if state.consent_stale:
            visitor._consent_dirty = True
        if state.prefs_stale:
            visitor.preferences.changed = True
        return visitor

    # -- the response ------------------------------------------------------------------------

    def is_https(self, req: Request) -> bool:
        if req.scheme == "https":
            return True
        if self.settings.trust_proxy:
            proto = req.headers.get("x-forwarded-proto", "")
            return proto.split(",", 1)[0].strip().lower() == "https"
        return False

    def cookie_domain(self, req: Request) -> str | None:
        """``cookie_domain`` when the request's host lies inside it, else ``None``."""
        domain = self.settings.cookie_domain
        if domain is None:
            return None
        host = req.host.rsplit(":", 1)[0] if not req.host.endswith("]") else req.host
        if host == domain or host.endswith("." + domain):
            return domain
        return None

    def cookie_headers(self, visitor: Visitor) -> list[str]:
        """The ``Set-Cookie`` values this visitor's state calls for (the table above)."""
        consent = visitor._consent
        keep_id = consent.analytics and visitor.id is not None and not visitor._erased
        prefs = visitor._prefs
        if consent.preferences and not visitor._erased:
            prefs_work = prefs is not None and prefs.changed and (len(prefs) or visitor._prefs_sent)
        else:
            prefs_work = visitor._prefs_sent
        if not (
            (visitor._id_dirty if keep_id else visitor._id_sent)
            or (visitor._consent_dirty and visitor._record is not None)
            or prefs_work
        ):
            return []  # the usual returning visitor: no cookie to write
        req = visitor._req
        s = self.settings
        secure = s.cookie_secure if s.cookie_secure is not None else self.is_https(req)
        domain = self.cookie_domain(req)
        out: list[str] = []

        def cookie(name: str, value: str | None, httponly: bool = True) -> None:
            """Set ``name`` to ``value``, or delete it (``None``) with the same attributes."""
            samesite = s.cookie_samesite
            if value is None:
                header = delete_cookie_header(
                    name, domain=domain, secure=secure, httponly=httponly, samesite=samesite
                )
            else:
                header = set_cookie_header(
                    name,
                    value,
                    max_age=s.cookie_max_age,
                    domain=domain,
                    secure=secure,
                    httponly=httponly,
                    samesite=samesite,
                )
            out.append(header)

        if keep_id:
            if visitor._id_dirty:
                payload = [visitor.id] if visitor.user_id is None else [visitor.id, visitor.user_id]
                cookie(ID_COOKIE, self.id_signer.dumps(payload))
        elif visitor._id_sent:
            cookie(ID_COOKIE, None)
        if visitor._consent_dirty and visitor._record is not None:
            # Readable by scripts, so that a banner can hide itself.
            record = self.consent_signer.dumps(visitor._record.to_payload())
            cookie(CONSENT_COOKIE, record, httponly=False)
        if consent.preferences and not visitor._erased:
            if prefs is not None and prefs.changed:
                if len(prefs):
                    cookie(PREFS_COOKIE, self.prefs_signer.dumps(dict(prefs)))
                elif visitor._prefs_sent:
                    cookie(PREFS_COOKIE, None)
        elif visitor._prefs_sent:
            cookie(PREFS_COOKIE, None)
        return out

    @property
    def cookie_needs_headers(self) -> bool:
        """Do the cookies' ``Secure`` or ``Domain`` depend on request headers?

        Without a ``cookie_domain`` and behind no trusted proxy, only the scheme counts.
        """
        s = self.settings
        return s.cookie_domain is not None or (s.cookie_secure is None and s.trust_proxy)

    def id_cookie(self, req: Request, visitor_id: str) -> str:
        """The ``Set-Cookie`` issuing ``visitor_id``: what ``cookie_headers`` gives for a
        ``fresh`` state's visitor left untouched, without building that ``Visitor``.

        ``req`` needs its headers only if ``cookie_needs_headers``.
        """
        s = self.settings
        return set_cookie_header(
            ID_COOKIE,
            self.id_signer.dumps([visitor_id]),
            max_age=s.cookie_max_age,
            domain=self.cookie_domain(req),
            secure=s.cookie_secure if s.cookie_secure is not None else self.is_https(req),
            httponly=True,
            samesite=s.cookie_samesite,
        )

    def finish(
        self, visitor: Visitor, status: int, headers: Iterable[tuple[str, str]]
    ) -> list[tuple[str, str]] | None:
        """Headers for the app's response, or ``None`` when nothing changes.

        ``headers`` are the app's, with lower- or mixed-case names.
        """
        cookies = self.response_cookies(visitor, status, headers)
        if not cookies:
            return None
        return private_headers(headers, cookies)

    def response_cookies(
        self, visitor: Visitor, status: int, headers: Iterable[tuple[str, str]]
    ) -> list[str]:
        """The ``Set-Cookie`` values for the app's response (``finish`` without merging).

        Also counts the response as a page view when ``count_server_side`` says so.
        """
        if self.settings.count_server_side and status == 200 and visitor._req.method == "GET":
            if any(k.lower() == "content-type" and v.startswith("text/html") for k, v in headers):
                req = visitor._req
                page = req.path + ("?" + req.query if req.query else "")
                self.record_hit(visitor, page, req.headers.get("referer"), None)
        return self.cookie_headers(visitor)

    # -- events ------------------------------------------------------------------------------

    def record_hit(
        self, visitor: Visitor, page: str, referrer: str | None, campaign: str | None
    ) -> bool:
        """Queue one page view, as consent allows. True if something was queued."""
        return self._queue_hit(
            visitor._req, visitor._consent, visitor.id, visitor.user_id, page, referrer, campaign
        )

    def _queue_hit(
        self,
        req: Request,
        consent: Consent,
        visitor_id: str | None,
        user_id: str | None,
        page: str,
        referrer: str | None,
        campaign: str | None,
    ) -> bool:
        if not consent.analytics and self.settings.count_rejected == "none":
            return False
        identified = consent.analytics and visitor_id is not None
        headers = req.headers
        self.pipeline.add(
            Hit(
                req.now or time.time(),
                visitor_id if identified else None,
                user_id if identified else None,
                page[:MAX_LEN],
                referrer[:MAX_LEN] if referrer else None,
                campaign[:MAX_CAMPAIGN] if campaign else None,
                # Buffered hits share one copy of each User-Agent and host (a few
                # hundred bytes per hit otherwise: see "bytes per buffered event").
                _intern(headers.get("user-agent", "")[:MAX_UA]),
                _intern(headers.get("host", "").lower()[:253]),
            )
        )
        return True

    def record_choice(self, visitor: Visitor, now: float) -> None:
        """Queue the proof of a consent choice (time, id if any, categories, version)."""
        record = visitor._record
        if record is None:
            return
        visitor_id = visitor.id or visitor._sent_id
        self.pipeline.add(
            ConsentChoice(
                now,
                local_day(now, self.pipeline.tz),
                visitor_id,
                record.analytics,
                record.preferences,
                record.policy_version or self.settings.policy_version,
                record.minor,
                record.guardian,
            )
        )

    # -- trackmw's own endpoints -----------------------------------------------------------

    def pixel(self, req: Request) -> Response:
        """The beacon. Always the GIF, whatever the input (429 only when so configured).

        A returning visitor's beacon (the common case) sets no cookie, so it is answered
        from the cached cookie state without building a ``Visitor``.
        """
        headers = PIXEL_HEADERS  # shared, never changed: copied below before adding
        status = 200
        try:
            h = req.headers
            state = self.state(
                h.get("cookie"),
                *self.signal_flags(h.get("dnt"), h.get("sec-gpc")),
                req.now or time.time(),
            )
            visitor = None if state.quiet else self.visitor_from_state(req, state)
            if visitor is None:
                analytics = state.consent.analytics
                visitor_id = state.sent_id if analytics else None
                user_id = state.user_id if analytics else None
            else:
                visitor_id, user_id = visitor.id, visitor.user_id
            if req.method == "GET" and self._countable(req):
                if self._within_rate(req, visitor_id):
                    params = parse_pixel_query(req.query)
                    page = params.get("p") or page_from_referer(h.get("referer"))
                    self._queue_hit(
                        req,
                        state.consent,
                        visitor_id,
                        user_id,
                        page or UNKNOWN_PAGE,
                        params.get("r"),
                        params.get("c"),
                    )
                elif self.settings.pixel_rate_limit_status == 429:
                    status = 429
            cookies = self.cookie_headers(visitor) if visitor is not None else None
            if cookies:
                headers = [*PIXEL_HEADERS, ("vary", "Cookie")]
                headers.extend(("set-cookie", c) for c in cookies)
        except Exception:
            log.exception("trackmw: the pixel failed to record a hit; serving the GIF")
        return Response(status, headers, GIF if req.method != "HEAD" else b"")

    def client_ip(self, req: Request) -> str | None:
        """The client's address: ``X-Forwarded-For``'s first hop only when ``trust_proxy``."""
        if self.settings.trust_proxy:
            forwarded = req.headers.get("x-forwarded-for", "").split(",", 1)[0].strip()
            if forwarded:
                return forwarded
        return req.client

    def _within_rate(self, req: Request, visitor_id: str | None) -> bool:
        if visitor_id is not None:
            key = visitor_id
        else:
            key = RateLimiter.anonymous_key(self.client_ip(req), req.headers.get("user-agent", ""))
        return self.rate_limiter.allow(key, req.now or None)

    def _countable(self, req: Request) -> bool:
        headers = req.headers
        if (
            headers.get("sec-purpose", "").startswith("prefetch")
            or headers.get("purpose", "") == "prefetch"
            or headers.get("x-moz", "") == "prefetch"
        ):
            return False
        if not headers.get("user-agent", "").strip():
            return False
        allowed = self.settings.allowed_hosts
        if allowed is not None:
            # The page's host (from Referer) must be allowed: a copy of the pixel on
            # someone else's pages is not counted.
            referer = req.headers.get("referer")
            try:
                host = urlsplit(referer).hostname if referer else req.host.rsplit(":", 1)[0]
            except ValueError:
                return False
            if host not in allowed:
                return False
        return True

    def handle(self, req: Request, body: bytes = b"") -> Response:
        """Answer a request to one of trackmw's own endpoints (``owns(path)`` is true)."""
        if req.path == self.pixel_path:
            return self.pixel(req)
        try:
            return self.endpoints.handle(req, body)
        except Exception:  # a bug: logged, answered without a 500 (the app is unharmed)
            log.exception("trackmw: endpoint %s failed", req.path)
            return Response(
                503,
                [("content-type", "text/plain; charset=utf-8"), ("retry-after", "60")],
                b"temporarily unavailable",
            )


_interned: dict[str, str] = {}


def _intern(text: str) -> str:
    """One shared copy of a string that repeats (User-Agents, hosts); bounded."""
    found = _interned.get(text)
    if found is None:
        if len(_interned) >= 4096:
            _interned.clear()
        _interned[text] = found = text
    return found


def _valid_id_payload(payload: Any) -> bool:
    return (
        isinstance(payload, list)
        and 1 <= len(payload) <= 2
        and all(isinstance(x, str) for x in payload)
        and 16 <= len(payload[0]) <= 64
    )


#: What ``private_headers`` adds, before the cookies, to a response that has neither
#: ``Vary`` nor ``Cache-Control`` (adapters may append these directly in that case).
PRIVATE_ADDED = (("vary", "Cookie"), ("cache-control", "private"))


def private_headers(
    headers: Iterable[tuple[str, str]], set_cookies: list[str]
) -> list[tuple[str, str]]:
    """``headers`` plus ``set_cookies``, made safe for shared caches.

    ``Vary`` gains ``Cookie``; ``Cache-Control`` becomes ``private`` (``public`` and
    ``s-maxage`` removed) unless the app already forbids storing. Each cookie stays a
    header of its own.
    """
    out: list[tuple[str, str]] = []
    vary_done = cache_done = False
    for name, value in headers:
        lname = name.lower()
        if lname == "vary" and not vary_done:
            tokens = [t.strip().lower() for t in value.split(",")]
            if "*" not in tokens and "cookie" not in tokens:
                value = value + ", Cookie" if value.strip() else "Cookie"
            vary_done = True
        elif lname == "cache-control" and not cache_done:
            directives = [d.strip() for d in value.split(",") if d.strip()]
            lowered = [d.lower() for d in directives]
            if "no-store" not in lowered and "private" not in lowered:
                kept = [
                    d
                    for d, low in zip(directives, lowered, strict=True)
                    if low != "public" and not low.startswith("s-maxage")
                ]
                value = ", ".join(["private", *kept])
            cache_done = True
        out.append((name, value))
    if not vary_done:
        out.append(("vary", "Cookie"))
    if not cache_done:
        out.append(("cache-control", "private"))
    out.extend(("set-cookie", c) for c in set_cookies)
    return out
