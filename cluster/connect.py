"""The Redis client every node uses: how it talks to Redis, in one place.

Tests build theirs here too, so they run against the configuration nodes run with.
"""

from __future__ import annotations

from redis.asyncio import Redis


def connect(url: str) -> Redis:
    """A client for `url` (not connected until first used).

    - Timeouts: without them a Redis host that vanishes (no RST) stalls every call
      for minutes of TCP retries. 5 s is above the matcher feed's 1 s XREAD BLOCK.
    - Replies are text; bytes that are not UTF-8 (anyone who can reach Redis can
      publish them) become U+FFFD rather than an exception. An exception in the
      pub/sub reader dropped the node's subscription, and every such message made
      the bus and the moderation channel resubscribe, losing what was published
      meanwhile; now the message fails its signature check and is refused alone.
    """
    return Redis.from_url(
        url,
        decode_responses=True,
        encoding_errors="replace",
        socket_connect_timeout=2,
        socket_timeout=5,
    )
