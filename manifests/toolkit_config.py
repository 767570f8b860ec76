"""Read an Overleaf Toolkit's settings: ``config/version``, ``config/overleaf.rc``,
``config/variables.env`` and the defaults in ``lib/default.rc`` (toolkit-contract.md).

Parsing only: no command of the Toolkit is run, nothing is written. Both sides use it:
``overleaf-bundle plan --toolkit DIR`` to plan from what a host runs, and
``overleaf-import upgrade`` for its preflight.

    cfg = read_toolkit(Path("/srv/overleaf-toolkit"))
    cfg.version, cfg.edition, cfg.mongo_version    # '3.5.10', 'ce', '4.4'
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ToolkitError
from .imageref import split_tag

_LINE_RE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def parse_env_text(text: str) -> dict[str, str]:
    """``KEY=VALUE`` lines as a shell would read them (quotes, comments, ``export``)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = _LINE_RE.match(line)
        if not m:
            continue
        raw = m.group(2).strip()
        try:
            parts = shlex.split(raw, comments=True)
        except ValueError:
            parts = [raw.strip("'\"")]
        out[m.group(1)] = " ".join(parts) if parts else ""
    return out


def _series(tag: str | None) -> str | None:
    if not tag:
        return None
    m = re.match(r"^(\d+)\.(\d+)", tag)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def _true(v: str | None) -> bool:
    return (v or "").strip().lower() == "true"


@dataclass(frozen=True)
class ToolkitConfig:
    root: Path
    version: str
    rc: dict[str, str]
    env: dict[str, str]
    edition: str
    mongo_image: str
    mongo_version: str | None
    mongo_legacy_form: bool          # MONGO_IMAGE=mongo:X.Y (tag inside) rather than MONGO_VERSION
    redis_image: str
    redis_version: str | None
    git_bridge: bool
    git_bridge_image: str | None
    tls_proxy: bool
    nginx_image: str | None
    app_image: str | None
    nginx_pinned: bool = False       # NGINX_IMAGE set in config/overleaf.rc, not just lib/default.rc
    texlive: tuple[str, ...] = ()
    data_paths: dict[str, Path] = field(default_factory=dict)

    def plan_options(self) -> dict[str, object]:
        """The keyword arguments of :class:`manifests.planner.PlanRequest` this config implies."""
        return {
            "current": self.version, "edition": self.edition, "git_bridge": self.git_bridge,
            "tls_proxy": self.tls_proxy, "texlive": self.texlive, "mongo": self.mongo_version,
            "redis": self.redis_version, "app_image": self.app_image,
            "git_bridge_image": self.git_bridge_image,
            "mongo_image": self.mongo_image if self.mongo_image != "mongo" else None,
            "redis_image": self.redis_image if self.redis_image != "redis" else None,
            "nginx_image": self.nginx_image if self.tls_proxy and self.nginx_pinned else None,
        }


def read_toolkit(root: Path) -> ToolkitConfig:
    root = Path(root)
    version_file = root / "config" / "version"
    rc_file = root / "config" / "overleaf.rc"
    if not (root / "bin").is_dir() or not version_file.is_file() or not rc_file.is_file():
        raise ToolkitError(f"{root} does not look like an initialised Overleaf Toolkit "
                           "(bin/, config/version and config/overleaf.rc are expected)",
                           "Point --toolkit at the Toolkit checkout (the folder with bin/up); run bin/init there first.")
    version = version_file.read_text("utf-8").strip()
    if not version or "\n" in version:
        raise ToolkitError(f"{version_file} must hold one version line, found {version!r}")
    defaults = parse_env_text((root / "lib" / "default.rc").read_text("utf-8")) if (root / "lib" / "default.rc").is_file() else {}
    own = parse_env_text(rc_file.read_text("utf-8"))
    rc = {**defaults, **own}
    env_file = root / "config" / "variables.env"
    env = parse_env_text(env_file.read_text("utf-8")) if env_file.is_file() else {}
    edition = "pro" if _true(rc.get("SERVER_PRO")) else "ce"
    mongo_name, mongo_tag = split_tag(rc.get("MONGO_IMAGE", "mongo"))
    legacy = mongo_tag is not None and "MONGO_VERSION" not in rc
    mongo_version = _series(rc.get("MONGO_VERSION") or mongo_tag)
    redis_name, redis_tag = split_tag(rc.get("REDIS_IMAGE", "redis"))
    texlive: tuple[str, ...] = ()
    if edition == "pro" and _true(rc.get("SIBLING_CONTAINERS_ENABLED")):
        items = [t.strip() for t in env.get("ALL_TEX_LIVE_DOCKER_IMAGES", "").split(",") if t.strip()]
        default = env.get("TEX_LIVE_DOCKER_IMAGE", "").strip()
        if default and default not in items:
            items.append(default)
        texlive = tuple(items)
    app = rc.get("OVERLEAF_IMAGE_NAME") or rc.get("SHARELATEX_IMAGE_NAME") or None
    data_paths = {}
    for key, dflt in (("OVERLEAF_DATA_PATH", "data/overleaf"), ("MONGO_DATA_PATH", "data/mongo"),
                      ("REDIS_DATA_PATH", "data/redis"), ("GIT_BRIDGE_DATA_PATH", "data/git-bridge")):
        val = rc.get(key) or (rc.get("SHARELATEX_DATA_PATH") if key == "OVERLEAF_DATA_PATH" else None) or dflt
        p = Path(val)
        data_paths[key] = p if p.is_absolute() else root / p
    return ToolkitConfig(
        root=root, version=version, rc=rc, env=env, edition=edition,
        mongo_image=mongo_name, mongo_version=mongo_version, mongo_legacy_form=legacy,
        redis_image=redis_name, redis_version=_series(redis_tag),
        git_bridge=edition == "pro" and _true(rc.get("GIT_BRIDGE_ENABLED")),
        git_bridge_image=rc.get("GIT_BRIDGE_IMAGE") or None,
        tls_proxy=_true(rc.get("NGINX_ENABLED")), nginx_image=rc.get("NGINX_IMAGE") or None,
        app_image=app, nginx_pinned="NGINX_IMAGE" in own, texlive=texlive, data_paths=data_paths)
