"""Read a running site for an estimate: the size of every data path, MongoDB's counts, Redis's size. Reads only.

Sizes come from walking config/ and the Toolkit's data paths (``OVERLEAF_DATA_PATH``, ``MONGO_DATA_PATH``,
``REDIS_DATA_PATH``, ``GIT_BRIDGE_DATA_PATH`` of config/overleaf.rc, resolved as the Toolkit resolves them),
plus the filestore's ``user_files`` inside the Overleaf data path. MongoDB is asked through the Toolkit's own
``mongo`` container (``docker exec mongo mongosh|mongo --quiet --eval JS``, the shell chosen by the MongoDB
series as the Toolkit chooses it), or, with ``MONGO_ENABLED=false``, through a one-off app container that
connects to ``MONGO_URL`` with the app's own driver. Redis is asked through its container (``redis-cli
DBSIZE`` and ``INFO memory``). Nothing is written, started or stopped; a database that does not answer is
:class:`manifests.errors.SiteReadError` (exit 34), and what could not be measured at all is listed.

    facts = read_site(Path("/srv/overleaf-toolkit"), read_toolkit(Path("/srv/overleaf-toolkit")), eng.connect())
    facts.counts["projects"], facts.paths["mongo"].bytes, facts.backup_bytes
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from manifests.errors import SiteReadError
from manifests.toolkit_config import ToolkitConfig

from importer.upgrade.base import data_sources, default_backup_dir, mongo_enabled, mongo_shell, mongo_url, redis_enabled
from importer.upgrade.toolkit import Toolkit, compose_project, service_container

COUNT_KEYS = ("projects", "docs", "users", "files")
START_HINT = "Start the site (bin/up -d in the Toolkit folder), check `bin/docker-compose ps`, then run it again."


@dataclass(frozen=True)
class PathSize:
    """One folder of the site: its label (``config``, ``overleaf``, ``mongo`` ...), bytes and files under it."""
    label: str
    path: str
    bytes: int
    files: int
    exists: bool


@dataclass
class SiteFacts:
    """What was measured on the site (``None``: not measured; ``unmeasured`` says why)."""
    toolkit: str
    version: str
    edition: str
    mongo_version: str | None
    redis_version: str | None
    paths: dict[str, PathSize]
    user_files: PathSize | None
    counts: dict[str, int] | None
    counts_via: str
    redis_keys: int | None
    redis_memory: int | None
    redis_via: str
    backup_dir: str
    backup_free: int | None
    data_free: int | None
    unmeasured: list[str] = field(default_factory=list)

    @property
    def backup_bytes(self) -> int:
        """Bytes one backup copies: config/ and every data path the Toolkit manages."""
        return sum(p.bytes for p in self.paths.values())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["backup_bytes"] = self.backup_bytes
        return d


# --- sizes ---------------------------------------------------------------------------------------------
def folder_size(label: str, path: Path) -> PathSize:
    """Bytes (``lstat`` sizes, links not followed) and files under ``path``; SiteReadError when unreadable."""
    if not path.exists():
        return PathSize(label, str(path), 0, 0, False)
    total = files = 0

    def fail(err: OSError) -> None:
        raise SiteReadError(f"cannot read the site's {label} folder {path}: {err.strerror or err} "
                            f"({err.filename or path})", "Check the folder's permissions, then run it again; "
                            "nothing was changed.")
    for dirpath, _dirs, names in os.walk(path, onerror=fail):
        for name in names:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                continue   # a log rotated away while we walk
            except OSError as err:
                fail(err)
            files += 1
    return PathSize(label, str(path), total, files, True)


def free_bytes(path: Path) -> int | None:
    """Free bytes (for an unprivileged writer) on the file system that holds ``path`` or its nearest parent."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


# --- MongoDB -------------------------------------------------------------------------------------------
def mongo_database(cfg: ToolkitConfig) -> str:
    """The database name of MONGO_URL (``mongodb://mongo/sharelatex`` -> ``sharelatex``)."""
    rest = mongo_url(cfg).split("://", 1)[-1].rsplit("@", 1)[-1]
    name = rest.split("/", 1)[1].split("?", 1)[0] if "/" in rest else ""
    return name or "sharelatex"


