"""A moderators file and a store of their own, for tests whose server has moderation on."""

from __future__ import annotations

from pathlib import Path


def moderators_file(tmp_path: Path, name: str, secret: str) -> Path:
    """One moderator `name` with password `secret`, in a file only its owner reads."""
    path = tmp_path / "moderators"
    path.write_text(f"{name}:{secret}\n")
    path.chmod(0o600)
    return path


def moderation_args(tmp_path: Path, secret: str, *, name: str = "mia") -> list[str]:
    """Server options: that moderator, a moderation database and a recordings folder."""
    return [
        "--moderators-file",
        str(moderators_file(tmp_path, name, secret)),
        "--db",
        str(tmp_path / "moderation.sqlite3"),
        "--recordings-dir",
        str(tmp_path / "recordings"),
    ]
