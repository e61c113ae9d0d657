"""Fixtures that start a real docker-registry (and a token server) on loopback.

Module-scoped registries are shared by the tests of one module: give each test its own repository (the
`repository` fixture does). `registry_factory` starts a fresh registry for unusual modes or destructive tests.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Protocol, Unpack

import pytest

from tests.support.local_registry import LocalRegistry, RegistryOptions, local_registry
from tests.support.pusher import Credentials, Pusher


class RegistryFactory(Protocol):
    def __call__(self, **options: Unpack[RegistryOptions]) -> LocalRegistry: ...


class PusherFactory(Protocol):
    def __call__(
        self, registry: LocalRegistry, credentials: Credentials | None = None, *, fetch_tokens: bool = False
    ) -> Pusher: ...


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """Plain http, no auth."""
    with local_registry(tmp_path_factory.mktemp("registry")) as running:
        yield running


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """Token auth over TLS; the realm is its `token_server` (https, same CA); anonymous requests get 401."""
    with local_registry(tmp_path_factory.mktemp("token-registry"), auth="token", tls=True) as running:
        yield running


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """htpasswd Basic auth over TLS."""
    with local_registry(tmp_path_factory.mktemp("basic-registry"), auth="basic", tls=True) as running:
        yield running


@pytest.fixture
def registry_factory(tmp_path: Path) -> Iterator[RegistryFactory]:
    """Starts registries in any mode for one test; all are stopped at teardown."""
    with ExitStack() as stack:

        def start(**options: Unpack[RegistryOptions]) -> LocalRegistry:
            workdir = tmp_path / f"registry-{secrets.token_hex(4)}"
            return stack.enter_context(local_registry(workdir, **options))

        yield start


@pytest.fixture
def pusher() -> Iterator[PusherFactory]:
    """Makes extra pushers (other credentials, or tokens fetched over HTTP); closed at teardown."""
    made: list[Pusher] = []

    def make(registry: LocalRegistry, credentials: Credentials | None = None, *, fetch_tokens: bool = False) -> Pusher:
        new = registry.new_pusher(credentials, fetch_tokens=fetch_tokens)
        made.append(new)
        return new

    yield make
    for each in made:
        each.close()


@pytest.fixture
def repository(request: pytest.FixtureRequest) -> str:
    """A repository name unique to this test, so tests sharing a module-scoped registry never collide."""
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:60].strip("-") or "test"
    return f"audit-tests/{stem}-{secrets.token_hex(3)}"
