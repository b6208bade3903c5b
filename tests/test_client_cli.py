"""`python -m rtc.client`, the way a user checks their own deployment."""

from __future__ import annotations

import asyncio
import json
import sys

from tests.conftest import ROOT


async def run_client(ws_url: str, tag: int, json_path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rtc.client",
        "--url",
        ws_url,
        "--seconds",
        "6",
        "--tag",
        str(tag),
        "--json",
        str(json_path),
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
    for flag in ("--url", "--seconds", "--media", "--codec", "--next-every", "--json"):
        assert flag in out.decode()
