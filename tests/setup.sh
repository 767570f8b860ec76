#!/usr/bin/env bash
# Set-up shared by the README's two commands (tests/run.sh, tests/demo.sh):
# installs what the demo and the integration tests run for real, unless already there:
# Debian packages (Docker Engine, Compose v1, a Distribution registry, a static
# busybox, zstd, git, openssl) and this project with its test extras.
# Works as root on a fresh Debian 12 without a terminal; quick when all is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

packages=(docker.io docker-compose docker-registry busybox-static zstd git openssl)
missing=()
for package in "${packages[@]}"; do
  if [ "$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null)" != installed ]; then
    missing+=("$package")
  fi
done
if ! python3 -m pip --version >/dev/null 2>&1; then
  missing+=(python3-pip)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "tests/run.sh: missing packages (${missing[*]}); run as root to install them" >&2
    exit 1
  fi
  echo "tests/run.sh: installing ${missing[*]}" >&2
  apt-get update -q
  apt-get install -y -q "${missing[@]}" </dev/null
fi

# The project, editable from this checkout, with every requirement of pyproject.toml satisfied?
# (-P: keep the checkout off sys.path, so that a stray *.egg-info there does not count.)
installed() {
  python3 -P - "$PWD" <<'PY' 2>/dev/null
import json, pathlib, sys, tomllib
from importlib import metadata
from packaging.requirements import Requirement

root = pathlib.Path(sys.argv[1])
project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
dist = metadata.distribution(project["name"])
url = json.loads(dist.read_text("direct_url.json") or "{}").get("url")
if url != root.as_uri():
    sys.exit(1)
for spec in project["dependencies"] + project["optional-dependencies"]["test"]:
    requirement = Requirement(spec)
    if not requirement.specifier.contains(metadata.version(requirement.name), prereleases=True):
        sys.exit(1)
PY
}
if ! installed; then
  echo "tests/run.sh: installing the project with its test extras (pip install -e '.[test]')" >&2
  PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 \
    python3 -m pip install -q -e '.[test]'
fi

