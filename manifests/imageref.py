"""Image references, split the way Docker splits them: the one parser both sides use.

A plan names images the way the Overleaf Toolkit does (``mongo:8.0``,
``sharelatex/sharelatex:5.5.8``, ``quay.io/sharelatex/sharelatex-pro:6.2.2``). Docker's
rule: the first path component is a registry host when it holds a ``.`` or ``:`` or is
``localhost``; otherwise the image is on Docker Hub (``docker.io``), whose one-component
names live under ``library/``. The tag follows the last ``:`` after the last ``/``.

    n = normalize("mongo:8.0")
    n.full, n.short, n.repository     # 'docker.io/library/mongo:8.0', 'mongo:8.0', 'mongo'
    n.hub_path                        # 'mongo' (the path without Docker Hub's library/)
    split_ref("127.0.0.1:5000/a/b:1") # ('127.0.0.1:5000/a/b', '1')
    split_tag("host:5000/mongo")      # ('host:5000/mongo', None): a port is not a tag
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import PlanError, UsageError

DOCKER_HUB = "docker.io"
HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
IMAGE_REF_RE = re.compile(
    r"^(?:[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?/)?"  # optional registry host[:port]/
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r":[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z"
)


def check_image_ref(ref: str) -> str:
    """An exact ``name:tag`` reference with no shell metacharacters, or PlanError (plans and manifests use it)."""
    if not isinstance(ref, str) or not IMAGE_REF_RE.match(ref):
        raise PlanError(f"{ref!r} is not a valid image reference",
                        "Use an exact name:tag such as quay.io/sharelatex/texlive-full:2025.1.")
    return ref


def is_registry_host(component: str) -> bool:
    """Docker's rule for the first component of a name: a host when it holds ``.`` or ``:`` or is localhost."""
    return "." in component or ":" in component or component == "localhost"


def split_tag(ref: str) -> tuple[str, str | None]:
    """``mongo:4.4`` -> ``("mongo", "4.4")``; ``host:5000/mongo`` -> ``("host:5000/mongo", None)``."""
    name, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:
        return ref, None
    return name, tag


def split_ref(ref: str) -> tuple[str, str]:
    """``"host:5000/a/b:tag"`` -> ``("host:5000/a/b", "tag")``; an untagged name gets ``latest``."""
    name, tag = split_tag(ref)
    return name, tag or "latest"


@dataclass(frozen=True)
class ImageName:
    """A tagged reference split the way Docker does."""

    domain: str   # docker.io, quay.io, 127.0.0.1:5000
    path: str     # library/mongo, sharelatex/sharelatex
    tag: str

    @property
    def full(self) -> str:
        """``docker.io/library/mongo:8.0``: what containerd calls the image."""
        return f"{self.domain}/{self.path}:{self.tag}"

    @property
    def hub_path(self) -> str:
        """The path without Docker Hub's ``library/`` (``mongo``, ``sharelatex/sharelatex``)."""
        if self.domain == DOCKER_HUB and self.path.startswith("library/"):
            return self.path[len("library/"):]
        return self.path

    @property
    def short(self) -> str:
        """The canonical short name Docker prints: ``mongo:8.0``, ``quay.io/x/y:1``."""
        if self.domain == DOCKER_HUB:
            return f"{self.hub_path}:{self.tag}"
        return self.full

    @property
    def repository(self) -> str:
        """The repository part of :attr:`short` (what ``docker tag`` takes before the colon)."""
        return self.short.rsplit(":", 1)[0]


def normalize(ref: str) -> ImageName:
    """``mongo:8.0`` -> docker.io/library/mongo:8.0. Only tagged references (no digests): else UsageError."""
    if not isinstance(ref, str) or not ref or "@" in ref or any(c.isspace() for c in ref):
        raise UsageError(f"{ref!r} is not a tagged image reference", "Use NAME:TAG, e.g. mongo:8.0.")
    name, tag = split_ref(ref)
    first, slash, rest = name.partition("/")
    if slash and is_registry_host(first):
        domain, path = first, rest
    else:
        domain, path = DOCKER_HUB, name
    if domain in HUB_ALIASES:
        domain = DOCKER_HUB
        if "/" not in path:
            path = "library/" + path
    if not path or path != path.lower() or not tag:
        raise UsageError(f"{ref!r} is not a valid image reference", "Use lower-case NAME:TAG, e.g. mongo:8.0.")
    return ImageName(domain, path, tag)


def canonical(ref: str) -> str:
    """The short canonical name: ``docker.io/library/mongo:8.0`` -> ``mongo:8.0``."""
    return normalize(ref).short

