"""The Docker engine the importer talks to: connection, preflight, image store, what it already holds.

The engine is the one ``DOCKER_HOST`` names (Docker's own convention; the local
socket by default), reached with docker-py (API version negotiated) and a read
timeout long enough for multi-GB loads. Every docker-py or HTTP failure becomes an
:class:`EngineError` that names the engine. Engines from 20.10 (API 1.41) on are
supported, with either image store, read from ``/info`` (``DriverStatus``
``driver-type`` = ``io.containerd.snapshotter.v1`` means the containerd store):

* ``classic`` (graph drivers such as overlay2): an image's ID is its config digest;
* ``containerd``: an image's ID is its manifest (or index) digest.

``RootFS.Layers`` lists the diff_ids on both.

    client = connect()
    info = preflight(client, need_bytes=3 * 1024**3)
    info.image_store                      # "classic" or "containerd"
    host = HostImages.scan(client)
    chain_ids(["sha256:aaa...", "sha256:bbb..."])[-1] in host.chains()
    tag_image(client, "sha256:ccc...", "mongo:8.0")       # point a tag at an image (create or move)
    stream_error({"errorDetail": {"message": "no space left"}})   # 'no space left'
"""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Mapping

if TYPE_CHECKING:
    import docker

from manifests.errors import DiskSpaceError, EngineError
from manifests.imageref import split_ref
from manifests.receipt import HostImage, host_chain_ids
from manifests.units import human_size

MIN_API_VERSION = "1.41"   # Engine 20.10: the oldest engine this importer is tested with
ZSTD_API_VERSION = "1.42"  # Engine 23: the first whose docker load takes zstd-compressed layer files
SNAPSHOTTER = "io.containerd.snapshotter.v1"   # DriverStatus driver-type of the containerd image store
STORES = ("classic", "containerd")
CLIENT_TIMEOUT = 3600      # seconds: the engine works minutes before answering a multi-GB load
SPACE_FACTOR = 2           # classic: the load untars into the data root, then registers the layers;
                           # containerd: the content store keeps the blobs beside the unpacked snapshots
DEFAULT_HOST = "unix:///var/run/docker.sock"


def engine_name() -> str:
    return os.environ.get("DOCKER_HOST") or DEFAULT_HOST


_REASONS = (  # what docker-py / requests say -> what it means for the admin
    ("FileNotFoundError", "the socket does not exist"),
    ("No such file or directory", "the socket does not exist"),
    ("ConnectionRefusedError", "nothing listens on the socket"),
    ("Connection refused", "nothing listens on the socket"),
    ("PermissionError", "permission denied on the socket (run as root or as a member of the docker group)"),
    ("Read timed out", "the engine did not answer in time"),
    ("Connection reset", "the engine closed the connection"),
    ("Connection aborted", "the connection was aborted"),
)


def _reason(exc: BaseException) -> str:
    text = str(exc)
    for marker, meaning in _REASONS:
        if marker in text:
            return meaning
    return text.splitlines()[0][:300] if text else type(exc).__name__


def down_error(exc: BaseException, doing: str = "reach") -> EngineError:
    return EngineError(f"cannot {doing} the Docker engine at {engine_name()}: {_reason(exc)}",
                       "Start the engine (e.g. `systemctl start docker`), or set DOCKER_HOST to the socket of "
                       "the engine to use; then run the same command again.")


@contextmanager
def engine_errors(doing: str) -> Iterator[None]:
    """Turn docker-py / HTTP failures inside the block into an EngineError saying what was being done."""
    import docker.errors  # here, not at the top: `--help` and `verify` need no Docker SDK (start-up time)
    import requests.exceptions

    try:
        yield
    except docker.errors.APIError as exc:
        explanation = getattr(exc, "explanation", None) or str(exc)
        raise EngineError(f"the Docker engine at {engine_name()} refused to {doing}: {explanation}",
                          "Check the engine's log (journalctl -u docker) and run the same command again.") from exc
    except (docker.errors.DockerException, requests.exceptions.RequestException, ConnectionError) as exc:
        raise down_error(exc, doing) from exc


