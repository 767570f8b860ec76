"""Overleaf-like synthetic images that enforce the upgrade gates, for the Toolkit stand-in (tests/toolkit).

Built offline with :func:`tests.support.engine.build_image` from the shared
busybox base and named exactly like the real images, so that an upgrade done in
the wrong order fails the way it does on a real host (overleaf-facts.md 2.3,
2.8, 3.1, 3.2). :func:`seed_overleaf_path` builds everything a path needs::

    refs = seed_overleaf_path(engine, ["3.5.13", "4.2.9"], mongo=["4.4", "5.0"], redis=["6.2"])

App (``sharelatex/sharelatex:V``, ``quay.io/sharelatex/sharelatex-pro:V``):
``/sbin/my_init`` runs the gates, then busybox httpd serves port 80 with
``/status`` -> ``ok`` and ``/version`` -> V. A refused start prints the reason
and exits (1, or 101 for the missing secret) after ``STANDIN_GATE_DELAY``
seconds (default 1); the Toolkit's ``restart: always`` makes it a restart loop.
Gates, by the version baked into the image:

- >=5.0: no ``SHARELATEX_*`` variable; no ``/etc|var/lib|var/log/sharelatex`` path.
- >=6.2: ``OVERLEAF_INVITE_TOKEN_SECRET`` set, else "Missing required secrets", exit 101.
- MongoDB (read from the mongo stand-in, ``http://mongo:27017/version`` and ``/fcv``):
  >=4.0 replica set initiated; >=5.0 version 5.0; >=5.5 version 6.0, FCV 6.0 from 5.5.1;
  6.0.0 version 6.0 (the upstream bug); >=6.0.1 version 8.0 and FCV 7.0.
- Redis (``http://redis:6379/version``): >=6.0 version 7.4.
- Server Pro >=5.2 with ``SANDBOXED_COMPILES=true`` (unless ``SKIP_TEX_LIVE_CHECK=true``): ``TEX_LIVE_DOCKER_IMAGE``
  and every image the projects use (the mongo stand-in's ``project-images``) in ``ALL_TEX_LIVE_DOCKER_IMAGES``.
- >=4.0: ``fph-migration.done`` in the data dir, else "Full Project History migration not completed".
- >=6.0: ``binary-files-migration.done`` in the data dir, else the binary files migration error.

The data dir is ``/var/lib/sharelatex`` (<5) or ``/var/lib/overleaf`` (>=5), the
Toolkit's ``data/overleaf``. Markers there: ``fph-migration.done`` (written by
``migrate_history.js``), ``fph-cleanup.done`` (``clean_sl_history_data.js``),
``binary-files-migration.done`` (``back_fill_file_hash.mjs --all`` on 5.5.5+
only, as the real migrations record), ``versions.log`` (``VERSION TIMESTAMP``,
one line per start that passed every gate: the versions the instance really ran). A file ``FAIL_MIGRATION`` there
makes the migration scripts fail (empty: all of them; else only those whose
name it contains: migrate_history, clean_sl_history_data, back_fill_file_hash,
flush-history-queues, flush_all).

More files in the data dir: ``SLOW_MIGRATION`` (seconds: migrate_history and
back_fill_file_hash take that long, printing ``progress i/N``), ``SLOW_START`` (seconds of
first-start database migrations; a stop meanwhile is logged in
``interrupted-migrations.log``), ``history-queue`` (projects with queued history:
flush-history-queues flushes 2 per run and prints ``"project_ids":N``; back_fill --all
refuses while any remain); a second copy of a running migration is refused and logged in
``concurrent-runs.log``. flush_all.js logs JSON lines (``"failureCount":0``) and refuses
while ``sv status real-time-overleaf`` is not down. ``node -e`` runs only the importer's
probes (``airgapMongo``/``airgapRedis``: versions through MONGO_URL / REDIS_HOST; ``airgapCounts``: the
mongo stand-in's collection files, counted through MONGO_URL).

Scripts at the real paths, run by a ``node`` stand-in (the ``.js`` files hold
shell code): ``/overleaf/services/web/scripts/history/migrate_history.js``
(prints ``Projects failed:  0``), ``.../clean_sl_history_data.js``,
``/overleaf/services/history-v1/storage/scripts/back_fill_file_hash.mjs``
(``--report``; ``--all`` prints ``The binary files migration succeeded.``),
``/overleaf/services/document-updater/scripts/flush_all.js`` (``failureCount: 0``),
``/overleaf/bin/flush-history-queues``, ``/sbin/setuser``, ``sv``,
``/etc/overleaf/env.sh``, ``/etc/container_environment.sh``; ``/bin/bash`` runs
busybox ``sh``; the working directory is ``/overleaf``.

``mongo:T``: ``mongod`` keeps its state in ``/data/db`` (the Toolkit's
``data/mongo``): ``fcv``, ``version`` (of the binary that last started),
``running-replset``, ``replset`` (after ``rs.initiate``), ``commands.log`` (every
shell command but the health check's ping). It refuses to start (exit 62,
"UPGRADE PROBLEM") on data whose FCV is newer than itself or older than the
major before it; fresh data gets its own series. A replica set member is primary
``PRIMARY_DELAY`` seconds (file in ``/data/db``) after it started; before that
``setFeatureCompatibilityVersion`` fails (NotWritablePrimary) and ``db.isMaster().ismaster``
prints false. ``db.projects.distinct("imageName")`` lists ``/data/db/project-images``. The importer's counts
(JS holding ``airgapCounts``) count the lines of ``/data/db/collections/{projects,docs,users,fileRefs}``. ``mongosh`` (>=5.0) and
``mongo`` (<6.0) apply ``setFeatureCompatibilityVersion`` with MongoDB's rules
(only the own series or the major before; ``confirm: true`` from 7.0 on).

``redis:T``: ``redis-server`` refuses data written by a newer major (marker
``/data/standin-written-by``); ``redis-cli ping`` -> PONG; ``DBSIZE`` -> the lines of ``/data/standin-keys``,
``INFO`` -> ``redis_version`` and ``used_memory`` (that file's bytes); ``redis-cli --scan --pattern P``
lists the matching lines of ``/data/standin-keys``; ``/version`` on 6379.
``quay.io/sharelatex/git-bridge:V``, ``nginx:T`` and
``quay.io/sharelatex/texlive-full:T`` just stay up (nginx serves port 80).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Literal

import docker

from tests.support.engine import FileContent, PrivateEngine, build_image

APP_FILES_IMAGE = "airgap-test/overleaf-gated-files:1"
APP_BASE_IMAGE = "airgap-test/overleaf-gated-app:1"
MONGO_BASE_IMAGE = "airgap-test/mongo-gated:1"
REDIS_BASE_IMAGE = "airgap-test/redis-gated:1"
STANDIN_LABEL = "airgap-test.standin"

# --- app -----------------------------------------------------------------------------------------

_APP_LIB = r"""# Sourced by the app stand-in's scripts: version, data dir, helpers.
OL_VERSION=$(cat /overleaf/VERSION)
OL_EDITION=$(cat /overleaf/EDITION)
num() { echo "$1" | awk -F'[.-]' '{ printf "%d", $1 * 1000000 + $2 * 1000 + $3 }'; }
series_num() { echo "$1" | awk -F. '{ printf "%d", $1 * 1000 + $2 }'; }
at_least() { [ "$(num "$OL_VERSION")" -ge "$(num "$1")" ]; }
if at_least 5.0.0; then
  OL_DATA=/var/lib/overleaf OL_LOGS=/var/log/overleaf