def counts_js(database: str) -> str:
    """The shell code that prints one JSON line ``{"airgapCounts": {projects, docs, users, files}}``; ``files``:
    the file references in every project's folder tree. Runs in the legacy ``mongo`` shell and in ``mongosh``."""
    return (f"var d = db.getSiblingDB({json.dumps(database)}); var n = 0;"
            " function c(x) { return typeof x.countDocuments === 'function' ? x.countDocuments({}) : x.count(); }"
            " function walk(f) { n += (f.fileRefs || []).length; (f.folders || []).forEach(walk); }"
            " d.projects.find({}, { rootFolder: 1 }).forEach(function (p) { (p.rootFolder || []).forEach(walk); });"
            " print(JSON.stringify({ airgapCounts: { projects: c(d.projects), docs: c(d.docs), users: c(d.users),"
            " files: n } }));")


def counts_probe() -> str:
    """The same counts through the app's own driver and MONGO_URL (``node -e``, for an external MongoDB)."""
    return ("let m; try { m = require('mongodb') } catch (e) { m = require('mongodb-legacy') }"
            " (async () => { const c = await m.MongoClient.connect(process.env.OVERLEAF_MONGO_URL ||"
            " process.env.SHARELATEX_MONGO_URL || 'mongodb://mongo/sharelatex'); const d = c.db(); let n = 0;"
            " const walk = f => { n += (f.fileRefs || []).length; (f.folders || []).forEach(walk) };"
            " for await (const p of d.collection('projects').find({}, { projection: { rootFolder: 1 } }))"
            " (p.rootFolder || []).forEach(walk);"
            " const k = async x => d.collection(x).countDocuments({});"
            " console.log(JSON.stringify({ airgapCounts: { projects: await k('projects'), docs: await k('docs'),"
            " users: await k('users'), files: n } })); await c.close() })()"
            ".catch(e => { console.error(e.message); process.exit(1) })")


def parse_counts(output: str) -> dict[str, int] | None:
    """The counts from a shell's or probe's output (None when no well-formed line is there)."""
    for line in output.splitlines():
        line = line.strip()
        if not (line.startswith("{") and "airgapCounts" in line):
            continue
        try:
            got = json.loads(line)["airgapCounts"]
        except (ValueError, KeyError, TypeError):
            return None
        if not isinstance(got, dict):
            return None
        out = {}
        for key in COUNT_KEYS:
            v = got.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or v != int(v):
                return None
            out[key] = int(v)
        return out
    return None


def _tail(text: str, n: int = 300) -> str:
    return " ".join(text.strip().split())[-n:]


def running_container(client: Any, project: str, service: str, what: str) -> Any:
    """The running container of compose ``service``; SiteReadError when there is none or it is not running."""
    c = service_container(client, project, service)
    if c is None:
        raise SiteReadError(f"the site's {what} does not answer: no `{service}` container of compose project "
                            f"{project} exists", START_HINT)
    if c.status != "running":
        raise SiteReadError(f"the site's {what} does not answer: its container {c.name} is {c.status}", START_HINT)
    return c


def exec_in(c: Any, argv: list[str], what: str) -> tuple[int, str]:
    """``docker exec`` of ``argv`` in ``c``: (exit code, output); SiteReadError when the engine refuses it."""
    import docker.errors
    try:
        code, out = c.exec_run(argv, stdout=True, stderr=True)
    except docker.errors.APIError as err:
        raise SiteReadError(f"the site's {what} does not answer: docker exec in {c.name} failed: "
                            f"{_tail(str(getattr(err, 'explanation', None) or err))}", START_HINT) from None
    return int(code if code is not None else -1), (out or b"").decode("utf-8", "replace")


