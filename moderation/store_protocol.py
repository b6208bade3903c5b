"""The moderation store's contract: what the server needs from wherever reports live.

Two implementations, checked by one contract suite (tests/store_contract.py):
`moderation.store.ModerationStore` (SQLite, one file, the embedded default) and
`moderation.store_pg.PostgresModerationStore` (one database shared by every node of a
cluster); `open_store` picks by what `--db` names. Calls are synchronous and short;
the server makes them through `asyncio.to_thread`. Times are UNIX seconds and every writer takes `now=` for tests.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol

from moderation.store import (
    AuditEntry,
    Ban,
    ModerationStore,
    Report,
    ReportStatus,
    TranscriptLine,
)


class ModerationStoreProtocol(Protocol):
    """Reports (with their queue state), bans, blocks, the pseudonym key and the audit log."""

    def close(self) -> None: ...

    # -- reports
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
    ) -> Report: ...

    def report(self, report_id: int) -> Report | None: ...

    def reports(
        self,
        *,
        status: ReportStatus | None = None,
        reported_id: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[Report]: ...

    def set_evidence(self, report_id: int, evidence_path: str | None) -> None: ...

    def review_report(
        self,
        report_id: int,
        moderator: str,
        *,
        note: str = "",
        decision: str = "reviewed",
        now: float | None = None,
    ) -> Report: ...

    def claim_report(
        self,
        report_id: int,
        moderator: str,
        *,
        force: bool = False,
        hold: float = ...,
        now: float | None = None,
    ) -> Report: ...

    def reporters_since(self, since: float) -> dict[str, int]: ...

    def history(self, subject: str, *, limit: int = 50) -> tuple[list[Report], list[Ban]]: ...

    # -- blocks
    def add_block(
        self, blocker: str, blocked: str, *, seconds: float, now: float | None = None
    ) -> None: ...

    def blocked_by(
        self, blocker: str, *, limit: int = 100, now: float | None = None
    ) -> list[str]: ...

    def delete_expired_blocks(self, now: float | None = None) -> int: ...

    # -- the key of the keyed hashes (the same for every node sharing the store)
    def pseudonym_key(self) -> bytes: ...

    # -- bans
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
    ) -> Ban: ...

    def lift_ban(self, ban_id: int, moderator: str, *, now: float | None = None) -> Ban: ...

    def active_ban(
        self,
        identity: str | None,
        ip: str | None,
        now: float | None = None,
        *,
        person: str | None = None,
        address: str | None = None,
    ) -> Ban | None: ...

    def bans(self, *, active_at: float | None = None, limit: int = 100) -> list[Ban]: ...

    # -- audit log
    def audit(
        self, who: str, action: str, target: str, detail: str = "", *, now: float | None = None
    ) -> AuditEntry: ...

    def audit_log(
        self, *, target: str | None = None, limit: int = 100, before_id: int | None = None
    ) -> list[AuditEntry]: ...


def open_store(db: str) -> ModerationStoreProtocol:
    """The store `--db` names: a ``postgresql://`` URL, or else an SQLite file path."""
    if db.startswith(("postgresql://", "postgres://")):
        # Imported here: psycopg is only needed by deployments that use PostgreSQL.
        from moderation.store_pg import PostgresModerationStore

        return PostgresModerationStore(db)
    if os.path.dirname(db):
        os.makedirs(os.path.dirname(db), mode=0o700, exist_ok=True)
    return ModerationStore(db)
