"""``Visitor``: what the app sees of, and changes about, the visitor of one request.

Changes made here (``identify``, ``accept``, preferences, …) are turned into
``Set-Cookie`` headers when the response starts; nothing is written to the client
before that, so the app can change its mind during the request.
"""

from __future__ import annotations

import logging
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, MutableMapping
from html import escape
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from .consent import Consent, ConsentRecord, decide
from .events import MAX_LEN

if TYPE_CHECKING:
    from .cookiestate import CookieState
    from .core import Core
    from .messages import Request

__all__ = ["Preferences", "Visitor"]

log = logging.getLogger("trackmw")

MAX_USER_ID = 200
MAX_PREFS = 20
MAX_PREFS_BYTES = 1024
_PREF_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


class Preferences(MutableMapping[str, Any]):
    """The visitor's saved preferences: short ``str``, ``int`` and ``bool`` values.

    Kept in the signed ``trackmw_prefs`` cookie while preferences are consented;
    otherwise changes last for this request only. At most ``MAX_PREFS`` keys and
    ``MAX_PREFS_BYTES`` in all; anything else raises ``ValueError`` or ``TypeError``.

    >>> p = Preferences({}); p["theme"] = "dark"; dict(p)
    {'theme': 'dark'}
    """

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data
        self.changed = False

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(key, str) or not _PREF_KEY.match(key):
            raise ValueError(f"preference key {key!r}: use 1-32 of A-Z a-z 0-9 _ . -")
        if not isinstance(value, str | int | bool) or isinstance(value, float):
            raise TypeError(f"preference {key!r}: value must be str, int or bool")
        if isinstance(value, str) and len(value) > 256:
            raise ValueError(f"preference {key!r}: strings are limited to 256 characters")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**53:
            raise ValueError(f"preference {key!r}: integer out of range")
        trial = dict(self._data)
        trial[key] = value
        if len(trial) > MAX_PREFS:
            raise ValueError(f"at most {MAX_PREFS} preferences can be saved")
        if len(repr(trial)) > MAX_PREFS_BYTES:
            raise ValueError(f"preferences are limited to {MAX_PREFS_BYTES} bytes in all")
        self._data[key] = value
        self.changed = True

    def __delitem__(self, key: str) -> None:
        del self._data[key]
        self.changed = True

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"Preferences({self._data!r})"

    @staticmethod
    def load(payload: Any) -> dict[str, Any]:
        """Validated preferences from a verified cookie payload (bad entries skipped)."""
        out: dict[str, Any] = {}
        if isinstance(payload, dict):
            for key, value in list(payload.items())[:MAX_PREFS]:
                if (
                    isinstance(key, str)
                    and _PREF_KEY.match(key)
                    and isinstance(value, str | int | bool)
                ):
                    out[key] = value
        return out