def connect(timeout: int = CLIENT_TIMEOUT) -> docker.DockerClient:
    """A client for the engine DOCKER_HOST names (API version negotiated), or EngineError."""
    import docker
    import requests.exceptions

    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise down_error(exc) from exc
    return client


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split(".") if x.isdigit())


@dataclass
class EngineInfo:
    version: str
    api_version: str
    os: str
    arch: str
    driver: str
    image_store: str           # "classic" (graph driver) or "containerd"
    data_root: str
    free_bytes: int | None     # None when the data root is not on this machine

    @property
    def takes_zstd_layers(self) -> bool:
        """Whether ``docker load`` of a docker-archive accepts zstd-compressed layer files here."""
        return _version_tuple(self.api_version) >= _version_tuple(ZSTD_API_VERSION)

    def receipt_dict(self) -> dict[str, str]:
        """What a receipt carries about the engine (no local paths)."""
        return {"version": self.version, "api_version": self.api_version, "os": self.os, "arch": self.arch,
                "storage_driver": self.driver, "image_store": self.image_store}


def unpigz_hint(store: str, gzip_bytes: int) -> str | None:
    """A note for a classic-store load of gzip layers on a local engine whose host has no ``unpigz``.

    The classic store decompresses every gzip layer itself, one after the other; from Engine 20.10 on it
    runs ``unpigz`` (Debian package ``pigz``) for that when it finds it in its PATH, else Go's gzip reader
    (measured here, ``docker load`` of 4 layers, 374 MiB of tar, 174 MiB as gzip, medians of 3 in one go:
    6.0 s as gzip without unpigz, 4.7 s with it, 3.4 s as plain tars). The containerd store and plain/zstd
    layers do not need it.
    """
    if store != "classic" or gzip_bytes <= 0 or not _is_local() or shutil.which("unpigz") is not None:
        return None
    return (f"the engine decompresses {gzip_bytes / 1e9:.2f} GB of gzip layers itself; with pigz installed "
            "(apt-get install pigz: it gives unpigz, which Engine 20.10 and newer use) that goes faster")


def _is_local() -> bool:
    host = os.environ.get("DOCKER_HOST")
    return not host or host.startswith("unix://")


def free_bytes(path: str) -> int | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def image_store(info: dict[str, Any]) -> str:
    """``"containerd"`` when ``/info`` reports the containerd snapshotter as the driver type, else ``"classic"``."""
    for pair in info.get("DriverStatus") or []:
        if isinstance(pair, (list, tuple)) and len(pair) == 2 and pair[0] == "driver-type" \
                and str(pair[1]).startswith(SNAPSHOTTER):
            return "containerd"
    return "classic"


def check_api_version(info: EngineInfo) -> None:
    """EngineError for an engine older than API 1.41 (Engine 20.10)."""
    if _version_tuple(info.api_version) < _version_tuple(MIN_API_VERSION):
        raise EngineError(f"the Docker engine at {engine_name()} speaks API {info.api_version} (Engine {info.version});"
                          f" this importer needs API {MIN_API_VERSION} (Engine 20.10) or newer",
                          "Upgrade Docker Engine on this host (it can come from your OS packages), then run again.")


def engine_info(client: docker.DockerClient) -> EngineInfo:
    with engine_errors("describe itself"):
        ver = client.version()
        info = client.info()
    root = str(info.get("DockerRootDir") or "")
    return EngineInfo(
        version=str(ver.get("Version", "?")), api_version=str(ver.get("ApiVersion", "0")),
        os=str(info.get("OSType", "?")), arch=str(info.get("Architecture", "?")), driver=str(info.get("Driver", "?")),
        image_store=image_store(info), data_root=root,
        free_bytes=free_bytes(root) if root and _is_local() and os.path.isdir(root) else None)


