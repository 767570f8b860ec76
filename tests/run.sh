#!/usr/bin/env bash
# The test command (README: `bash tests/run.sh [PYTEST ARGS...]`); CI runs it through .ci/run.
# Set-up (tests/setup.sh), then ruff, then pytest on tests/ with the given arguments.
# "No tests collected" (pytest exit code 5) counts as a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh

# lint first (pyproject.toml [tool.ruff]: what hides failures, undefined names, unused imports)
python3 -m ruff check --quiet --no-cache .

status=0
python3 -m pytest -q -p no:cacheprovider tests "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "tests/run.sh: pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit "$status"
