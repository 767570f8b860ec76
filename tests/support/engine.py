"""Real Docker engines, a real registry and synthetic images, for tests, demos and benchmarks.

Nothing here is mocked: it starts the machine's own ``dockerd`` (Debian
``docker.io``: Engine 20.10 on Debian 12, 26 on Debian 13) and ``docker-registry``
(Distribution 2.8) as root, and builds images offline from a static busybox
(Debian ``busybox-static``).

- :class:`PrivateEngine`: a throw-away ``dockerd`` with its own containerd, data
  root, exec root, socket and pidfile, so that several run side by side (an
  "online" and an "offline" host) without touching the machine's own engine.
  ``store="classic"`` is the machine's engine with the classic overlay2 store;
  ``store="containerd"`` is Docker Engine 26 with the containerd image store
  (on Debian 12 the Debian 13 binaries that tests/fetch_engine26.sh unpacks, see
  :func:`engine26_bin_dir`). ``engine.env(compose="v2"|"v1")`` picks the Compose
  the Docker CLI and the Toolkit find.
- :class:`PrivateRegistry`: a throw-away registry on loopback.
- :func:`build_image`: a small image, ``FROM`` a shared busybox base, with
  files and optional big data layers (:class:`DataLayer`).
- :func:`seed_overleaf_images`: stand-ins named like the real Overleaf, mongo,
  redis, nginx and TeX Live images.
- :func:`push_to_registry`: pushes images into the registry under mirror names
  (``mongo:8.0`` -> ``127.0.0.1:PORT/library/mongo:8.0``).

Example::

    from tests.support.engine import (
        PrivateEngine, PrivateRegistry, push_to_registry, seed_overleaf_images)

    with PrivateEngine(name="online") as engine, PrivateRegistry() as registry:
        refs = seed_overleaf_images(engine, ["5.5.4"], mongo=["6.0"], redis=["7.4"])
        push_to_registry(engine, registry, refs)
        print(engine.host, registry.address, registry.tags("library/mongo"))

    with PrivateEngine(name="c26", store="containerd") as engine:
        subprocess.run(["docker", "compose", "version"], env=engine.env(compose="v2"), check=True)
"""

from __future__ import annotations

import atexit
import functools
import io
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import docker
import docker.errors
import yaml
from docker.models.images import Image

from importer.images.engine import stream_error
from manifests.imageref import normalize

MiB = 1024 * 1024
BASE_IMAGE = "airgap-test/base:1"
"""Shared base of every synthetic image: a static busybox with its applets and ``run-forever``."""

FileContent = bytes | str
"""Content of a file put into an image; content starting with ``#!`` or an ELF header is made executable."""

_MTIME = 1_700_000_000  # fixed mtime of the files in a build context, so that rebuilds hit the cache
_SBIN_PATH = ":/usr/local/sbin:/usr/sbin:/sbin"

ImageStore = Literal["classic", "containerd"]
ComposeVersion = Literal["v1", "v2"]

ENGINE26_CACHE = Path(os.environ.get("OVERLEAF_AIRGAP_ENGINE26", "/var/cache/overleaf-airgap-test/engine26"))
"""Where tests/fetch_engine26.sh unpacks Engine 26 on Debian 12 (``bin/``, ``compose-v2/cli-plugins/``)."""

SNAPSHOTTER_DRIVER_TYPE = "io.containerd.snapshotter.v1"
"""``docker info`` DriverStatus ``driver-type`` of an engine using the containerd image store."""

_SYSTEM_PLUGIN_DIRS = tuple(
    Path(d, "docker/cli-plugins") for d in ("/usr/local/lib", "/usr/local/libexec", "/usr/lib", "/usr/libexec")
)  # where the Docker CLI looks for plugins besides $DOCKER_CONFIG/cli-plugins


class EngineSetupError(RuntimeError):
    """A private engine is missing, does not start, or is not the kind asked for (message says what to do)."""


class ComposeUnavailable(RuntimeError):
    """The Compose version asked for cannot be offered on this machine (message says why)."""


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _short_tempdir(prefix: str) -> Path:
    """A new directory with a short path: unix socket paths must stay under ~100 bytes."""
    return Path(tempfile.mkdtemp(prefix=f"oa-{prefix}-", dir="/tmp"))


