"""The job store. Every state change is a committed row before its side effect.

An *input* is one version (sha256) of one file in the inbox. A *job* is one photo
(by content) x one style x parameters; the same photo dropped twice links to the
same jobs, so it is never computed twice. A running job is held by a claim: its batch
id is the claim's token, and its lease runs out unless the worker renews it.

The statements are written once for both engines (`database.py`): SQLite in the state
folder for one host, PostgreSQL for several. The journal is in parts, one job each:

- `schema`: the tables and their migrations;
- `inputs`: inputs taken in, settled and moved out;
- `queue`: jobs claimed, renewed, settled and given back;
- `registry`: the workers and their heartbeats;
- `reports`: counts, progress and recent outcomes for people;
- `controls`: the studio's priority, cancel and pause;
- `tallies`: distributions and groupings for /metrics;
- `records` (the values rows decode into, by column name) and `store` (the connection
  they share).

`Journal` is all of them over one connection, so a caller holds one object and calls
its verbs (`journal.claim(...)`) as the design's narrow interface has it.
"""

from __future__ import annotations

from pathlib import Path

from nstd.daemon.database import SqliteDatabase, Unavailable, connect
from nstd.daemon.journal.controls import Controls
from nstd.daemon.journal.inputs import InputRecords
from nstd.daemon.journal.queue import JobQueue
from nstd.daemon.journal.records import (ANY, LEASE_SECONDS, BatchProgress, Failure, Input, Job, JobSpec, Pause,
                                         State, WorkerInfo, WorkerState)
from nstd.daemon.journal.registry import SILENT_SECONDS, WorkerRegistry
from nstd.daemon.journal.reports import Reports
from nstd.daemon.journal.schema import SCHEMA, SCHEMA_VERSION, Schema, damaged
from nstd.daemon.journal.tallies import Tallies
from nstd.log import get

__all__ = ["ANY", "LEASE_SECONDS", "SCHEMA", "SCHEMA_VERSION", "SILENT_SECONDS", "BatchProgress", "Failure", "Input",
           "Job", "JobSpec", "Journal", "Pause", "State", "WorkerInfo", "WorkerState"]

log = get("nstd.journal")


class Journal(Schema, InputRecords, JobQueue, WorkerRegistry, Reports, Controls, Tallies):
    """The job store on SQLite (a path) or PostgreSQL (a postgresql:// URL): opened,
    checked, and made or brought up to date (unless `readonly`), with its parts' verbs.

    The parts are classes over one shared connection (`store.Store`) rather than
    objects it holds: callers keep calling `journal.claim(...)`, with no layer of
    forwarding methods, and each part's file stays about one job."""

    def __init__(self, target: Path | str, readonly: bool = False):
        self.path, self.readonly = target, readonly
        if isinstance(target, Path) and not readonly and target.exists() and target.stat().st_size == 0:
            log.warning("journal_empty_file", path=str(target), meaning="starting with no history")
        self.db = connect(target, readonly)
        self.shared = not isinstance(self.db, SqliteDatabase)  # several hosts may use it
        self._known_columns = {}
        try:
            self._check()
            if not readonly:
                self._create()
        except Unavailable:
            self.db.close()
            raise
        except self.db.errors as e:
            self.db.close()
            raise damaged(target, str(e)) from None
