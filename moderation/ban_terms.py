"""What a moderator may ask for when banning: a length and a scope, validated.

The old dashboard asked for a length in a browser prompt and read anything it
could not parse as "permanent" ("24h" banned someone for good). Here a length is
one of the presets, or a number and a unit, or a number of seconds; anything
else is an error that says what is accepted. Nothing is ever guessed.
"""

from __future__ import annotations

import math
import re
from enum import Enum
from typing import Final

# The longest timed ban; a longer one must be asked for as "permanent".
MAX_BAN_SECONDS: Final = 10 * 365 * 86400
PERMANENT: Final = "permanent"
PRESETS: Final[dict[str, float | None]] = {
    "1h": 3600.0,
    "24h": 86400.0,
    "7d": 7 * 86400.0,
    "30d": 30 * 86400.0,
    PERMANENT: None,
}
UNITS: Final = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_CUSTOM: Final = re.compile(r"([1-9][0-9]{0,5})([mhdw])")


class BanTermError(ValueError):
    """A length or scope the moderator must correct; the message says how."""


class BanScope(Enum):
    """Who a ban reaches: this browser (default), also its address, or the address only."""

    IDENTITY = "identity"
    IDENTITY_AND_ADDRESS = "identity+address"
    ADDRESS = "address"

    @property
    def by_identity(self) -> bool:
        return self is not BanScope.ADDRESS

    @property
    def by_address(self) -> bool:
        return self is not BanScope.IDENTITY


def parse_scope(value: object) -> BanScope:
    if value is None:
        return BanScope.IDENTITY
    for scope in BanScope:
        if value == scope.value:
            return scope
    names = ", ".join(f'"{s.value}"' for s in BanScope)
    raise BanTermError(f"scope: one of {names}")


def ban_seconds(value: object) -> float | None:
    """A ban length in seconds (None: permanent) from a preset, "<n><m|h|d|w>" or a number."""
    expected = (
        f"duration: one of {', '.join(PRESETS)}, a whole number and a unit "
        f"(m, h, d or w, e.g. 36h), or a number of seconds up to {MAX_BAN_SECONDS} (10 years)"
    )
    if isinstance(value, str):
        text = value.strip().lower()
        if text in PRESETS:
            return PRESETS[text]
        found = _CUSTOM.fullmatch(text)
        if found is None:
            raise BanTermError(expected)
        seconds = float(int(found.group(1)) * UNITS[found.group(2)])
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(value, int) and value > MAX_BAN_SECONDS:
            raise BanTermError(expected)  # float() of a 400-digit int overflows
        seconds = float(value)
    else:
        raise BanTermError(expected)
    if not math.isfinite(seconds) or not 0 < seconds <= MAX_BAN_SECONDS:
        raise BanTermError(expected)
    return seconds