def _stop_process(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _kill_processes_under(directory: Path) -> None:
    """SIGKILL processes whose command line names ``directory`` (a killed dockerd's containerd and shims)."""
    needle = os.fsencode(directory) + b"/"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


def _delete_containers(exec_root: Path) -> None:
    """Kill and delete the containers that a killed dockerd left running (runc state under its exec root)."""
    runc = shutil.which("runc", path=os.environ.get("PATH", "") + _SBIN_PATH)
    for state in exec_root.glob("runtime-runc/*") if runc else ():
        listing = subprocess.run([runc, "--root", str(state), "list", "-q"], capture_output=True, text=True)
        for container in listing.stdout.split():
            subprocess.run([runc, "--root", str(state), "delete", "--force", container], capture_output=True)


def _unmount_under(directory: Path) -> None:
    """Unmount every mount point at or below ``directory``, deepest first."""
    root = os.fsdecode(directory)
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
        if point == root or point.startswith(root + "/"):
            points.append(point)
    for point in sorted(set(points), key=len, reverse=True):
        if subprocess.run(["umount", point], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True)


def _engine_major(dockerd: str) -> int:
    """The major version of a ``dockerd`` binary (``Docker version 26.1.5+dfsg1, build ...`` -> 26); 0 if unknown."""
    try:
        out = subprocess.run([dockerd, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    match = re.search(r"version (\d+)\.", out)
    return int(match.group(1)) if match else 0


def _system_path() -> str:
    return os.environ.get("PATH", "") + _SBIN_PATH


@functools.cache
def engine26_bin_dir() -> Path | None:
    """Where the engine for ``store="containerd"`` comes from: ``None`` for the machine's own (Engine 26 or newer).

    On Debian 13 the machine's ``docker.io`` is Engine 26 and is used as is; on
    Debian 12 it is 20.10, and tests/fetch_engine26.sh (run by tests/setup.sh)
    unpacks Debian 13's ``dockerd``, ``docker-proxy``, ``containerd``,
    ``containerd-shim-runc-v2`` and ``ctr`` into ``ENGINE26_CACHE/bin`` (put first
    on PATH, so that Debian 12's ``runc`` is the one used). EngineSetupError if neither is there.
    """
    system = shutil.which("dockerd", path=_system_path())
    if system is not None and _engine_major(system) >= 26:
        return None
    cached = ENGINE26_CACHE / "bin"
    if (cached / "dockerd").is_file() and (cached / "containerd").is_file():
        return cached
    raise EngineSetupError(
        f"no Docker Engine 26 for the containerd image store: the machine's dockerd is "
        f"{'missing' if system is None else 'older'} and {cached} is empty; "
        "run `bash tests/setup.sh` as root (it fetches Debian 13's engine on Debian 12)"
    )


def find_compose_v2_plugin() -> Path | None:
    """The Compose v2 CLI plugin: the one tests/fetch_engine26.sh unpacked, else one installed system-wide."""
    for folder in (ENGINE26_CACHE / "compose-v2/cli-plugins", *_SYSTEM_PLUGIN_DIRS):
        if (folder / "docker-compose").is_file():
            return folder / "docker-compose"
    return None


def find_compose_v1() -> Path | None:
    """A ``docker-compose`` on PATH that is Compose v1 (``docker-compose version 1.x``); None otherwise."""
    found = shutil.which("docker-compose")
    if found is None:
        return None
    try:
        out = subprocess.run([found, "version", "--short"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return Path(found) if out.strip().startswith("1.") else None


def classic_compose() -> str:
    """The Compose the classic-store offline host is driven with: v1 where this machine can offer it
    (Debian 12's docker-compose), else v2 (Debian 13 has no Compose v1; its docker-compose is the v2 plugin)."""
    system_v2 = any((d / "docker-compose").exists() for d in _SYSTEM_PLUGIN_DIRS)
    return "v1" if find_compose_v1() is not None and not system_v2 else "v2"


class PrivateEngine:
    """A throw-away ``dockerd`` with its own containerd, data root, exec root, socket and pidfile.

    ``with PrivateEngine(name="offline") as engine: engine.client().images.list()``

    Everything lives in one short directory (``/tmp/oa-NAME-XXXX`` unless
    ``base_dir`` is given): ``data/`` (data root; the containerd content and
    snapshots in ``data/containerd/daemon``), ``exec/`` (exec root; containerd's
    state and socket in ``exec/containerd``), ``docker.sock``, ``pid``,
    ``daemon.json`` (so that the machine's ``/etc/docker/daemon.json`` is not
    read), ``containerd.toml``, ``dockerd.log``, ``containerd.log`` and the
    Docker CLI config folders of :meth:`env`. The engine never attaches to the
    machine's containerd (dockerd would, whenever ``/run/containerd/containerd.sock``
    exists): each engine starts a containerd of its own and hands it to dockerd with
    ``--containerd``, and uses containerd namespaces of its own as well.

    ``store="classic"``: the machine's dockerd with the classic store
    (``overlay2`` unless ``storage_driver`` says otherwise). ``store="containerd"``:
    Engine 26 (:func:`engine26_bin_dir`) with
    ``{"features": {"containerd-snapshotter": true}}``; ``start()`` checks that
    ``docker info`` reports the store asked for. ``compose`` is the default of
    :meth:`env`. ``stop()`` removes the directory unless ``keep=True``. Needs root.
    """

    def __init__(
        self,
        base_dir: str | os.PathLike[str] | None = None,
        *,
        name: str = "engine",
        keep: bool = False,
        storage_driver: str | None = None,
        store: ImageStore = "classic",
        compose: ComposeVersion | None = None,
    ) -> None:
        if store not in ("classic", "containerd"):
            raise ValueError(f"store must be 'classic' or 'containerd', not {store!r}")
        if compose not in (None, "v1", "v2"):
            raise ValueError(f"compose must be 'v1', 'v2' or None, not {compose!r}")
        self.name = name
        self.keep = keep
        self.store: ImageStore = store
        self.compose: ComposeVersion | None = compose
        self.storage_driver = storage_driver if storage_driver or store == "containerd" else "overlay2"
        self.dir = Path(base_dir) if base_dir is not None else _short_tempdir(name)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data_root = self.dir / "data"
        self.exec_root = self.dir / "exec"
        self.socket = self.dir / "docker.sock"
        self.pidfile = self.dir / "pid"
        self.log_path = self.dir / "dockerd.log"
        self.containerd_socket = self.exec_root / "containerd" / "containerd.sock"
        self.containerd_log_path = self.dir / "containerd.log"
        self.host = f"unix://{self.socket}"
        for path in (self.socket, Path(f"{self.containerd_socket}.ttrpc")):
            if len(os.fsencode(path)) >= 100:
                raise ValueError(f"socket path too long for a unix socket (max ~100 bytes): {path}")
        self.namespace = "oa" + re.sub(r"[^a-z0-9]", "", self.dir.name.lower())
        self.bin_dir: Path | None = None
        self.version = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._containerd: subprocess.Popen[bytes] | None = None
        self._clients: dict[int, docker.DockerClient] = {}

    def __repr__(self) -> str:
        return f"PrivateEngine(name={self.name!r}, store={self.store!r}, host={self.host!r})"

    def __enter__(self) -> PrivateEngine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def path(self) -> str:
        """PATH for this engine's daemons and the commands run against it: its own bin folder first, if any."""
        return f"{self.bin_dir}:{_system_path()}" if self.bin_dir else _system_path()

    def _start_containerd(self, deadline: float) -> str | None:
        """Start this engine's own containerd; None once its socket is there, else what went wrong."""
        containerd = shutil.which("containerd", path=self.path)
        if containerd is None:
            return "containerd not found: install it with `apt-get install docker.io` (as root)"
        state = self.containerd_socket.parent
        config = self.dir / "containerd.toml"
        config.write_text(
            "version = 2\n"
            f'root = "{self.data_root / "containerd" / "daemon"}"\n'
            f'state = "{state}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{self.containerd_socket}"\n'
            '[debug]\n  address = ""\n[metrics]\n  address = ""\n'
        )
        with self.containerd_log_path.open("ab") as log:
            self._containerd = subprocess.Popen(
                [containerd, "--config", str(config)], env={**os.environ, "PATH": self.path},
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        while not self.containerd_socket.exists():
            if self._containerd.poll() is not None:
                tail = _log_tail(self.containerd_log_path)
                code = self._containerd.returncode
                return f"containerd exited with code {code}\n--- containerd log (tail) ---\n{tail}"
            if time.monotonic() > deadline:
                return "containerd did not create its socket in time"
            time.sleep(0.1)
        return None

    def start(self, timeout: float = 60.0) -> PrivateEngine:
        """Start containerd and dockerd, wait until the API answers and check the image store.

        EngineSetupError (a RuntimeError, with the log's tail) if it does not start or is not the store asked for.
        """
        if self._proc is not None:
            return self
        try:
            if os.geteuid() != 0:
                raise EngineSetupError("a private dockerd needs root: run the tests as root")
            self.bin_dir = engine26_bin_dir() if self.store == "containerd" else None
            dockerd = shutil.which("dockerd", path=self.path)
            if dockerd is None:
                raise EngineSetupError("dockerd not found: install the engine with `apt-get install docker.io` (root)")
        except EngineSetupError:
            self.stop()
            raise
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        problem = self._start_containerd(deadline)
        if problem:
            self.stop()
            raise EngineSetupError(f"private engine {self.name!r} failed to start: {problem}")
        config = self.dir / "daemon.json"
        features = {"features": {"containerd-snapshotter": True}} if self.store == "containerd" else {}
        config.write_text(json.dumps(features) + "\n")
        args = [
            dockerd,
            "--config-file", str(config),
            "--containerd", str(self.containerd_socket),
            "--data-root", str(self.data_root),
            "--exec-root", str(self.exec_root),
            "-H", self.host,
            "--pidfile", str(self.pidfile),
            "--iptables=false", "--ip6tables=false", "--bridge=none",
            "--containerd-namespace", self.namespace,
            "--containerd-plugins-namespace", self.namespace + "-plugins",
        ]  # fmt: skip
        if self.storage_driver:
            args += ["--storage-driver", self.storage_driver]
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                args, env={**os.environ, "PATH": self.path},
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        while True:
            problem = None
            if self._proc.poll() is not None:
                problem = f"dockerd exited with code {self._proc.returncode}"
            elif time.monotonic() > deadline:
                problem = f"dockerd did not answer within {timeout:.0f}s"
            elif self.socket.exists():
                try:
                    with docker.APIClient(base_url=self.host, version="auto", timeout=5) as api:
                        info = api.info()
                    break
                except docker.errors.DockerException:
                    pass
            if problem:
                message = f"private engine {self.name!r} failed to start: {problem}\n--- {self.log_path} (tail) ---\n"
                message += _log_tail(self.log_path)
                self.stop()
                raise EngineSetupError(message)
            time.sleep(0.2)
        self.version = str(info.get("ServerVersion", ""))
        reported = self.image_store_of(info)
        if reported != self.store:
            driver = f"{info.get('Driver')} {info.get('DriverStatus')}"
            self.stop()
            raise EngineSetupError(
                f"private engine {self.name!r} (dockerd {self.version}) uses the {reported} image store, "
                f"not the {self.store} one asked for (storage driver: {driver}); "
                + ("the containerd store needs Engine 24 or newer with the containerd-snapshotter feature"
                   if self.store == "containerd" else "the classic store needs the containerd-snapshotter feature off")
            )  # fmt: skip
        return self

    @staticmethod
    def image_store_of(info: Mapping[str, Any]) -> ImageStore:
        """``"containerd"`` if ``docker info`` (as a dict) reports the snapshotter driver type, else ``"classic"``."""
        status = info.get("DriverStatus") or []
        snapshotter = any(list(pair)[:2] == ["driver-type", SNAPSHOTTER_DRIVER_TYPE] for pair in status)
        return "containerd" if snapshotter else "classic"

    def env(self, compose: ComposeVersion | None = None) -> dict[str, str]:
        """``os.environ`` pointing the docker CLI (and docker-py's ``from_env``) at this engine.

        ``compose`` (default: the engine's ``compose``) also picks the Compose the
        CLI and the Toolkit find, through a ``DOCKER_CONFIG`` of this engine's own
        (see :meth:`compose_env`); ``None`` leaves ``DOCKER_CONFIG`` as it is.
        PATH starts with the engine's bin folder, if it has one.
        """
        env = dict(os.environ)
        for key in ("DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
            env.pop(key, None)
        env["DOCKER_HOST"] = self.host
        env["DOCKER_BUILDKIT"] = "0"  # the legacy builder builds offline; BuildKit is not set up here
        if self.bin_dir:
            env["PATH"] = f"{self.bin_dir}:{env.get('PATH', '')}"
        compose = compose or self.compose
        if compose:
            env["DOCKER_CONFIG"] = str(self._docker_config(compose))
        return env

    def compose_env(self, version: ComposeVersion = "v2") -> dict[str, str]:
        """:meth:`env` where the Toolkit (``docker compose`` if it answers, else ``docker-compose``) finds ``version``.

        ``"v2"``: ``DOCKER_CONFIG`` holds ``cli-plugins/docker-compose`` (the
        Compose v2 plugin), so ``docker compose`` answers. ``"v1"``: a
        ``DOCKER_CONFIG`` without the plugin, so ``docker compose`` fails and
        ``docker-compose`` (Compose v1 on PATH) is used. ComposeUnavailable when
        the machine cannot offer that version (no plugin; no Compose v1, as on
        Debian 13, whose ``docker-compose`` is v2; or a v2 plugin installed
        system-wide, which the CLI would find anyway).
        """
        return self.env(compose=version)

    def _docker_config(self, version: ComposeVersion) -> Path:
        folder = self.dir / f"docker-config-{version}"
        plugins = folder / "cli-plugins"
        if version == "v2":
            plugin = find_compose_v2_plugin()
            if plugin is None:
                raise ComposeUnavailable(
                    "Compose v2 not found (no cli-plugins/docker-compose): run `bash tests/setup.sh` as root"
                )
            plugins.mkdir(parents=True, exist_ok=True)
            link = plugins / "docker-compose"
            if not link.is_symlink():
                link.symlink_to(plugin)
        else:
            if find_compose_v1() is None:
                raise ComposeUnavailable(
                    "Compose v1 is not installed on this machine (`docker-compose` on PATH is missing or not 1.x; "
                    "Debian 13 has only Compose v2): run the Compose v1 tests on Debian 12, where `apt-get install "
                    "docker-compose` gives v1"
                )
            system = [str(d) for d in _SYSTEM_PLUGIN_DIRS if (d / "docker-compose").exists()]
            if system:
                raise ComposeUnavailable(
                    f"a Compose v2 plugin is installed system-wide ({', '.join(system)}): `docker compose` answers "
                    "whatever DOCKER_CONFIG says, so the Toolkit would never use Compose v1 here"
                )
            folder.mkdir(parents=True, exist_ok=True)
        return folder

    def client(self, timeout: int = 600) -> docker.DockerClient:
        """A docker-py client for this engine (API version negotiated; one per timeout, closed by ``stop()``)."""
        if timeout not in self._clients:
            self._clients[timeout] = docker.DockerClient(base_url=self.host, version="auto", timeout=timeout)
        return self._clients[timeout]

    def stop(self) -> None:
        """Stop dockerd, then its containerd (SIGTERM, then SIGKILL); unmount what they left; remove the directory.

        The directory stays when ``keep=True``.
        """
        atexit.unregister(self.stop)
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        proc, self._proc = self._proc, None
        _stop_process(proc, timeout=30)
        killed = proc is not None and proc.returncode == -signal.SIGKILL  # nobody shut its containers down
        if killed:
            _delete_containers(self.exec_root)
        containerd, self._containerd = self._containerd, None
        _stop_process(containerd, timeout=15)
        if killed or (containerd is not None and containerd.returncode == -signal.SIGKILL):
            _kill_processes_under(self.dir)  # shims and the like
            time.sleep(0.5)
        if self.dir.exists():
            _unmount_under(self.dir)
            if not self.keep:
                shutil.rmtree(self.dir)


class PrivateRegistry:
    """A throw-away Distribution registry (Debian ``docker-registry``) on ``127.0.0.1:<free port>``.

    ``with PrivateRegistry() as registry: push_to_registry(engine, registry, ["mongo:8.0"])``

    Plain HTTP on loopback, which dockerd trusts as an insecure registry by
    default; deletes are enabled. Storage, config and log live in one
    directory, removed by ``stop()`` unless ``keep=True``.
    """

    def __init__(self, base_dir: str | os.PathLike[str] | None = None, *, keep: bool = False) -> None:
        self.keep = keep
        self.dir = Path(base_dir) if base_dir is not None else _short_tempdir("registry")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.root = self.dir / "storage"
        self.config_path = self.dir / "config.yml"
        self.log_path = self.dir / "registry.log"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"PrivateRegistry(address={self.address!r})"

    def __enter__(self) -> PrivateRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, the registry part of image references pushed here."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def start(self, timeout: float = 30.0) -> PrivateRegistry:
        """Start the registry on a free port and wait until ``GET /v2/`` answers."""
        if self._proc is not None:
            return self
        binary = shutil.which("docker-registry")
        if binary is None:
            raise RuntimeError("docker-registry not found: install it with `apt-get install docker-registry`")
        for _attempt in range(3):  # another process may grab the free port before the registry binds it
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                self.port = probe.getsockname()[1]
            config = {
                "version": "0.1",
                "log": {"level": "info", "accesslog": {"disabled": True}},
                "storage": {
                    "filesystem": {"rootdirectory": str(self.root)},
                    "delete": {"enabled": True},
                    "maintenance": {"uploadpurging": {"enabled": False}},
                },
                "http": {"addr": self.address, "secret": secrets.token_hex(16)},
            }
            self.config_path.write_text(yaml.safe_dump(config))
            with self.log_path.open("ab") as log:
                self._proc = subprocess.Popen(
                    [binary, "serve", str(self.config_path)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
            atexit.register(self.stop)
            deadline = time.monotonic() + timeout
            while self._proc.poll() is None and time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(self.url + "/v2/", timeout=2) as answer:
                        if answer.status == 200:
                            return self
                except OSError:
                    pass
                time.sleep(0.1)
            if self._proc.poll() is None or "address already in use" not in _log_tail(self.log_path):
                break
        tail = _log_tail(self.log_path)
        self.stop()
        raise RuntimeError(f"registry did not start on {self.address}\n--- {self.log_path} (tail) ---\n{tail}")

    def tags(self, repository: str) -> list[str]:
        """Tags of ``repository`` (e.g. ``library/mongo``) from ``/v2/<repository>/tags/list``."""
        with urllib.request.urlopen(f"{self.url}/v2/{repository}/tags/list", timeout=10) as answer:
            return sorted(json.load(answer).get("tags") or [])

    def stop(self) -> None:
        """Stop the registry and remove its directory unless ``keep``."""
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        _stop_process(proc, timeout=10)
        if not self.keep and self.dir.exists():
            shutil.rmtree(self.dir)


# --- synthetic images -------------------------------------------------------------------------

_VOCAB: tuple[bytes, ...] = tuple(
    "".join(random.Random(i).choices("etaoinshrdlucmfwypvbgkqjxz", k=3 + i % 8)).encode()
    + (b"\n" if i % 9 == 0 else b" ")
    for i in range(256)
)  # 256 words of 4-11 bytes with their separator: one random byte picks one word


@dataclass(frozen=True)
class DataLayer:
    """A big file of deterministic filler, added to an image as a layer of its own (for benchmarks).

    ``kind="random"`` gives incompressible bytes; ``kind="text"`` gives
    text-like words that zstd or gzip shrink several times. The same
    ``(path, size, kind, seed)`` always gives the same bytes, e.g.
    ``DataLayer("/opt/blob", 200 * MiB, "random", seed=1)``.
    """

    path: str
    size: int
    kind: Literal["random", "text"] = "random"
    seed: int = 0

    def chunks(self) -> Iterator[bytes]:
        """The file's content, in blocks of 1 MiB (the last one shorter)."""
        if self.kind not in ("random", "text"):
            raise ValueError(f"unknown DataLayer kind {self.kind!r}")
        rng = random.Random(f"{self.seed}:{self.kind}:{self.path}")
        left = self.size
        while left > 0:
            n = min(MiB, left)
            if self.kind == "random":
                yield rng.randbytes(n)
            else:  # words average 7.5 bytes: draw a little less than enough, then top up
                block = b""
                while len(block) < n:
                    block += b"".join(map(_VOCAB.__getitem__, rng.randbytes((n - len(block)) // 8 + 64)))
                yield block[:n]
            left -= n


class _ChunkReader(io.RawIOBase):
    """A file-like view of an iterator of byte chunks, so that ``tarfile`` streams generated data."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._view = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._view:
            self._view = memoryview(next(self._chunks, b""))
        n = min(len(buffer), len(self._view))
        buffer[:n] = self._view[:n]
        self._view = self._view[n:]
        return n


def _is_static_elf(path: Path) -> bool:
    """True if ``path`` is an ELF executable without a program interpreter (statically linked)."""
    with path.open("rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF":
            return False
        end = "<" if head[5] == 1 else ">"
        if head[4] == 2:  # 64-bit
            (phoff,) = struct.unpack_from(end + "Q", head, 0x20)
            phentsize, phnum = struct.unpack_from(end + "HH", head, 0x36)
        else:
            (phoff,) = struct.unpack_from(end + "I", head, 0x1C)
            phentsize, phnum = struct.unpack_from(end + "HH", head, 0x2A)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    pt_interp = 3
    return all(struct.unpack_from(end + "I", table, i * phentsize)[0] != pt_interp for i in range(phnum))


def find_static_busybox() -> Path:
    """The machine's statically linked busybox (Debian ``busybox-static`` installs ``/bin/busybox``)."""
    candidates = [Path("/bin/busybox"), Path("/usr/bin/busybox")]
    found = shutil.which("busybox")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file() and _is_static_elf(candidate):
            return candidate
    raise RuntimeError("no statically linked busybox found: install it with `apt-get install busybox-static`")


_RUN_FOREVER = """#!/bin/sh
# run-forever [COMMAND...]: run COMMAND (default: idle) and exit 0 at once on SIGTERM or SIGINT,
# so that `docker stop` is quick even when this script is PID 1.
trap 'exit 0' TERM INT
[ $# -gt 0 ] || set -- sleep 2147483647
"$@" &
wait $!
"""


def _client(target: PrivateEngine | docker.DockerClient) -> docker.DockerClient:
    return target.client() if isinstance(target, PrivateEngine) else target


def _add_file(tar: tarfile.TarFile, name: str, content: FileContent | DataLayer) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = _MTIME
    if isinstance(content, DataLayer):
        info.size, info.mode = content.size, 0o644
        tar.addfile(info, _ChunkReader(content.chunks()))
        return
    data = content.encode() if isinstance(content, str) else content
    info.size, info.mode = len(data), 0o755 if data.startswith((b"#!", b"\x7fELF")) else 0o644
    tar.addfile(info, io.BytesIO(data))


def _build(
    client: docker.DockerClient,
    tag: str,
    dockerfile: list[str],
    context: Mapping[str, FileContent | DataLayer],
    labels: Mapping[str, str] | None = None,
) -> Image:
    """Build ``tag`` with the legacy builder from a tar context streamed from a temporary file."""
    with tempfile.TemporaryFile() as tar_file:
        with tarfile.open(fileobj=tar_file, mode="w") as tar:
            _add_file(tar, "Dockerfile", "\n".join(dockerfile) + "\n")
            for name, content in context.items():
                _add_file(tar, name, content)
        tar_file.seek(0)
        image, _log = client.images.build(
            fileobj=tar_file, custom_context=True, tag=tag, rm=True, forcerm=True,
            pull=False, network_mode="none", labels=dict(labels or {}),
        )  # fmt: skip
    return image


def ensure_base_image(target: PrivateEngine | docker.DockerClient) -> Image:
    """Build :data:`BASE_IMAGE` on this engine unless it is there already.

    ``FROM scratch``, a static busybox with its applets linked into ``/bin``,
    ``/tmp``, and ``/usr/local/bin/run-forever`` (see :func:`build_image`).
    """
    client = _client(target)
    try:
        return client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        pass
    dockerfile = [
        "FROM scratch",
        "COPY busybox /bin/busybox",
        'RUN ["/bin/busybox", "sh", "-c", "/bin/busybox --install -s /bin && mkdir -p -m 1777 /tmp"]',
        "COPY files/ /",
    ]
    context = {"busybox": find_static_busybox().read_bytes(), "files/usr/local/bin/run-forever": _RUN_FOREVER}
    return _build(client, BASE_IMAGE, dockerfile, context)


def build_image(
    target: PrivateEngine | docker.DockerClient,
    tag: str,
    files: Mapping[str, FileContent] | None = None,
    *,
    extra_layers: Sequence[Mapping[str, FileContent]] = (),
    data: Sequence[DataLayer] = (),
    entrypoint: Sequence[str] | None = None,
    cmd: Sequence[str] | None = None,
    base: str = BASE_IMAGE,
    labels: Mapping[str, str] | None = None,
) -> Image:
    """Build a synthetic image offline and tag it ``tag``; return the docker-py ``Image``.

    Layers, in order: ``files`` (one layer), each mapping of ``extra_layers``
    (one layer each), each :class:`DataLayer` of ``data`` (one layer each).
    Keys are absolute paths in the image; content starting with ``#!`` (or an
    ELF header) gets mode 0755, the rest 0644. ``base`` is :data:`BASE_IMAGE` (built on demand,
    so images share its layers), another local image (never pulled), or
    ``"scratch"``. Images from the base can run ``sh``, ``sleep``, ``httpd``
    and ``run-forever CMD...`` (which makes ``docker stop`` quick).
    """
    client = _client(target)
    if base == BASE_IMAGE:
        ensure_base_image(client)
    dockerfile = [f"FROM {base}"]
    context: dict[str, FileContent | DataLayer] = {}
    for i, layer in enumerate([files or {}, *extra_layers]):
        if layer:
            dockerfile.append(f"COPY layer{i}/ /")
            context.update({f"layer{i}/{path.lstrip('/')}": content for path, content in layer.items()})
    for i, blob in enumerate(data):
        dockerfile.append(f"COPY data{i}/ /")
        context[f"data{i}/{blob.path.lstrip('/')}"] = blob
    if entrypoint is not None:
        dockerfile.append(f"ENTRYPOINT {json.dumps(list(entrypoint))}")
    if cmd is not None:
        dockerfile.append(f"CMD {json.dumps(list(cmd))}")
    return _build(client, tag, dockerfile, context, labels)


# --- stand-ins for the images an Overleaf host runs --------------------------------------------

APP_BASE_IMAGE = "airgap-test/overleaf-app-base:1"
MONGO_BASE_IMAGE = "airgap-test/mongo-base:1"
REDIS_BASE_IMAGE = "airgap-test/redis-base:1"
MONGO_MAJORS = ("3.6", "4.0", "4.2", "4.4", "5.0", "6.0", "7.0", "8.0")
"""Mongo's upgrade path, one major at a time: mongod X starts on data whose FCV is X or the one before."""

_APP_BASE_FILES: dict[str, FileContent] = {
    "/overleaf/README": "Stand-in for the Overleaf application image (tests only).\n" * 64,
    "/var/www/index.html": "<html><body>Overleaf stand-in</body></html>\n",
    "/var/www/status": "ok\n",
}
_APP_CMD = ["run-forever", "httpd", "-f", "-p", "80", "-h", "/var/www"]

_MONGO_ENTRYPOINT = """#!/bin/sh
# Stand-in for the mongo image's docker-entrypoint.sh: arguments that start with a flag mean "mongod FLAGS".
case "${1:-}" in -*) set -- mongod "$@" ;; esac
exec "$@"
"""

_MONGO_LIB = """# Sourced by the mongod and mongo shell stand-ins: this image's version and the FCV range it accepts.
share=/usr/local/share/mongo-standin
version=$(cat $share/version); max=$(cat $share/fcv); min=$(cat $share/min-fcv)
num() { echo "$1" | awk -F. '{ print $1 * 1000 + $2 }'; }
accepted() { [ -n "$1" ] && [ "$(num "$1")" -le "$(num "$max")" ] && { [ -z "$min" ] || [ "$(num "$1")" -ge "$(num "$min")" ]; }; }
mkdir -p /data/db
"""

_MONGOD = """#!/bin/sh
# Stand-in for mongod: records its arguments in /data/db/mongod.log, refuses (exit 62) data whose
# featureCompatibilityVersion (/data/db/fcv) is newer than itself or older than its predecessor, then idles.
. /usr/local/lib/mongo-standin.sh
if [ "${1:-}" = --version ]; then echo "db version v$version"; exit 0; fi
echo "mongod $*" >> /data/db/mongod.log
[ -s /data/db/fcv ] || echo "$max" > /data/db/fcv
have=$(cat /data/db/fcv)
if ! accepted "$have"; then
  echo "mongod $version: data has featureCompatibilityVersion $have, need ${min:-$max} to $max" >&2
  exit 62
fi
echo "mongod $version waiting for connections (featureCompatibilityVersion $have)"
exec run-forever
"""

_MONGO_SHELL = """#!/bin/sh
# Stand-in for mongosh and the legacy mongo shell: appends each call ("NAME ARGS", then stdin when there
# is no --eval) to /data/db/mongosh.log and answers like a healthy server. setFeatureCompatibilityVersion
# changes /data/db/fcv (within what this mongod accepts); getParameter featureCompatibilityVersion reads it.
. /usr/local/lib/mongo-standin.sh
js=
prev=
for arg in "$@"; do
  if [ "$prev" = --eval ]; then js="$js$arg;"; fi
  prev=$arg
done
echo "$(basename "$0") $*" >> /data/db/mongosh.log
if [ -z "$js" ] && [ ! -t 0 ]; then js=$(cat); printf '%s\\n' "$js" >> /data/db/mongosh.log; fi
case "$js" in
  *setFeatureCompatibilityVersion*)
    want=$(printf '%s' "$js" | grep -o 'setFeatureCompatibilityVersion[^0-9]*[0-9.]*' | grep -o '[0-9.]*$' | head -n 1)
    if ! accepted "$want"; then
      echo "MongoServerError: invalid featureCompatibilityVersion '$want' for mongod $version" >&2
      exit 1
    fi
    echo "$want" > /data/db/fcv
    echo "{ ok: 1 }" ;;
  *featureCompatibilityVersion*)
    echo "{ featureCompatibilityVersion: { version: '$(cat /data/db/fcv 2>/dev/null || echo "$max")' }, ok: 1 }" ;;
  *) echo "{ ok: 1 }" ;;
esac
"""

_REDIS_ENTRYPOINT = """#!/bin/sh
# Stand-in for the redis image's docker-entrypoint.sh: arguments that start with a flag mean "redis-server FLAGS".
case "${1:-}" in -*) set -- redis-server "$@" ;; esac
exec "$@"
"""

_REDIS_SERVER = """#!/bin/sh
# Stand-in for redis-server: prints its version, records its arguments in /data/redis-server.log, then idles.
version=$(cat /usr/local/share/redis-standin/version)
case "${1:-}" in -v|--version) echo "Redis server v=$version sha=00000000:0 malloc=libc bits=64"; exit 0 ;; esac
mkdir -p /data
echo "redis-server $*" >> /data/redis-server.log
echo "Redis $version ready to accept connections"
exec run-forever
"""

_REDIS_CLI = """#!/bin/sh
# Stand-in for redis-cli: records its arguments in /data/redis-cli.log; PING -> PONG, a scan finds nothing.
mkdir -p /data
echo "redis-cli $*" >> /data/redis-cli.log
for arg in "$@"; do
  case "$arg" in
    [Pp][Ii][Nn][Gg]) echo PONG; exit 0 ;;
    --scan|[Kk][Ee][Yy][Ss]) exit 0 ;;
    [Ii][Nn][Ff][Oo]) echo "redis_version:$(cat /usr/local/share/redis-standin/version)"; exit 0 ;;
  esac
done
echo OK
"""

_NGINX = """#!/bin/sh
# Stand-in for nginx: -v and -t answer at once; otherwise serve /usr/share/nginx/html on port 80.
case "${1:-}" in
  -v|-V) echo "nginx version: nginx/$(cat /usr/share/nginx/VERSION)" >&2; exit 0 ;;
  -t) echo "nginx: configuration file /etc/nginx/nginx.conf test is successful" >&2; exit 0 ;;
esac
exec run-forever httpd -f -p 80 -h /usr/share/nginx/html
"""


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) if part.isdigit() else -1 for part in version.split("."))


def _series(version: str) -> str:
    """``"8.0.4"`` -> ``"8.0"``, ``"6"`` -> ``"6.0"``: the major.minor a tag names."""
    parts = (version.split(".") + ["0"])[:2]
    return ".".join(parts)


def _ensure(client: docker.DockerClient, tag: str, files: Mapping[str, FileContent]) -> None:
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        build_image(client, tag, files)


def _standin_labels(kind: str, version: str) -> dict[str, str]:
    return {"org.opencontainers.image.version": version, "airgap-test.standin": kind}


def seed_overleaf_images(
    target: PrivateEngine | docker.DockerClient,
    versions: Sequence[str] = (),
    *,
    edition: Literal["ce", "pro"] = "ce",
    git_bridge: bool = False,
    mongo: Sequence[str] = (),
    redis: Sequence[str] = (),
    nginx: Sequence[str] = (),
    texlive: Sequence[str] = (),
) -> list[str]:
    """Build small stand-ins named exactly like the real images; return their references in build order.

    - App (``versions``): ``sharelatex/sharelatex:V`` (CE) or
      ``quay.io/sharelatex/sharelatex-pro:V`` (Server Pro); ``git_bridge`` adds
      ``quay.io/sharelatex/git-bridge:V`` (Server Pro only). All start from one
      app base; within one call, each version of a major.minor series is built
      ``FROM`` the one before and adds a small layer, like hotfix chains.
      ``CMD`` serves ``/var/www`` with busybox httpd on port 80.
    - ``mongo:T``: entrypoint takes flags (``--replSet overleaf``) like the real
      one; ``mongod`` keeps the data's FCV in ``/data/db/fcv`` and refuses
      (exit 62) a skipped major or a downgrade. As in the real images, ``mongo``
      (legacy shell) exists below 6.0 and ``mongosh`` from 5.0; both log every
      call to ``/data/db/mongosh.log`` and apply ``setFeatureCompatibilityVersion``.
    - ``redis:T``: entrypoint takes ``redis-server --appendonly yes`` or flags;
      ``redis-cli ping`` prints PONG; calls are logged under ``/data``.
    - ``nginx:T`` and ``quay.io/sharelatex/texlive-full:T``: small long-running images.
    """
    if edition not in ("ce", "pro"):
        raise ValueError(f"edition must be 'ce' or 'pro', not {edition!r}")
    if git_bridge and edition != "pro":
        raise ValueError("git-bridge exists only for Server Pro (edition='pro')")
    client = _client(target)
    refs: list[str] = []

    def add(ref: str, files: Mapping[str, FileContent], kind: str, version: str, **kwargs: Any) -> None:
        build_image(client, ref, files, labels=_standin_labels(kind, version), **kwargs)
        refs.append(ref)

    if versions:
        _ensure(client, APP_BASE_IMAGE, _APP_BASE_FILES)
    app_repo = "sharelatex/sharelatex" if edition == "ce" else "quay.io/sharelatex/sharelatex-pro"
    previous: dict[str, str] = {}
    for version in sorted(versions, key=_version_key):
        ref = f"{app_repo}:{version}"
        files = {"/overleaf/VERSION": version + "\n", f"/overleaf/hotfix/{version}.txt": f"{edition} {version}\n" * 256}
        base = previous.get(_series(version), APP_BASE_IMAGE)
        add(ref, files, f"overleaf-{edition}", version, base=base, cmd=_APP_CMD)
        previous[_series(version)] = ref
        if git_bridge:
            add(f"quay.io/sharelatex/git-bridge:{version}", {"/opt/git-bridge/VERSION": version + "\n"},
                "git-bridge", version, cmd=["run-forever"])  # fmt: skip

    if mongo:
        _ensure(client, MONGO_BASE_IMAGE, {
            "/usr/local/bin/docker-entrypoint.sh": _MONGO_ENTRYPOINT, "/usr/local/bin/mongod": _MONGOD,
            "/usr/local/lib/mongo-standin.sh": _MONGO_LIB,
        })  # fmt: skip
    for tag in mongo:
        fcv = _series(tag)
        min_fcv = MONGO_MAJORS[MONGO_MAJORS.index(fcv) - 1] if fcv in MONGO_MAJORS[1:] else ""
        major = int(fcv.split(".")[0])
        shells = [name for name, present in (("mongo", major < 6), ("mongosh", major >= 5)) if present]
        files = {f"/usr/local/share/mongo-standin/{k}": v + "\n" for k, v in
                 {"version": tag, "fcv": fcv, "min-fcv": min_fcv}.items()}  # fmt: skip
        files.update({f"/usr/local/bin/{shell}": _MONGO_SHELL for shell in shells})
        add(f"mongo:{tag}", files, "mongo", tag, base=MONGO_BASE_IMAGE,
            entrypoint=["docker-entrypoint.sh"], cmd=["mongod"])  # fmt: skip

    if redis:
        _ensure(client, REDIS_BASE_IMAGE, {
            "/usr/local/bin/docker-entrypoint.sh": _REDIS_ENTRYPOINT,
            "/usr/local/bin/redis-server": _REDIS_SERVER, "/usr/local/bin/redis-cli": _REDIS_CLI,
        })  # fmt: skip
    for tag in redis:
        add(f"redis:{tag}", {"/usr/local/share/redis-standin/version": tag + "\n"}, "redis", tag,
            base=REDIS_BASE_IMAGE, entrypoint=["docker-entrypoint.sh"], cmd=["redis-server"])  # fmt: skip

    for tag in nginx:
        files = {"/usr/sbin/nginx": _NGINX, "/usr/share/nginx/VERSION": tag + "\n",
                 "/usr/share/nginx/html/index.html": "<html><body>nginx stand-in</body></html>\n"}  # fmt: skip
        add(f"nginx:{tag}", files, "nginx", tag, cmd=["nginx", "-g", "daemon off;"])

    for tag in texlive:
        add(f"quay.io/sharelatex/texlive-full:{tag}", {"/usr/local/texlive/VERSION": tag + "\n"},
            "texlive-full", tag, cmd=["run-forever"])  # fmt: skip
    return refs


# --- registry mirrors --------------------------------------------------------------------------


def split_reference(ref: str) -> tuple[str, str, str]:
    """Split a tagged reference like Docker does: ``"mongo:8.0"`` -> ``("docker.io", "library/mongo", "8.0")``.

    The project's own parser (:func:`manifests.imageref.normalize`) does the work."""
    n = normalize(ref)
    return n.domain, n.path, n.tag


def mirror_reference(ref: str, address: str, mirrors: Mapping[str, str] | None = None) -> str:
    """Where ``ref`` lives in a mirror registry at ``address``.

    Docker Hub images go to ``ADDRESS/PATH`` and other registries to
    ``ADDRESS/DOMAIN/PATH`` (the mapping ``--mirror docker.io=ADDRESS``,
    ``--mirror quay.io=ADDRESS/quay.io``); ``mirrors`` overrides the prefix per
    source registry, e.g. ``{"quay.io": "127.0.0.1:5000/q"}``.
    """
    domain, path, tag = split_reference(ref)
    prefix = (mirrors or {}).get(domain) or (address if domain == "docker.io" else f"{address}/{domain}")
    return f"{prefix}/{path}:{tag}"


def push_to_registry(
    target: PrivateEngine | docker.DockerClient,
    registry: PrivateRegistry | str,
    refs: Iterable[str],
    *,
    mirrors: Mapping[str, str] | None = None,
    keep_tags: bool = False,
) -> dict[str, str]:
    """Push local images into ``registry`` under their mirror names; return ``{ref: pushed ref}``.

    Each image is tagged with its :func:`mirror_reference`, pushed, and (unless
    ``keep_tags``) untagged again. RuntimeError on any error in a push's status stream (:func:`importer.images.engine.stream_error`).
    """
    client = _client(target)
    address = registry.address if isinstance(registry, PrivateRegistry) else registry
    pushed: dict[str, str] = {}
    for ref in refs:
        dest = mirror_reference(ref, address, mirrors)
        repository, _, tag = dest.rpartition(":")
        client.images.get(ref).tag(repository, tag)
        try:
            for status in client.api.push(repository, tag=tag, stream=True, decode=True):
                problem = stream_error(status)
                if problem is not None:
                    raise RuntimeError(f"push of {ref} as {dest} failed: {problem}")
        finally:
            if not keep_tags:
                client.images.remove(dest, noprune=True)
        pushed[ref] = dest
    return pushed


def wipe_engine(target: PrivateEngine | docker.DockerClient) -> None:
    """Remove every container and image of an engine (an offline host starting empty); AssertionError if stuck."""
    client = _client(target)
    for c in client.containers.list(all=True):
        c.remove(force=True)
    for _ in range(10):  # children before parents: repeat until nothing is left
        images = client.api.images(all=True)
        if not images:
            return
        for img in images:
            try:
                client.api.remove_image(img["Id"], force=True)
            except docker.errors.APIError:
                pass
    raise AssertionError(f"cannot empty the engine: {client.api.images(all=True)}")
