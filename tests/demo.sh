#!/usr/bin/env bash
# The demo command (README: `bash tests/demo.sh`): set-up, then the whole story on synthetic
# images in private engines and a private registry, with no internet (tests/demo.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
exec python3 -m tests.demo "$@"
