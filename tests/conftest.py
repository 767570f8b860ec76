"""Shared pytest fixtures: real private Docker engines, a real registry, synthetic images.

An engine or registry that cannot start makes the tests that use it fail
(the fixture raises), in CI and locally alike: tests that need Docker never skip.
Tests using these fixtures get the ``engine`` marker automatically, so
``pytest -m "not engine"`` runs only the pure tests.

Engines: ``engine`` (the online host) and ``offline_engine`` use the classic
image store (Engine 20.10 on Debian 12, 26 with the snapshotter off on Debian 13);
``containerd_engine`` is an offline host on Engine 26 with the containerd image
store, whose ``env()`` offers Compose v2 (``docker compose``);
``each_offline_engine`` runs a test once on each offline kind (ids ``classic``
and ``containerd``). ``engine.env(compose="v1")`` gives Compose v1 where the
machine has it (Debian 12).

Every test runs isolated from this machine's own files (:func:`isolated_host`, autouse):
the catalog overlay, the importer's state file and trust folder, ``HOME``, the XDG config
folder and the Docker client config all point into a fresh temporary folder, and the
key passphrase variable is unset. Subprocesses inherit that environment. So no test reads
(or writes) the user's real overlay, accepted-bundle state, trusted keys or logins.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.engine import PrivateEngine, PrivateRegistry, seed_overleaf_images

ENGINE_FIXTURES = {
    "engine", "offline_engine", "containerd_engine", "each_offline_engine", "registry", "synthetic_images",
}  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if ENGINE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.engine)


HOST_ENV = ("OVERLEAF_AIRGAP_CATALOG_OVERLAY", "OVERLEAF_AIRGAP_STATE", "OVERLEAF_AIRGAP_TRUST_DIR", "HOME",
            "XDG_CONFIG_HOME", "DOCKER_CONFIG")


@pytest.fixture(autouse=True)
def isolated_host(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every host path the tools read at a fresh folder (see the module docstring); returns it."""
    root = tmp_path_factory.mktemp("host")
    paths = {
        "OVERLEAF_AIRGAP_CATALOG_OVERLAY": root / "config" / "overleaf-airgap" / "catalog-overlay.yaml",
        "OVERLEAF_AIRGAP_STATE": root / "state" / "state.json",
        "OVERLEAF_AIRGAP_TRUST_DIR": root / "trusted.d",
        "HOME": root / "home",
        "XDG_CONFIG_HOME": root / "config",
        "DOCKER_CONFIG": root / "home" / ".docker",
    }
    for name in ("home", "config", "trusted.d"):
        (root / name).mkdir()
    for name, path in paths.items():
        monkeypatch.setenv(name, str(path))
    monkeypatch.delenv("OVERLEAF_AIRGAP_KEY_PASSPHRASE", raising=False)
    return root


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
def containerd_engine() -> Iterator[PrivateEngine]:
    """An offline host on Docker Engine 26 with the containerd image store; ``env()`` offers Compose v2."""
    with PrivateEngine(name="ctrd", store="containerd", compose="v2") as started:
        yield started


@pytest.fixture(params=["classic", "containerd"])
def each_offline_engine(request: pytest.FixtureRequest) -> PrivateEngine:
    """``offline_engine`` then ``containerd_engine``: a test using this runs on both image stores."""
    name = "offline_engine" if request.param == "classic" else "containerd_engine"
    engine: PrivateEngine = request.getfixturevalue(name)
    return engine


@pytest.fixture(scope="session")
def registry() -> Iterator[PrivateRegistry]:
    """A private Distribution registry on loopback."""
    with PrivateRegistry() as started:
        yield started


@pytest.fixture(scope="session")
def synthetic_images(engine: PrivateEngine) -> list[str]:
    """A small CE set on ``engine``: two app hotfixes, mongo 6.0 and 8.0, redis 7.4; returns the references."""
    return seed_overleaf_images(engine, ["5.5.3", "5.5.4"], edition="ce", mongo=["6.0", "8.0"], redis=["7.4"])
