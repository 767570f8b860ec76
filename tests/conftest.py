"""Shared pytest fixtures: real private Docker engines, a real registry, synthetic images.

An engine or registry that cannot start makes the tests that use it fail
(the fixture raises), in CI and locally alike: tests that need Docker never skip.
Tests using these fixtures get the ``engine`` marker automatically, so
``pytest -m "not engine"`` runs only the pure tests.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.engine import PrivateEngine, PrivateRegistry, seed_overleaf_images

ENGINE_FIXTURES = {"engine", "offline_engine", "registry", "synthetic_images"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if ENGINE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.engine)


@pytest.fixture(scope="session")
def engine() -> Iterator[PrivateEngine]:
    """The "online" host's engine, shared by the whole session."""
    with PrivateEngine(name="online") as started:
        yield started


@pytest.fixture(scope="session")
def offline_engine() -> Iterator[PrivateEngine]:
    """A second, independent engine: the "offline" host."""
    with PrivateEngine(name="offline") as started:
        yield started


@pytest.fixture(scope="session")
def registry() -> Iterator[PrivateRegistry]:
    """A private Distribution registry on loopback."""
    with PrivateRegistry() as started:
        yield started


@pytest.fixture(scope="session")
def synthetic_images(engine: PrivateEngine) -> list[str]:
    """A small CE set on ``engine``: two app hotfixes, mongo 6.0 and 8.0, redis 7.4; returns the references."""
    return seed_overleaf_images(engine, ["5.5.3", "5.5.4"], edition="ce", mongo=["6.0", "8.0"], redis=["7.4"])