def mongo_counts(cfg: ToolkitConfig, client: Any, project: str) -> tuple[dict[str, int], str]:
    """(counts, how they were read); SiteReadError when MongoDB does not answer."""
    database = mongo_database(cfg)
    if not mongo_enabled(cfg):
        tk = Toolkit(cfg.root)
        res = tk.run(["docker-compose", "run", "--rm", "--no-deps", "-T", "-w", "/overleaf/services/web",
                      "--entrypoint", "node", "sharelatex", "-e", counts_probe()], check=False)
        counts = parse_counts(res.output)
        if counts is None:
            raise SiteReadError(f"the external MongoDB (MONGO_URL) does not answer from the app container "
                                f"(exit {res.code}): {_tail(res.output)}",
                                "Check that the database answers from the Overleaf host (MONGO_URL in "
                                "config/variables.env), then run it again; nothing was changed.")
        return counts, "the app's driver and MONGO_URL, from a one-off app container (MongoDB is external)"
    c = running_container(client, project, "mongo", "MongoDB")
    shells = [mongo_shell(cfg.mongo_version)] if cfg.mongo_version else ["mongosh", "mongo"]
    last = ""
    for shell in shells:
        code, out = exec_in(c, [shell, "--quiet", "--eval", counts_js(database)], "MongoDB")
        counts = parse_counts(out)
        if code == 0 and counts is not None:
            return counts, f"docker exec {c.name} {shell} --quiet --eval (database {database})"
        last = f"{shell} exited {code}: {_tail(out)}"
    raise SiteReadError(f"the site's MongoDB does not answer the counts ({last})",
                        "Check `bin/logs mongo` and that MongoDB runs (bin/docker-compose ps), then run it again; "
                        "nothing was changed.")


# --- Redis ---------------------------------------------------------------------------------------------
def redis_size(cfg: ToolkitConfig, client: Any, project: str,
               unmeasured: list[str]) -> tuple[int | None, int | None, str]:
    """(keys, used_memory bytes, how); SiteReadError when the Toolkit's Redis does not answer."""
    if not redis_enabled(cfg):
        unmeasured.append("Redis is external (REDIS_ENABLED=false): its keys and memory were not measured, and no "
                          "backup of the upgrade covers it")
        return None, None, "not measured (external)"
    c = running_container(client, project, "redis", "Redis")
    code, out = exec_in(c, ["redis-cli", "DBSIZE"], "Redis")
    if "NOAUTH" in out:
        unmeasured.append("Redis asks for a password: its keys and memory were not measured")
        return None, None, "not measured (password)"
    m = re.search(r"(\d+)\s*$", out.strip())
    if code != 0 or m is None:
        raise SiteReadError(f"the site's Redis does not answer DBSIZE (exit {code}): {_tail(out)}",
                            "Check `bin/logs redis`, then run it again; nothing was changed.")
    keys = int(m.group(1))
    code, out = exec_in(c, ["redis-cli", "INFO", "memory"], "Redis")
    mem = re.search(r"^used_memory:(\d+)\s*$", out, re.MULTILINE)
    if code != 0 or mem is None:
        unmeasured.append(f"Redis's used_memory (INFO memory gave no used_memory: exit {code})")
    return keys, int(mem.group(1)) if mem else None, f"docker exec {c.name} redis-cli DBSIZE / INFO memory"


# --- the whole site --------------------------------------------------------------------------------------
def read_site(root: Path, cfg: ToolkitConfig, client: Any, backup_dir: Path | None = None) -> SiteFacts:
    """Measure the site (see the module docstring). Reads only; SiteReadError when a database does not answer."""
    root = Path(root).resolve()
    project = compose_project(cfg.rc)
    unmeasured: list[str] = []
    counts, counts_via = mongo_counts(cfg, client, project)
    keys, memory, redis_via = redis_size(cfg, client, project, unmeasured)
    paths = {label: folder_size(label, path) for label, path in data_sources(cfg).items()}
    for label, p in paths.items():
        if not p.exists and label != "git-bridge":
            unmeasured.append(f"the {label} data path {p.path} does not exist (counted as 0 bytes)")
    if not mongo_enabled(cfg):
        unmeasured.append("MongoDB is external (MONGO_ENABLED=false): its data size was not measured, and no "
                          "backup of the upgrade covers it")
    overleaf = paths.get("overleaf")
    user_files = folder_size("user_files", Path(overleaf.path) / "user_files") if overleaf else None
    if user_files is not None and not user_files.exists:
        unmeasured.append(f"no filestore folder {user_files.path} (binary files counted as 0 bytes; an S3 "
                          "filestore is not measured)")
    target = Path(backup_dir).resolve() if backup_dir else default_backup_dir(root)
    return SiteFacts(str(root), cfg.version, cfg.edition, cfg.mongo_version, cfg.redis_version, paths, user_files,
                     counts, counts_via, keys, memory, redis_via, str(target), free_bytes(target),
                     free_bytes(Path(overleaf.path)) if overleaf else None, unmeasured)