else
  OL_DATA=/var/lib/sharelatex OL_LOGS=/var/log/sharelatex
fi
# should_fail NAME: a file FAIL_MIGRATION in the data dir fails every migration (empty) or those it names.
should_fail() {
  [ -f "$OL_DATA/FAIL_MIGRATION" ] && { [ ! -s "$OL_DATA/FAIL_MIGRATION" ] || grep -q "$1" "$OL_DATA/FAIL_MIGRATION"; }
}
# single NAME: refuse a second copy of a migration while one runs (recorded in concurrent-runs.log);
# the lock is released when the script ends.
single() {
  lock="$OL_DATA/.$1.running"
  if [ -f "$lock" ] && kill -0 "$(cat "$lock")" 2>/dev/null; then
    echo "$1 $(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"$OL_DATA/concurrent-runs.log"
    echo "Error: another $1 is already running (pid $(cat "$lock"))" >&2
    exit 1
  fi
  echo $$ >"$lock"
  trap 'rm -f "$lock"' EXIT
}
# slow NAME TOTAL: with a file SLOW_MIGRATION (seconds) in the data dir, take that long, printing progress.
slow() {
  [ -f "$OL_DATA/SLOW_MIGRATION" ] || return 0
  secs=$(cat "$OL_DATA/SLOW_MIGRATION")
  i=0
  while [ "$i" -lt "$secs" ]; do
    i=$((i + 1))
    echo "$1: progress $i/$secs"
    sleep 1
  done
}
# needs VERSION SCRIPT: scripts that the image of this version does not have yet.
needs() {
  at_least "$1" || { echo "Error: Cannot find module '$2'" >&2; exit 1; }
}
"""

_MY_INIT = r"""#!/bin/sh
# Stand-in for the Overleaf image's init: the startup gates of the real image, then the web server.
set -eu
. /overleaf/standin/lib.sh
refuse() { # refuse CODE MESSAGE: print, wait a little (the real scripts wait too), exit
  code=$1
  shift
  echo "$*" >&2
  sleep "${STANDIN_GATE_DELAY:-1}"
  exit "$code"
}
fetch() { timeout 3 wget -qO- "$1" 2>/dev/null; }
wait_for() { # wait_for URL MESSAGE: the body at URL, once the server answers
  tries=0
  until body=$(fetch "$1"); do
    tries=$((tries + 1))
    [ "$tries" -lt "${STANDIN_WAIT:-30}" ] || refuse 1 "$2"
    sleep 1
  done
  echo "$body"
}

echo "*** Overleaf $OL_EDITION $OL_VERSION (stand-in) starting"
if at_least 5.0.0; then # 000_check_for_old_env_vars_5, 000_check_for_old_bind_mounts_5
  old=$(env | sed -n 's/^\(SHARELATEX_[A-Za-z0-9_]*\)=.*/\1/p' | sort | tr '\n' ' ')
  [ -z "$old" ] || refuse 1 "ERROR: SHARELATEX_* variables are no longer supported from Overleaf 5.0 on; rename them to OVERLEAF_* (Toolkit: bin/rename-env-vars-5-0). Found: $old"
  for path in /etc/sharelatex /var/lib/sharelatex /var/log/sharelatex; do
    [ ! -e "$path" ] || refuse 1 "ERROR: $path exists; from Overleaf 5.0 on, bind mounts must use the /overleaf paths (/var/lib/overleaf ...)."
  done
fi
if at_least 6.2.0 && [ -z "${OVERLEAF_INVITE_TOKEN_SECRET:-}" ]; then # 000_check_missing_secrets
  refuse 101 "Missing required secrets: OVERLEAF_INVITE_TOKEN_SECRET is not set. Generate one with: openssl rand -base64 32"
fi

