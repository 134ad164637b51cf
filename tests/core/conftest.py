from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from .harness import KINDS, Client


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def client_for(kind: str, make_tracker: Callable[..., Any]) -> Callable[..., Client]:
    """``client_for(**settings)``: a fresh site, of this test's adapter kind, with a tracker."""

    def make(**settings: Any) -> Client:
        return Client(kind, make_tracker(**settings))

    return make


@pytest.fixture
def client(client_for: Callable[..., Client]) -> Client:
    return client_for()
