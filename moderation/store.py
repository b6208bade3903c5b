"""The ModerationStore: reports, bans and the audit log in one SQLite file.

The API is synchronous. Every call is one short transaction on one shared
connection (WAL journal, ``synchronous=NORMAL``), well under a millisecond on
a local disk, serialised by a lock so it is safe from any thread. From the
event loop call it through ``asyncio.to_thread`` so a slow disk never stalls
media forwarding.

Times are UNIX seconds (``time.time()``). Every method that records a time
takes an optional ``now`` so tests and callers with their own clock can pass it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Any, Final

__all__ = [
    "AuditEntry",
    "Ban",
    "ModerationStore",
    "Report",
    "ReportStatus",
    "SchemaError",
    "TranscriptLine",
    "normalize_ip",
]

# Each entry migrates the schema from version i to i + 1; the database records
# the version it is at in `schema_version`. Append, never edit a released step.
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """
        CREATE TABLE reports (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            created_at REAL NOT NULL,
            reporter_id TEXT NOT NULL,
            reported_id TEXT NOT NULL,
            reason TEXT NOT NULL,
            evidence_path TEXT,
            transcript TEXT NOT NULL DEFAULT '[]',
            status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'reviewed')),
            reviewed_by TEXT,
            reviewed_at REAL
        )
        """,
        "CREATE INDEX reports_by_status ON reports (status, id)",
        "CREATE INDEX reports_by_reported ON reports (reported_id, id)",
        """
        CREATE TABLE bans (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            identity TEXT,
            ip TEXT,
            reason TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL,
            created_by TEXT NOT NULL,
            CHECK (identity IS NOT NULL OR ip IS NOT NULL)
        )
        """,
        "CREATE INDEX bans_by_identity ON bans (identity) WHERE identity IS NOT NULL",
        "CREATE INDEX bans_by_ip ON bans (ip) WHERE ip IS NOT NULL",
        """
        CREATE TABLE audit_log (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            who TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT ''
        )
        """,
        "CREATE INDEX audit_by_target ON audit_log (target, id)",
    ),
)


class SchemaError(RuntimeError):
    """The database was written by a newer version of this code."""


class ReportStatus(Enum):
    OPEN = "open"
    REVIEWED = "reviewed"


@dataclass(frozen=True, slots=True)
class TranscriptLine:
    """One chat message sent between the pair, kept with a report."""

    at: float
    sender: str
    text: str


@dataclass(frozen=True, slots=True)
class Report:
    """A user's report about their partner, and what a moderator did with it."""

    id: int
    created_at: float
    reporter_id: str
    reported_id: str
    reason: str
    evidence_path: str | None
    transcript: tuple[TranscriptLine, ...]
    status: ReportStatus
    reviewed_by: str | None
    reviewed_at: float | None


