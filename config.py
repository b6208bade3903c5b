"""Server configuration: command-line flags, each also readable from the environment."""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from signalling.request_origin import normalize_origin


@dataclass(frozen=True)
class IceServer:
    """One STUN or TURN server, in the shape of the browser's `RTCIceServer`."""

    urls: str
    username: str | None = None
    credential: str | None = None

    def to_json(self) -> dict[str, str]:
        out = {"urls": self.urls}
        if self.username is not None:
            out["username"] = self.username
        if self.credential is not None:
            out["credential"] = self.credential
        return out


# Seconds a per-visitor TURN credential stays valid (draft-uberti-behave-turn-rest
# recommends a day). It must outlast a visit: coturn checks the expiry again on
# every allocation refresh, so an expired credential ends the relayed media.
TURN_TTL: Final = 86400.0
# `--media-ip all`: every interface address (aioice's own choice), bridges included.
ALL_ADDRESSES: Final = "all"


@dataclass(frozen=True)
class IceSettings:
    """How the server's media is reached: TURN credentials and the addresses it offers.

    Read by everything that gathers the server's own ICE candidates
    (rtc/host_addresses.py for peer connections; a shared media socket too).
    """

    # TURN REST credentials (coturn use-auth-secret) minted per visitor; None: static ones.
    turn_secret: str | None = field(default=None, repr=False)
    turn_ttl: float = TURN_TTL
    # The server's own connections allocate on TURN too (normally they need not).
    server_uses_turn: bool = False
    # Public addresses put into the server's host candidates, at most one per family
    # (a server behind a 1:1 NAT), instead of the interface address ...
    announce_ips: tuple[str, ...] = ()
    # ... or besides it.
    announce_keep_local: bool = False
    # Local addresses to offer; empty: the one with the default route, per family.
    media_ips: tuple[str, ...] = ()


# The command line's default port for the separate /metrics listener.
METRICS_PORT: Final = 9464


