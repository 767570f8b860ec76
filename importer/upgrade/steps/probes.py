"""Read an external database's version through the app: a node probe in a one-off app container (the app's own
drivers, network and MONGO_URL / REDIS_HOST), for MongoDB or Redis that the upgrade does not manage.

    probe_from_app(Toolkit(Path("/srv/overleaf-toolkit")), MONGO_PROBE, "airgapMongo")  # {"version": ..., "fcv": ...}
"""
from __future__ import annotations

import json

from manifests.errors import StepFailed

from importer.upgrade.toolkit import Toolkit

MONGO_PROBE = (
    "let m; try { m = require('mongodb') } catch (e) { m = require('mongodb-legacy') }"
    " (async () => { const c = await m.MongoClient.connect(process.env.OVERLEAF_MONGO_URL ||"
    " process.env.SHARELATEX_MONGO_URL || 'mongodb://mongo/sharelatex'); const a = c.db().admin();"
    " const b = await a.command({ buildInfo: 1 }); let f = '';"
    " try { f = (await a.command({ getParameter: 1, featureCompatibilityVersion: 1 })).featureCompatibilityVersion.version }"
    " catch (e) {} console.log(JSON.stringify({ airgapMongo: { version: b.version, fcv: f } })); await c.close() })()"
    ".catch(e => { console.error(e.message); process.exit(1) })")

REDIS_PROBE = (
    "const Redis = require('ioredis'); const r = new Redis({ host: process.env.OVERLEAF_REDIS_HOST ||"
    " process.env.SHARELATEX_REDIS_HOST || process.env.REDIS_HOST || 'redis', port: process.env.REDIS_PORT || 6379,"
    " password: process.env.OVERLEAF_REDIS_PASS || process.env.REDIS_PASSWORD || undefined, lazyConnect: true });"
    " r.connect().then(() => r.info('server')).then(i => { console.log(JSON.stringify({ airgapRedis: { version:"
    " /redis_version:(\\S+)/.exec(i)[1] } })); r.disconnect() }).catch(e => { console.error(e.message); process.exit(1) })")


def probe_from_app(tk: Toolkit, js: str, key: str) -> dict:
    """The JSON object under ``key`` that probe ``js`` prints from a one-off app container."""
    res = tk.run(["docker-compose", "run", "--rm", "--no-deps", "-T", "-w", "/overleaf/services/web",
                  "--entrypoint", "node", "sharelatex", "-e", js], check=False)
    for line in res.output.splitlines():
        line = line.strip()
        if line.startswith("{") and key in line:
            try:
                return json.loads(line)[key]
            except (ValueError, KeyError):
                break
    raise StepFailed(f"cannot read the external {'MongoDB' if 'Mongo' in key else 'Redis'} version from the app "
                     f"container (exit {res.code}): {res.output.strip()[-400:]}",
                     "Check that the database answers from the Overleaf host, then --resume.")
