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

Signing runs on every new visitor's request, so the serializer is itsdangerous' own
with four costs taken out (the token format is unchanged): the signer is built once
per salt instead of on every call, each key is derived once instead of on every
sign and verify (a SHA-1 each time), the HMAC is OpenSSL's one-shot function rather
than a Python object per call, and short JSON payloads are not run through zlib
(it cannot make a few dozen bytes shorter, and trying cost more than the HMAC). Values
that were compressed still load.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import json
import time
from typing import Any

from itsdangerous import BadData, TimestampSigner, URLSafeTimedSerializer
from itsdangerous.encoding import base64_encode, int_to_bytes
from itsdangerous.signer import HMACAlgorithm

__all__ = ["CookieSigner", "SignedValue"]

#: Cookies longer than this are not even looked at: no real trackmw cookie comes close.
MAX_COOKIE_VALUE = 3072
_CACHE_SIZE = 10_000
#: JSON payloads shorter than this are signed uncompressed (see the module docstring).
_COMPRESS_FROM = 48
#: A cookie dated this far in the future (clock skew between servers) is still accepted.
MAX_SKEW = 60


class _OneShotHMAC(HMACAlgorithm):
    """itsdangerous' HMAC, computed by ``hmac.digest`` (OpenSSL's one-shot HMAC in C).

    ``hmac.new`` builds a Python ``HMAC`` object around the C one on every call; the
    one-shot function gives the same bytes for a fraction of the cost.
    """

    def get_signature(self, key: bytes, value: bytes) -> bytes:
        return hmac.digest(key, value, self.digest_method)


class _Signer(TimestampSigner):
    """``TimestampSigner`` deriving each key once, not on every sign and verify."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._derived: dict[Any, bytes] = {}
        if type(self.algorithm) is HMACAlgorithm:
            self.algorithm = _OneShotHMAC(self.digest_method)

    def derive_key(self, secret_key: str | bytes | None = None) -> bytes:
        key = self._derived.get(secret_key)
        if key is None:
            key = self._derived[secret_key] = super().derive_key(secret_key)
        return key


class _Serializer(URLSafeTimedSerializer):
    """itsdangerous' URL-safe timed serializer, with its signer built once per salt."""

    default_signer = _Signer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._signers: dict[Any, Any] = {}

    def make_signer(self, salt: str | bytes | None = None) -> Any:
        signer = self._signers.get(salt)
        if signer is None:
            signer = self._signers[salt] = super().make_signer(salt)
        return signer

    def dump_payload(self, obj: Any) -> bytes:
        text = _COMPACT.encode(obj).encode("utf-8")
        if len(text) >= _COMPRESS_FROM:
            return super().dump_payload(obj)
        return base64_encode(text)

    def sign_now(self, obj: Any) -> str:
        """``dumps(obj)``, composed from the same itsdangerous parts with fewer layers.

        The token is what ``dumps`` gives in the same second (payload, ``.``, timestamp,
        ``.``, the signer's signature), except that a short payload is never compressed.
        """
        value = (
            self.dump_payload(obj) + b"." + base64_encode(int_to_bytes(int(time.time())))
        )
        signature: bytes = self.make_signer().get_signature(value)
        return (value + b"." + signature).decode("ascii")


#: itsdangerous' compact JSON (``json.dumps(obj, ensure_ascii=False, separators=(",",
#: ":"))``), built once: ``json.dumps`` with any option builds an encoder on every call.
_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_json_str = json.encoder.encode_basestring  # how _COMPACT writes a string (C)


_PROBE = ["0123456789abcdefghijkl", "probe"]
_URLSAFE = bytes.maketrans(b"+/", b"-_")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")


def _b64(data: bytes) -> bytes:
    """itsdangerous' ``base64_encode`` (URL-safe, unpadded), without its Python layers."""
    return binascii.b2a_base64(data, newline=False).rstrip(b"=").translate(_URLSAFE)


class _ProbeSigner(TimestampSigner):
    """A ``TimestampSigner`` at a fixed time, to compare tokens with the short path."""

    at = 1_700_000_000

    def get_timestamp(self) -> int:
        return self.at


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
        self.max_age = max_age
        self._cache: dict[str, SignedValue | None] = {}
        signer = self._newest.make_signer()
        self._key = signer.derive_key()  # the newest key, derived as itsdangerous does
        # The short path below writes itsdangerous' token format itself; it is used only
        # if it gives exactly itsdangerous' token for a probe (else: itsdangerous' dumps).
        reference = URLSafeTimedSerializer(oldest_first[-1], salt=salt, signer=_ProbeSigner)
        probe = _COMPACT.encode(_PROBE).encode("utf-8")
        self._short = self._token(probe, _ProbeSigner.at) == reference.dumps(_PROBE)

    def dumps(self, payload: Any) -> str:
        """Sign ``payload`` with the newest key; the result is cookie-safe text."""
        if self._short:
            if type(payload) is list and all(type(x) is str for x in payload):
                # A visitor cookie's payload: the same JSON, without the encoder's layers.
                text = ("[" + ",".join(map(_json_str, payload)) + "]").encode("utf-8")
            else:
                text = _COMPACT.encode(payload).encode("utf-8")
            if len(text) < _COMPRESS_FROM:
                return self._token(text, int(time.time()))
        return self._newest.sign_now(payload)

    def _token(self, text: bytes, timestamp: int) -> str:
        """itsdangerous' token for a JSON text that is not compressed, in few C calls.

        A new visitor's request signs one cookie; itsdangerous' layers (a dozen Python
        calls, three of them base64) cost more than the HMAC itself.
        """
        value = _b64(text) + b"." + _b64(int_to_bytes(timestamp))
        return (value + b"." + _b64(hmac.digest(self._key, value, hashlib.sha1))).decode()

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


def _canonical_signature(value: str) -> bool:
    """Is the signature spelled exactly as itsdangerous writes it?

    Base64 leaves unused bits in the last character of a 20-byte signature, and the
    decoder also takes ``+``/``/`` for ``-``/``_``: without this check one signature has
    several spellings, so a cookie changed in its last character still verifies.
    """
    signature = value.rpartition(".")[2].encode("ascii", "replace")
    try:
        raw = binascii.a2b_base64(signature.translate(_FROM_URLSAFE) + b"==")
    except binascii.Error:
        return False
    return _b64(raw) == signature
