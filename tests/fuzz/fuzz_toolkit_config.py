"""The Toolkit config parser (config/overleaf.rc, variables.env, version): parse_env_text and read_toolkit."""
from __future__ import annotations

import tempfile
from pathlib import Path

from manifests.errors import ToolkitError
from manifests.toolkit_config import parse_env_text, read_toolkit

ALLOWED = (ToolkitError,)
SEEDS = [b"SERVER_PRO=true\nMONGO_VERSION=6.0\nexport GIT_BRIDGE_ENABLED='true'\n# c\nNGINX_ENABLED=\"true\" # x\n"
         b"\x00OVERLEAF_DATA_PATH=/srv/data\n\x005.5.3\n\x00TEX_LIVE_DOCKER_IMAGE=a:1\n"]
_ROOT = Path(tempfile.mkdtemp(prefix="fuzz-toolkit-"))
for sub in ("bin", "config", "lib"):
    (_ROOT / sub).mkdir(exist_ok=True)


def target(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    parse_env_text(text)
    rc, _, rest = text.partition("\x00")
    env, _, rest = rest.partition("\x00")
    version, _, default = rest.partition("\x00")
    (_ROOT / "config" / "overleaf.rc").write_text(rc, "utf-8", errors="replace")
    (_ROOT / "config" / "variables.env").write_text(env, "utf-8", errors="replace")
    (_ROOT / "config" / "version").write_text(version, "utf-8", errors="replace")
    (_ROOT / "lib" / "default.rc").write_text(default, "utf-8", errors="replace")
    read_toolkit(_ROOT).plan_options()
