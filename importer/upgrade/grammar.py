"""Strict grammars for every value the upgrade writes into a Toolkit's config, and for plan step ids.

The Toolkit ``source``s ``config/overleaf.rc`` and Docker Compose reads
``config/variables.env``: a value that came from a bundle must never carry shell
syntax, a newline or a path. Each key the importer writes has a grammar, checked right
before the write (:func:`check_config_value`); an unknown key is refused.

    check_config_value("version", "5.5.4-with-texlive-full")     # ok, returns the value
    check_config_value("overleaf.rc", "MONGO_VERSION", "8.0$(id)")  # raises ConfigValueError
    check_step_id("03-app-6.2.2")                                 # ok
"""
from __future__ import annotations

import re
from typing import Callable

from manifests.errors import ConfigValueError, ManifestFormatError

VERSION_RE = re.compile(r"^\d{1,4}\.\d{1,4}\.\d{1,4}(?:-RC\d{1,4})?(?:-with-texlive-full)?\Z")
SERIES_RE = re.compile(r"^\d{1,3}\.\d{1,3}\Z")
# name[:tag] as Docker spells it: lowercase path components, optional host[:port], optional tag
_NAME = (r"(?:[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]{1,5})?/)?"
         r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")
IMAGE_NAME_RE = re.compile(rf"^{_NAME}\Z")
IMAGE_REF_RE = re.compile(rf"^{_NAME}:[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}\Z")
BOOL_RE = re.compile(r"^(?:true|false)\Z")
SECRET_RE = re.compile(r"^[A-Za-z0-9+/=_-]{16,256}\Z")      # base64 / base64url, as `openssl rand -base64 32`
LEVEL_RE = re.compile(r"^[0-2]\Z")
STEP_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*\Z")


def _m(rx: re.Pattern[str]) -> Callable[[str], bool]:
    return lambda v: rx.match(v) is not None


_RC: dict[str, Callable[[str], bool]] = {
    "MONGO_VERSION": _m(SERIES_RE),
    "MONGO_IMAGE": lambda v: bool(IMAGE_NAME_RE.match(v) or IMAGE_REF_RE.match(v)),
    "REDIS_IMAGE": _m(IMAGE_REF_RE),
    "NGINX_IMAGE": _m(IMAGE_REF_RE),
    "PULL_BEFORE_UPGRADE": _m(BOOL_RE),
    "SIBLING_CONTAINERS_PULL": _m(BOOL_RE),
    "REDIS_AOF_PERSISTENCE": _m(BOOL_RE),
}
_ENV: dict[str, Callable[[str], bool]] = {
    "OVERLEAF_FILESTORE_MIGRATION_LEVEL": _m(LEVEL_RE),
    "OVERLEAF_INVITE_TOKEN_SECRET": _m(SECRET_RE),
    "TEX_LIVE_DOCKER_IMAGE": _m(IMAGE_REF_RE),
    "ALL_TEX_LIVE_DOCKER_IMAGES": lambda v: all(IMAGE_REF_RE.match(p) for p in v.split(",")),
}
_FILES = {"overleaf.rc": _RC, "variables.env": _ENV}


def check_config_value(file: str, key: str, value: str | None = None) -> str:
    """``check_config_value("version", v)`` or ``check_config_value("overleaf.rc", KEY, v)``; returns v."""
    if file == "version":
        v = key
        if not isinstance(v, str) or not VERSION_RE.match(v):
            raise ConfigValueError(f"refusing to write {v!r} into config/version: not a version like 6.2.2 "
                                   "or 5.5.4-with-texlive-full",
                                   "The bundle's plan is malformed; use a bundle from a trusted bundler.")
        return v
    rules = _FILES.get(file)
    if rules is None or key not in rules:
        raise ConfigValueError(f"refusing to write {key} into config/{file}: the importer never writes that key")
    if value is None:
        return ""
    if not isinstance(value, str) or not rules[key](value):
        raise ConfigValueError(f"refusing to write {key}={value!r} into config/{file}: the value breaks its "
                               "grammar (an exact version, image reference, boolean or secret is expected)",
                               "The bundle's plan is malformed; use a bundle from a trusted bundler.")
    return value


def check_step_id(step_id: object) -> str:
    """A plan step id names backup folders: lowercase letters, digits, ``._-``; no ``..``."""
    if not isinstance(step_id, str) or not STEP_ID_RE.match(step_id) or ".." in step_id or len(step_id) > 80:
        raise ManifestFormatError(f"the plan has a step id {step_id!r} that is not allowed "
                                  "(expected ^[a-z0-9][a-z0-9._-]*$ without '..')",
                                  "The bundle's plan is malformed; use a bundle from a trusted bundler.")
    return step_id
