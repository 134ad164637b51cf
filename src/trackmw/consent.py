"""Who may be tracked: the consent rules.

The rules, in the order they are applied (the first that matches decides):

1. A minor without recorded guardian consent: no analytics, no preferences
   (reason ``"minor"``).
2. A recorded rejection of analytics: no analytics, whatever policy version it was
   given under (reason ``"cookie"``). A rejection is always respected.
3. A privacy signal, when honoured: ``Sec-GPC: 1`` (reason ``"gpc"``) or ``DNT: 1``
   (reason ``"dnt"``), exactly ``"1"``, counts as a rejection of analytics. Only an
   acceptance that was *given while the visitor sent that same signal* overrides it
   (they saw the conflict and chose); an acceptance given before the signal appeared
   does not.
4. A recorded acceptance: analytics as chosen (reason ``"cookie"``). If it was given
   under another ``policy_version`` it is ``stale``; in ``opt-in`` mode a stale
   acceptance does not count until renewed, in ``opt-out`` mode tracking goes on as
   for an undecided visitor.
5. No choice yet (reason ``"default"``): ``opt-out`` tracks, ``opt-in`` does not.

Preferences follow the recorded choice, or the mode's default; privacy signals concern
tracking, not a site remembering the visitor's own settings, so they leave preferences
alone. Minors get neither until a guardian consents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Consent", "ConsentRecord", "decide"]

Reason = Literal["cookie", "default", "dnt", "gpc", "minor"]


@dataclass(frozen=True, slots=True)
class ConsentRecord:
    """What the ``trackmw_consent`` cookie holds (signed): the visitor's last choice."""

    decided: bool = False
    analytics: bool = False
    preferences: bool = False
    policy_version: str | None = None
    minor: bool = False
    guardian: bool = False
    at: int = 0  # Unix time of the choice
    dnt: bool = False  # the signals the visitor was sending when they chose
    gpc: bool = False

    def to_payload(self) -> dict[str, Any]:
        return {
            "c": int(self.decided),
            "a": int(self.analytics),
            "p": int(self.preferences),
            "v": self.policy_version,
            "m": int(self.minor),
            "g": int(self.guardian),
            "t": self.at,
            "d": int(self.dnt),
            "s": int(self.gpc),
        }

    @classmethod
    def from_payload(cls, data: Any) -> ConsentRecord | None:
        if not isinstance(data, dict):
            return None
        try:
            version = data.get("v")
            return cls(
                decided=bool(data["c"]),
                analytics=bool(data["a"]),
                preferences=bool(data["p"]),
                policy_version=str(version)[:32] if version is not None else None,
                minor=bool(data.get("m", 0)),
                guardian=bool(data.get("g", 0)),
                at=int(data.get("t", 0)),
                dnt=bool(data.get("d", 0)),
                gpc=bool(data.get("s", 0)),
            )
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True, slots=True)
class Consent:
    """A visitor's effective consent for this request.

    ``analytics`` and ``preferences`` say what trackmw may do now; ``decided`` whether
    the visitor made a choice; ``stale`` whether that choice was made under another
    policy version; ``reason`` which rule decided (see the module docstring).
    """

    analytics: bool
    preferences: bool
    decided: bool
    policy_version: str | None
    stale: bool
    reason: Reason
    minor: bool = False
    guardian_consent: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "analytics": self.analytics,
            "preferences": self.preferences,
            "decided": self.decided,
            "policy_version": self.policy_version,
            "stale": self.stale,
            "reason": self.reason,
            "minor": self.minor,
            "guardian_consent": self.guardian_consent,
        }


_DEFAULT_OPT_OUT = Consent(True, True, False, None, False, "default")
_DEFAULT_OPT_IN = Consent(False, False, False, None, False, "default")


def decide(
    record: ConsentRecord | None,
    *,
    mode: str,
    policy_version: str,
    dnt: bool,
    gpc: bool,
) -> Consent:
    """Apply the rules above. ``dnt``/``gpc`` are the honoured signals of this request."""
    if record is None and not dnt and not gpc:  # the common case, kept cheap
        return _DEFAULT_OPT_OUT if mode == "opt-out" else _DEFAULT_OPT_IN
    opt_in = mode == "opt-in"
    rec = record or ConsentRecord()
    decided = rec.decided
    stale = decided and rec.policy_version != policy_version
    version = rec.policy_version if decided else None
    minor, guardian = rec.minor, rec.guardian

    def make(analytics: bool, preferences: bool, reason: Reason) -> Consent:
        return Consent(analytics, preferences, decided, version, stale, reason, minor, guardian)

    if rec.minor and not rec.guardian:
        return make(False, False, "minor")
    counts = decided and not (stale and opt_in)
    preferences = rec.preferences if counts else not opt_in
    if decided and not rec.analytics:
        return make(False, preferences, "cookie")
    accepted_now = decided and rec.analytics and counts
    if gpc and not (accepted_now and rec.gpc):
        return make(False, preferences, "gpc")
    if dnt and not (accepted_now and rec.dnt):
        return make(False, preferences, "dnt")
    if decided:
        return make(accepted_now or not opt_in, preferences, "cookie")
    return make(not opt_in, preferences, "default")
