"""The inventory receipt read by `overleaf-bundle build --have`: Receipt.parse must refuse with ReceiptError."""
from __future__ import annotations

from manifests.errors import ReceiptError
from manifests.receipt import Receipt

ALLOWED = (ReceiptError,)
SEEDS = [b'{"schema":2,"store":"classic","images":[{"id":"sha256:' + b"1" * 64 + b'","tags":["mongo:8.0"],'
         b'"diff_ids":["sha256:' + b"2" * 64 + b'"]}]}']


def target(data: bytes) -> None:
    r = Receipt.parse(data)
    _ = r.chain_ids  # the property parses every image's layer chain
