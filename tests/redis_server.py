"""The tests' redis-server is the benchmark's: one implementation in bench/redis_server.py."""

from bench.redis_server import INSTALL_HINT, REDIS_SERVER, RedisServer

__all__ = ["INSTALL_HINT", "REDIS_SERVER", "RedisServer"]
