"""The soak's view of the control plane: a JetStream KV watch on the `assignment` key, every
epoch logged (epochs.jsonl, appended as seen, so a long run that dies still leaves its log) and
counted: epochs written, model moves, slot moves, empty or deleted assignments.

A move is a model whose shard differs from the last assignment that had models (a model left
out of a non-empty assignment counts as moved to ""). An empty assignment is counted on its own
and is not the basis for the next comparison: A, empty, A' counts one empty and diff(A, A').
The soak kills nothing, so membership never changes and every move counts against the control
plane. Read-only: this module never writes to the bucket.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import nats
import structlog
from nats.js.kv import KV_DEL, KV_PURGE

from runtime.connect import connect_client
from runtime.kv import open_bucket
from schemas.control import ASSIGNMENT_KEY, STATE_BUCKET, Assignment, assignment_decoder

log = structlog.get_logger("soak")

WATCH_CHECK_S = 2.0  # how often a quiet watch checks that its connection is still there


def model_moves(previous: dict[str, str], current: dict[str, str]) -> dict[str, tuple[str, str]]:
    """model -> (old shard, new shard) for every model of `previous` whose shard changed."""
    return {m: (shard, current.get(m, "")) for m, shard in sorted(previous.items()) if current.get(m, "") != shard}


@dataclass
class EpochWatch:
    """Counts and logs what the watch sees; `see` is the whole decision, `run` only feeds it."""

    path: Path | None  # epochs.jsonl
    start_wall: float  # time.time() of the soak's start: records carry seconds since then
    records: list[dict] = field(default_factory=list)
    basis: dict[str, str] = field(default_factory=dict)  # models of the last non-empty assignment
    slots_basis: dict[str, str] = field(default_factory=dict)
    current_epoch: int = 0
    epochs_written: int = 0  # writes seen after the watch's initial value
    models_moved: int = 0
    slots_moved: int = 0
    empty: int = 0  # writes without models, deletes and purges
    undecodable: int = 0
    epoch_not_up: int = 0  # writes whose epoch is not above the one before (epochs only go up)
    watch_ended: str = ""  # why the watch stopped before the soak did ("" if it did not)
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # the initial value has been seen

    def see(self, t_s: float, revision: int, assignment: Assignment | None, *, initial: bool,
            note: str = "") -> dict:
        """Count and log one value of the key (None: deleted, purged or undecodable, per `note`)."""
        models = dict(assignment.models) if assignment is not None else {}
        slots = dict(assignment.slots) if assignment is not None else {}
        epoch = assignment.epoch if assignment is not None else None
        record = {"t_s": round(t_s, 3), "revision": revision, "epoch": epoch, "initial": initial,
                  "coordinator": assignment.coordinator if assignment is not None else "",
                  "models": models, "slots": slots, "moved": {}, "slots_moved": 0, "empty": not models,
                  # why an epoch with the same models and slots was written: the autoscaling signal
                  "desired_slots": assignment.desired_slots if assignment is not None else None,
                  "surplus_slots": assignment.surplus_slots if assignment is not None else None,
                  "demand": dict(assignment.demand) if assignment is not None else {}}
        if note:
            record["note"] = note
        if not initial:
            self.epochs_written += 1
            if epoch is not None and epoch <= self.current_epoch:
                self.epoch_not_up += 1
        if not models:
            self.empty += 0 if initial else 1
        else:
            moved = model_moves(self.basis, models) if self.basis else {}
            record["moved"] = {m: list(pair) for m, pair in moved.items()}
            record["slots_moved"] = len(model_moves(self.slots_basis, slots)) if self.slots_basis else 0
            self.models_moved += len(moved)
            self.slots_moved += record["slots_moved"]
            self.basis, self.slots_basis = models, slots
        if epoch is not None:
            self.current_epoch = max(self.current_epoch, epoch)
        self.records.append(record)
        if self.path is not None:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
        return record

    async def run(self, url: str, creds: Path | None) -> None:
        """Watch until cancelled. Reading KV is the operator's (runtime/nats_auth.py). A watch that
        ends or loses its connection is reported (`watch_ended`), never taken for a calm run."""
        nc = await connect_client(url, "symphony-soak-watch", creds, user="operator")
        try:
            state = await open_bucket(nc, STATE_BUCKET, None, wait_s=30.0)
            watcher = await state.watch(ASSIGNMENT_KEY)
            try:
                self.watch_ended = await self._follow(nc, watcher)
            finally:
                await watcher.stop()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - the soak reports a dead watch instead of dying
            self.watch_ended = repr(error)[:200]
        finally:
            self.ready.set()
            await nc.close()
        log.error("soak_watch_ended", reason=self.watch_ended)

    async def _follow(self, nc: nats.NATS, watcher) -> str:  # noqa: ANN001 - a nats KeyWatcher
        """Feed every update to `see` until the watch stops; returns why it stopped."""
        while True:
            try:
                entry = await watcher.updates(timeout=WATCH_CHECK_S)
            except nats.errors.TimeoutError:
                if not nc.is_connected:  # connect_client does not reconnect: no update will come
                    return "the NATS connection was lost"
                continue
            if entry is watcher.STOP_ITER:
                return "the watch stopped"
            if entry is None:  # the initial value (if any) has been delivered
                self.ready.set()
                continue
            self._entry(entry)

    def _entry(self, entry) -> None:  # noqa: ANN001 - a nats KeyValue.Entry
        t_s = time.time() - self.start_wall
        initial = not self.ready.is_set()
        if entry.operation in (KV_DEL, KV_PURGE):
            note = "deleted" if entry.operation == KV_DEL else "purged"
            record = self.see(t_s, entry.revision, None, initial=initial, note=note)
        else:
            try:
                assignment = assignment_decoder.decode(entry.value)
            except msgspec.DecodeError as error:
                self.undecodable += 1
                record = self.see(t_s, entry.revision, None, initial=initial, note=f"undecodable: {error}"[:200])
            else:
                record = self.see(t_s, entry.revision, assignment, initial=initial)
        owners = list(record["slots"].values())
        per_shard = {shard: owners.count(shard) for shard in sorted(set(owners))}
        bad = record["moved"] or (record["empty"] and not initial)
        (log.warning if bad else log.info)("soak_epoch", t_s=record["t_s"], epoch=record["epoch"],
                                           models=record["models"], slots_per_shard=per_shard, moved=record["moved"],
                                           initial=initial)

    def totals(self) -> dict:
        return {"written": self.epochs_written, "last_epoch": self.current_epoch,
                "models_moved": self.models_moved, "slots_moved": self.slots_moved,
                "empty_assignments": self.empty, "undecodable": self.undecodable,
                "epoch_not_up": self.epoch_not_up, "watch_ended": self.watch_ended,
                "moves": [{"t_s": r["t_s"], "epoch": r["epoch"], "moved": r["moved"]}
                          for r in self.records if r["moved"]]}