@dataclass(frozen=True, slots=True)
class Ban:
    """A client identity and/or IP address refused until `expires_at` (None: for good)."""

    id: int
    identity: str | None
    ip: str | None
    reason: str
    created_at: float
    expires_at: float | None
    created_by: str

    def active_at(self, now: float) -> bool:
        return self.expires_at is None or self.expires_at > now


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One thing a moderator did."""

    id: int
    at: float
    who: str
    action: str
    target: str
    detail: str


def normalize_ip(ip: str) -> str:
    """The canonical text of an address, so one host never has two spellings.

    IPv4-mapped IPv6 (``::ffff:1.2.3.4``, what a dual-stack socket reports)
    becomes plain IPv4. Text that is not an address is returned unchanged.
    """
    try:
        address = ipaddress.ip_address(ip.strip())
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


_REPORT_COLUMNS = (
    "id, created_at, reporter_id, reported_id, reason, evidence_path, transcript, "
    "status, reviewed_by, reviewed_at"
)
_BAN_COLUMNS = "id, identity, ip, reason, created_at, expires_at, created_by"
_AUDIT_COLUMNS = "id, at, who, action, target, detail"


class ModerationStore:
    """Reports, bans and the audit log, persisted in the SQLite file at `path`.

    Opening creates the file and brings its schema up to date. Moderator
    actions (reviewing a report, banning, lifting a ban) write their audit
    entry in the same transaction as the change, so the log cannot miss one.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        # Autocommit mode: transactions are opened explicitly in `_transaction`.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            self._db.execute("PRAGMA busy_timeout = 5000")
            _set_wal(self._db)
            # With WAL, NORMAL loses at most the last commits on power loss, never consistency.
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    def __repr__(self) -> str:
        return f"<ModerationStore {self.path}>"

    def __enter__(self) -> ModerationStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _page(
        self,
        table: str,
        columns: str,
        equal: dict[str, str | int | None],
        limit: int,
        before_id: int | None,
    ) -> list[tuple[Any, ...]]:
        """Rows of `table` newest first, where each non-None `equal` column matches, below `before_id`."""
        where = [f"{column} = ?" for column, value in equal.items() if value is not None]
        params: list[str | int] = [value for value in equal.values() if value is not None]
        if before_id is not None:
            where.append("id < ?")
            params.append(before_id)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        return self._read(
            f"SELECT {columns} FROM {table} {clause} ORDER BY id DESC LIMIT ?", (*params, limit)
        )

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # -- schema ------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        rows = self._read("SELECT version FROM schema_version")
        return int(rows[0][0])

    def _migrate(self) -> None:
        with self._transaction() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                db.execute("INSERT INTO schema_version (version) VALUES (0)")
                version = 0
            else:
                version = int(row[0])
            if version > len(MIGRATIONS):
                raise SchemaError(
                    f"{self.path} is at schema version {version}; this code knows up to "
                    f"{len(MIGRATIONS)}. Upgrade the server instead of opening it with an older one."
                )
            for step in MIGRATIONS[version:]:
                for statement in step:
                    db.execute(statement)
            db.execute("UPDATE schema_version SET version = ?", (len(MIGRATIONS),))

    # -- reports -----------------------------------------------------------

    def add_report(
        self,
        reporter_id: str,
        reported_id: str,
        reason: str,
        *,
        transcript: Sequence[TranscriptLine] = (),
        evidence_path: str | None = None,
        now: float | None = None,
    ) -> Report:
        created_at = time.time() if now is None else now
        lines = [{"at": line.at, "sender": line.sender, "text": line.text} for line in transcript]
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO reports (created_at, reporter_id, reported_id, reason, "
                "evidence_path, transcript) VALUES (?, ?, ?, ?, ?, ?)",
                (created_at, reporter_id, reported_id, reason, evidence_path, json.dumps(lines)),
            )
            report_id = cursor.lastrowid
        assert report_id is not None
        report = self.report(report_id)
        assert report is not None
        return report

    def report(self, report_id: int) -> Report | None:
        rows = self._read(f"SELECT {_REPORT_COLUMNS} FROM reports WHERE id = ?", (report_id,))
        return _report(rows[0]) if rows else None

    def reports(
        self,
        *,
        status: ReportStatus | None = None,
        reported_id: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[Report]:
        """Newest first; page with `before_id` (the last id of the previous page)."""
        rows = self._page(
            "reports",
            _REPORT_COLUMNS,
            {"status": None if status is None else status.value, "reported_id": reported_id},
            limit,
            before_id,
        )
        return [_report(row) for row in rows]

    def set_evidence(self, report_id: int, evidence_path: str | None) -> None:
        """Attach the recording made for a report (or detach it once retention deleted it)."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE reports SET evidence_path = ? WHERE id = ?", (evidence_path, report_id)
            )
            if cursor.rowcount == 0:
                raise KeyError(f"no report {report_id}")

    def review_report(
        self, report_id: int, moderator: str, *, note: str = "", now: float | None = None
    ) -> Report:
        at = time.time() if now is None else now
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE reports SET status = 'reviewed', reviewed_by = ?, reviewed_at = ? "
                "WHERE id = ?",
                (moderator, at, report_id),
            )
            if cursor.rowcount == 0:
                raise KeyError(f"no report {report_id}")
            _audit(db, moderator, "review_report", f"report:{report_id}", note, at)
        report = self.report(report_id)
        assert report is not None
        return report

    # -- bans --------------------------------------------------------------

    def add_ban(
        self,
        *,
        identity: str | None = None,
        ip: str | None = None,
        reason: str,
        created_by: str,
        expires_at: float | None = None,
        now: float | None = None,
    ) -> Ban:
        """Ban a client identity, an IP address or both; `expires_at=None` bans for good."""
        if identity is None and ip is None:
            raise ValueError("a ban needs an identity, an IP address or both")
        created_at = time.time() if now is None else now
        ip = None if ip is None else normalize_ip(ip)
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO bans (identity, ip, reason, created_at, expires_at, created_by) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (identity, ip, reason, created_at, expires_at, created_by),
            )
            ban_id = cursor.lastrowid
            assert ban_id is not None
            until = "for good" if expires_at is None else f"until {expires_at:.0f}"
            detail = f"{_ban_subject(identity, ip)} {until}: {reason}"
            _audit(db, created_by, "ban", f"ban:{ban_id}", detail, created_at)
        return Ban(ban_id, identity, ip, reason, created_at, expires_at, created_by)

    def lift_ban(self, ban_id: int, moderator: str, *, now: float | None = None) -> Ban:
        """End a ban now (its row stays, expired, for the record)."""
        at = time.time() if now is None else now
        with self._transaction() as db:
            row = db.execute(f"SELECT {_BAN_COLUMNS} FROM bans WHERE id = ?", (ban_id,)).fetchone()
            if row is None:
                raise KeyError(f"no ban {ban_id}")
            ban = _ban(row)
            if ban.active_at(at):
                db.execute("UPDATE bans SET expires_at = ? WHERE id = ?", (at, ban_id))
                ban = Ban(
                    ban.id, ban.identity, ban.ip, ban.reason, ban.created_at, at, ban.created_by
                )
            _audit(
                db, moderator, "lift_ban", f"ban:{ban_id}", _ban_subject(ban.identity, ban.ip), at
            )
        return ban

    def active_ban(
        self, identity: str | None, ip: str | None, now: float | None = None
    ) -> Ban | None:
        """The ban that refuses this client now, if any; the longest-lasting one wins."""
        if identity is None and ip is None:
            return None
        at = time.time() if now is None else now
        rows = self._read(
            f"SELECT {_BAN_COLUMNS} FROM bans "
            "WHERE (identity = ? OR ip = ?) AND (expires_at IS NULL OR expires_at > ?) "
            "ORDER BY expires_at IS NULL DESC, expires_at DESC LIMIT 1",
            (identity, None if ip is None else normalize_ip(ip), at),
        )
        return _ban(rows[0]) if rows else None

    def bans(self, *, active_at: float | None = None, limit: int = 100) -> list[Ban]:
        """Newest first; with `active_at`, only bans in force at that time."""
        if active_at is None:
            rows = self._read(f"SELECT {_BAN_COLUMNS} FROM bans ORDER BY id DESC LIMIT ?", (limit,))
        else:
            rows = self._read(
                f"SELECT {_BAN_COLUMNS} FROM bans WHERE expires_at IS NULL OR expires_at > ? "
                "ORDER BY id DESC LIMIT ?",
                (active_at, limit),
            )
        return [_ban(row) for row in rows]

    # -- audit log ---------------------------------------------------------

    def audit(
        self, who: str, action: str, target: str, detail: str = "", *, now: float | None = None
    ) -> AuditEntry:
        """Record a moderator action that changes nothing here (watching, downloading...)."""
        at = time.time() if now is None else now
        with self._transaction() as db:
            entry_id = _audit(db, who, action, target, detail, at)
        return AuditEntry(entry_id, at, who, action, target, detail)

    def audit_log(
        self, *, target: str | None = None, limit: int = 100, before_id: int | None = None
    ) -> list[AuditEntry]:
        """Newest first; page with `before_id`."""
        rows = self._page("audit_log", _AUDIT_COLUMNS, {"target": target}, limit, before_id)
        return [AuditEntry(*row) for row in rows]


def _audit(
    db: sqlite3.Connection, who: str, action: str, target: str, detail: str, at: float
) -> int:
    cursor = db.execute(
        "INSERT INTO audit_log (at, who, action, target, detail) VALUES (?, ?, ?, ?, ?)",
        (at, who, action, target, detail),
    )
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def _ban_subject(identity: str | None, ip: str | None) -> str:
    parts = [f"{name}={value}" for name, value in (("identity", identity), ("ip", ip)) if value]
    return " ".join(parts)


def _report(row: tuple[Any, ...]) -> Report:
    lines = tuple(
        TranscriptLine(float(line["at"]), str(line["sender"]), str(line["text"]))
        for line in json.loads(row[6])
    )
    return Report(
        id=row[0],
        created_at=row[1],
        reporter_id=row[2],
        reported_id=row[3],
        reason=row[4],
        evidence_path=row[5],
        transcript=lines,
        status=ReportStatus(row[7]),
        reviewed_by=row[8],
        reviewed_at=row[9],
    )


def _ban(row: tuple[Any, ...]) -> Ban:
    return Ban(*row)


def _set_wal(db: sqlite3.Connection, *, wait: float = 10.0) -> None:
    """Switch to WAL, waiting out other processes that open the same new file.

    Switching a new database to WAL needs an exclusive lock and, unlike other
    statements, fails at once with "database is locked" instead of using the
    busy timeout: `--workers N` opening one fresh file killed a worker so.
    """
    deadline = time.monotonic() + wait
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