@dataclass(frozen=True)
class Settings:
    """Everything the server can be told; defaults suit a developer's machine."""

    host: str = "127.0.0.1"
    port: int = 8080
    # Given to clients in `hello` and used by the server's own peer connections.
    ice_servers: tuple[IceServer, ...] = ()
    ice: IceSettings = field(default_factory=IceSettings)
    # Seconds without any media from a peer (after it connected) before the
    # server declares the connection dead and tells the partner.
    media_timeout: float = 5.0
    # Seconds a peer may take from offer to a connected media path.
    connect_timeout: float = 20.0
    interest_timeout: float = 5.0
    rematch_after: float = 5.0
    # Seconds a session whose WebSocket (or, in a pair, media) dropped is held for a
    # resume before its partner is told it left; 0 = no resuming (signalling/resume.py).
    resume_grace: float = 20.0
    # Keyframe requests forwarded to one publisher: at most one per this many seconds.
    keyframe_interval: float = 0.5
    # "passthrough" forwards encoded frames; "transcode" decodes and re-encodes
    # every frame, which only exists as a baseline for the benchmark.
    relay: str = "passthrough"
    log_level: str = "INFO"
    # Moderation (docs/moderation.md). No moderators configured: /moderate refuses everyone.
    moderators_file: str | None = None
    # An SQLite path or a postgresql:// URL (which may carry a password: kept out of repr).
    db: str = field(default="data/moderation.sqlite3", repr=False)
    recordings_dir: str = "data/recordings"
    # Seconds a recording (live or report evidence) is kept before retention deletes it.
    recording_retention: float = 30 * 86400.0
    evidence_seconds: float = 30.0
    # Seconds between sampled frames per video stream, for thumbnails and analyzers.
    analyzer_interval: float = 5.0
    # The nudity analyzer (optional extra, moderation/nudity.py): on, the model score
    # that flags, the most inferences per second across the node, and whether a
    # flagged stream's video is held back from the partner until a moderator looks.
    nudity: bool = False
    nudity_threshold: float = 0.5
    nudity_rate: float = 4.0
    nudity_blur: bool = False
    report_moves_on: bool = True
    # Tell visitors how many are online (rounded) in `hello` and `waiting`.
    show_online: bool = False
    # Seconds after a pair ends that either side may still report or block the other.
    report_window: float = 300.0
    # Days a block (or a report) keeps two browsers apart beyond the visit.
    block_days: float = 7.0
    # Shown to a banned person: a URL or a sentence saying how to appeal.
    appeal: str | None = None
    # Read the client address from X-Forwarded-For (only behind your own proxy).
    trusted_proxy: bool = False
    # Origins besides the served one whose pages may open /ws (a site embedding the chat).
    allowed_origins: tuple[str, ...] = ()
    # Per client address (an IPv6 /64); 0 = no limit. High enough for a
    # household or an office behind one NAT, low enough that one machine
    # cannot hold the server's sockets and UDP ports.
    ip_max_sessions: int = 64
    ip_max_peers: int = 32
    ip_max_new_sessions: int = 120
    # Failed moderator logins from one address or for one name before lock-outs
    # begin (moderation/throttle.py); 0 = no throttling.
    login_throttle_after: int = 5
    # The separate /metrics listener; port 0 = none (the command line's default is
    # METRICS_PORT, so an app built in a test binds nothing fixed).
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    # With a token, /metrics is also served on the main port to `Authorization: Bearer <token>`.
    metrics_token: str | None = None
    web_dir: str = field(default_factory=lambda: os.path.join(os.path.dirname(__file__), "web"))
    # Cluster (docs/operations.md, "Cluster"). No Redis: one node, everything in memory.
    redis: str | None = None
    # Authenticates packets between nodes (the pipe); required with redis.
    cluster_secret: str | None = field(default=None, repr=False)
    # This node's name in the registry and the lobby; None: host:pid:random.
    node_id: str | None = None
    # Processes sharing the HTTP port (SO_REUSEPORT), each a node; >1 needs redis.
    workers: int = 1
    # The pipe between nodes (rtc/pipe.py): where it listens (loopback: the nodes
    # of one machine), the address other nodes send to when it listens on a
    # wildcard address, and whether packets are encrypted, not only authenticated.
    pipe_host: str = "127.0.0.1"
    pipe_port: int = 0
    pipe_announce: str | None = None
    pipe_encrypt: bool = False
    # The media port (rtc/mux.py): one UDP port that every peer connection of
    # the process shares; 0 = a port of its own per connection (aioice's way).
    # Worker i takes media_port + i. The passive ICE-TCP port likewise; 0 = none.
    media_port: int = 0
    media_tcp_port: int = 0

    @property
    def clustered(self) -> bool:
        return self.redis is not None


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _is_wildcard(value: str) -> bool:
    return _is_ip(value) and ipaddress.ip_address(value).is_unspecified


def _env(name: str, default: str) -> str:
    return os.environ.get(f"RELAY_{name}", default)


def _env_flag(name: str) -> bool:
    """A yes/no setting from RELAY_<name>: 1, true or yes (any case) mean yes."""
    return _env(name, "0").lower() in ("1", "true", "yes")


def _parse_ice(
    stun: Sequence[str], turn: Sequence[str], user: str | None, password: str | None
) -> tuple[IceServer, ...]:
    servers = [IceServer(urls=u) for u in stun]
    servers += [IceServer(urls=u, username=user, credential=password) for u in turn]
    return tuple(servers)


def _parse_ice_settings(args: argparse.Namespace) -> IceSettings:
    announce = args.announce_ip if args.announce_ip is not None else _split(_env("ANNOUNCE_IP", ""))
    media = args.media_ip if args.media_ip is not None else _split(_env("MEDIA_IP", ""))
    families: set[int] = set()
    for value in announce:
        if not _is_ip(value) or ipaddress.ip_address(value).is_unspecified:
            build_parser().error(f"--announce-ip {value!r}: a unicast IP address (v4 or v6)")
        family = ipaddress.ip_address(value).version
        if family in families:
            build_parser().error(f"--announce-ip: one IPv{family} address at most")
        families.add(family)
    if args.announce_keep_local and not announce:
        build_parser().error("--announce-keep-local needs --announce-ip")
    for value in media:
        if value != ALL_ADDRESSES and not (_is_ip(value) and not _is_wildcard(value)):
            build_parser().error(
                f"--media-ip {value!r}: an address of this machine (v4 or v6), or 'all'"
            )
    if ALL_ADDRESSES in media and len(media) > 1:
        build_parser().error("--media-ip all already offers every address: give it alone")
    return IceSettings(
        turn_secret=args.turn_secret,
        turn_ttl=args.turn_ttl,
        server_uses_turn=args.server_uses_turn,
        announce_ips=tuple(str(ipaddress.ip_address(a)) for a in announce),
        announce_keep_local=args.announce_keep_local,
        media_ips=tuple(
            media if media == [ALL_ADDRESSES] else (str(ipaddress.ip_address(m)) for m in media)
        ),
    )


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _count(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value}: must be 0 (no limit) or more")
    return number


