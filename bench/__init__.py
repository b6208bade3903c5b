"""The relay benchmark: `python -m bench.relay --help`; see docs/performance.md."""