mongo_url=${OVERLEAF_MONGO_URL:-${SHARELATEX_MONGO_URL:-mongodb://mongo/sharelatex}}
mongo_host=$(echo "$mongo_url" | sed -e 's|^[a-z+]*://||' -e 's|^.*@||' -e 's|[/?,].*$||' -e 's|:.*$||')
redis_host=${OVERLEAF_REDIS_HOST:-${SHARELATEX_REDIS_HOST:-${REDIS_HOST:-redis}}}
mongo_version=$(wait_for "http://$mongo_host:27017/version" "MongoServerSelectionError: connect ECONNREFUSED $mongo_host:27017") || exit 1
fcv=$(fetch "http://$mongo_host:27017/fcv" || true)
if at_least 4.0.0; then
  if [ -z "$(fetch "http://$mongo_host:27017/replset" || true)" ] || [ -z "$(fetch "http://$mongo_host:27017/running-replset" || true)" ]; then
    refuse 1 "MongoServerError: Transaction numbers are only allowed on a replica set member or mongos (Overleaf 4.0+ needs MongoDB as a replica set)"
  fi
fi
min_mongo="" min_fcv=""
if at_least 6.0.1; then
  min_mongo=8.0 min_fcv=7.0
elif at_least 5.5.1; then
  min_mongo=6.0 min_fcv=6.0
elif at_least 5.5.0; then
  min_mongo=6.0
elif at_least 5.0.0; then
  min_mongo=5.0
fi
if [ -n "$min_mongo" ] && [ "$(series_num "$mongo_version")" -lt "$(series_num "$min_mongo")" ]; then
  refuse 1 "The MongoDB server has version $mongo_version, but Overleaf requires at least version $min_mongo. Aborting."
fi
if [ -n "$min_fcv" ] && [ "$(series_num "${fcv:-0.0}")" -lt "$(series_num "$min_fcv")" ]; then
  refuse 1 "The MongoDB server has featureCompatibilityVersion $fcv, but Overleaf requires at least $min_fcv. Aborting."
fi
redis_version=$(wait_for "http://$redis_host:6379/version" "Error: connect ECONNREFUSED $redis_host:6379 (Redis)") || exit 1
if at_least 6.0.0 && [ "$(series_num "$redis_version")" -lt "$(series_num 7.4)" ]; then
  refuse 1 "The Redis server has version $redis_version, but Overleaf requires at least version 7.4. Aborting."
fi
if [ "$OL_EDITION" = pro ] && at_least 5.2.0 && [ "${SANDBOXED_COMPILES:-}" = true ] && [ "${SKIP_TEX_LIVE_CHECK:-}" != true ]; then
  case ",${ALL_TEX_LIVE_DOCKER_IMAGES:-}," in
    *",${TEX_LIVE_DOCKER_IMAGE:-none},"*) ;;
    *) refuse 1 "TEX_LIVE_DOCKER_IMAGE (${TEX_LIVE_DOCKER_IMAGE:-unset}) must be listed in ALL_TEX_LIVE_DOCKER_IMAGES (${ALL_TEX_LIVE_DOCKER_IMAGES:-unset})" ;;
  esac
  # every image the projects use (db.projects.distinct("imageName"): the mongo stand-in's project-images)
  for image in $(fetch "http://$mongo_host:27017/project-images" || true); do
    case ",${ALL_TEX_LIVE_DOCKER_IMAGES:-}," in
      *",$image,"*) ;;
      *) refuse 1 "Error: projects use the TeX Live image $image, which is not in ALL_TEX_LIVE_DOCKER_IMAGES (${ALL_TEX_LIVE_DOCKER_IMAGES:-unset}). Add it there, or move them: bin/run-script scripts/update_project_image_name.js $image NEW_IMAGE (or set SKIP_TEX_LIVE_CHECK=true)" ;;
    esac
  done
fi

# Migrations that run when web starts.
mkdir -p "$OL_DATA/data" "$OL_LOGS"
if at_least 4.0.0 && [ ! -f "$OL_DATA/fph-migration.done" ]; then # 20230512100122_ensure_history_migration
  refuse 1 "Full Project History migration not completed for 3 projects. Please go back to 3.5 and run the migration first: echo \"3.5.13\" > config/version; bin/up -d; then run scripts/history/migrate_history.js (see https://github.com/overleaf/overleaf/wiki/Full-Project-History-Migration)"
fi
if at_least 6.0.0 && [ ! -f "$OL_DATA/binary-files-migration.done" ]; then # 20250519101128_binary_files_migration_check
  refuse 1 "Error: the binary files migration (20250519101128_binary_files_migration) has not been completed. Run back_fill_file_hash.mjs --all on the latest 5.5.x first: https://docs.overleaf.com/on-premises/release-notes/release-notes-5.x.x/binary-files-migration"
fi
if at_least 5.0.3; then # 910_initiate_doc_version_recovery
  mkdir -p "$OL_DATA/data/history"
  echo "Done." >"$OL_DATA/data/history/doc-version-recovery.log"
fi

if [ -f "$OL_DATA/SLOW_START" ]; then # database migrations of a first start that take a while
  secs=$(cat "$OL_DATA/SLOW_START")
  echo "Running database migrations (about $secs s)"
  trap 'echo "$OL_VERSION $(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"$OL_DATA/interrupted-migrations.log"; exit 143' TERM INT
  sleep "$secs" &
  wait $!
  trap - TERM INT
  rm -f "$OL_DATA/SLOW_START"
fi
echo "$OL_VERSION $(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"$OL_DATA/versions.log"
cp /overleaf/VERSION /var/www/version
echo "web listening on port 80 (Overleaf $OL_VERSION, mongo $mongo_version fcv $fcv, redis $redis_version)" | tee -a "$OL_LOGS/web.log"
exec run-forever httpd -f -p 80 -h /var/www
"""

_NODE = r"""#!/bin/sh
# Stand-in for node: runs a stand-in script (shell code in a .js/.mjs file) with sh.
set -eu
case "${1:-}" in
  -v | --version) echo v20.18.0; exit 0 ;;
  "") echo "node (stand-in): give a script to run" >&2; exit 9 ;;