def _fraction(value: str) -> float:
    number = float(value)
    if not 0 < number <= 1:
        raise argparse.ArgumentTypeError(f"{value}: must be more than 0 and at most 1")
    return number


def _positive(value: str) -> float:
    number = float(value)
    if not 0 < number < float("inf"):
        raise argparse.ArgumentTypeError(f"{value}: must be a positive number")
    return number


def _add_seconds(p: argparse.ArgumentParser, options: list[tuple[str, float, str]]) -> None:
    """Flags that take seconds, each also read from RELAY_<NAME>."""
    for flag, default, text in options:
        env = flag.replace("-", "_").upper()
        p.add_argument(
            f"--{flag}",
            type=float,
            default=float(_env(env, str(default))),
            help=f"{text} [RELAY_{env}]",
        )


def _port_range(value: str) -> tuple[int, int]:
    """'P' or 'P-Q' as (first, last); '0' is (0, 0): none."""
    first, dash, last = value.strip().partition("-")
    try:
        low, high = int(first), int(last) if dash else int(first)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r}: a port (50000) or a range (50000-50015)"
        ) from None
    if not (0 <= low <= 65535 and 0 <= high <= 65535) or high < low or (low == 0 and high):
        raise argparse.ArgumentTypeError(f"{value!r}: ports are 1-65535, the range low-high")
    return low, high


def _workers(value: str) -> int:
    if value == "auto":
        return os.cpu_count() or 1
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be 1 or more, or auto")
    return number


