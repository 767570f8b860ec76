"""The upgrade's step kinds, one module each, on the shared machinery of :mod:`importer.upgrade.steps.base`:
``backup``, ``app``, ``mongo``, ``redis``, ``migration`` (on :mod:`importer.upgrade.steps.longrun`) and
``config``. :data:`STEP_RUNNERS` maps a plan step's kind to the class that runs it.

    STEP_RUNNERS["mongo"](ctx, journal, audit).run(step)
"""
from __future__ import annotations

from importer.upgrade.steps.app import AppStep
from importer.upgrade.steps.backup import BackupStep
from importer.upgrade.steps.base import StepBase
from importer.upgrade.steps.config import ConfigStep
from importer.upgrade.steps.migration import MigrationStep
from importer.upgrade.steps.mongo import MongoStep
from importer.upgrade.steps.redis import RedisStep

STEP_RUNNERS: dict[str, type[StepBase]] = {
    "backup": BackupStep, "app": AppStep, "mongo": MongoStep, "redis": RedisStep,
    "migration": MigrationStep, "config": ConfigStep,
}

__all__ = ["AppStep", "BackupStep", "ConfigStep", "MigrationStep", "MongoStep", "RedisStep", "STEP_RUNNERS", "StepBase"]
