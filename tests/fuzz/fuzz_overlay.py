"""A bundle's catalog_overlay (JSON inside the signed manifest): only CatalogError may come out."""
from __future__ import annotations

from manifests.catalog import catalog_with_overlay, load_catalog
from manifests.errors import CatalogError, StateError
from manifests.safeio import loads_json

CAT = load_catalog(overlay=False)
ALLOWED = (CatalogError, StateError)
SEEDS = [b'{"schema":1,"releases":[{"version":"6.2.9","date":"2026-01-01","source":"x"}]}',
         b'{"schema":1,"releases":[{"version":"7.0.0"}]}']


def target(data: bytes) -> None:
    catalog_with_overlay(CAT, loads_json(data, "overlay", StateError))
