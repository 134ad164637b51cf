"""Fixtures of the hardening suite: the adapter kind, as in ``tests/core``."""

from __future__ import annotations

import pytest

from tests.core.harness import KINDS


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    """Each test taking ``kind`` runs once through ASGI and once through WSGI."""
    return str(request.param)
