"""Delta bundles: leave out the layers an offline host already has (``build --have RECEIPT``).

The receipt and the rules (ChainIDs on the classic store, layer blobs on the containerd
store) are :mod:`manifests.receipt`'s. What the bundler adds is the registry look-up a
containerd receipt needs: the host's image IDs are manifest digests, so the layer blobs
of each receipt image are read from its manifest, fetched *by digest* from the registry
the build fetches from (a receipt tag such as ``mongo:6.0`` goes through ``--mirror``
like a plan image). Images the registry does not know (re-encoded ones, local builds)
contribute nothing: their layers are simply carried.

    receipt = Receipt.load(Path("receipt.json"))
    if receipt.store == "containerd":
        receipt.resolve_blobs(registry_layers(Mirrors.parse(["docker.io=127.0.0.1:5000"]), "linux/amd64"))
    omitted = receipt.omitted([(image.diff_ids, image.layers), ...])
"""
from __future__ import annotations

import json
from typing import Callable

from manifests.distribution import RegistryClient
from manifests.errors import RegistryError, UsageError
from manifests.receipt import Receipt, chain_ids

from .registry import Mirrors

LayersOf = Callable[[str, str], "list[str] | None"]


def registry_layers(mirrors: Mirrors, platform: str,
                    clients: dict[str, RegistryClient] | None = None) -> LayersOf:
    """``layers_of(tag, manifest_digest)`` for :meth:`Receipt.resolve_blobs`, asking the (mirror) registry.

    Answers None when the tag is not an image reference, or the registry does not have that
    manifest (or cannot be asked): the image then contributes no blobs.
    """
    pool = clients if clients is not None else {}

    def layers_of(tag: str, digest: str) -> list[str] | None:
        try:
            host, path = mirrors.repository(tag)
            client = pool.get(host)
            if client is None:
                client = pool[host] = RegistryClient(host)
            res = client.resolve(path, digest, platform)
            doc = json.loads(res.manifest_bytes)
            layers = [str(layer["digest"]) for layer in doc["layers"]]
        except (UsageError, RegistryError, ValueError, KeyError, TypeError):
            return None
        return layers

    return layers_of


__all__ = ["Receipt", "chain_ids", "registry_layers"]
