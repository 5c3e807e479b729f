"""Store layer: the persistent outbox of the cloud links (MQTT events now, OCPP messages later).

A message a backend must get is appended here and is on disk (one transaction, WAL with
synchronous=FULL: fsync'd) before ``append`` returns. It stays until its link has the
backend's acknowledgement (the broker's PUBACK, the CSMS's answer) and calls ``ack``. ``peek``
returns a channel's rows oldest first, so a link replays them in order after a reconnect or a
restart; every row carries a unique id (a UUID) by which the consumer drops duplicates.

The outbox never drops a row. At its bound (rows per channel) ``append`` raises OutboxFull;
when the disk is full or the file cannot be written it raises StoreError. The ``alarms`` say
so to the application, which refuses new paid sessions on them (the events of the sessions
already running still need room, so the full alarm rises at ``ALARM_AT`` of the bound, before
the bound itself refuses, and falls again below ``CLEAR_BELOW``).

One table serves every link (column ``channel``). Use from the event loop's thread only, like
the Database it shares.
"""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from controller.core.errors import RetryableError
from controller.store.db import Database, StoreError

DEFAULT_MAX_ROWS = 100_000
ALARM_AT = 0.9  # share of the bound at which the full alarm rises
CLEAR_BELOW = 0.8  # ... and below which it falls again


class OutboxFull(RetryableError):
    """The channel holds as many rows as its bound allows; nothing was appended."""


class AlarmCode(StrEnum):
    OUTBOX_FULL = "outbox_full"  # at or near the bound: new paid sessions must be refused
    STORE_UNWRITABLE = "store_unwritable"  # the last write failed (disk full, read-only)


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxAlarm:
    code: AlarmCode
    channel: str
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxMessage:
    """One stored row. ``seq`` orders the rows of all channels; ``payload`` is JSON text."""

    seq: int
    id: str
    channel: str
    kind: str
    payload: str
    created_at: str
    attempts: int


