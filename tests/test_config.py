"""Flags and their environment variables, as an operator sets them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from config import IceServer, Settings, parse_settings
from tests.conftest import ROOT


def test_defaults_suit_a_developer_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RELAY_PORT", "RELAY_STUN", "RELAY_TURN", "RELAY_MEDIA_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    settings = parse_settings([])
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.ice_servers == ()
    assert settings.relay == "passthrough"
    assert settings.media_timeout == Settings().media_timeout


def test_environment_then_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_PORT", "9000")
    monkeypatch.setenv("RELAY_MEDIA_TIMEOUT", "2.5")
    monkeypatch.setenv("RELAY_STUN", "stun:a.example:3478, stun:b.example:3478")
    settings = parse_settings([])
    assert settings.port == 9000
    assert settings.media_timeout == 2.5
    assert [s.urls for s in settings.ice_servers] == ["stun:a.example:3478", "stun:b.example:3478"]
    # A flag wins over the environment.
    assert parse_settings(["--port", "9001", "--media-timeout", "7"]).port == 9001


def test_turn_servers_carry_their_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_TURN_PASSWORD", "s3cret")
    settings = parse_settings(
        [
            "--turn",
            "turn:t.example:3478?transport=tcp",
            "--turn-username",
            "u",
            "--stun",
            "stun:s.example",
        ]
    )
    assert settings.ice_servers == (
        IceServer("stun:s.example"),
        IceServer("turn:t.example:3478?transport=tcp", "u", "s3cret"),
    )
    assert settings.ice_servers[1].to_json() == {
        "urls": "turn:t.example:3478?transport=tcp",
        "username": "u",
        "credential": "s3cret",
    }


def test_turn_without_credentials_is_refused_with_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RELAY_TURN_PASSWORD", raising=False)
    monkeypatch.delenv("RELAY_TURN_USERNAME", raising=False)
    with pytest.raises(SystemExit):
        parse_settings(["--turn", "turn:t.example:3478"])


def test_help_documents_every_option() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for flag in (
        "--host",
        "--port",
        "--stun",
        "--turn",
        "--turn-username",
        "--turn-password",
        "--media-timeout",
        "--connect-timeout",
        "--interest-timeout",
        "--rematch-after",
        "--keyframe-interval",
        "--relay",
        "--log-level",
        "--web-dir",
        "--media-port",
        "--media-tcp-port",
    ):
        assert flag in out
    assert "RELAY_PORT" in out


def test_moderation_flags_and_their_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RELAY_DB", "RELAY_REPORT_MOVES_ON", "RELAY_MODERATORS_FILE"):
        monkeypatch.delenv(name, raising=False)
    settings = parse_settings([])
    assert settings.report_moves_on and not settings.trusted_proxy
    assert settings.moderators_file is None
    assert settings.db == Settings().db
    monkeypatch.setenv("RELAY_EVIDENCE_SECONDS", "12")
    monkeypatch.setenv("RELAY_REPORT_MOVES_ON", "false")
    settings = parse_settings(["--db", "/tmp/x.sqlite3", "--recording-retention", "60"])
    assert (settings.db, settings.recording_retention) == ("/tmp/x.sqlite3", 60.0)
    assert settings.evidence_seconds == 12.0
    assert not settings.report_moves_on
    assert parse_settings(["--report-moves-on"]).report_moves_on


def test_allowed_origins_from_flags_or_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RELAY_ALLOWED_ORIGIN", "https://a.example, https://b.example:8443")
    assert parse_settings([]).allowed_origins == ("https://a.example", "https://b.example:8443")
    settings = parse_settings(["--allowed-origin", "https://c.example"])
    assert settings.allowed_origins == ("https://c.example",)
    with pytest.raises(SystemExit):
        parse_settings(["--allowed-origin", "c.example/page"])
    assert "scheme://host[:port]" in capsys.readouterr().err


def test_per_address_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SESSIONS", "PEERS", "NEW_SESSIONS"):
        monkeypatch.delenv(f"RELAY_IP_MAX_{name}", raising=False)
    settings = parse_settings([])
    assert (settings.ip_max_sessions, settings.ip_max_peers, settings.ip_max_new_sessions) == (
        64,
        32,
        120,
    )
    monkeypatch.setenv("RELAY_IP_MAX_PEERS", "0")
    settings = parse_settings(["--ip-max-sessions", "5"])
    assert (settings.ip_max_sessions, settings.ip_max_peers) == (5, 0)
    with pytest.raises(SystemExit):
        parse_settings(["--ip-max-new-sessions", "-1"])


def test_login_throttle_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RELAY_LOGIN_THROTTLE_AFTER", raising=False)
    assert parse_settings([]).login_throttle_after == 5
    assert parse_settings(["--login-throttle-after", "0"]).login_throttle_after == 0


def test_media_ports_a_port_or_a_range_per_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (parse_settings([]).media_port, parse_settings([]).media_tcp_port) == (0, 0)
    settings = parse_settings(["--media-port", "50000", "--media-tcp-port", "443"])
    assert (settings.media_port, settings.media_tcp_port) == (50000, 443)
    monkeypatch.setenv("RELAY_MEDIA_PORT", "40000-40003")
    assert parse_settings([]).media_port == 40000
    cluster = ["--redis", "redis://r/0", "--cluster-secret", "s" * 16]
    assert parse_settings([*cluster, "--workers", "4"]).media_port == 40000


@pytest.mark.parametrize(
    "args",
    [
        ["--media-port", "70000"],
        ["--media-port", "5-4"],
        ["--media-port", "port"],
        ["--media-tcp-port", "443"],  # without --media-port
        [
            "--redis",
            "redis://r/0",
            "--cluster-secret",
            "s" * 16,
            "--workers",
            "3",
            "--media-port",
            "50000-50001",
        ],
    ],
)
def test_bad_media_ports_are_refused(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_settings(args)
    assert "media" in capsys.readouterr().err


def test_turn_secret_mints_per_visitor_instead_of_static_credentials(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("RELAY_TURN_USERNAME", "RELAY_TURN_PASSWORD", "RELAY_TURN_TTL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RELAY_TURN_SECRET", "shared-with-coturn")
    settings = parse_settings(["--turn", "turns:t.example:443?transport=tcp"])
    assert settings.ice.turn_secret == "shared-with-coturn"
    assert settings.ice.turn_ttl == 86400.0 and not settings.ice.server_uses_turn
    # The secret never shows in a printed Settings.
    assert "shared-with-coturn" not in repr(settings)
    assert parse_settings(["--turn", "turn:t.example", "--turn-ttl", "600"]).ice.turn_ttl == 600
    for bad, reason in (
        (["--turn", "turn:t.example", "--turn-username", "u"], "drop --turn-username"),
        ([], "--turn-secret needs --turn"),
        (["--turn", "turn:t.example", "--turn-ttl", "0"], "above 0"),
    ):
        with pytest.raises(SystemExit):
            parse_settings(bad)
        assert reason in capsys.readouterr().err


def test_announced_and_media_addresses(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("ANNOUNCE_IP", "MEDIA_IP", "ANNOUNCE_KEEP_LOCAL"):
        monkeypatch.delenv(f"RELAY_{name}", raising=False)
    ice = parse_settings([]).ice
    assert (ice.announce_ips, ice.media_ips, ice.announce_keep_local) == ((), (), False)
    ice = parse_settings(
        ["--announce-ip", "203.0.113.7", "--announce-ip", "2001:DB8::7", "--announce-keep-local"]
    ).ice
    assert ice.announce_ips == ("203.0.113.7", "2001:db8::7") and ice.announce_keep_local
    monkeypatch.setenv("RELAY_MEDIA_IP", "10.0.0.5, 10.0.1.5")
    assert parse_settings([]).ice.media_ips == ("10.0.0.5", "10.0.1.5")
    assert parse_settings(["--media-ip", "all"]).ice.media_ips == ("all",)
    for bad, reason in (
        (["--announce-ip", "example.org"], "a unicast IP address"),
        (["--announce-ip", "203.0.113.7", "--announce-ip", "203.0.113.8"], "one IPv4"),
        (["--announce-keep-local"], "needs --announce-ip"),
        (["--media-ip", "0.0.0.0"], "an address of this machine"),
        (["--media-ip", "all", "--media-ip", "10.0.0.5"], "give it alone"),
        (["--server-uses-turn"], "--server-uses-turn needs --turn"),
    ):
        with pytest.raises(SystemExit):
            parse_settings(bad)
        assert reason in capsys.readouterr().err


def test_a_media_ip_this_machine_lacks_stops_the_server_with_a_reason() -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "--media-ip", "198.51.100.77"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert "--media-ip 198.51.100.77 is not an address of this machine" in run.stderr
    assert "Traceback" not in run.stderr


def test_nudity_flags_validate_and_blur_implies_the_analyzer(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = parse_settings([])
    assert (settings.nudity, settings.nudity_blur) == (False, False)
    settings = parse_settings(["--nudity-blur", "--nudity-threshold", "0.7"])
    assert (settings.nudity, settings.nudity_blur, settings.nudity_threshold) == (True, True, 0.7)
    monkeypatch.setenv("RELAY_NUDITY", "1")
    monkeypatch.setenv("RELAY_NUDITY_RATE", "2.5")
    settings = parse_settings([])
    assert (settings.nudity, settings.nudity_blur, settings.nudity_rate) == (True, False, 2.5)
    for bad in (
        ["--nudity-threshold", "1.5"],
        ["--nudity-threshold", "nan"],
        ["--nudity-rate", "0"],
    ):
        with pytest.raises(SystemExit):
            parse_settings(bad)
        assert "must be" in capsys.readouterr().err
    monkeypatch.setenv("RELAY_NUDITY_RATE", "-1")
    with pytest.raises(SystemExit):
        parse_settings([])
    assert "must be a positive number" in capsys.readouterr().err
