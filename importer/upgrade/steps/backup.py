"""The ``backup`` step: ``bin/stop``, then a checksummed copy of every data path and ``config/``
(:func:`importer.upgrade.backup.create_backup`), recorded in the journal; what it cannot cover (an external
MongoDB or Redis) is said.

    BackupStep(ctx, journal, audit).run(step)     # step.kind == "backup"
"""
from __future__ import annotations

from importer.upgrade.backup import create_backup
from importer.upgrade.base import RunStep, data_sources, default_backup_dir, not_covered
from importer.upgrade.grammar import check_step_id
from importer.upgrade.steps.base import StepBase


class BackupStep(StepBase):
    def run(self, step: RunStep) -> None:
        self.stop_if_running()
        cfg = self.cfg
        dest = self.ctx.opts.backup_dir or default_backup_dir(self.ctx.toolkit)
        left_out = not_covered(cfg)
        rec = create_backup(dest, data_sources(cfg), app_version=cfg.version, step_id=check_step_id(step.id),
                            major=bool(step.major), not_covered=left_out)
        self.j.backups.append(rec.to_dict())
        self.j.save()
        self.audit.record("backup", "done", backup=rec.id, path=rec.path, files=rec.files, bytes=rec.bytes,
                          not_covered=left_out)
        self.ctx.say(f"    backup {rec.id}: {rec.files} files, {rec.bytes / 1e6:.1f} MB in {rec.path}")
        for item in left_out:
            self.ctx.say(f"    NOT in this backup: {item}")
