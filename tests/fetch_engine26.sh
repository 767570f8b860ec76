#!/usr/bin/env bash
# Docker Engine 26 (containerd 1.7) and the Compose v2 CLI plugin for the tests, on a Debian 12 machine,
# without installing them: called by tests/setup.sh (as root), quick when already done.
#
#   bash tests/fetch_engine26.sh [CACHE_DIR]    # default: /var/cache/overleaf-airgap-test/engine26
#
# Fetches Debian 13 (trixie) docker.io, containerd and docker-compose with `apt-get download`, through
# a source list and apt state of its own (the machine's apt sources, lists and cache stay untouched),
# from the same Debian mirror host the machine's own sources name. Unpacks them with `dpkg-deb -x` and
# keeps only:
#   CACHE_DIR/bin/{dockerd,docker-proxy,containerd,containerd-shim-runc-v2,ctr}
#   CACHE_DIR/compose-v2/cli-plugins/docker-compose   (DOCKER_CONFIG=CACHE_DIR/compose-v2 -> `docker compose`)
#   CACHE_DIR/VERSIONS                                 (the package versions; written last: "done")
# Debian 13's runc needs a newer glibc than Debian 12 has, so it is not kept: tests/support/engine.py
# puts CACHE_DIR/bin first on PATH and Debian 12's runc (from its docker.io) is the one used.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive LC_ALL=C
cache=${1:-/var/cache/overleaf-airgap-test/engine26}
binaries=(dockerd docker-proxy containerd containerd-shim-runc-v2 ctr)

done_already() {
  [ -s "$cache/VERSIONS" ] && [ -x "$cache/compose-v2/cli-plugins/docker-compose" ] || return 1
  for binary in "${binaries[@]}"; do [ -x "$cache/bin/$binary" ] || return 1; done
}
if done_already; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "tests/fetch_engine26.sh: run as root (it writes $cache)" >&2
  exit 1
fi
mkdir -p "$(dirname "$cache")"
exec 9>"$cache.lock"
flock 9  # one fetch at a time; a second caller finds the work done
if done_already; then
  exit 0
fi

# The Debian mirror the machine itself uses: the first source whose suite is this release's codename
# (printed as "URI KEYRING", KEYRING being its Signed-By file or "-").
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
entry=$(python3 - "$codename" <<'PY'
import glob, re, sys
codename = sys.argv[1]
found = []
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    for stanza in re.split(r"\n\s*\n", open(path).read()):
        fields = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.split()
        if fields.get("enabled", ["yes"])[0] == "no" or "deb" not in fields.get("types", []):
            continue
        if codename in fields.get("suites", []) and "main" in fields.get("components", []):
            keyring = (fields.get("signed-by") or ["-"])[0]
            keyring = keyring if keyring.startswith("/") else "-"  # an inline key block is not a file
            found += [f"{uri.rstrip('/')} {keyring}" for uri in fields.get("uris", [])[:1]]
for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
    try:
        lines = open(path).read().splitlines()
    except OSError:
        continue
    for line in lines:
        line = line.split("#", 1)[0]
        options = re.search(r"\[([^]]*)\]", line)
        keyring = re.search(r"signed-by=(/\S+)", options.group(1)) if options else None
        words = re.sub(r"\[[^]]*\]", " ", line).split()
        if len(words) >= 4 and words[0] == "deb" and words[2] == codename and "main" in words[3:]:
            found.append(f"{words[1].rstrip('/')} {keyring.group(1) if keyring else '-'}")
print(found[0] if found else "")
PY
)
read -r mirror keyring <<<"${entry:-}" || true
if [ -z "${mirror:-}" ]; then
  echo "tests/fetch_engine26.sh: no Debian source for '$codename' main found in /etc/apt/sources.list(.d)" >&2
  echo "  hint: add the machine's Debian mirror to its apt sources, or install Docker Engine 26 by hand" >&2
  exit 1
fi

start=$(date +%s.%N)
work="$cache.partial"
rm -rf "$work"
mkdir -p "$work/lists/partial" "$work/archives/partial" "$work/debs" "$work/root"
signed_by=""
[ "${keyring:--}" = - ] || signed_by="[signed-by=$keyring] "
echo "deb $signed_by$mirror trixie main" >"$work/sources.list"
apt_options=(
  -o "Dir::Etc::sourcelist=$work/sources.list" -o Dir::Etc::sourceparts=/dev/null
  -o "Dir::State::Lists=$work/lists" -o "Dir::Cache::Archives=$work/archives"
  -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= -o APT::Sandbox::User=root
)
echo "tests/fetch_engine26.sh: fetching Docker Engine 26 and Compose v2 (Debian 13 packages) from $mirror" >&2
apt-get "${apt_options[@]}" -qq update
(cd "$work/debs" && apt-get "${apt_options[@]}" -qq download docker.io containerd docker-compose)
fetched=$(date +%s.%N)
for deb in "$work"/debs/*.deb; do
  dpkg-deb -x "$deb" "$work/root"
  dpkg-deb -W --showformat='${Package} ${Version}\n' "$deb" >>"$work/VERSIONS.new"
done

rm -rf "$cache/bin" "$cache/compose-v2"
mkdir -p "$cache/bin" "$cache/compose-v2/cli-plugins"
for binary in "${binaries[@]}"; do
  found=$(find "$work/root/usr/bin" "$work/root/usr/sbin" -maxdepth 1 -name "$binary" -type f | head -n 1)
  if [ -z "$found" ]; then
    echo "tests/fetch_engine26.sh: $binary missing from the Debian 13 packages" >&2
    exit 1
  fi
  cp "$found" "$cache/bin/$binary"
done
cp "$work/root/usr/libexec/docker/cli-plugins/docker-compose" "$cache/compose-v2/cli-plugins/docker-compose"
"$cache/bin/dockerd" --version >&2
mv "$work/VERSIONS.new" "$cache/VERSIONS"
rm -rf "$work"
awk -v a="$start" -v f="$fetched" -v b="$(date +%s.%N)" \
  'BEGIN { printf "tests/fetch_engine26.sh: done in %.1f s (apt update + download %.1f s)\n", b - a, f - a }' >&2
