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
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .consent import Consent
from .cookies import cookie_attributes, delete_cookie_header, set_cookie_header
from .cookiestate import CONSENT_COOKIE, ID_COOKIE, PREFS_COOKIE, CookieReader, CookieState
from .events import MAX_CAMPAIGN, MAX_LEN, MAX_UA, UNKNOWN_PAGE, ConsentChoice, Hit
from .messages import Request, Response, private_headers
from .normalize import local_day
from .pixel import PIXEL_HEADERS, gif_response, page_from_referer, parse_pixel_query, parsed_queries
from .ratelimit import RateLimiter
from .signing import base64url
from .visitor import Visitor

if TYPE_CHECKING:
    from .pipeline import Pipeline
    from .settings import Settings

__all__ = ["Core"]

log = logging.getLogger("trackmw")

#: Core's attributes that cannot be replaced once set.
_FIXED = frozenset({"pipeline", "rate_limiter"})


class Core:
    """Decides, for one request, the visitor, the cookies and the events.

    Its ``pipeline`` and ``rate_limiter`` are fixed at construction: the beacon's C count
    holds them (``beacon_caches``), and a replacement would split the counts between
    that path and the Python ones.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _FIXED and hasattr(self, name):  # (not __dict__: it would be made)
            raise AttributeError(f"Core.{name} is fixed at construction")
        object.__setattr__(self, name, value)

    def __init__(self, settings: Settings, pipeline: Pipeline) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.reader = CookieReader(settings)
        self.state = self.reader.state  # what a Cookie header says (cached)
        self._states = self.reader.states
        self.id_signer = self.reader.id_signer
        self.consent_signer = self.reader.consent_signer
        self.prefs_signer = self.reader.prefs_signer
        self.prefix = settings.prefix
        self._prefix_slash = settings.prefix + "/"
        self.pixel_path = settings.prefix + "/pixel.gif"
        self.rate_limiter = RateLimiter(settings.pixel_rate_limit)
        self._excluded = frozenset(settings.exclude_paths)
        # What an excluded path's subpaths start with; "/" itself starts every path.
        self._excluded_under = tuple(p if p == "/" else p + "/" for p in settings.exclude_paths)
        self._check_hosts = settings.allowed_hosts is not None
        self._agents: dict[str | bytes, str] = {}
        self._hosts: dict[str | bytes, str] = {}
        #: What ``quick_beacon`` finds its answers in, for its C version
        #: (``trackmw._speedups.beacon``): the cookie states, the parsed pixel queries,
        #: the User-Agents and hosts as hits keep them, the type of a hit, the rate
        #: limiter and the pipeline (fixed at construction). ``None`` with
        #: ``allowed_hosts``, which only the Python path checks.
        self.beacon_caches: tuple[Any, ...] | None = None
        if not self._check_hosts:
            self.beacon_caches = (self._states, parsed_queries(), self._agents, self._hosts, Hit,
                                  self.rate_limiter, pipeline)
        # Do the cookies' ``Secure`` or ``Domain`` depend on request headers? Without a
        # ``cookie_domain`` and behind no trusted proxy, only the scheme counts.
        self.cookie_needs_headers = settings.cookie_domain is not None or (
            settings.cookie_secure is None and settings.trust_proxy
        )
        # What follows the value in a new visitor's id cookie, without and with Secure.
        self._id_tails = tuple(
            cookie_attributes(
                settings.cookie_max_age, "/", None, secure, True, settings.cookie_samesite
            )
            for secure in (False, True)
        )
        from .endpoints import Endpoints  # endpoints use Core; import late

        self.endpoints = Endpoints(self)
        from .dashboard import install as install_dashboard  # stats API and dashboard

        install_dashboard(self)

    # -- routing ------------------------------------------------------------------------

    def owns(self, path: str) -> bool:
        """Is ``path`` one of trackmw's own endpoints?"""
        return path.startswith(self._prefix_slash) or path == self.prefix

    def excluded(self, path: str) -> bool:
        """Is ``path`` under ``exclude_paths`` (no cookie work at all)?

        ``/static`` excludes ``/static`` and ``/static/…``, not ``/staticky``; ``/``
        excludes everything. Settings keep the paths without a trailing slash.
        """
        return path in self._excluded or path.startswith(self._excluded_under)

    # -- the visitor ----------------------------------------------------------------------

    def new_id(self) -> str:
        """A fresh random visitor id: 128 bits from the OS's CSPRNG, written as
        ``secrets.token_urlsafe(16)`` writes them (22 characters).

        Ids are drawn from the OS ``_IDS_AT_ONCE`` at a time: each ``urandom`` call is a
        system call (about 0.5 µs, twice the cost of writing the id). The pool is per
        process: a forked child starts with an empty one, so no two processes hand out
        the same id.

        All of a draw's ids are written by one base64 call: each id's 16 random bytes
        are followed by two zero bytes, so that each starts a 24-character group, and
        its first 22 characters are what base64 writes for those 16 bytes alone (the
        22nd holds their last 2 bits and 4 zero bits either way).
        """
        try:
            return _id_pool.popleft()  # atomic: two threads never get the same id
        except IndexError:
            block = bytearray(os.urandom(18 * _IDS_AT_ONCE))
            block[16::18] = block[17::18] = bytes(_IDS_AT_ONCE)
            text = base64url(block).decode("ascii")
            _id_pool.extend([text[i : i + 22] for i in range(24, len(text), 24)])
            return text[:22]

    def signal_flags(self, dnt: str | bytes | None, gpc: str | bytes | None) -> tuple[bool, bool]:
        """(DNT, GPC) as honoured by the settings, from the two headers' values (``None``
        when absent): exactly ``"1"`` counts."""
        s = self.settings
        return (s.honor_dnt and _is_one(dnt), s.honor_gpc and _is_one(gpc))

    def request_state(
        self,
        cookie: str | bytes | None,
        dnt: str | bytes | None,
        gpc: str | bytes | None,
        now: float,
    ) -> CookieState:
        """What a request's ``Cookie``, ``DNT`` and ``Sec-GPC`` headers say (``state``),
        from their raw values; without signals, a cached state costs one dict lookup."""
        if dnt is None and gpc is None:
            cached = self._states.get(cookie)  # CookieReader.state's hit, inlined: 1% a request
            if cached is not None and cached[0] <= now <= cached[1]:
                return cached[2]
            return self.state(cookie, False, False, now)
        return self.state(cookie, *self.signal_flags(dnt, gpc), now)

    def request_state_of(self, req: Request) -> CookieState:
        """``request_state`` for a described request."""
        h = req.headers
        return self.request_state(
            h.get("cookie"), h.get("dnt"), h.get("sec-gpc"), req.now or time.time()
        )

    def visitor(self, req: Request) -> Visitor:
        """The ``Visitor`` of ``req``: cookies verified, consent decided, id issued if due."""
        return self.visitor_from_state(req, self.request_state_of(req))

    def visitor_from_state(
        self, req: Request, state: CookieState, issued_id: str | None = None
    ) -> Visitor:
        """The request's ``Visitor``: the state's, with a new id issued when due.

        ``issued_id``: the new id already sent in this response's cookie (``new_id_cookie``).
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
            id_signed_at=state.id_signed_at,
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
        req = visitor._req
        out: list[str] = []

        def cookie(
            name: str, value: str | None, httponly: bool = True, max_age: int | None = None
        ) -> None:
            out.append(self.cookie_header(req, name, value, httponly, max_age))

        if keep_id:
            if visitor._id_dirty:
                payload = [visitor.id] if visitor.user_id is None else [visitor.id, visitor.user_id]
                signed_at = visitor._id_signed_at
                if visitor.id == visitor._sent_id and signed_at is not None:
                    # Re-signed (a newer key; a user linked or forgotten): the cookie
                    # keeps its first visit's date, so its 13 months are not extended.
                    left = self.id_signer.seconds_left(signed_at, req.now or time.time())
                    cookie(ID_COOKIE, self.id_signer.dumps(payload, signed_at), max_age=left)
                else:
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

    def new_id_cookie(self, scheme: str, describe: Callable[[], Request]) -> tuple[str, str]:
        """A new visitor id and the ``Set-Cookie`` issuing it: what ``cookie_headers``
        gives for a ``fresh`` state's visitor left untouched, without building that
        ``Visitor``.

        ``describe`` gives the request; it is called only when the cookie's ``Secure``
        or ``Domain`` depend on its headers (``cookie_needs_headers``), so that usually
        the scheme is all this reads.
        """
        visitor_id, value = self.id_signer.new_id_token(self.new_id)
        if self.cookie_needs_headers:
            return visitor_id, self.cookie_header(describe(), ID_COOKIE, value)
        secure = self.settings.cookie_secure
        if secure is None:
            secure = scheme == "https"
        # Signer output is base64url and dots: nothing to check or quote.
        return visitor_id, f"{ID_COOKIE}={value}{self._id_tails[bool(secure)]}"

    def cookie_header(
        self,
        req: Request,
        name: str,
        value: str | None,
        httponly: bool = True,
        max_age: int | None = None,
    ) -> str:
        """``Set-Cookie`` for ``name`` (deleting it when ``value`` is ``None``), with the
        attributes the settings and the request call for: ``Domain`` when the host lies
        inside ``cookie_domain``, ``Secure`` on https, the same whether set or deleted;
        ``max_age``, when given, instead of ``cookie_max_age``."""
        secure = self.settings.cookie_secure
        if secure is None:
            secure = self.is_https(req)
        return self._cookie(name, value, self.cookie_domain(req), secure, httponly, max_age)

    def _cookie(
        self,
        name: str,
        value: str | None,
        domain: str | None,
        secure: bool,
        httponly: bool,
        max_age: int | None = None,
    ) -> str:
        s = self.settings
        if value is None:
            return delete_cookie_header(
                name, domain=domain, secure=secure, httponly=httponly, samesite=s.cookie_samesite
            )
        return set_cookie_header(
            name,
            value,
            max_age=s.cookie_max_age if max_age is None else max_age,
            domain=domain,
            secure=secure,
            httponly=httponly,
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
        req = visitor._req
        headers = req.headers
        return self._queue_hit(
            req.now or time.time(),
            visitor._consent,
            visitor.id,
            visitor.user_id,
            page,
            referrer,
            campaign,
            headers.get("user-agent", ""),
            headers.get("host", ""),
        )

    def _queue_hit(
        self,
        now: float,
        consent: Consent,
        visitor_id: str | None,
        user_id: str | None,
        page: str,
        referrer: str | None,
        campaign: str | None,
        user_agent: str,
        host: str,
    ) -> bool:
        if not consent.analytics and self.settings.count_rejected == "none":
            return False
        identified = consent.analytics and visitor_id is not None
        self.pipeline.add(
            Hit(
                now,
                visitor_id if identified else None,
                user_id if identified else None,
                page[:MAX_LEN],
                referrer[:MAX_LEN] if referrer else None,
                campaign[:MAX_CAMPAIGN] if campaign else None,
                # Buffered hits share one copy of each User-Agent and host (a few
                # hundred bytes per hit otherwise: see "bytes per buffered event").
                self._agents.get(user_agent)
                or self._text_miss(self._agents, user_agent, MAX_UA, False),
                self._hosts.get(host) or self._text_miss(self._hosts, host, 253, True),
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
            state = self.request_state_of(req)
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
                        req.now or time.time(),
                        state.consent,
                        visitor_id,
                        user_id,
                        page or UNKNOWN_PAGE,
                        params.get("r"),
                        params.get("c"),
                        h.get("user-agent", ""),
                        h.get("host", ""),
                    )
                elif self.settings.pixel_rate_limit_status == 429:
                    status = 429
            cookies = self.cookie_headers(visitor) if visitor is not None else None
            if cookies:
                headers = [*PIXEL_HEADERS, ("vary", "Cookie")]
                headers.extend(("set-cookie", c) for c in cookies)
        except Exception:
            log.exception("trackmw: the pixel failed to record a hit; serving the GIF")
        return gif_response(req.method, status, headers)

    def quick_beacon(
        self,
        cookie: str | bytes | None,
        user_agent: str | bytes,
        host: str | bytes,
        query: str | bytes,
        now: float,
    ) -> int | None:
        """The pixel's common case, from the few headers it reads; ``None`` if not it.

        The common case: a GET from a returning visitor who consented to analytics and
        needs no cookie, sending no DNT, Sec-GPC or prefetch header, with a User-Agent,
        a beacon URL naming its page, and no ``allowed_hosts`` to check. Then the hit is
        counted as ``pixel`` would count it, and the status returned (200, or 429 when
        over the rate limit and so configured). Otherwise nothing is done and ``None``
        says to call ``pixel`` with the whole request.

        The values may be raw header bytes (ASGI) or text (WSGI). What they say is
        cached by their exact value, so the usual beacon costs a few dict lookups.
        """
        if self._check_hosts:
            return None
        state = self.request_state(cookie, None, None, now)
        visitor_id = state.beacon_id
        if visitor_id is None:
            return None
        params = parse_pixel_query(query)  # cached by the raw query
        page = params.get("p")
        if page is None:  # the general path takes the page from Referer
            return None
        agent = self._agents.get(user_agent)
        if agent is None:
            agent = self._text_miss(self._agents, user_agent, MAX_UA, False)
            if not agent.strip():  # not counted (blank values are never cached)
                return None
        site = self._hosts.get(host)
        if site is None:
            site = self._text_miss(self._hosts, host, 253, True)
        if not self.rate_limiter.allow(visitor_id, now):
            return self.settings.pixel_rate_limit_status
        referrer, campaign = params.get("r"), params.get("c")
        self.pipeline.add(
            _new_tuple(Hit, (now, visitor_id, state.user_id, page, referrer, campaign, agent, site))
        )
        return 200

    @staticmethod
    def _text_miss(cache: dict[str | bytes, str], raw: str | bytes, cap: int, lower: bool) -> str:
        """A User-Agent or host as a hit keeps it: capped, a host lower-cased, and one
        shared copy per distinct value (cached by the raw value, bounded)."""
        text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
        text = _intern(text.lower()[:cap] if lower else text[:cap])
        if len(raw) <= cap and text.strip():
            if len(cache) >= _TEXTS:
                cache.clear()
            cache[raw] = text
        return text

    def client_ip(self, req: Request) -> str | None:
        """The client's address, for rate limits (never stored).

        With ``trust_proxy``, the last ``X-Forwarded-For`` entry: the address our own
        proxy saw. Earlier entries are whatever the client sent, so a client could
        rotate them to escape a limit (werkzeug's ``ProxyFix`` reads it the same way).
        """
        if self.settings.trust_proxy:
            forwarded = req.headers.get("x-forwarded-for", "").rsplit(",", 1)[-1].strip()
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
#: Entries in each of the pixel's caches (dropped all at once when full).
_TEXTS = 4096
_new_tuple = tuple.__new__
#: New visitor ids drawn but not yet handed out (``Core.new_id``); emptied in a forked
#: child, which must not hand out its parent's ids.
_id_pool: deque[str] = deque()
_IDS_AT_ONCE = 64
if hasattr(os, "register_at_fork"):  # not on Windows, where nothing forks
    os.register_at_fork(after_in_child=_id_pool.clear)


def _intern(text: str) -> str:
    """One shared copy of a string that repeats (User-Agents, hosts); bounded."""
    found = _interned.get(text)
    if found is None:
        if len(_interned) >= 4096:
            _interned.clear()
        _interned[text] = found = text
    return found


def _is_one(value: str | bytes | None) -> bool:
    """Does a signal header say exactly ``1`` (spaces around allowed)?"""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return value is not None and value.strip() == "1"
