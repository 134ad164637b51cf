"""Signed cookie values, with itsdangerous.

One serializer per cookie kind, each with its own salt (``trackmw.visitor``,
``trackmw.consent``, ``trackmw.prefs``, ``trackmw.dashboard``), so no cookie can be
replayed as another. Keys are given newest first (the ``secret_keys`` setting);
itsdangerous wants them oldest first and signs with the last, so the list is reversed
here and nowhere else. A value signed with an older key still loads, and says so, so
the caller can re-issue it under the newest key.

Loading is the costly part of a returning visitor's request (an HMAC and a JSON
decode), so verified values are cached by their exact text: the same cookie is
verified once per process, and only its age is checked again.

Signing runs on every new visitor's request. itsdangerous is used through its own
extension points, with its avoidable costs taken out (the token format is unchanged:
a test checks the bytes against plain itsdangerous, and that each loads the other's;
the one difference is that a JSON payload under 48 bytes is never compressed, where
itsdangerous compresses any that zlib shortens by 2 bytes): the signer is built once per
salt instead of on every call, each key is derived once instead of on every sign and
verify (a SHA-1 each time), each key's HMAC is set up once and copied per signature,
the JSON encoder is built once, short payloads skip the zlib attempt, the timestamp's
text is made once a second, base64 is called directly (``binascii``) rather than
through three layers of Python, and a short payload is signed in one function rather
than through the serializer's and signer's layers (``dumps_id`` writes a visitor id's
JSON itself). Together they make a visitor id's token about 7 times cheaper than
plain itsdangerous (1.8 µs against 13.4 µs). With the C speedups built, a short
payload's token is made in one call (``sign_token``: its base64, and the HMAC from
copies of the key's two hash states, with no Python frame between them), at half the
cost again (0.66 µs against the Python's 1.28, on one VM); built against OpenSSL, the
states are OpenSSL's own and a token's HMAC costs a third of that (``hmac_key``,
``_mac_states``). When new visitors come
several a second, their ids are signed ahead, a few at a time, in the second they go
out in (``CookieSigner.new_id_token``): the same tokens, from a warm HMAC, a block of
them in one C call (``sign_ids``) when built.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import time
import weakref
from binascii import b2a_base64
from collections import deque
from collections.abc import Callable
from itertools import repeat
from typing import Any

from itsdangerous import BadData, TimestampSigner, URLSafeTimedSerializer
from itsdangerous.encoding import base64_decode, base64_encode, int_to_bytes, want_bytes
from itsdangerous.signer import HMACAlgorithm

from ._ext import speedup
from ._json import dumps_function

log = logging.getLogger("trackmw")

__all__ = ["CookieSigner", "SignedValue"]

#: Cookies longer than this are not even looked at: no real trackmw cookie comes close.
MAX_COOKIE_VALUE = 3072
_CACHE_SIZE = 10_000
#: JSON payloads shorter than this are signed without trying zlib.
_COMPRESS_FROM = 48
#: A cookie dated this far in the future (clock skew between servers) is still accepted.
MAX_SKEW = 60


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def base64url(data: bytes | bytearray) -> bytes:
    """``itsdangerous.encoding.base64_encode`` for bytes, in one C call and two methods."""
    return b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=")


class _KeyedHMAC(HMACAlgorithm):
    """itsdangerous' HMAC algorithm, with each key's HMAC set up once.

    ``hmac.new(key, ...)`` hashes the padded key into the inner and outer states on
    every call; here that is done once per key and each signature starts from a
    ``copy()`` of the keyed object. The same bytes as ``hmac.new(key, value).digest()``.
    """

    def __init__(self, digest_method: Any = None) -> None:
        super().__init__(digest_method)
        self._keyed: dict[bytes, Any] = {}

    def keyed(self, key: bytes) -> Any:
        """The HMAC object set up for ``key``: ``copy()`` it, never update it."""
        keyed = self._keyed.get(key)
        if keyed is None:
            keyed = self._keyed[key] = hmac.new(key, digestmod=self.digest_method)
        return keyed

    def get_signature(self, key: bytes, value: bytes) -> bytes:
        mac = self.keyed(key).copy()
        mac.update(value)
        digest: bytes = mac.digest()
        return digest


class _CompactJSON:
    """itsdangerous' compact JSON serializer, with its encoder made once.

    ``json.dumps`` with arguments makes a C encoder on every call, which costs more
    than encoding a cookie's payload; this one makes the same output
    (``ensure_ascii=False``, no spaces) with one made once (``trackmw._json``).
    """

    _dumps = staticmethod(dumps_function(ensure_ascii=False, separators=(",", ":")))

    @staticmethod
    def loads(payload: str | bytes) -> Any:
        return json.loads(payload)

    @staticmethod
    def dumps(obj: Any, **kwargs: Any) -> str:
        if kwargs:
            return json.dumps(obj, **{"ensure_ascii": False, "separators": (",", ":"), **kwargs})
        return _CompactJSON._dumps(obj)


class _Signer(TimestampSigner):
    """``TimestampSigner`` deriving each key once, not on every sign and verify, and
    writing the timestamp's text once a second."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._derived: dict[Any, bytes] = {}
        self._mac: Any = None  # the signing key's HMAC, set up once, when it is HMAC
        self._mac_states: tuple[Any, Any] = (None, None)  # what sign_token copies
        if type(self.algorithm) is HMACAlgorithm:
            self.algorithm = _KeyedHMAC(self.digest_method)
            key = self.derive_key()
            self._mac = self.algorithm.keyed(key)
            self._mac_states = _mac_states(self._mac, key, self.digest_method)
        self._sep = want_bytes(self.sep)
        self._stamp: tuple[int, bytes] = (-1, b"")  # (second, its text with the separator)

    def sign(self, value: str | bytes, stamp: bytes | None = None) -> bytes:
        """``TimestampSigner.sign``: the same bytes, with the timestamp's text reused
        within its second. ``stamp``: another time's (``stamp_of``)."""
        value = want_bytes(value) + (self.stamp() if stamp is None else stamp)
        return value + self._sep + self.get_signature(value)

    def stamp_of(self, second: int) -> bytes:
        """``stamp()`` for another second than the current one."""
        return self._sep + base64url(int_to_bytes(second))

    def stamp(self) -> bytes:
        """The separator and the current timestamp, as ``sign`` appends them (made
        once a second)."""
        return self.stamped()[1]

    def stamped(self) -> tuple[int, bytes]:
        """The current timestamp (whole seconds) and ``stamp()``'s text for it."""
        now = self.get_timestamp()
        pair = self._stamp
        if pair[0] != now:
            pair = self._stamp = (now, self.stamp_of(now))
        return pair  # one object: threads see either pair whole

    def get_signature(self, value: str | bytes) -> bytes:
        """``Signer.get_signature``: the derived key's HMAC of ``value``, base64."""
        if self._mac is None:
            return super().get_signature(value)
        mac = self._mac.copy()
        mac.update(want_bytes(value))
        return base64url(mac.digest())

    def derive_key(self, secret_key: str | bytes | None = None) -> bytes:
        key = self._derived.get(secret_key)
        if key is None:
            key = self._derived[secret_key] = super().derive_key(secret_key)
        return key