esac
if [ "$1" = -e ]; then # only the importer's probes: MongoDB / Redis versions as the app sees them
  url=${OVERLEAF_MONGO_URL:-${SHARELATEX_MONGO_URL:-mongodb://mongo/sharelatex}}
  mhost=$(echo "$url" | sed -e 's|^[a-z+]*://||' -e 's|^.*@||' -e 's|[/?,].*$||' -e 's|:.*$||')
  rhost=${OVERLEAF_REDIS_HOST:-${SHARELATEX_REDIS_HOST:-${REDIS_HOST:-redis}}}
  case "$2" in
    *airgapMongo*)
      v=$(timeout 3 wget -qO- "http://$mhost:27017/version") || { echo "MongoServerSelectionError: connect ECONNREFUSED $mhost:27017" >&2; exit 1; }
      f=$(timeout 3 wget -qO- "http://$mhost:27017/fcv" || true)
      echo "{\"airgapMongo\":{\"version\":\"$v\",\"fcv\":\"$f\"}}" ;;
    *airgapCounts*)
      n() { timeout 3 wget -qO- "http://$mhost:27017/collections/$1" 2>/dev/null | grep -c . || true; }
      timeout 3 wget -qO /dev/null "http://$mhost:27017/version" || { echo "MongoServerSelectionError: connect ECONNREFUSED $mhost:27017" >&2; exit 1; }
      echo "{\"airgapCounts\":{\"projects\":$(n projects),\"docs\":$(n docs),\"users\":$(n users),\"files\":$(n fileRefs)}}" ;;
    *airgapRedis*)
      v=$(timeout 3 wget -qO- "http://$rhost:6379/version") || { echo "Error: connect ECONNREFUSED $rhost:6379" >&2; exit 1; }
      echo "{\"airgapRedis\":{\"version\":\"$v\"}}" ;;
    *) echo "node (stand-in): -e runs only the importer's probes" >&2; exit 9 ;;
  esac
  exit 0
