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
import dataclasses
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
from typing import Any, Final, Protocol

__all__ = [
    "AuditEntry",
    "Ban",
    "ClaimConflict",
    "ModerationStore",
    "Report",
    "ReportStatus",
    "SchemaError",
    "Transaction",
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
    # Reports that outlive the visit (what a ban needs, as keyed hashes), the queue
    # (category, claim, decision), bans by those hashes, and blocks between browsers.
    (
        "ALTER TABLE reports ADD COLUMN pair_id TEXT",
        "ALTER TABLE reports ADD COLUMN category TEXT NOT NULL DEFAULT 'other'",
        # Who was reported and who reported: a person key, or s:<session id> without one.
        "ALTER TABLE reports ADD COLUMN subject TEXT",
        "ALTER TABLE reports ADD COLUMN reporter_subject TEXT",
        "ALTER TABLE reports ADD COLUMN reported_person TEXT",
        "ALTER TABLE reports ADD COLUMN reported_address TEXT",
        "ALTER TABLE reports ADD COLUMN claimed_by TEXT",
        "ALTER TABLE reports ADD COLUMN claimed_at REAL",
        "ALTER TABLE reports ADD COLUMN decision TEXT",
        "ALTER TABLE reports ADD COLUMN note TEXT NOT NULL DEFAULT ''",
        "UPDATE reports SET subject = 's:' || reported_id, reporter_subject = 's:' || reporter_id",
        "CREATE INDEX reports_by_subject ON reports (subject, created_at)",
        # SQLite cannot change a CHECK in place: the table is rebuilt with two more columns.
        """
        CREATE TABLE bans_v2 (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            identity TEXT,
            ip TEXT,
            reason TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL,
            created_by TEXT NOT NULL,
            person TEXT,
            address TEXT,
            CHECK (COALESCE(identity, ip, person, address) IS NOT NULL)
        )
        """,
        "INSERT INTO bans_v2 (id, identity, ip, reason, created_at, expires_at, created_by) "
        "SELECT id, identity, ip, reason, created_at, expires_at, created_by FROM bans",
        "DROP TABLE bans",
        "ALTER TABLE bans_v2 RENAME TO bans",
        "CREATE INDEX bans_by_identity ON bans (identity) WHERE identity IS NOT NULL",
        "CREATE INDEX bans_by_ip ON bans (ip) WHERE ip IS NOT NULL",
        "CREATE INDEX bans_by_person ON bans (person) WHERE person IS NOT NULL",
        "CREATE INDEX bans_by_address ON bans (address) WHERE address IS NOT NULL",
        """
        CREATE TABLE blocks (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            blocker TEXT NOT NULL,
            blocked TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL
        )
        """,
        "CREATE INDEX blocks_by_blocker ON blocks (blocker, expires_at)",
        "CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        # The key of the keyed hashes (moderation/pseudonyms.py): made once, kept with the data.
        "INSERT INTO settings (name, value) VALUES ('pseudonym_key', lower(hex(randomblob(32))))",
    ),
)


class SchemaError(RuntimeError):
    """The database was written by a newer version of this code."""


class ClaimConflict(Exception):
    """Another moderator holds the report, or it is resolved already."""


# How long a claim keeps other moderators off a report unless they take it over.
CLAIM_SECONDS: Final = 15 * 60.0


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
    pair_id: str | None = None
    category: str = "other"
    # The person reported (person key, or s:<session id>) and who reported them.
    subject: str = ""
    reporter_subject: str = ""
    # Keyed hashes of the reported person's identity and address: enough to ban them.
    reported_person: str | None = None
    reported_address: str | None = None
    claimed_by: str | None = None
    claimed_at: float | None = None
    decision: str | None = None
    note: str = ""


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
    # Keyed hashes (bans made from a report after the person left).
    person: str | None = None
    address: str | None = None

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