class _Serializer(URLSafeTimedSerializer):
    """itsdangerous' URL-safe timed serializer, with its signer built once per salt."""

    default_signer = _Signer
    default_serializer = _CompactJSON

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._signers: dict[Any, Any] = {}

    def make_signer(self, salt: str | bytes | None = None) -> Any:
        signer = self._signers.get(salt)
        if signer is None:
            signer = self._signers[salt] = super().make_signer(salt)
        return signer


class SignedValue:
    """A verified payload, when it was signed, and whether it needs re-signing."""

    __slots__ = ("payload", "signed_at", "stale_key")

    def __init__(self, payload: Any, signed_at: float, stale_key: bool) -> None:
        self.payload = payload
        self.signed_at = signed_at
        self.stale_key = stale_key


class CookieSigner:
    """Signs and verifies one kind of cookie.

    >>> s = CookieSigner(["n" * 16, "o" * 16], salt="trackmw.visitor", max_age=60)
    >>> s.loads(s.dumps(["abc"])).payload
    ['abc']
    """

    def __init__(self, secret_keys: list[str] | tuple[str, ...], salt: str, max_age: int) -> None:
        oldest_first = list(reversed(secret_keys))
        self._all = _Serializer(oldest_first, salt=salt)
        self._newest = _Serializer(oldest_first[-1], salt=salt)
        self._signer: _Signer = self._newest.make_signer(salt)
        self.max_age = max_age
        self._cache: dict[str, SignedValue | None] = {}
        # New ids signed ahead (``new_id_token``): (second, id, token), oldest first.
        self._ahead: deque[tuple[int, str, str]] = deque()
        self._ahead_block = 1  # how many the next signing signs
        self._ahead_at = -1  # the second of the last signing
        _signers_ahead.add(self)
        self._sign_token = speedup("sign_token")
        self._sign_ids = speedup("sign_ids")

    def dumps(self, payload: Any, signed_at: float | None = None) -> str:
        """Sign ``payload`` with the newest key; the result is cookie-safe text.

        ``signed_at``: sign as of that time (a verified value's ``signed_at``) instead
        of now, so that a value re-signed (under a newer key, with other contents) keeps
        the age it had and expires when it would have.

        ``URLSafeTimedSerializer.dumps``, with the signer looked up once, not per call.
        itsdangerous tries zlib on every payload; it cannot shorten a few dozen bytes, and
        trying costs more than the HMAC, so only a longer payload goes its way.
        Compressed values still load.
        """
        stamp = None if signed_at is None else self._signer.stamp_of(int(signed_at))
        text = _CompactJSON._dumps(payload).encode("utf-8")
        if len(text) >= _COMPRESS_FROM:
            token: bytes = self._signer.sign(self._newest.dump_payload(payload), stamp)
            return token.decode("ascii")
        return self._signed(text, stamp)

    def dumps_id(self, visitor_id: str) -> str:
        """``dumps([visitor_id])`` for an id of URL-safe characters (``Core.new_id``'s),
        which JSON writes as they are: no JSON encoder on a new visitor's request. Any
        other id (one with a quote, a backslash or a control character) must go through
        ``dumps``."""
        return self._signed(_id_json(visitor_id))

    def new_id_token(self, new_id: Callable[[], str]) -> tuple[str, str]:
        """A new visitor id (from ``new_id``) and its token: ``dumps_id(id)``'s bytes,
        signed within the current second.

        The HMAC is most of a new visitor's cost, and on the request path it runs cold:
        between two new visitors a whole request's work has pushed its code and data
        out of the CPU's caches, so one HMAC costs there about 3 times what it costs in
        a loop. When new visitors come several a second (crawlers and other clients
        that keep no cookie, a busy page), ids are therefore signed ahead, several at
        a time, and handed out one per request. A token's timestamp has whole seconds,
        and one signed ahead is handed out only within the second it was signed in, so
        it is the token that signing on the spot would have made.

        How many are signed ahead adapts to the rate: one at a time (no signing ahead)
        until a second sees more than one signing, then twice as many each time that
        happens, up to ``_AHEAD_MAX``; half as many each time some were left over when
        their second ended. At a steady rate, what is signed and never handed out is
        at most about a second's worth of new visitors: a large share at a few a second
        (at two a second, about one token in three), a small one when many come.
        """
        ahead = self._ahead
        if ahead:
            now = self._signer.get_timestamp()  # the clock ``stamped`` reads
            while True:
                try:
                    second, visitor_id, token = ahead.popleft()  # atomic: one thread each
                except IndexError:
                    break
                if second == now:
                    return visitor_id, token
                # Left over from an earlier second: too many were signed ahead.
                self._ahead_block = max(1, self._ahead_block // 2)
                ahead.clear()
        second, stamp = self._signer.stamped()
        block = self._ahead_block
        if second == self._ahead_at:  # the last block was used up within this second
            block = self._ahead_block = min(block * 2, _AHEAD_MAX)
        self._ahead_at = second
        ids = [new_id() for _ in range(block)]
        tokens = self._signed_ids(ids, stamp)
        ahead.extend(zip(repeat(second), ids[1:], tokens[1:]))
        return ids[0], tokens[0]

    def _signed_ids(self, ids: list[str], stamp: bytes) -> list[str]:
        """``_signed(_id_json(id), stamp)`` for each of ``ids``; in one C call
        (``sign_ids``) for ids of URL-safe characters, as ``Core.new_id`` makes them."""
        if self._sign_ids is not None:
            signer = self._signer
            tokens: list[str] | None = self._sign_ids(*signer._mac_states, ids, stamp, signer._sep)
            if tokens is not None:
                return tokens
        return [self._signed(_id_json(i), stamp) for i in ids]

    def _signed(self, text: bytes, stamp: bytes | None = None) -> str:
        """The token for a short JSON ``text``: what the serializer's and the signer's
        layers of calls make, in one function (on every new visitor's request, those
        layers cost as much as the HMAC), or in one C call (``sign_token``, about half
        the time). ``stamp``: ``_Signer.stamp()``'s text, when the caller has it."""
        signer = self._signer
        if stamp is None:
            stamp = signer.stamp()
        if self._sign_token is not None:
            token: str | None = self._sign_token(*signer._mac_states, text, stamp, signer._sep)
            if token is not None:
                return token
        value = base64url(text) + stamp
        mac = signer._mac.copy()  # always HMAC: the serializers use the default algorithm
        mac.update(value)
        return (value + signer._sep + base64url(mac.digest())).decode("ascii")

    def loads(self, value: str, now: float | None = None) -> SignedValue | None:
        """The verified value, or ``None`` if tampered, expired, future-dated or garbled."""
        hit = self.verify(value)
        if hit is None or not self.fresh(hit, time.time() if now is None else now):
            return None
        return hit

    def verify(self, value: str) -> SignedValue | None:
        """The value if its signature verifies (whatever its age), else ``None``. Cached.

        Failures are cached too, so replaying one forged cookie costs one HMAC, not one
        per request.
        """
        try:
            return self._cache[value]
        except KeyError:
            pass
        hit = self._verify(value) if len(value) <= MAX_COOKIE_VALUE else None
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()
        self._cache[value] = hit
        return hit

    def fresh(self, hit: SignedValue, now: float) -> bool:
        """Is a verified value within its age (not expired, not from the future)?"""
        age = now - hit.signed_at
        return -MAX_SKEW <= age <= self.max_age

    def seconds_left(self, signed_at: float, now: float) -> int:
        """A fresh value's ``Max-Age``, signed at ``signed_at``: what is left of its age,
        never more than ``max_age`` (a value signed up to ``MAX_SKEW`` ahead is fresh),
        never less than a second."""
        return min(self.max_age, max(1, int(signed_at + self.max_age - now)))

    def _verify(self, value: str) -> SignedValue | None:
        if not _canonical_signature(value):
            return None
        try:
            payload, ts = self._newest.loads(value, return_timestamp=True)
            stale = False
        except BadData:
            try:
                payload, ts = self._all.loads(value, return_timestamp=True)
            except BadData:
                return None
            except Exception:  # garbage that itsdangerous' decoders trip over
                return None
            stale = True
        except Exception:
            return None
        return SignedValue(payload, ts.timestamp(), stale)


def _mac_states(mac: Any, key: bytes | None = None, digest_method: Any = None) -> tuple[Any, Any]:
    """What ``sign_token`` signs with for ``mac`` (an ``hmac.HMAC`` set up for ``key``
    over ``digest_method``).

    - With the speedups built against OpenSSL, when it knows ``digest_method``'s hash
      by its name: ``hmac_key``'s copy of the key's HMAC in OpenSSL's hash states (and
      None), once it has signed a sample as ``mac`` signs it. A token's two hash copies
      are then copies of a few words, with no Python object made: 0.2 µs a token in
      ``sign_ids`` where the states below take 0.54.
    - Else, when the hmac module composes the MAC from two hash states (as it does
      over itsdangerous' default SHA-1, a Python function): those keyed inner and
      outer states, which ``sign_token`` copies, with no Python frame.
    - Otherwise the HMAC object itself (and None), whose own ``copy``, ``update`` and
      ``digest`` compose them.

    The two states are the hmac module's private attributes: their absence only costs
    the frames. Tests check every way against the module's own MAC."""
    hmac_key, sign_token = speedup("hmac_key"), speedup("sign_token")
    if hmac_key is not None and sign_token is not None and key is not None and digest_method:
        try:
            name = getattr(digest_method(), "name", None)
            keyed = hmac_key(name, key) if isinstance(name, str) else None
            if keyed is not None and sign_token(keyed, None, *_SAMPLE) == sign_token(
                mac, None, *_SAMPLE
            ):
                return keyed, None
        except Exception:  # an odd digest: signed as below, as it always was
            log.debug("trackmw: OpenSSL's copy of a signing key left unused", exc_info=True)
    inner, outer = getattr(mac, "_inner", None), getattr(mac, "_outer", None)
    if inner is None or outer is None:
        return mac, None
    return inner, outer


#: A payload, stamp and separator that ``_mac_states`` signs both ways before it trusts
#: OpenSSL's copy of a key's HMAC (a hash of the same name that pads or hashes otherwise).
_SAMPLE = (b'["trackmw"]', b".AAAA", b".")


def _id_json(visitor_id: str) -> bytes:
    """``[visitor_id]`` as compact JSON, for an id of URL-safe characters."""
    return b'["' + visitor_id.encode("ascii") + b'"]'


#: At most this many new visitor ids are signed at a time (``CookieSigner.new_id_token``).
_AHEAD_MAX = 64
#: Signers that may hold ids signed ahead; a forked child must not hand out its parent's.
_signers_ahead: weakref.WeakSet[CookieSigner] = weakref.WeakSet()


def _forget_ahead() -> None:
    for signer in list(_signers_ahead):
        signer._ahead.clear()


if hasattr(os, "register_at_fork"):  # not on Windows, where nothing forks
    os.register_at_fork(after_in_child=_forget_ahead)


def _canonical_signature(value: str) -> bool:
    """Is the signature spelled exactly as itsdangerous writes it?

    Base64 leaves unused bits in the last character of a 20-byte signature: without
    this check one signature has several spellings, so a cookie changed in its last
    character would still verify (not a forgery, but a malleable token).
    """
    signature = value.rpartition(".")[2]
    try:
        return base64_encode(base64_decode(signature)).decode("ascii") == signature
    except (BadData, ValueError, UnicodeError):
        return False