def build_parser() -> argparse.ArgumentParser:
    d = Settings()
    p = argparse.ArgumentParser(
        prog="server.py",
        description=(
            "Roulette Relay: random 1:1 video chat. Every browser connects one WebRTC "
            "connection to this server, which forwards the partner's media. Every "
            "option can also be set through the environment variable named in brackets."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--host", default=_env("HOST", d.host), help="address to listen on [RELAY_HOST]")
    p.add_argument(
        "--port", type=int, default=int(_env("PORT", str(d.port))), help="HTTP port [RELAY_PORT]"
    )
    p.add_argument(
        "--stun",
        action="append",
        default=None,
        metavar="URL",
        help=(
            "STUN server given to clients and used by the server, e.g. stun:stun.example.org:3478; "
            "repeatable [RELAY_STUN, comma-separated]"
        ),
    )
    p.add_argument(
        "--turn",
        action="append",
        default=None,
        metavar="URL",
        help=(
            "TURN server given to clients and used by the server, e.g. "
            "turn:turn.example.org:3478?transport=tcp; repeatable [RELAY_TURN, comma-separated]"
        ),
    )
    p.add_argument(
        "--turn-username",
        default=os.environ.get("RELAY_TURN_USERNAME"),
        help="TURN username [RELAY_TURN_USERNAME]",
    )
    p.add_argument(
        "--turn-password",
        default=os.environ.get("RELAY_TURN_PASSWORD"),
        help="TURN password given to every visitor alike, so anyone can copy it and relay "
        "through your TURN server: prefer --turn-secret; prefer the environment variable so it "
        "stays out of `ps` [RELAY_TURN_PASSWORD]",
    )
    ice = p.add_argument_group("reaching every network (docs/operations.md)")
    ice.add_argument(
        "--turn-secret",
        default=os.environ.get("RELAY_TURN_SECRET") or None,
        help="coturn's static-auth-secret (use-auth-secret): each visitor gets TURN credentials "
        "of its own, valid for --turn-ttl; prefer the environment variable [RELAY_TURN_SECRET]",
    )
    ice.add_argument(
        "--turn-ttl",
        type=float,
        default=float(_env("TURN_TTL", str(TURN_TTL))),
        metavar="SECONDS",
        help="how long a visitor's TURN credentials stay valid; longer than a visit, since "
        "coturn refuses to refresh an allocation past it [RELAY_TURN_TTL]",
    )
    ice.add_argument(
        "--server-uses-turn",
        action=argparse.BooleanOptionalAction,
        default=_env_flag("SERVER_USES_TURN"),
        help="the server's own connections allocate on TURN too; only for a server that "
        "cannot be reached directly [RELAY_SERVER_USES_TURN]",
    )
    ice.add_argument(
        "--announce-ip",
        action="append",
        default=None,
        metavar="IP",
        help="public address put into the server's ICE candidates instead of the interface "
        "address (a server behind a 1:1 NAT); one IPv4 and one IPv6 at most; no STUN needed "
        "[RELAY_ANNOUNCE_IP, comma-separated]",
    )
    ice.add_argument(
        "--announce-keep-local",
        action=argparse.BooleanOptionalAction,
        default=_env_flag("ANNOUNCE_KEEP_LOCAL"),
        help="offer the interface address as well as the announced one (clients on the "
        "server's own private network) [RELAY_ANNOUNCE_KEEP_LOCAL]",
    )
    ice.add_argument(
        "--media-ip",
        action="append",
        default=None,
        metavar="IP|all",
        help="local address to offer media on; repeatable; default: the address of the "
        "default route, per family; 'all': every interface address, bridges included "
        "[RELAY_MEDIA_IP, comma-separated]",
    )
    seconds = [
        (
            "media-timeout",
            d.media_timeout,
            "seconds of media silence before a connection counts as lost",
        ),
        (
            "connect-timeout",
            d.connect_timeout,
            "seconds from offer to a connected media path before giving up",
        ),
        (
            "interest-timeout",
            d.interest_timeout,
            "seconds to look for a partner with a shared interest before anyone will do",
        ),
        (
            "rematch-after",
            d.rematch_after,
            "two people who just left each other are paired again only when nobody else is "
            "waiting and both have waited this many seconds",
        ),
        (
            "resume-grace",
            d.resume_grace,
            "seconds a visitor whose WebSocket or media dropped keeps their session and "
            "partner, waiting for them to resume; 0 = off",
        ),
        (
            "keyframe-interval",
            d.keyframe_interval,
            "minimum seconds between keyframe requests forwarded to one sender",
        ),
    ]
    _add_seconds(p, seconds)
    p.add_argument(
        "--relay",
        choices=("passthrough", "transcode"),
        default=_env("RELAY", d.relay),
        help="forward encoded frames, or decode and re-encode every frame (a benchmark baseline) [RELAY_RELAY]",
    )
    p.add_argument(
        "--log-level",
        default=_env("LOG_LEVEL", d.log_level),
        help="DEBUG, INFO, WARNING... [RELAY_LOG_LEVEL]",
    )
    p.add_argument(
        "--moderators-file",
        default=os.environ.get("RELAY_MODERATORS_FILE"),
        help="file of name:secret lines, one per moderator; without it RELAY_MODERATORS "
        "(name:secret entries separated by commas) is read [RELAY_MODERATORS_FILE]",
    )
    p.add_argument(
        "--db",
        default=_env("DB", d.db),
        help="where reports, bans, blocks and the audit log live: an SQLite file (one "
        "machine), or a postgresql://user@host/db URL shared by every node of a cluster; "
        "give its password by PGPASSWORD or ~/.pgpass, not in the URL [RELAY_DB]",
    )
    p.add_argument(
        "--recordings-dir",
        default=_env("RECORDINGS_DIR", d.recordings_dir),
        help="folder for recordings and report evidence [RELAY_RECORDINGS_DIR]",
    )
    moderation_seconds = [
        ("recording-retention", d.recording_retention, "seconds a recording is kept"),
        ("evidence-seconds", d.evidence_seconds, "seconds of media saved with a report"),
        (
            "analyzer-interval",
            d.analyzer_interval,
            "seconds between sampled frames per stream, for thumbnails and analyzers",
        ),
        (
            "report-window",
            d.report_window,
            "seconds after a pair ends that either side may still report or block the other",
        ),
        ("block-days", d.block_days, "days a block keeps two browsers apart (by client id)"),
    ]
    _add_seconds(p, moderation_seconds)
    nudity = p.add_argument_group(
        "nudity analyzer (docs/moderation.md; needs pip install '.[nudity]', AGPL-3.0 model)"
    )
    nudity.add_argument(
        "--nudity",
        action=argparse.BooleanOptionalAction,
        default=_env_flag("NUDITY"),
        help="run NudeNet's detector on sampled frames and flag nudity [RELAY_NUDITY]",
    )
    nudity.add_argument(
        "--nudity-blur",
        action=argparse.BooleanOptionalAction,
        default=_env_flag("NUDITY_BLUR"),
        help="hide a flagged stream's video from the partner until a moderator releases it "
        "(implies --nudity) [RELAY_NUDITY_BLUR]",
    )
    nudity.add_argument(
        "--nudity-threshold",
        type=_fraction,
        default=_env("NUDITY_THRESHOLD", str(d.nudity_threshold)),  # argparse applies type
        help="model score (0-1] that raises the flag [RELAY_NUDITY_THRESHOLD]",
    )
    nudity.add_argument(
        "--nudity-rate",
        type=_positive,
        default=_env("NUDITY_RATE", str(d.nudity_rate)),
        help="most inferences per second on this node (each takes one core for about "
        "22 ms, docs/performance.md); samples over it are skipped [RELAY_NUDITY_RATE]",
    )
    p.add_argument(
        "--appeal-url",
        default=os.environ.get("RELAY_APPEAL_URL") or None,
        metavar="URL_OR_TEXT",
        help="how a banned person can appeal, shown with the ban: a URL or a sentence "
        "[RELAY_APPEAL_URL]",
    )
    p.add_argument(
        "--report-moves-on",
        action=argparse.BooleanOptionalAction,
        default=_env("REPORT_MOVES_ON", "1").lower() not in ("0", "false", "no"),
        help="move a user who reports on to a new partner [RELAY_REPORT_MOVES_ON]",
    )
    p.add_argument(
        "--show-online",
        action=argparse.BooleanOptionalAction,
        default=_env_flag("SHOW_ONLINE"),
        help="tell visitors how many people are online, rounded down to two significant "
        "digits, in hello and waiting (in a cluster: summed over the live nodes) "
        "[RELAY_SHOW_ONLINE]",
    )
    p.add_argument(
        "--trusted-proxy",
        action=argparse.BooleanOptionalAction,
        default=_env_flag("TRUSTED_PROXY"),
        help="take the client address from X-Forwarded-For; only behind your own reverse "
        "proxy [RELAY_TRUSTED_PROXY]",
    )
    limits = [
        ("ip-max-sessions", d.ip_max_sessions, "open WebSockets"),
        ("ip-max-peers", d.ip_max_peers, "open media connections"),
        ("ip-max-new-sessions", d.ip_max_new_sessions, "new WebSockets per minute"),
    ]
    for flag, default, what in limits:
        env = flag.replace("-", "_").upper()
        p.add_argument(
            f"--{flag}",
            type=_count,
            default=_count(_env(env, str(default))),
            metavar="N",
            help=f"most {what} per client address (an IPv6 /64); 0 = no limit [RELAY_{env}]",
        )
    p.add_argument(
        "--login-throttle-after",
        type=_count,
        default=_count(_env("LOGIN_THROTTLE_AFTER", str(d.login_throttle_after))),
        metavar="N",
        help="failed moderator logins from one address or for one name before each further "
        "failure locks both out (2 s, doubling up to 5 min); 0 = no throttling "
        "[RELAY_LOGIN_THROTTLE_AFTER]",
    )
    p.add_argument(
        "--metrics-host",
        default=_env("METRICS_HOST", d.metrics_host),
        help="address of the separate /metrics listener [RELAY_METRICS_HOST]",
    )
    p.add_argument(
        "--metrics-port",
        type=_count,
        default=_count(_env("METRICS_PORT", str(METRICS_PORT))),
        help="port of the separate /metrics listener; 0 = none [RELAY_METRICS_PORT]",
    )
    p.add_argument(
        "--metrics-token",
        default=os.environ.get("RELAY_METRICS_TOKEN"),
        help="also serve /metrics on the main port to 'Authorization: Bearer <token>'; "
        "without it the main port answers 404; prefer the environment variable "
        "[RELAY_METRICS_TOKEN]",
    )
    p.add_argument(
        "--allowed-origin",
        action="append",
        default=None,
        metavar="URL",
        help="origin (scheme://host[:port]) of another site whose pages may open the chat "
        "WebSocket, besides the one the server is served at; repeatable "
        "[RELAY_ALLOWED_ORIGIN, comma-separated]",
    )
    media = p.add_argument_group("media ports (docs/operations.md, 'Ports and firewall')")
    media.add_argument(
        "--media-port",
        type=_port_range,
        default=_port_range(_env("MEDIA_PORT", "0")),
        metavar="P|P-Q",
        help="one UDP port shared by every media connection (0 = a port per connection); "
        "worker i takes P + i, and a range P-Q must hold a port per worker [RELAY_MEDIA_PORT]",
    )
    media.add_argument(
        "--media-tcp-port",
        type=_port_range,
        default=_port_range(_env("MEDIA_TCP_PORT", "0")),
        metavar="T|T-U",
        help="TCP port for ICE over TCP (RFC 6544, passive), for users whose UDP is blocked; "
        "needs --media-port; worker i takes T + i (0 = none) [RELAY_MEDIA_TCP_PORT]",
    )
    cluster = p.add_argument_group("cluster (docs/operations.md)")
    cluster.add_argument(
        "--redis",
        default=os.environ.get("RELAY_REDIS") or None,
        metavar="URL",
        help="redis://host:port/db shared by every node: joins this node to one lobby with "
        "them [RELAY_REDIS]",
    )
    cluster.add_argument(
        "--cluster-secret",
        default=os.environ.get("RELAY_CLUSTER_SECRET") or None,
        help="secret shared by every node, authenticating media between nodes; required "
        "with --redis; prefer the environment variable [RELAY_CLUSTER_SECRET]",
    )
    cluster.add_argument(
        "--node-id",
        default=os.environ.get("RELAY_NODE_ID") or None,
        help="this node's name in the lobby (workers add -<index>); default host:pid:random "
        "[RELAY_NODE_ID]",
    )
    cluster.add_argument(
        "--workers",
        type=_workers,
        default=_workers(_env("WORKERS", "1")),
        metavar="N|auto",
        help="processes sharing the HTTP port, each a node (auto: one per core); more than "
        "one needs --redis; worker i serves /metrics on --metrics-port + i [RELAY_WORKERS]",
    )
    cluster.add_argument(
        "--pipe-host",
        default=_env("PIPE_HOST", d.pipe_host),
        help="address the media pipe between nodes listens on [RELAY_PIPE_HOST]",
    )
    cluster.add_argument(
        "--pipe-port",
        type=_count,
        default=_count(_env("PIPE_PORT", str(d.pipe_port))),
        help="UDP port of the media pipe; 0 = any free one; worker i takes port + i "
        "[RELAY_PIPE_PORT]",
    )
    cluster.add_argument(
        "--pipe-announce",
        default=os.environ.get("RELAY_PIPE_ANNOUNCE") or None,
        metavar="IP",
        help="IP address other nodes send media to; needed when --pipe-host is 0.0.0.0 or :: "
        "[RELAY_PIPE_ANNOUNCE]",
    )
    cluster.add_argument(
        "--pipe-encrypt",
        action=argparse.BooleanOptionalAction,
        default=_env_flag("PIPE_ENCRYPT"),
        help="encrypt media between nodes, not only authenticate it [RELAY_PIPE_ENCRYPT]",
    )
    p.add_argument(
        "--web-dir",
        default=_env("WEB_DIR", d.web_dir),
        help="folder of the browser app [RELAY_WEB_DIR]",
    )
    return p


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    args = build_parser().parse_args(argv)
    stun = args.stun if args.stun is not None else _split(_env("STUN", ""))
    turn = args.turn if args.turn is not None else _split(_env("TURN", ""))
    if args.turn_secret is not None and (args.turn_username or args.turn_password):
        build_parser().error(
            "--turn-secret mints credentials per visitor: drop --turn-username/--turn-password"
        )
    if turn and args.turn_secret is None and not (args.turn_username and args.turn_password):
        build_parser().error(
            "--turn needs --turn-secret (per-visitor credentials, coturn use-auth-secret) or "
            "--turn-username and --turn-password"
        )
    if args.turn_secret is not None and not turn:
        build_parser().error("--turn-secret needs --turn URL (the TURN server it is shared with)")
    if args.turn_ttl <= 0:
        build_parser().error("--turn-ttl: a number of seconds above 0")
    if args.server_uses_turn and not turn:
        build_parser().error("--server-uses-turn needs --turn URL")
    ice = _parse_ice_settings(args)
    origins = (
        args.allowed_origin
        if args.allowed_origin is not None
        else _split(_env("ALLOWED_ORIGIN", ""))
    )
    for origin in origins:
        if normalize_origin(origin) is None:
            build_parser().error(
                f"--allowed-origin {origin!r}: expected scheme://host[:port], e.g. "
                "https://example.org"
            )
    if args.redis and not args.cluster_secret:
        build_parser().error(
            "--redis needs --cluster-secret (or RELAY_CLUSTER_SECRET): the same secret on "
            "every node, so nodes accept media only from each other"
        )
    if args.cluster_secret is not None and len(args.cluster_secret.encode()) < 16:
        build_parser().error("--cluster-secret: at least 16 characters, the same on every node")
    for name, value in (("--pipe-host", args.pipe_host), ("--pipe-announce", args.pipe_announce)):
        if value is not None and not _is_ip(value):
            build_parser().error(f"{name} {value!r}: an IP address (v4 or v6)")
    if args.redis and _is_wildcard(args.pipe_host) and not args.pipe_announce:
        build_parser().error(
            f"--pipe-host {args.pipe_host} listens on every address: say which one other "
            "nodes reach this node at with --pipe-announce IP"
        )
    if args.workers > 1 and not args.redis:
        build_parser().error(
            f"--workers {args.workers} needs --redis redis://HOST:PORT/DB (and "
            "--cluster-secret): each worker is a node, and nodes share their lobby in Redis"
        )
    for name, (first, last) in (
        ("--media-port", args.media_port),
        ("--media-tcp-port", args.media_tcp_port),
    ):
        if first and last - first + 1 < args.workers and last != first:
            build_parser().error(
                f"{name} {first}-{last} has {last - first + 1} ports for {args.workers} workers: "
                "each worker needs its own"
            )
        if first and first + args.workers - 1 > 65535:
            build_parser().error(
                f"{name} {first}: worker {args.workers - 1} would need a port over 65535"
            )
    if args.media_tcp_port[0] and not args.media_port[0]:
        build_parser().error(
            "--media-tcp-port needs --media-port: ICE over TCP is served beside the shared UDP port"
        )
    return Settings(
        host=args.host,
        port=args.port,
        ice_servers=_parse_ice(stun, turn, args.turn_username, args.turn_password),
        ice=ice,
        media_timeout=args.media_timeout,
        connect_timeout=args.connect_timeout,
        interest_timeout=args.interest_timeout,
        rematch_after=args.rematch_after,
        resume_grace=args.resume_grace,
        keyframe_interval=args.keyframe_interval,
        relay=args.relay,
        log_level=args.log_level.upper(),
        web_dir=args.web_dir,
        moderators_file=args.moderators_file,
        db=args.db,
        recordings_dir=args.recordings_dir,
        recording_retention=args.recording_retention,
        evidence_seconds=args.evidence_seconds,
        analyzer_interval=args.analyzer_interval,
        nudity=args.nudity or args.nudity_blur,
        nudity_threshold=args.nudity_threshold,
        nudity_rate=args.nudity_rate,
        nudity_blur=args.nudity_blur,
        report_moves_on=args.report_moves_on,
        show_online=args.show_online,
        report_window=args.report_window,
        block_days=args.block_days,
        appeal=args.appeal_url,
        trusted_proxy=args.trusted_proxy,
        allowed_origins=tuple(origins),
        ip_max_sessions=args.ip_max_sessions,
        ip_max_peers=args.ip_max_peers,
        ip_max_new_sessions=args.ip_max_new_sessions,
        login_throttle_after=args.login_throttle_after,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        metrics_token=args.metrics_token or None,
        redis=args.redis,
        cluster_secret=args.cluster_secret,
        node_id=args.node_id,
        workers=args.workers,
        pipe_host=args.pipe_host,
        pipe_port=args.pipe_port,
        pipe_announce=args.pipe_announce,
        pipe_encrypt=args.pipe_encrypt,
        media_port=args.media_port[0],
        media_tcp_port=args.media_tcp_port[0],
    )