@dataclass(frozen=True, slots=True, kw_only=True)
class NewMessage:
    kind: str
    payload: str
    id: str = ""  # empty: a fresh UUID


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Outbox:
    """The outbox table of one state file, with a bound per channel."""

    def __init__(
        self,
        db: Database,
        *,
        bounds: Mapping[str, int] | None = None,
        default_bound: int = DEFAULT_MAX_ROWS,
        wall: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._conn: sqlite3.Connection = db.connection
        self._bounds = dict(bounds or {})
        self._default_bound = default_bound
        self._wall = wall
        rows = self._conn.execute("SELECT channel, COUNT(*) FROM outbox GROUP BY channel")
        self._counts: dict[str, int] = {str(c): int(n) for c, n in rows.fetchall()}
        self._full: dict[str, str] = {}  # channel -> detail, while the full alarm is up
        self._unwritable: dict[str, str] = {}
        for channel in self._counts:
            self._update_full_alarm(channel)

    # -- bounds and alarms -------------------------------------------------------------------

    def bound(self, channel: str) -> int:
        return self._bounds.get(channel, self._default_bound)

    def set_bound(self, channel: str, max_rows: int) -> None:
        if max_rows < 1:
            raise ValueError(f"an outbox bound is at least 1 row, not {max_rows}")
        self._bounds[channel] = max_rows
        self._update_full_alarm(channel)

    def alarms(self) -> tuple[OutboxAlarm, ...]:
        found = [
            OutboxAlarm(code=AlarmCode.OUTBOX_FULL, channel=c, detail=d)
            for c, d in self._full.items()
        ]
        found += [
            OutboxAlarm(code=AlarmCode.STORE_UNWRITABLE, channel=c, detail=d)
            for c, d in self._unwritable.items()
        ]
        return tuple(found)

    def _update_full_alarm(self, channel: str) -> None:
        count, bound = self._counts.get(channel, 0), self.bound(channel)
        if count >= ALARM_AT * bound:
            self._full[channel] = (
                f"{count} of {bound} {channel} messages waiting for the backend; at {bound} "
                "new ones are refused"
            )
        elif count < CLEAR_BELOW * bound:
            self._full.pop(channel, None)

    # -- writing -----------------------------------------------------------------------------

    def append(self, channel: str, kind: str, payload: str, *, id: str = "") -> OutboxMessage:
        """Store one message; returns it once it is on disk. OutboxFull / StoreError: not stored."""
        return self.append_many(channel, (NewMessage(kind=kind, payload=payload, id=id),))[0]

    def append_many(self, channel: str, messages: Sequence[NewMessage]) -> list[OutboxMessage]:
        """Store several messages in one transaction: all of them or, on an error, none."""
        if not messages:
            return []
        count, bound = self._counts.get(channel, 0), self.bound(channel)
        if count + len(messages) > bound:
            self._full[channel] = (
                f"refused {len(messages)} {channel} message(s): {count} of {bound} waiting"
            )
            raise OutboxFull(
                f"the {channel} outbox holds {count} of {bound} messages; "
                f"{len(messages)} more do not fit (nothing was appended)"
            )
        created_at = self._wall().astimezone(UTC).isoformat()
        rows = [
            (m.id or str(uuid.uuid4()), channel, m.kind, m.payload, created_at) for m in messages
        ]
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany(
                "INSERT INTO outbox(id, channel, kind, payload, created_at) VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            last = self._conn.execute("SELECT last_insert_rowid()").fetchone()[0]
            self._conn.execute("COMMIT")
        except sqlite3.IntegrityError as exc:
            self._rollback()
            raise ValueError(f"an id of these {channel} messages is already queued: {exc}") from exc
        except sqlite3.Error as exc:
            self._rollback()
            self._unwritable[channel] = f"cannot store {channel} messages: {exc}"
            raise StoreError(f"cannot store {len(rows)} {channel} message(s): {exc}") from exc
        self._unwritable.pop(channel, None)
        self._counts[channel] = count + len(rows)
        self._update_full_alarm(channel)
        first = int(last) - len(rows) + 1  # one transaction: the seqs are consecutive
        return [
            OutboxMessage(
                seq=first + i,
                id=r[0],
                channel=channel,
                kind=r[2],
                payload=r[3],
                created_at=created_at,
                attempts=0,
            )
            for i, r in enumerate(rows)
        ]

    def ack(self, ids: Iterable[str], *, attempted: Iterable[str] = ()) -> int:
        """Remove acknowledged messages (and count a send of ``attempted`` ones), at once.

        Returns how many rows were removed; ids no longer there are ignored (a duplicate ack).
        """
        done = list(ids)
        tried = list(attempted)
        if not done and not tried:
            return 0
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            removed: dict[str, int] = {}
            for chunk in _chunks(done, 500):
                marks = ",".join("?" * len(chunk))
                for channel, n in self._conn.execute(
                    f"SELECT channel, COUNT(*) FROM outbox WHERE id IN ({marks}) GROUP BY channel",
                    chunk,
                ).fetchall():
                    removed[str(channel)] = removed.get(str(channel), 0) + int(n)
                self._conn.execute(f"DELETE FROM outbox WHERE id IN ({marks})", chunk)
            for chunk in _chunks(tried, 500):
                marks = ",".join("?" * len(chunk))
                self._conn.execute(
                    f"UPDATE outbox SET attempts = attempts + 1 WHERE id IN ({marks})", chunk
                )
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise StoreError(f"cannot remove {len(done)} acknowledged message(s): {exc}") from exc
        for channel, n in removed.items():
            self._counts[channel] = self._counts.get(channel, 0) - n
            self._update_full_alarm(channel)
        return sum(removed.values())

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            # The transaction may already be gone with the error.
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    # -- reading -----------------------------------------------------------------------------

    def peek(self, channel: str, limit: int, *, after_seq: int = 0) -> list[OutboxMessage]:
        """The oldest ``limit`` messages of a channel (those after ``after_seq``), in order."""
        rows = self._conn.execute(
            "SELECT seq, id, kind, payload, created_at, attempts FROM outbox "
            "WHERE channel = ? AND seq > ? ORDER BY seq LIMIT ?",
            (channel, after_seq, limit),
        ).fetchall()
        return [
            OutboxMessage(
                seq=int(seq),
                id=str(mid),
                channel=channel,
                kind=str(kind),
                payload=str(payload),
                created_at=str(created_at),
                attempts=int(attempts),
            )
            for seq, mid, kind, payload, created_at, attempts in rows
        ]

    def count(self, channel: str) -> int:
        return self._counts.get(channel, 0)

    def oldest_created_at(self, channel: str) -> str | None:
        row = self._conn.execute(
            "SELECT created_at FROM outbox WHERE channel = ? ORDER BY seq LIMIT 1", (channel,)
        ).fetchone()
        return None if row is None else str(row[0])


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
