"""The upgrade journal (<toolkit>/.overleaf-airgap/journal.json): Journal.load must refuse with ToolkitError."""
from __future__ import annotations

import tempfile
from pathlib import Path

from importer.upgrade.journal import Journal, state_dir
from manifests.errors import ToolkitError

ALLOWED = (ToolkitError,)
_ROOT = Path(tempfile.mkdtemp(prefix="fuzz-journal-"))
state_dir(_ROOT).mkdir(parents=True, exist_ok=True)
SEEDS = [b'{"schema":1,"bundle_id":"b","plan":{"steps":[{"id":"01-app-5.5.4"}]},"start_version":"5.5.3",'
         b'"started":"t","steps":{"01-app-5.5.4":{"status":"pending","phases":[]}},"backups":[],"finished":null}']


def target(data: bytes) -> None:
    (state_dir(_ROOT) / "journal.json").write_bytes(data)
    j = Journal.load(_ROOT)
    if j is not None:
        j.next_step()
        j.done_count()