class Visitor:
    """The visitor of the current request.

    Get it with ``trackmw.get_visitor(request)``.

    >>> visitor = get_visitor(request)            # doctest: +SKIP
    >>> if visitor.user_id: greet(visitor.user_id)  # doctest: +SKIP
    """

    __slots__ = (
        "_core",
        "_req",
        "_record",
        "_prefs",
        "_consent",
        "_signals",
        "id",
        "is_new",
        "user_id",
        "_id_sent",
        "_id_dirty",
        "_consent_dirty",
        "_prefs_sent",
        "_prefs_payload",
        "_erased",
        "_sent_id",
        "_id_signed_at",
    )

    def __init__(
        self,
        core: Core,
        req: Request,
        *,
        visitor_id: str | None,
        is_new: bool,
        user_id: str | None,
        id_sent: bool,
        id_dirty: bool,
        record: ConsentRecord | None,
        consent: Consent,
        signals: tuple[bool, bool],
        prefs_payload: Any,
        prefs_sent: bool,
        sent_id: str | None = None,
        id_signed_at: float | None = None,
    ) -> None:
        self._core = core
        self._req = req
        self.id = visitor_id
        self.is_new = is_new
        self.user_id = user_id
        self._id_sent = id_sent
        self._id_dirty = id_dirty
        self._record = record
        self._consent = consent
        self._signals = signals
        self._consent_dirty = False
        self._prefs_payload = prefs_payload
        self._prefs: Preferences | None = None
        self._prefs_sent = prefs_sent
        self._erased = False
        self._sent_id = sent_id  # the verified id the browser sent, even without consent
        self._id_signed_at = id_signed_at  # when its cookie was signed

    def __repr__(self) -> str:
        return (
            f"<Visitor id={self.id!r} new={self.is_new} user={self.user_id!r} "
            f"analytics={self._consent.analytics}>"
        )

    # -- consent ------------------------------------------------------------------------

    @property
    def consent(self) -> Consent:
        """The effective consent for this request (see ``trackmw.consent``)."""
        return self._consent

    def accept(self, analytics: bool = True, preferences: bool = True) -> None:
        """Record the visitor's choice (an acceptance of the given categories)."""
        self._choose(bool(analytics), bool(preferences))

    def reject(self) -> None:
        """Record a rejection of every category: tracking cookies are deleted."""
        self._choose(False, False)

    def mark_minor(self, guardian_consent: bool = False) -> None:
        """Mark a minor: no tracking, no preferences cookie until a guardian consents."""
        base = self._record or ConsentRecord()
        self._set_record(
            ConsentRecord(
                decided=base.decided,
                analytics=base.analytics,
                preferences=base.preferences,
                policy_version=base.policy_version,
                minor=True,
                guardian=bool(guardian_consent),
                at=base.at or int(time.time()),
                dnt=base.dnt,
                gpc=base.gpc,
            )
        )

    def _choose(self, analytics: bool, preferences: bool) -> None:
        dnt, gpc = self._signals
        base = self._record or ConsentRecord()
        now = time.time()
        self._set_record(
            ConsentRecord(
                decided=True,
                analytics=analytics,
                preferences=preferences,
                policy_version=self._core.settings.policy_version,
                minor=base.minor,
                guardian=base.guardian,
                at=int(now),
                dnt=dnt,
                gpc=gpc,
            )
        )
        self._core.record_choice(self, now)

    def _set_record(self, record: ConsentRecord) -> None:
        withheld_by_signal = self._consent.reason in ("dnt", "gpc")
        self._record = record
        self._consent_dirty = True
        settings = self._core.settings
        dnt, gpc = self._signals
        self._consent = decide(
            record,
            mode=settings.consent,
            policy_version=settings.policy_version,
            dnt=dnt,
            gpc=gpc,
        )
        if self._consent.analytics:
            if self.id is None:
                # A visitor whose signal (GPC, DNT) had withheld analytics, accepting
                # now, keeps the id its browser still holds (its linked user is not
                # carried over); after a rejection, or an erasure, the id is new.
                if withheld_by_signal and self._sent_id is not None and not self._erased:
                    self.id = self._sent_id
                else:
                    self.id = self._core.new_id()
                    self.is_new = True
                self._id_dirty = True
        else:
            self.id = None
            self.is_new = False

    # -- users ----------------------------------------------------------------------------

    def identify(self, user_id: str | int) -> None:
        """Link this visitor to a registered user (call it at login).

        Stored in the visitor cookie only while analytics is consented. ``user_id`` (its
        ``str``) must be 1 to ``MAX_USER_ID`` characters that UTF-8 can encode: a
        ``ValueError`` otherwise.
        """
        text = str(user_id)
        if not text or len(text) > MAX_USER_ID:
            raise ValueError(f"user_id must be 1-{MAX_USER_ID} characters")
        try:
            text.encode()
        except UnicodeEncodeError:  # a lone surrogate: no cookie or store could hold it
            raise ValueError("user_id must be text UTF-8 can encode") from None
        if text != self.user_id:
            self.user_id = text
            self._id_dirty = True

    def forget_user(self) -> None:
        """Unlink the registered user (call it at logout)."""
        if self.user_id is not None:
            self.user_id = None
            self._id_dirty = True

    # -- preferences -----------------------------------------------------------------------

    @property
    def preferences(self) -> Preferences:
        """Saved preferences (a mutable mapping; see ``Preferences``)."""
        if self._prefs is None:
            self._prefs = Preferences(Preferences.load(self._prefs_payload))
        return self._prefs

    # -- the beacon ------------------------------------------------------------------------

    def beacon_url(self, path: str | None = None, **params: str) -> str:
        """The pixel's URL for this page: ``p`` the page, ``r`` this request's referrer.

        Extra keyword parameters are added as they are (``c="newsletter"`` sets the
        campaign).
        """
        req = self._req
        page = path if path is not None else req.path + ("?" + req.query if req.query else "")
        query: dict[str, str] = {"p": page[:MAX_LEN]}
        referrer = req.headers.get("referer")
        if referrer:
            query["r"] = referrer[:MAX_LEN]
        query.update({k: str(v) for k, v in params.items()})
        return f"{self._core.settings.prefix}/pixel.gif?{urlencode(query)}"

    def beacon_tag(self, path: str | None = None, **params: str) -> str:
        """A ready ``<img>`` tag for the pixel (1x1, empty ``alt``)."""
        src = escape(self.beacon_url(path, **params), quote=True)
        # No inline style: it would break under a strict Content-Security-Policy.
        return f'<img src="{src}" width="1" height="1" alt="">'


class RequestOver(LookupError):
    """The request a ``LazyVisitor`` belongs to has ended before its visitor was read."""


class LazyVisitor(ABC):
    """A request's ``Visitor``, built on first call: what the adapters put in the ASGI
    scope (``scope["trackmw"]``) or WSGI environ (``environ["trackmw.visitor"]``).

    A returning visitor's page usually never asks for its ``Visitor``, and then needs
    no cookie either, so building it (and a full request description) would be wasted.
    ``trackmw.get_visitor`` calls it; calling it again returns the same ``Visitor``.
    Each adapter's subclass describes its request (``_request``) and wraps the app's
    ``send`` or ``start_response`` to add the cookies the core asks for.
    """

    # Each subclass keeps these four itself, in its ``__slots__`` (set by its own
    # ``__init__``: a ``super().__init__`` call would cost a few percent of a bare
    # request on every tracked page) or in C (``trackmw._speedups.LazyBase``).
    if TYPE_CHECKING:
        __slots__ = ("_core", "_state", "visitor", "issued_id")
    else:
        __slots__ = ()
    _core: Core
    _state: CookieState
    visitor: Visitor | None  # built on first call
    issued_id: str | None  # a new id already sent in a cookie (``fresh_cookie``)

    def __call__(self) -> Visitor:
        visitor = self.visitor
        if visitor is None:
            try:
                req = self._request()
                visitor = self._core.visitor_from_state(req, self._state, self.issued_id)
            except RequestOver:
                raise
            except Exception as exc:  # never break the host app: as if untracked
                log.exception("trackmw: could not read the visitor")
                raise LookupError("trackmw could not read this request's visitor") from exc
            self.visitor = visitor
        return visitor

    def fresh_cookie(self, scheme: str) -> str:
        """A new visitor's id cookie, for a response the app started without asking
        for its visitor; the id is kept for when it asks later."""
        self.issued_id, cookie = self._core.new_id_cookie(scheme, self._request)
        return cookie

    @abstractmethod
    def _request(self) -> Request:
        """The request, described for the core (``RequestOver`` once it has ended)."""