def preflight(client: docker.DockerClient, need_bytes: int = 0) -> EngineInfo:
    """API version, image store and free space in the data root, before anything is sent."""
    info = engine_info(client)
    check_api_version(info)
    need = SPACE_FACTOR * need_bytes
    if need and info.free_bytes is not None and info.free_bytes < need:
        raise DiskSpaceError(
            f"the engine's data root {info.data_root} has {human_size(info.free_bytes)} free; loading "
            f"{human_size(need_bytes)} of image data needs about {human_size(need)} ({SPACE_FACTOR}x: the engine unpacks, "
            "then registers)",
            f"Free at least {human_size(need - info.free_bytes)} there (e.g. `docker image prune`), then run again.")
    return info


@dataclass
class HostImages:
    """Every image the engine holds, by ID, with its tags and layer diff_ids (both stores)."""

    images: dict[str, HostImage] = field(default_factory=dict)
    store: str = "classic"

    @classmethod
    def scan(cls, client: docker.DockerClient, store: str | None = None) -> "HostImages":
        import docker.errors

        out = cls(store=store or engine_info(client).image_store)
        with engine_errors("list its images"):
            for summary in client.api.images(all=True):
                try:
                    data = client.api.inspect_image(summary["Id"])
                except docker.errors.NotFound:
                    continue  # removed meanwhile
                tags = [t for t in (data.get("RepoTags") or []) if t != "<none>:<none>"]
                layers = [str(x) for x in (data.get("RootFS") or {}).get("Layers") or []]
                digests = sorted(str(x) for x in data.get("RepoDigests") or [])
                out.images[data["Id"]] = HostImage(data["Id"], tuple(sorted(tags)), tuple(layers), tuple(digests))
        return out

    def chains(self) -> set[str]:
        """The ChainID of every layer chain some image here has: what a docker-archive (classic) or an OCI
        layout (containerd: the unpacked snapshots) may leave out (:func:`manifests.receipt.chain_ids`)."""
        return host_chain_ids(img.diff_ids for img in self.images.values())


def inspect(client: docker.DockerClient, ref: str) -> dict[str, Any] | None:
    """``docker image inspect ref``, or None when there is no such image."""
    import docker.errors

    with engine_errors(f"inspect {ref}"):
        try:
            return client.api.inspect_image(ref)
        except docker.errors.NotFound:
            return None


def image_id(client: docker.DockerClient, ref: str) -> str | None:
    """The ID ``ref`` resolves to on the engine, or None."""
    data = inspect(client, ref)
    return str(data["Id"]) if data is not None else None


def tag_image(client: docker.DockerClient, image: str, ref: str) -> None:
    """Point the tag ``ref`` at ``image`` (an ID or another reference), creating or moving it: the one retag."""
    repo, tag = split_ref(ref)
    with engine_errors(f"tag {ref}"):
        client.api.tag(image, repo, tag, force=True)


def stream_error(item: Mapping[str, Any]) -> str | None:
    """The error text of one status item of a Docker progress stream (load, push, pull, build), or None.

    Docker reports failures inside a 200 response: ``{"errorDetail": {"message": ...}, "error": ...}``;
    ``docker load`` also prints ``Error unpacking ...`` / ``Error processing ...`` as plain stream lines.
    """
    if "errorDetail" in item or "error" in item:
        detail = item.get("errorDetail")
        text = detail.get("message") if isinstance(detail, Mapping) else detail
        return str(text or item.get("error") or "unknown error")
    line = str(item.get("stream") or item.get("status") or "").strip()
    if "Error unpacking" in line or line.lower().startswith("error"):
        return line
    return None


__all__ = ["EngineInfo", "HostImage", "HostImages", "connect", "engine_info", "human_size", "image_id", "inspect",
           "preflight", "split_ref", "stream_error", "tag_image"]
