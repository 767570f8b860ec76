# shellcheck shell=bash
# Sourced by bin/*: reads config/ over lib/default.rc, runs the config checks,
# and runs Docker Compose with the compose files from lib/ that the config selects.

TOOLKIT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CONFIG_DIR=$TOOLKIT_ROOT/config

die() {
  echo "ERROR: $*" >&2
  exit 1
}

# prompt "Question" -> status 0 when the answer (read from stdin) starts with y or Y.
prompt() {
  local answer=""
  read -r -p "$1 (y/n): " answer || true
  [[ $answer =~ ^[Yy] ]]
}

# env_value FILE KEY: the last value given to KEY in a KEY=VALUE file, without surrounding quotes.
env_value() {
  [ -f "$1" ] || return 0
  sed -n -e "s/^[[:space:]]*\(export[[:space:]]\{1,\}\)\{0,1\}$2=//p" "$1" | tail -n 1 |
    sed -e 's/^"\(.*\)"$/\1/' -e "s/^'\(.*\)'$/\1/"
}

# version_ge A B: A >= B for X.Y[.Z] versions.
version_ge() {
  [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n 1)" = "$2" ]
}

# abs_path PATH: PATH relative to the Toolkit root, unless absolute.
abs_path() {
  case "$1" in /*) echo "$1" ;; *) echo "$TOOLKIT_ROOT/$1" ;; esac
}

is_true() { [ "${1:-}" = true ]; }

# count_of TEXT FILE: how often TEXT occurs in FILE (comments included: a strict check).
count_of() {
  { grep -o -- "$1" "$2" || true; } | wc -l
}

# Every key the Toolkit reads from overleaf.rc: cleared first so that the caller's environment cannot leak in.
RC_KEYS=(PROJECT_NAME SERVER_PRO OVERLEAF_IMAGE_NAME OVERLEAF_DATA_PATH SHARELATEX_DATA_PATH
  OVERLEAF_LISTEN_IP OVERLEAF_PORT MONGO_ENABLED MONGO_IMAGE MONGO_VERSION MONGO_DATA_PATH
  REDIS_ENABLED REDIS_IMAGE REDIS_DATA_PATH REDIS_AOF_PERSISTENCE GIT_BRIDGE_ENABLED GIT_BRIDGE_IMAGE
  GIT_BRIDGE_DATA_PATH NGINX_ENABLED NGINX_IMAGE SIBLING_CONTAINERS_ENABLED SIBLING_CONTAINERS_PULL
  DOCKER_SOCKET_PATH PULL_BEFORE_UPGRADE)

read_config() {
  local file
  for file in version overleaf.rc variables.env; do
    [ -f "$CONFIG_DIR/$file" ] || die "config/$file not found: run bin/init to create config/"
  done
  VERSION=$(head -n 1 "$CONFIG_DIR/version" | tr -d '[:space:]')
  if [[ ! $VERSION =~ ^([0-9]+)\.([0-9]+)\.([0-9]+)(-RC[0-9]+)?(-with-texlive-full)?$ ]]; then
    die "invalid version '$VERSION' in config/version: expected X.Y.Z, optionally followed by -RCn and/or -with-texlive-full"
  fi
  VERSION_MAJOR=${BASH_REMATCH[1]}
  VERSION_BASE=${BASH_REMATCH[1]}.${BASH_REMATCH[2]}.${BASH_REMATCH[3]}

  unset "${RC_KEYS[@]}"
  # shellcheck source=/dev/null
  source "$TOOLKIT_ROOT/lib/default.rc"
  # shellcheck source=/dev/null
  source "$CONFIG_DIR/overleaf.rc"
  PROJECT_NAME=${PROJECT_NAME:-overleaf}

  # App image: the name from the config or the edition, the tag from config/version.
  local default_image=sharelatex/sharelatex
  is_true "${SERVER_PRO:-}" && default_image=quay.io/sharelatex/sharelatex-pro
  local image_name=${OVERLEAF_IMAGE_NAME:-$default_image}
  [[ ${image_name##*/} == *:* ]] && die "OVERLEAF_IMAGE_NAME must be an image name without a tag (the tag comes from config/version): $image_name"
  OVERLEAF_IMAGE=$image_name:$VERSION

  if [ "$VERSION_MAJOR" -lt 5 ]; then
    OVERLEAF_IN_CONTAINER_DATA_PATH=/var/lib/sharelatex
  else
    OVERLEAF_IN_CONTAINER_DATA_PATH=/var/lib/overleaf
  fi
  OVERLEAF_DATA_HOST_PATH=$(abs_path "${OVERLEAF_DATA_PATH:-${SHARELATEX_DATA_PATH:-data/overleaf}}")

  # MongoDB: MONGO_IMAGE + MONGO_VERSION, or the older MONGO_IMAGE=mongo:X.Y with the tag inside.
  if is_true "${MONGO_ENABLED:-true}"; then
    local mongo_name=${MONGO_IMAGE:-mongo} mongo_tag=""
    if [[ ${mongo_name##*/} == *:* ]]; then
      mongo_tag=${mongo_name##*:}
      mongo_name=${mongo_name%:*}
    fi
    MONGO_VERSION=${MONGO_VERSION:-$mongo_tag}
    [[ $MONGO_VERSION =~ ^([0-9]+)\. ]] ||
      die "cannot tell the MongoDB version: set MONGO_VERSION=<major>.<minor> (e.g. 6.0) in config/overleaf.rc (found '${MONGO_VERSION}')"
    MONGO_MAJOR=${BASH_REMATCH[1]}
    MONGO_DOCKER_IMAGE=$mongo_name:$MONGO_VERSION
    MONGO_DATA_HOST_PATH=$(abs_path "${MONGO_DATA_PATH:-data/mongo}")
    if [ "$MONGO_MAJOR" -ge 6 ]; then MONGOSH=mongosh; else MONGOSH=mongo; fi
    # Overleaf 4.0+ needs a replica set (transactions).
    if [ "$VERSION_MAJOR" -ge 4 ]; then MONGO_COMMAND="--replSet overleaf"; else MONGO_COMMAND=mongod; fi
  fi

  if is_true "${REDIS_ENABLED:-true}"; then
    REDIS_IMAGE=${REDIS_IMAGE:-redis:5.0}
    REDIS_DATA_HOST_PATH=$(abs_path "${REDIS_DATA_PATH:-data/redis}")
    REDIS_COMMAND=redis-server
    if [ -z "${REDIS_AOF_PERSISTENCE:-}" ]; then
      [ "${SKIP_WARNINGS:-}" = true ] ||
        echo "WARNING: REDIS_AOF_PERSISTENCE is not set in config/overleaf.rc (Redis keeps only snapshots; set it to true)" >&2
    elif is_true "$REDIS_AOF_PERSISTENCE"; then
      REDIS_COMMAND="redis-server --appendonly yes"
    fi
  fi

  # git-bridge only exists for Server Pro 4.0+.
  if ! is_true "${SERVER_PRO:-}" || [ "$VERSION_MAJOR" -lt 4 ]; then GIT_BRIDGE_ENABLED=false; fi
  if is_true "${GIT_BRIDGE_ENABLED:-}"; then
    local bridge_name=${GIT_BRIDGE_IMAGE:-quay.io/sharelatex/git-bridge}
    [[ ${bridge_name##*/} == *:* ]] && die "GIT_BRIDGE_IMAGE must be an image name without a tag: $bridge_name"
    GIT_BRIDGE_DOCKER_IMAGE=$bridge_name:${VERSION%-with-texlive-full}
    GIT_BRIDGE_DATA_HOST_PATH=$(abs_path "${GIT_BRIDGE_DATA_PATH:-data/git-bridge}")
    if version_ge "$VERSION_BASE" 4.2.0; then
      GIT_BRIDGE_API_BASE_URL=http://sharelatex:3000/api/v0/
    else
      GIT_BRIDGE_API_BASE_URL=http://sharelatex/api/v0/
    fi
  fi

  SIBLING_CONTAINERS=false
  if is_true "${SERVER_PRO:-}" && is_true "${SIBLING_CONTAINERS_ENABLED:-}"; then
    SIBLING_CONTAINERS=true
    if [ -z "${DOCKER_SOCKET_PATH:-}" ]; then
      case "${DOCKER_HOST:-}" in
        unix://*) DOCKER_SOCKET_PATH=${DOCKER_HOST#unix://} ;;
        *) DOCKER_SOCKET_PATH=/var/run/docker.sock ;;
      esac
    fi
  fi
}

# The checks the Toolkit runs before any compose command.
check_config() {
  # bin/upgrade (and the importer) set OVERLEAF_SKIP_RETRACTION_CHECK to config/version to get past this check.
  if [ "$VERSION_BASE" = 5.0.1 ] && [ "${OVERLEAF_SKIP_RETRACTION_CHECK:-}" != "$VERSION" ]; then
    die "version 5.0.1 in config/version has been retracted (it lost doc versions). Upgrade to 5.0.3 or later, following the doc version recovery procedure."
  fi
  local rc_count env_old env_new
  rc_count=$(count_of SHARELATEX_ "$CONFIG_DIR/overleaf.rc")
  if [ "$rc_count" -gt 0 ]; then
    die "config/overleaf.rc still has $rc_count variable(s) with the old SHARELATEX_ prefix; they must be renamed to OVERLEAF_. Run: bin/rename-rc-vars"
  fi
  env_old=$(count_of SHARELATEX_ "$CONFIG_DIR/variables.env")
  env_new=$(count_of OVERLEAF_ "$CONFIG_DIR/variables.env")
  if [ "$VERSION_MAJOR" -ge 5 ]; then
    if [ "$env_old" -gt 0 ]; then
      die "Overleaf $VERSION uses OVERLEAF_ variables, but config/variables.env has $env_old with the old SHARELATEX_ prefix. Run: bin/rename-env-vars-5-0"
    fi
    # anywhere in the file, comments included (as the real Toolkit's grep)
    if grep -q -e 'TEXMFVAR=/var/lib/sharelatex/tmp/texmf-var' "$CONFIG_DIR/variables.env"; then
      die "config/variables.env sets TEXMFVAR=/var/lib/sharelatex/tmp/texmf-var, which no longer exists from 5.0 on: remove that line"
    fi
  elif [ "$env_new" -gt 0 ]; then
    die "Overleaf $VERSION uses SHARELATEX_ variables, but config/variables.env has $env_new with the OVERLEAF_ prefix (for 5.0 and later). Rename them back to SHARELATEX_ or set a 5.x version."
  fi
}

# run_compose ARGS: docker compose with the project name, the compose files and the variables they use.
run_compose() {
  local files=(-f "$TOOLKIT_ROOT/lib/docker-compose.base.yml")
  [ -n "${OVERLEAF_PORT:-}" ] && files+=(-f "$TOOLKIT_ROOT/lib/docker-compose.ports.yml")
  is_true "${MONGO_ENABLED:-true}" && files+=(-f "$TOOLKIT_ROOT/lib/docker-compose.mongo.yml")
  is_true "${REDIS_ENABLED:-true}" && files+=(-f "$TOOLKIT_ROOT/lib/docker-compose.redis.yml")
  is_true "${GIT_BRIDGE_ENABLED:-}" && files+=(-f "$TOOLKIT_ROOT/lib/docker-compose.git-bridge.yml")
  is_true "${NGINX_ENABLED:-}" && files+=(-f "$TOOLKIT_ROOT/lib/docker-compose.nginx.yml")
  is_true "$SIBLING_CONTAINERS" && files+=(-f "$TOOLKIT_ROOT/lib/docker-compose.sibling-containers.yml")
  [ -f "$CONFIG_DIR/docker-compose.override.yml" ] && files+=(-f "$CONFIG_DIR/docker-compose.override.yml")

  export TOOLKIT_ROOT OVERLEAF_IMAGE OVERLEAF_DATA_HOST_PATH OVERLEAF_IN_CONTAINER_DATA_PATH \
    OVERLEAF_LISTEN_IP OVERLEAF_PORT MONGO_DOCKER_IMAGE MONGO_DATA_HOST_PATH MONGO_COMMAND MONGOSH \
    REDIS_IMAGE REDIS_DATA_HOST_PATH REDIS_COMMAND GIT_BRIDGE_DOCKER_IMAGE GIT_BRIDGE_DATA_HOST_PATH \
    GIT_BRIDGE_API_BASE_URL NGINX_IMAGE DOCKER_SOCKET_PATH
  if docker compose version >/dev/null 2>&1; then
    exec docker compose -p "$PROJECT_NAME" "${files[@]}" "$@"
  elif command -v docker-compose >/dev/null; then
    exec docker-compose -p "$PROJECT_NAME" "${files[@]}" "$@"
  fi
  die "neither 'docker compose' (v2) nor 'docker-compose' (v1) was found"
}

# exec_flags: -T when stdin is not a terminal (what Compose v2 does by itself).
exec_flags() {
  [ -t 0 ] || echo -T
}

# rename_prefix_in FILE BACKUP_PREFIX: after a y/n prompt, copy FILE to BACKUP_PREFIX.<timestamp>
# and rename every SHARELATEX_ to OVERLEAF_ in FILE.
rename_prefix_in() {
  local file=$1 backup count
  [ -f "$file" ] || die "${file#"$TOOLKIT_ROOT"/} not found"
  count=$(count_of SHARELATEX_ "$file")
  if [ "$count" -eq 0 ]; then
    echo "No SHARELATEX_ variables in ${file#"$TOOLKIT_ROOT"/}: nothing to rename."
    return 0
  fi
  echo "${file#"$TOOLKIT_ROOT"/} has $count occurrence(s) of SHARELATEX_, to be renamed to OVERLEAF_."
  if ! prompt "Rename them now?"; then
    echo "Nothing renamed."
    return 1
  fi
  backup=$2.$(date -u +%Y%m%d-%H%M%S)
  cp -p "$file" "$backup"
  sed -i 's/SHARELATEX_/OVERLEAF_/g' "$file"
  echo "Renamed; the previous file is kept as ${backup#"$TOOLKIT_ROOT"/}"
}