class Cursor(Protocol):
    """What a statement returns, in both drivers (sqlite3 and psycopg)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Transaction(Protocol):
    """One open transaction: statements written with `?` placeholders."""

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Cursor: ...


_REPORT_COLUMNS = (
    "id, created_at, reporter_id, reported_id, reason, evidence_path, transcript, "
    "status, reviewed_by, reviewed_at, pair_id, category, subject, reporter_subject, "
    "reported_person, reported_address, claimed_by, claimed_at, decision, note"
)
_BAN_COLUMNS = "id, identity, ip, reason, created_at, expires_at, created_by, person, address"
_AUDIT_COLUMNS = "id, at, who, action, target, detail"


class ModerationStore:
    """Reports, bans and the audit log, persisted in the SQLite file at `path`.

    Opening creates the file and brings its schema up to date. Moderator
    actions (reviewing a report, banning, lifting a ban) write their audit
    entry in the same transaction as the change, so the log cannot miss one.
    """

    # Appended to the reads a transaction then writes on, so a shared server locks the
    # row (PostgreSQL: " FOR UPDATE"); SQLite's BEGIN IMMEDIATE already serialises writers.
    _lock_row = ""

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
    def _transaction(self) -> Iterator[Transaction]:
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
            migrate(db, MIGRATIONS, str(self.path))

    # -- reports -----------------------------------------------------------

    def add_report(
        self,
        reporter_id: str,
        reported_id: str,
        reason: str,
        *,
        transcript: Sequence[TranscriptLine] = (),
        evidence_path: str | None = None,
        pair_id: str | None = None,
        category: str = "other",
        reporter_person: str | None = None,
        reported_person: str | None = None,
        reported_address: str | None = None,
        now: float | None = None,
    ) -> Report:
        """A new open report; the person keys say who to count and who a ban reaches."""
        created_at = time.time() if now is None else now
        lines = [{"at": line.at, "sender": line.sender, "text": line.text} for line in transcript]
        subject = reported_person or f"s:{reported_id}"
        reporter_subject = reporter_person or f"s:{reporter_id}"
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO reports (created_at, reporter_id, reported_id, reason, "
                "evidence_path, transcript, pair_id, category, subject, reporter_subject, "
                "reported_person, reported_address) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "RETURNING id",
                (
                    created_at,
                    reporter_id,
                    reported_id,
                    reason,
                    evidence_path,
                    json.dumps(lines),
                    pair_id,
                    category,
                    subject,
                    reporter_subject,
                    reported_person,
                    reported_address,
                ),
            )
            report_id = int(cursor.fetchone()[0])
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
        self,
        report_id: int,
        moderator: str,
        *,
        note: str = "",
        decision: str = "reviewed",
        now: float | None = None,
    ) -> Report:
        """Resolve a report with a decision and a note (its claim ends with it)."""
        at = time.time() if now is None else now
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE reports SET status = 'reviewed', reviewed_by = ?, reviewed_at = ?, "
                "decision = ?, note = ?, claimed_by = NULL, claimed_at = NULL WHERE id = ?",
                (moderator, at, decision, note, report_id),
            )
            if cursor.rowcount == 0:
                raise KeyError(f"no report {report_id}")
            detail = note if decision == "reviewed" else f"{decision}: {note}".rstrip(": ")
            _audit(db, moderator, "review_report", f"report:{report_id}", detail, at)
        report = self.report(report_id)
        assert report is not None
        return report

    def claim_report(
        self,
        report_id: int,
        moderator: str,
        *,
        force: bool = False,
        hold: float = CLAIM_SECONDS,
        now: float | None = None,
    ) -> Report:
        """Take an open report; another moderator's fresh claim raises ClaimConflict."""
        at = time.time() if now is None else now
        with self._transaction() as db:
            row = db.execute(
                f"SELECT status, claimed_by, claimed_at FROM reports WHERE id = ?{self._lock_row}",
                (report_id,),
            ).fetchone()
            if row is None:
                raise KeyError(f"no report {report_id}")
            status, claimed_by, claimed_at = row
            if status != ReportStatus.OPEN.value:
                raise ClaimConflict(f"report {report_id} is already resolved")
            if (
                not force
                and claimed_by not in (None, moderator)
                and claimed_at is not None
                and at - claimed_at < hold
            ):
                raise ClaimConflict(f"report {report_id} is claimed by {claimed_by}")
            db.execute(
                "UPDATE reports SET claimed_by = ?, claimed_at = ? WHERE id = ?",
                (moderator, at, report_id),
            )
            _audit(db, moderator, "claim_report", f"report:{report_id}", "", at)
        report = self.report(report_id)
        assert report is not None
        return report

    def reporters_since(self, since: float) -> dict[str, int]:
        """Per reported subject, how many distinct people reported them since `since`."""
        rows = self._read(
            "SELECT subject, COUNT(DISTINCT reporter_subject) FROM reports "
            "WHERE created_at >= ? GROUP BY subject",
            (since,),
        )
        return {str(subject): int(count) for subject, count in rows}

    def history(self, subject: str, *, limit: int = 50) -> tuple[list[Report], list[Ban]]:
        """Everything about one person: reports about them (with decisions) and bans."""
        reports = [
            _report(row)
            for row in self._read(
                f"SELECT {_REPORT_COLUMNS} FROM reports WHERE subject = ? ORDER BY id DESC LIMIT ?",
                (subject, limit),
            )
        ]
        bans = [
            _ban(row)
            for row in self._read(
                f"SELECT {_BAN_COLUMNS} FROM bans WHERE person = ? ORDER BY id DESC LIMIT ?",
                (subject, limit),
            )
        ]
        return reports, bans

    # -- blocks ------------------------------------------------------------

    def add_block(
        self, blocker: str, blocked: str, *, seconds: float, now: float | None = None
    ) -> None:
        """`blocker` (a person key) never meets `blocked` for `seconds`."""
        at = time.time() if now is None else now
        with self._transaction() as db:
            db.execute(
                "INSERT INTO blocks (blocker, blocked, created_at, expires_at) VALUES (?, ?, ?, ?)",
                (blocker, blocked, at, at + seconds),
            )

    def blocked_by(self, blocker: str, *, limit: int = 100, now: float | None = None) -> list[str]:
        """The person keys `blocker` blocked that are still in force, newest first."""
        at = time.time() if now is None else now
        rows = self._read(
            "SELECT blocked FROM blocks WHERE blocker = ? AND expires_at > ? "
            "GROUP BY blocked ORDER BY MAX(id) DESC LIMIT ?",
            (blocker, at, limit),
        )
        return [str(row[0]) for row in rows]

    def delete_expired_blocks(self, now: float | None = None) -> int:
        at = time.time() if now is None else now
        with self._transaction() as db:
            return db.execute("DELETE FROM blocks WHERE expires_at <= ?", (at,)).rowcount

    # -- the pseudonym key ---------------------------------------------------

    def pseudonym_key(self) -> bytes:
        """The key of this store's keyed hashes (made by the migration, never changed)."""
        rows = self._read("SELECT value FROM settings WHERE name = 'pseudonym_key'")
        return bytes.fromhex(str(rows[0][0]))

    # -- bans --------------------------------------------------------------

    def add_ban(
        self,
        *,
        identity: str | None = None,
        ip: str | None = None,
        person: str | None = None,
        address: str | None = None,
        reason: str,
        created_by: str,
        expires_at: float | None = None,
        report_id: int | None = None,
        now: float | None = None,
    ) -> Ban:
        """Ban a client identity and/or IP address, raw or as keyed hashes (`person`,
        `address`); `expires_at=None` bans for good. With `report_id` the report is
        resolved as `banned` in the same transaction."""
        if identity is None and ip is None and person is None and address is None:
            raise ValueError("a ban needs an identity, an IP address or both")
        created_at = time.time() if now is None else now
        ip = None if ip is None else normalize_ip(ip)
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO bans (identity, ip, reason, created_at, expires_at, created_by, "
                "person, address) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (identity, ip, reason, created_at, expires_at, created_by, person, address),
            )
            ban_id = int(cursor.fetchone()[0])
            until = "for good" if expires_at is None else f"until {expires_at:.0f}"
            subject = _ban_subject(identity, ip, person, address)
            _audit(
                db, created_by, "ban", f"ban:{ban_id}", f"{subject} {until}: {reason}", created_at
            )
            if report_id is not None:
                done = db.execute(
                    "UPDATE reports SET status = 'reviewed', reviewed_by = ?, reviewed_at = ?, "
                    "decision = 'banned', note = ?, claimed_by = NULL, claimed_at = NULL "
                    "WHERE id = ?",
                    (created_by, created_at, f"ban {ban_id}", report_id),
                )
                if done.rowcount == 0:
                    raise KeyError(f"no report {report_id}")
                _audit(
                    db,
                    created_by,
                    "review_report",
                    f"report:{report_id}",
                    f"banned: ban {ban_id}",
                    created_at,
                )
        return Ban(
            ban_id, identity, ip, reason, created_at, expires_at, created_by, person, address
        )

    def lift_ban(self, ban_id: int, moderator: str, *, now: float | None = None) -> Ban:
        """End a ban now (its row stays, expired, for the record)."""
        at = time.time() if now is None else now
        with self._transaction() as db:
            row = db.execute(
                f"SELECT {_BAN_COLUMNS} FROM bans WHERE id = ?{self._lock_row}", (ban_id,)
            ).fetchone()
            if row is None:
                raise KeyError(f"no ban {ban_id}")
            ban = _ban(row)
            if ban.active_at(at):
                db.execute("UPDATE bans SET expires_at = ? WHERE id = ?", (at, ban_id))
                ban = dataclasses.replace(ban, expires_at=at)
            subject = _ban_subject(ban.identity, ban.ip, ban.person, ban.address)
            _audit(db, moderator, "lift_ban", f"ban:{ban_id}", subject, at)
        return ban

    def active_ban(
        self,
        identity: str | None,
        ip: str | None,
        now: float | None = None,
        *,
        person: str | None = None,
        address: str | None = None,
    ) -> Ban | None:
        """The ban that refuses this client now, if any; the longest-lasting one wins.

        `person` and `address` are the client's keyed hashes, matched against bans
        made from reports."""
        if identity is None and ip is None and person is None and address is None:
            return None
        at = time.time() if now is None else now
        rows = self._read(
            f"SELECT {_BAN_COLUMNS} FROM bans "
            "WHERE (identity = ? OR ip = ? OR person = ? OR address = ?) "
            "AND (expires_at IS NULL OR expires_at > ?) "
            "ORDER BY expires_at IS NULL DESC, expires_at DESC LIMIT 1",
            (identity, None if ip is None else normalize_ip(ip), person, address, at),
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


def migrate(db: Transaction, migrations: Sequence[Sequence[str]], where: str) -> None:
    """Bring a store's schema to len(migrations), inside the caller's transaction.

    SchemaError when the store is newer than this code: never run old code on it.
    """
    db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = db.execute("SELECT version FROM schema_version").fetchone()
    if row is None:
        db.execute("INSERT INTO schema_version (version) VALUES (0)")
        version = 0
    else:
        version = int(row[0])
    if version > len(migrations):
        raise SchemaError(
            f"{where} is at schema version {version}; this code knows up to "
            f"{len(migrations)}. Upgrade the server instead of opening it with an older one."
        )
    for step in migrations[version:]:
        for statement in step:
            db.execute(statement)
    db.execute("UPDATE schema_version SET version = ?", (len(migrations),))


def _audit(db: Transaction, who: str, action: str, target: str, detail: str, at: float) -> int:
    cursor = db.execute(
        "INSERT INTO audit_log (at, who, action, target, detail) VALUES (?, ?, ?, ?, ?) "
        "RETURNING id",
        (at, who, action, target, detail),
    )
    return int(cursor.fetchone()[0])


def _ban_subject(
    identity: str | None, ip: str | None, person: str | None = None, address: str | None = None
) -> str:
    named = (("identity", identity), ("ip", ip), ("person", person), ("address", address))
    return " ".join(f"{name}={value}" for name, value in named if value)


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
        pair_id=row[10],
        category=row[11],
        subject=row[12] or f"s:{row[3]}",
        reporter_subject=row[13] or f"s:{row[2]}",
        reported_person=row[14],
        reported_address=row[15],
        claimed_by=row[16],
        claimed_at=row[17],
        decision=row[18],
        note=row[19],
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
