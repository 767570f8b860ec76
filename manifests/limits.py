"""Every size cap of the tools in one place: how many bytes of each kind of file or blob is read at most.

A cap refuses a file before it is read into memory (manifests/safeio.py checks it on the open
descriptor and again while reading), or a blob before it is parsed. One frozen object,
:data:`LIMITS`, holds them all, so a reader names the cap it applies and no module keeps a
private number of its own:

    data = read_regular(path, LIMITS.manifest, "the manifest", IntegrityError)
    LIMITS.signature      # 4096: manifest.json.sig is 64 bytes; a little more gives a clear message
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

KiB, MiB = 1024, 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Byte caps (and the digit cap of strict JSON, the page cap of tag lists). Frozen: not changed at run time."""

    manifest: int = 64 * MiB        # manifest.json: a format-2 manifest of a 100 GB bundle is a few MiB
    signature: int = 4 * KiB        # manifest.json.sig: 64 bytes expected
    public_key: int = 64 * KiB      # a trusted .pub: a PEM Ed25519 public key is 113 bytes
    host_state: int = 4 * MiB       # the anti-rollback state file
    receipt: int = 64 * MiB         # inventory receipt: ~1 KiB per image
    journal: int = 16 * MiB         # upgrade journal, rehearsal record
    backup_json: int = 16 * MiB     # backup.json of one backup
    backup_record: int = 1 * MiB    # a backup's small record files
    image_manifest: int = 4 * MiB   # an OCI/Docker image manifest (containerd and registries refuse more)
    small_blob: int = 16 * MiB      # image manifests and configs the loader reads whole
    registry_json: int = 4 * MiB    # a registry's JSON answer: token, /v2/, a tags/list or _catalog page
    registry_error: int = 64 * KiB  # the body of a registry's error answer (read for its message only)
    tag_pages: int = 100            # tags/list pages read at most (1000 tags each), with a warning beyond
    json_int_digits: int = 19       # 2**63 has 19 digits: longer integers are refused before int() runs

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


LIMITS = Limits()