fi
script=$1
shift
case "$script" in /*) path=$script ;; *) path=$(pwd)/$script ;; esac
if [ ! -f "$path" ]; then
  echo "Error: Cannot find module '$path'" >&2
  exit 1
fi
exec sh "$path" "$@"
"""

_MIGRATE_HISTORY = r"""# Stand-in for scripts/history/migrate_history.js (run by the node stand-in with sh).
set -eu
. /overleaf/standin/lib.sh
needs 3.5.0 scripts/history/migrate_history.js
dry_run=false
for arg in "$@"; do [ "$arg" != --dry-run ] || dry_run=true; done
[ "${VERBOSE_LOGGING:-}" != true ] || echo "Verbose logging enabled; options: $*"
single migrate_history
echo "Migrating 3 projects to Full Project History"
slow migrate_history
if should_fail migrate_history; then
  echo "Projects migrated: 2"
  echo "Projects failed:  1"
  echo "Error: 1 project failed to migrate; fix it and run again with --force-clean" >&2
  exit 1
fi
echo "Projects migrated: 3"
echo "Projects failed:  0"
$dry_run || date -u +%Y-%m-%dT%H:%M:%SZ >"$OL_DATA/fph-migration.done"
"""

_CLEAN_HISTORY = r"""# Stand-in for scripts/history/clean_sl_history_data.js (run by the node stand-in with sh).
set -eu
. /overleaf/standin/lib.sh
needs 3.5.6 scripts/history/clean_sl_history_data.js
if [ ! -f "$OL_DATA/fph-migration.done" ]; then
  echo "Error: not every project has been migrated to Full Project History; run migrate_history.js first" >&2
  exit 1
fi
if should_fail clean_sl_history_data; then
  echo "Error: could not drop docHistory" >&2
  exit 1
fi
echo "Dropping the docHistory and docHistoryIndex collections"
echo "Done."
date -u +%Y-%m-%dT%H:%M:%SZ >"$OL_DATA/fph-cleanup.done"
"""

_BACK_FILL = r"""# Stand-in for storage/scripts/back_fill_file_hash.mjs (run by the node stand-in with sh).
set -eu
. /overleaf/standin/lib.sh
needs 5.5.0 storage/scripts/back_fill_file_hash.mjs
mode="" dry_run=false
for arg in "$@"; do
  case "$arg" in --report) mode=report ;; --all) mode=all ;; --dry-run) dry_run=true ;; esac
done
case "$mode" in
  report)
    echo "Binary files migration report: 3 projects, 12 binary files, 12 to migrate"
    ;;
  all)
    single back_fill_file_hash
    queued=$(cat "$OL_DATA/history-queue" 2>/dev/null || echo 0)
    if [ "$queued" -gt 0 ]; then
      echo "Error: $queued projects still have history updates queued in Redis; run /overleaf/bin/flush-history-queues until it reports \"project_ids\":0" >&2
      exit 1
    fi
    echo "Back-filling file hashes (level ${OVERLEAF_FILESTORE_MIGRATION_LEVEL:-0})"
    slow back_fill_file_hash
    if should_fail back_fill_file_hash; then
      echo "The binary files migration failed: 2 files could not be processed." >&2
      exit 1
    fi
    echo "Processed 12 files"
    echo "The binary files migration succeeded."
    # Only 5.5.5+ writes the migrations record that 6.0 checks.
    if ! $dry_run && at_least 5.5.5; then date -u +%Y-%m-%dT%H:%M:%SZ >"$OL_DATA/binary-files-migration.done"; fi
    ;;
  *)
    echo "usage: back_fill_file_hash.mjs --report | --all [--dry-run] [--concurrency=N]" >&2
    exit 1
    ;;
esac
"""

_FLUSH_ALL = r"""# Stand-in for services/document-updater/scripts/flush_all.js (run by the node stand-in with sh).
set -eu
. /overleaf/standin/lib.sh
# Logs as @overleaf/logger does (one JSON object per line) with LOG_LEVEL=info.
if [ ! -f /run/sv/real-time-overleaf.down ]; then
  echo '{"name":"document-updater","level":50,"msg":"real-time is running: users can still edit; stop it first (sv stop real-time-overleaf)"}'
  exit 1
fi
echo '{"name":"document-updater","level":30,"msg":"flushing all projects"}'
if should_fail flush_all; then
  echo '{"name":"document-updater","level":30,"successCount":1,"failureCount":2,"msg":"finished flushing all projects"}'
  exit 1
fi
echo '{"name":"document-updater","level":30,"successCount":3,"failureCount":0,"msg":"finished flushing all projects"}'
"""

_FLUSH_HISTORY = r"""#!/bin/sh
# Stand-in for /overleaf/bin/flush-history-queues.
set -eu
. /overleaf/standin/lib.sh
if should_fail flush-history-queues; then
  echo '{"project_ids":2,"failedProjects":2}'
  exit 1
fi
# history-queue in the data dir: projects with queued history updates; each run flushes up to 2.
queued=$(cat "$OL_DATA/history-queue" 2>/dev/null || echo 0)
n=$queued
[ "$n" -le 2 ] || n=2
echo $((queued - n)) >"$OL_DATA/history-queue"
echo "{\"project_ids\":$n,\"failedProjects\":0}"
"""

_SETUSER = """#!/bin/sh
# Stand-in for /sbin/setuser USER COMMAND...: runs COMMAND (as root here).
shift
exec "$@"
"""

_SV = r"""#!/bin/sh
# Stand-in for runit's sv: sv stop|start|status SERVICE (state in /run/sv).
mkdir -p /run/sv
case "${1:-}" in
  stop | down) touch "/run/sv/$2.down"; echo "ok: down: $2: 0s" ;;
  start | up) rm -f "/run/sv/$2.down"; echo "ok: run: $2: (pid 100) 0s" ;;
  status) if [ -f "/run/sv/$2.down" ]; then echo "down: $2: 1s, normally up"; else echo "run: $2: (pid 100) 60s"; fi ;;
  *) echo "usage: sv stop|start|status SERVICE" >&2; exit 1 ;;
esac
"""

_MV = r"""#!/bin/sh
# GNU-style mv over busybox mv (the binary files migration uses --no-clobber --verbose).
verbose=false
for arg in "$@"; do
  shift
  case "$arg" in
    --no-clobber) set -- "$@" -n ;;
    --verbose | -v) verbose=true ;;
    --force) set -- "$@" -f ;;
    *) set -- "$@" "$arg" ;;
  esac
done
busybox mv "$@"
! $verbose || echo "mv $*"
"""

_BASH = """#!/bin/sh
# The stand-in has no bash: busybox sh runs bash commands.
exec /bin/sh "$@"
"""

_APP_FILES: dict[str, FileContent] = {
    "/overleaf/standin/lib.sh": _APP_LIB,
    "/sbin/my_init": _MY_INIT,
    "/usr/local/bin/node": _NODE,
    "/overleaf/services/web/scripts/history/migrate_history.js": _MIGRATE_HISTORY,
    "/overleaf/services/web/scripts/history/clean_sl_history_data.js": _CLEAN_HISTORY,
    "/overleaf/services/history-v1/storage/scripts/back_fill_file_hash.mjs": _BACK_FILL,
    "/overleaf/services/document-updater/scripts/flush_all.js": _FLUSH_ALL,
    "/overleaf/bin/flush-history-queues": _FLUSH_HISTORY,
    "/sbin/setuser": _SETUSER,
    "/usr/local/bin/sv": _SV,
    "/usr/local/bin/mv": _MV,
    "/bin/bash": _BASH,
    "/etc/overleaf/env.sh": "# Stand-in for /etc/overleaf/env.sh\nexport NODE_ENV=production\n",
    "/etc/container_environment.sh": "# Stand-in for /etc/container_environment.sh\nexport OVERLEAF_STANDIN=1\n",
    "/var/www/index.html": "<html><body>Overleaf stand-in</body></html>\n",
    "/var/www/status": "ok\n",
}

# --- mongo ---------------------------------------------------------------------------------------

_MONGO_LIB = r"""# Sourced by the mongo stand-in: this binary's version, series and the series it upgrades from.
MONGO_VERSION=$(cat /usr/local/share/mongo-standin/version)
MONGO_SERIES=$(echo "$MONGO_VERSION" | awk -F. '{ printf "%d.%d", $1, $2 }')
MONGO_MAJOR=${MONGO_SERIES%%.*}
case "$MONGO_SERIES" in
  3.6) MONGO_PREVIOUS=3.4 ;; 4.0) MONGO_PREVIOUS=3.6 ;; 4.2) MONGO_PREVIOUS=4.0 ;; 4.4) MONGO_PREVIOUS=4.2 ;;
  5.0) MONGO_PREVIOUS=4.4 ;; *) MONGO_PREVIOUS=$((MONGO_MAJOR - 1)).0 ;;
esac
snum() { echo "$1" | awk -F. '{ printf "%d", $1 * 1000 + $2 }'; }
"""

_MONGO_ENTRYPOINT = """#!/bin/sh
# Stand-in for the mongo image's docker-entrypoint.sh: leading flags mean "mongod FLAGS".
case "${1:-}" in -*) set -- mongod "$@" ;; esac
exec "$@"
"""

_MONGOD = r"""#!/bin/sh
# Stand-in for mongod: state in /data/db; refuses (exit 62) data whose featureCompatibilityVersion is
# newer than this binary or older than the major before it; then serves /data/db on port 27017.
set -eu
. /usr/local/share/mongo-standin/lib.sh
if [ "${1:-}" = --version ]; then
  echo "db version v$MONGO_VERSION"
  exit 0
fi
replset=""
while [ $# -gt 0 ]; do
  case "$1" in
    --replSet) replset=${2:-}; shift ;;
    --replSet=*) replset=${1#*=} ;;
  esac
  shift
done
mkdir -p /data/db
if [ -s /data/db/fcv ]; then
  have=$(cat /data/db/fcv)
  if [ "$(snum "$have")" -gt "$(snum "$MONGO_SERIES")" ] || [ "$(snum "$have")" -lt "$(snum "$MONGO_PREVIOUS")" ]; then
    echo "UPGRADE PROBLEM: Found an invalid featureCompatibilityVersion document (ERROR: Invalid feature compatibility version value '$have'; expected '$MONGO_PREVIOUS' or '$MONGO_SERIES'). If the current featureCompatibilityVersion is below $MONGO_PREVIOUS, see the documentation on upgrading at https://www.mongodb.com/docs/manual/release-notes/$MONGO_SERIES/#upgrade-procedures." >&2
    echo "mongod $MONGO_VERSION: exiting with code 62" >&2
    exit 62
  fi
else
  echo "$MONGO_SERIES" >/data/db/fcv
fi
echo "$MONGO_VERSION" >/data/db/version
echo "$replset" >/data/db/running-replset
date +%s >/data/db/started-at
echo "{\"msg\":\"Waiting for connections\",\"attr\":{\"port\":27017},\"version\":\"$MONGO_VERSION\",\"featureCompatibilityVersion\":\"$(cat /data/db/fcv)\",\"replSet\":\"$replset\"}"
exec run-forever httpd -f -p 27017 -h /data/db
"""

_MONGO_SHELL = r"""#!/bin/sh
# Stand-in for mongosh and the legacy mongo shell: runs --eval JS (or JS from stdin) against the
# mongod stand-in of this container; logs each command but the ping to /data/db/commands.log.
set -eu
. /usr/local/share/mongo-standin/lib.sh
me=$(basename "$0")
js="" given=false
while [ $# -gt 0 ]; do
  case "$1" in
    --eval) js="$js${2:-};"; given=true; shift ;;
    --host | --port | -u | --username | --password | --authenticationDatabase) shift ;;
  esac
  shift
done
$given || js=$(cat)
flat=$(printf '%s' "$js" | tr '\n' ' ')
compact=$(printf '%s' "$js" | tr -d ' \n\t')

if ! timeout 3 wget -qO /dev/null http://127.0.0.1:27017/version 2>/dev/null; then
  if [ "$me" = mongosh ]; then
    echo "MongoNetworkError: connect ECONNREFUSED 127.0.0.1:27017" >&2
  else
    echo "Error: couldn't connect to server 127.0.0.1:27017, connection attempt failed: SocketException: Connection refused" >&2
  fi
  exit 1
fi
case "$compact" in
  *"{ping:1}"*) ;;
  *) echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $me $flat" >>/data/db/commands.log ;;
esac

ok() {
  if [ "$me" = mongosh ]; then echo "{ ok: 1${1:+, $1} }"; else echo "{ \"ok\" : 1${1:+, $1} }"; fi
}
fail() { # fail CODE CODENAME MESSAGE
  if [ "$me" = mongosh ]; then
    echo "MongoServerError[$2]: $3" >&2
  else
    echo "{ \"ok\" : 0, \"errmsg\" : \"$3\", \"code\" : $1, \"codeName\" : \"$2\" }" >&2
  fi
  exit 1
}

# primary: a replica set member becomes primary PRIMARY_DELAY seconds (file in /data/db) after it started.
primary() {
  [ -s /data/db/replset ] || return 1
  delay=$(cat /data/db/PRIMARY_DELAY 2>/dev/null || echo 0)
  [ "$(date +%s)" -ge $(( $(cat /data/db/started-at 2>/dev/null || echo 0) + delay )) ]
}
count() { if [ -f "/data/db/collections/$1" ]; then grep -c . "/data/db/collections/$1" || true; else echo 0; fi; }
case "$compact" in
  *airgapCounts*)
    # the importer's counts: one document per line in /data/db/collections/{projects,docs,users,fileRefs}
    echo "{\"airgapCounts\":{\"projects\":$(count projects),\"docs\":$(count docs),\"users\":$(count users),\"files\":$(count fileRefs)}}"
    ;;
  *setFeatureCompatibilityVersion*)
    if [ -n "$(cat /data/db/running-replset 2>/dev/null)" ] && ! primary; then
      fail 10107 NotWritablePrimary "not primary"
    fi
    want=$(printf '%s' "$compact" | sed -n 's/.*setFeatureCompatibilityVersion[^0-9]*\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p')
    [ -n "$want" ] || fail 2 BadValue "setFeatureCompatibilityVersion needs a version like \"6.0\""
    if [ "$(snum "$want")" -gt "$(snum "$MONGO_SERIES")" ] || [ "$(snum "$want")" -lt "$(snum "$MONGO_PREVIOUS")" ]; then
      fail 2 BadValue "Invalid feature compatibility version value '$want'; expected '$MONGO_PREVIOUS' or '$MONGO_SERIES'."
    fi
    case "$compact" in
      *confirm:true*) ;;
      *) [ "$MONGO_MAJOR" -lt 7 ] || fail 7369100 IllegalOperation "Once you have upgraded to $want, you will not be able to downgrade FCV and binary version without support assistance. Please re-run this command with 'confirm: true' to acknowledge this and continue with the FCV upgrade." ;;
    esac
    echo "$want" >/data/db/fcv
    ok
    ;;
  *featureCompatibilityVersion*)
    if [ "$me" = mongosh ]; then
      echo "{ featureCompatibilityVersion: { version: '$(cat /data/db/fcv)' }, ok: 1 }"
    else
      echo "{ \"featureCompatibilityVersion\" : { \"version\" : \"$(cat /data/db/fcv)\" }, \"ok\" : 1 }"
    fi
    ;;
  *rs.initiate*)
    running=$(cat /data/db/running-replset 2>/dev/null || true)
    [ -n "$running" ] || fail 76 NoReplicationEnabled "This node was not started with replication enabled."
    [ ! -s /data/db/replset ] || fail 23 AlreadyInitialized "already initialized"
    echo "$running" >/data/db/replset
    ok
    ;;
  *isWritablePrimary* | *isMaster* | *db.hello*)
    if [ -z "$(cat /data/db/running-replset 2>/dev/null)" ] || primary; then echo true; else echo false; fi
    ;;
  *'distinct("imageName")'*)
    # the projects' TeX Live images: one per line in /data/db/project-images
    list=""
    if [ -f /data/db/project-images ]; then
      while read -r image; do [ -z "$image" ] || list="${list:+$list, }'$image'"; done </data/db/project-images
    fi
    echo "[ ${list} ]"
    ;;
  *rs.status*)
    [ -s /data/db/replset ] || fail 94 NotYetInitialized "no replset config has been received"
    ok "set: '$(cat /data/db/replset)'"
    ;;
  *db.version*) echo "$MONGO_VERSION" ;;
  *"{ping:1}"*) echo 1 ;;
  *) ok ;;
esac
"""

# --- redis ---------------------------------------------------------------------------------------

_REDIS_ENTRYPOINT = """#!/bin/sh
# Stand-in for the redis image's docker-entrypoint.sh: leading flags mean "redis-server FLAGS".
case "${1:-}" in -*) set -- redis-server "$@" ;; esac
exec "$@"
"""

_REDIS_SERVER = r"""#!/bin/sh
# Stand-in for redis-server: refuses data written by a newer major (no downgrade after 7.x);
# with --appendonly yes keeps appendonly.aof (<7) or appendonlydir/ (7+); serves /version on 6379.
set -eu
version=$(cat /usr/local/share/redis-standin/version)
major=${version%%.*}
case "${1:-}" in -v | --version) echo "Redis server v=$version sha=00000000:0 malloc=libc bits=64"; exit 0 ;; esac
mkdir -p /data /run/redis
if [ -s /data/standin-written-by ]; then
  written=$(cat /data/standin-written-by)
  if [ "${written%%.*}" -gt "$major" ]; then
    echo "# Can't handle RDB format version 11 (data written by Redis $written)" >&2
    echo "# Fatal error loading the DB: Invalid argument. Exiting." >&2
    exit 1
  fi
fi
echo "$version" >/data/standin-written-by
case " $* " in
  *" --appendonly yes "*)
    if [ "$major" -ge 7 ]; then
      mkdir -p /data/appendonlydir
      [ ! -f /data/appendonly.aof ] || mv /data/appendonly.aof /data/appendonlydir/appendonly.aof.1.base.aof
    else
      touch /data/appendonly.aof
    fi ;;
esac
echo "$version" >/run/redis/version
echo "Redis $version (stand-in) ready to accept connections tcp"
exec run-forever httpd -f -p 6379 -h /run/redis
"""

_REDIS_CLI = r"""#!/bin/sh
# Stand-in for redis-cli: PING -> PONG, INFO -> redis_version, a --scan finds nothing.
version=$(cat /usr/local/share/redis-standin/version)
if ! timeout 3 wget -qO /dev/null http://127.0.0.1:6379/version 2>/dev/null; then
  echo "Could not connect to Redis at 127.0.0.1:6379: Connection refused" >&2
  exit 1
fi
pattern=""
prev=""
for arg in "$@"; do
  [ "$prev" != --pattern ] || pattern=$arg
  prev=$arg
done
for arg in "$@"; do
  case "$arg" in
    [Pp][Ii][Nn][Gg]) echo PONG; exit 0 ;;
    --scan | [Kk][Ee][Yy][Ss])
      # keys: one per line in /data/standin-keys; the pattern's '*' suffix only
      [ -f /data/standin-keys ] || exit 0
      prefix=${pattern%\*}
      grep "^$prefix" /data/standin-keys || true
      exit 0 ;;
    [Ii][Nn][Ff][Oo]) echo "redis_version:$version"; echo "used_memory:$(cat /data/standin-keys 2>/dev/null | wc -c | tr -d ' ')"; exit 0 ;;
    [Dd][Bb][Ss][Ii][Zz][Ee]) if [ -f /data/standin-keys ]; then grep -c . /data/standin-keys || true; else echo 0; fi; exit 0 ;;
  esac
done
echo OK
"""

_NGINX = r"""#!/bin/sh
# Stand-in for nginx: -v / -t answer at once; otherwise serve /usr/share/nginx/html on port 80.
case "${1:-}" in
  -v | -V) echo "nginx version: nginx/$(cat /usr/share/nginx/VERSION)" >&2; exit 0 ;;
  -t) echo "nginx: configuration file /etc/nginx/nginx.conf test is successful" >&2; exit 0 ;;
esac
exec run-forever httpd -f -p 80 -h /usr/share/nginx/html
"""


def _client(target: PrivateEngine | docker.DockerClient) -> docker.DockerClient:
    return target.client() if isinstance(target, PrivateEngine) else target


def _labels(kind: str, version: str) -> dict[str, str]:
    return {"org.opencontainers.image.version": version, STANDIN_LABEL: kind}


def _series(version: str) -> str:
    """``"8.0.4"`` -> ``"8.0"``, ``"6"`` -> ``"6.0"``."""
    return ".".join((version.split(".") + ["0"])[:2])


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) if part.isdigit() else -1 for part in version.replace("-", ".").split("."))


def build_app_base(target: PrivateEngine | docker.DockerClient) -> str:
    """The app base shared by every app version (scripts, gates; ``WORKDIR /overleaf``); returns its tag."""
    client = _client(target)
    build_image(client, APP_FILES_IMAGE, _APP_FILES, labels=_labels("overleaf-app-files", "1"))
    dockerfile = f"FROM {APP_FILES_IMAGE}\nWORKDIR /overleaf\n".encode()
    client.images.build(fileobj=io.BytesIO(dockerfile), tag=APP_BASE_IMAGE, rm=True, pull=False, network_mode="none")
    return APP_BASE_IMAGE


def seed_overleaf_path(
    target: PrivateEngine | docker.DockerClient,
    versions: Sequence[str] = (),
    *,
    edition: Literal["ce", "pro"] = "ce",
    mongo: Sequence[str] = (),
    redis: Sequence[str] = (),
    git_bridge: bool = False,
    nginx: Sequence[str] = (),
    texlive: Sequence[str] = (),
    app_image: str | None = None,
    git_bridge_image: str | None = None,
    mongo_image: str = "mongo",
    redis_image: str = "redis",
) -> list[str]:
    """Build the gated stand-ins a stepped upgrade needs; return their references in build order.

    ``versions``: app tags (``3.5.13``, ``5.5.8-with-texlive-full`` ...), as
    ``sharelatex/sharelatex:V`` (CE), ``quay.io/sharelatex/sharelatex-pro:V``
    (Server Pro) or ``<app_image>:V``; with ``git_bridge`` (Server Pro) also
    ``quay.io/sharelatex/git-bridge:V`` (or ``<git_bridge_image>:V``) for 4.0+.
    ``mongo``/``redis``/``nginx``/``texlive``: tags of ``mongo:T``, ``redis:T``,
    ``nginx:T`` and ``quay.io/sharelatex/texlive-full:T``. Layers: one shared
    base per kind plus a small layer per tag; rebuilding hits the build cache.
    Replaces same-named images (e.g. those of ``seed_overleaf_images``).
    """
    if edition not in ("ce", "pro"):
        raise ValueError(f"edition must be 'ce' or 'pro', not {edition!r}")
    if git_bridge and edition != "pro":
        raise ValueError("git-bridge exists only for Server Pro (edition='pro')")
    client = _client(target)
    refs: list[str] = []
    if versions:
        base = build_app_base(client)
        repo = app_image or ("sharelatex/sharelatex" if edition == "ce" else "quay.io/sharelatex/sharelatex-pro")
        for version in sorted(versions, key=_version_key):
            ref = f"{repo}:{version}"
            files = {"/overleaf/VERSION": version + "\n", "/overleaf/EDITION": edition + "\n"}
            build_image(client, ref, files, base=base, cmd=["/sbin/my_init"], labels=_labels(f"overleaf-{edition}", version))
            refs.append(ref)
            if git_bridge and _version_key(version) >= (4,):
                bridge = f"{git_bridge_image or 'quay.io/sharelatex/git-bridge'}:{version.removesuffix('-with-texlive-full')}"
                build_image(client, bridge, {"/opt/git-bridge/VERSION": version + "\n"}, cmd=["run-forever"],
                            labels=_labels("git-bridge", version))  # fmt: skip
                refs.append(bridge)
    if mongo:
        build_image(client, MONGO_BASE_IMAGE, {
            "/usr/local/share/mongo-standin/lib.sh": _MONGO_LIB,
            "/usr/local/bin/docker-entrypoint.sh": _MONGO_ENTRYPOINT,
            "/usr/local/bin/mongod": _MONGOD,
        }, labels=_labels("mongo-base", "1"))  # fmt: skip
    for tag in mongo:
        major = int(_series(tag).split(".")[0])
        shells = [name for name, present in (("mongo", major < 6), ("mongosh", major >= 5)) if present]
        files: dict[str, FileContent] = {"/usr/local/share/mongo-standin/version": tag + "\n"}
        files.update({f"/usr/local/bin/{shell}": _MONGO_SHELL for shell in shells})
        ref = f"{mongo_image}:{tag}"
        build_image(client, ref, files, base=MONGO_BASE_IMAGE, entrypoint=["docker-entrypoint.sh"], cmd=["mongod"],
                    labels=_labels("mongo", tag))  # fmt: skip
        refs.append(ref)
    if redis:
        build_image(client, REDIS_BASE_IMAGE, {
            "/usr/local/bin/docker-entrypoint.sh": _REDIS_ENTRYPOINT,
            "/usr/local/bin/redis-server": _REDIS_SERVER,
            "/usr/local/bin/redis-cli": _REDIS_CLI,
        }, labels=_labels("redis-base", "1"))  # fmt: skip
    for tag in redis:
        ref = f"{redis_image}:{tag}"
        build_image(client, ref, {"/usr/local/share/redis-standin/version": tag + "\n"}, base=REDIS_BASE_IMAGE,
                    entrypoint=["docker-entrypoint.sh"], cmd=["redis-server"], labels=_labels("redis", tag))  # fmt: skip
        refs.append(ref)
    for tag in nginx:
        files = {"/usr/sbin/nginx": _NGINX, "/usr/share/nginx/VERSION": tag + "\n",
                 "/usr/share/nginx/html/index.html": "<html><body>nginx stand-in</body></html>\n"}  # fmt: skip
        build_image(client, f"nginx:{tag}", files, cmd=["nginx", "-g", "daemon off;"], labels=_labels("nginx", tag))
        refs.append(f"nginx:{tag}")
    for tag in texlive:
        ref = f"quay.io/sharelatex/texlive-full:{tag}"
        build_image(client, ref, {"/usr/local/texlive/VERSION": tag + "\n"}, cmd=["run-forever"],
                    labels=_labels("texlive-full", tag))  # fmt: skip
        refs.append(ref)
    return refs
