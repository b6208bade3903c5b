"""Where the server's time goes: py-spy attached to it during the measured window."""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections import Counter
from pathlib import Path


def py_spy() -> str | None:
    """The py-spy executable (the `bench` extra installs it next to Python), or None."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


async def record(pid: int, seconds: float, raw_path: Path, rate: int = 100) -> None:
    """Sample ``pid`` for ``seconds`` into collapsed stacks (``raw_path``)."""
    binary = py_spy()
    if binary is None:
        raise RuntimeError("py-spy is not installed (pip install -e '.[bench]')")
    proc = await asyncio.create_subprocess_exec(
        binary,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, round(seconds))),
        "--rate",
        str(rate),
        # Pausing the server at every sample would slow it down far more
        # than it slows the measurement; idle waits are filtered afterwards.
        "--nonblocking",
        "--format",
        "raw",
        "--output",
        str(raw_path),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"py-spy failed: {stderr.decode(errors='replace').strip()}")


def write_summary(raw_path: Path) -> Path:
    """Write :func:`summarise` of ``raw_path`` beside it (``.txt`` added); returns that path."""
    path = Path(f"{raw_path}.txt")
    path.write_text(summarise(raw_path))
    return path


def _function(frame: str) -> str:
    # "name (path/file.py:123)" -> "name (path/file.py)"
    return re.sub(r":\d+\)$", ")", frame)


# Leaf frames of a thread that is waiting, not working: py-spy reports them
# whether or not it could tell the thread was idle.
IDLE_LEAVES = frozenset(
    {
        "EpollSelector.select (selectors.py)",
        "Condition.wait (threading.py)",
        "Event.wait (threading.py)",
        "Thread._wait_for_tstate_lock (threading.py)",
        "_worker (concurrent/futures/thread.py)",
    }
)


def summarise(raw_path: Path, top: int = 25) -> str:
    """Where the busy samples are: self and inclusive time per function, from collapsed stacks.

    Percentages are of the busy samples (idle waits removed); the event loop's
    thread is told apart from the others (decoders, encoders) by its frames.
    """
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = busy = loop = 0
    for line in raw_path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [
            _function(f) for f in stack.split(";") if not f.startswith(("process ", "thread "))
        ]
        if not frames:
            continue
        total += count
        if frames[-1] in IDLE_LEAVES:
            continue
        busy += count
        if any(f.startswith("BaseEventLoop._run_once") for f in frames):
            loop += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not busy:
        return f"{total} samples, none busy\n"
    lines = [
        f"{total} samples (py-spy, every thread), {busy} busy: "
        f"{100 * loop / busy:.0f}% of them on the event loop's thread",
        "",
        "self time by function (% of busy samples):",
    ]
    lines += [f"  {100 * n / busy:5.1f}%  {name}" for name, n in own.most_common(top)]
    lines += ["", "inclusive time by function (% of busy samples):"]
    lines += [f"  {100 * n / busy:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines) + "\n"
