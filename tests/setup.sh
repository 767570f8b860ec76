#!/usr/bin/env bash
# Set-up shared by the README's two commands (tests/run.sh, tests/demo.sh):
# installs what the demo and the integration tests run for real, unless already there:
# Debian packages (Docker Engine, Docker Compose, a Distribution registry, a static busybox,
# skopeo, zstd, pigz (the classic-store engine gunzips layers with its unpigz), git, openssl; Chromium and a font for the change report's browser test),
# Docker Engine 26 for the containerd image store, and this project with its test extras.
# Works as root on a fresh Debian 12 or Debian 13 without a terminal; quick when all is installed.
#
# Two engine kinds are tested; which packages give them depends on what the machine's Debian offers
# (the docker.io candidate of `apt-cache policy`):
# - Debian 12: docker.io is Engine 20.10 (classic store) and docker-compose is Compose v1. Engine 26
#   and the Compose v2 plugin are Debian 13's packages, fetched and unpacked (not installed) by
#   tests/fetch_engine26.sh into /var/cache/overleaf-airgap-test/engine26.
# - Debian 13: docker.io is Engine 26 (used with the containerd-snapshotter feature off for the
#   classic store, on for the containerd store) and docker-compose is Compose v2; Compose v1 does
#   not exist there, so the tests that need it say so.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "tests/setup.sh: $1; run as root" >&2
    exit 1
  fi
}

# The Docker Engine this machine's Debian offers (installed or candidate version, e.g. 20.10.24+dfsg1-1).
docker_candidate() {
  apt-cache policy docker.io 2>/dev/null | awk '$1 == "Candidate:" && $2 != "(none)" { print $2 }'
}
updated=false
candidate=$(docker_candidate)
if [ -z "$candidate" ]; then
  need_root "apt has no docker.io candidate yet (apt-get update needed)"
  apt-get update -q
  updated=true
  candidate=$(docker_candidate)
fi
engine_major=${candidate#*:}
engine_major=${engine_major%%.*}
if ! [ "$engine_major" -gt 0 ] 2>/dev/null; then
  echo "tests/setup.sh: this machine's apt sources offer no docker.io package" >&2
  exit 1
fi

packages=(docker.io docker-compose docker-registry busybox-static skopeo zstd pigz git openssl chromium fonts-dejavu-core)
if [ "$engine_major" -ge 26 ] && ! command -v docker >/dev/null; then
  packages+=(docker-cli)  # from Debian 13 on, the Docker CLI is a package of its own
fi
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
  need_root "missing packages (${missing[*]})"
  echo "tests/run.sh: installing ${missing[*]}" >&2
  [ "$updated" = true ] || apt-get update -q
  apt-get install -y -q "${missing[@]}" </dev/null
fi

# Engine 26 for the containerd image store, and Compose v2.
if [ "$engine_major" -lt 26 ]; then
  debian=$(cut -d. -f1 /etc/debian_version 2>/dev/null || true)
  if [ "$debian" != 12 ]; then
    echo "tests/setup.sh: docker.io here is $candidate and this is not Debian 12 (/etc/debian_version:" \
      "$(cat /etc/debian_version 2>/dev/null || echo none)): install Docker Engine 26 or newer by hand" >&2
    exit 1
  fi
  bash tests/fetch_engine26.sh
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

