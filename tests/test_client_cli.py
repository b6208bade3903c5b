"""`python -m rtc.client`, the way a user checks their own deployment."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from rtc.client import ChatClient
from tests.conftest import ROOT
from tests.test_moderation_server import api
from tests.test_moderation_server import relay_server_args as moderation_server_args


@pytest.fixture
def relay_server_args(tmp_path: Path) -> list[str]:
    # Moderators, so a test can ban; a short grace, for the resume test.
    return [*moderation_server_args.__wrapped__(tmp_path), "--resume-grace", "10"]


async def run_client(
    ws_url: str, tag: int, json_path, *extra: str, seconds: float = 6
) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rtc.client",
        "--url",
        ws_url,
        "--seconds",
        str(seconds),
        "--tag",
        str(tag),
        "--json",
        str(json_path),
        *extra,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def test_two_cli_clients_meet_and_check_each_others_frames(relay_server, tmp_path) -> None:
    (code_a, out_a), (code_b, out_b) = await asyncio.gather(
        run_client(relay_server.ws_url, 101, tmp_path / "a.json"),
        run_client(relay_server.ws_url, 202, tmp_path / "b.json"),
    )
    assert code_a == 0, out_a
    assert code_b == 0, out_b
    a = json.loads((tmp_path / "a.json").read_text())
    b = json.loads((tmp_path / "b.json").read_text())
    # Each received the other's stamped frames, in order, none from itself.
    assert set(a["frames_per_tag"]) == {"202"} and set(b["frames_per_tag"]) == {"101"}
    assert a["content_ok"] and b["content_ok"]
    assert a["counter_regressions"] == 0
    # The printed summary is for people: it says what happened.
    assert "matched" in out_a.lower()


async def test_help_explains_the_options() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rtc.client", "--help", cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    text = out.decode()
    for flag in ("--url", "--seconds", "--media", "--codec", "--next-every", "--json"):
        assert flag in text
    assert "--resume-test" in text and "(default: 10.0)" in text
    for code in range(5):
        assert f"\n  {code}  " in text, f"exit code {code} is not explained"


async def test_a_web_page_address_gets_a_hint(tmp_path) -> None:
    code, out = await run_client("http://127.0.0.1:9/", 1, tmp_path / "x.json")
    assert code == 2
    assert "ws://127.0.0.1:9/ws" in out


async def test_a_banned_client_is_told_why(relay_server, tmp_path) -> None:
    async with ChatClient(relay_server.ws_url, tag=5) as victim:
        await api(
            relay_server,
            "POST",
            "/bans",
            json={"sessionId": victim.id, "reason": "spamming links", "seconds": 600},
        )
    code, out = await run_client(relay_server.ws_url, 1, tmp_path / "x.json")
    assert code == 3, out
    assert "refused: banned" in out and "spamming links" in out


async def test_resume_test_drops_the_socket_and_keeps_the_partner(relay_server, tmp_path) -> None:
    async with ChatClient(relay_server.ws_url, tag=7) as partner:
        await partner.start()
        code, out = await run_client(
            relay_server.ws_url, 8, tmp_path / "r.json", "--resume-test", seconds=8
        )
        assert code == 0, out
        summary = json.loads((tmp_path / "r.json").read_text())
        assert summary["resume"]["ok"] and summary["matches"] == 1, summary
        assert "resume test:        ok" in out
        # Progress lines went to stderr while it ran (not a terminal: every few seconds).
        assert "matched yes (1x) | frames" in out
        await partner.wait_for("partner_reconnecting", timeout=10)
        await partner.wait_for("partner_back", timeout=10)
