"""`python -m bench.report RESULT.json`: a benchmark result as Markdown tables, for docs."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

COLUMNS = (
    ("relay", "relay"),
    ("server_cpu_per_pair_pct", "server CPU / pair (% core)"),
    ("server_cpu_ms_per_delivered_frame", "server CPU ms / delivered frame"),
    ("delivered_ratio", "delivered"),
    ("latency_ms_p50", "latency p50 ms"),
    ("latency_ms_p95", "latency p95 ms"),
    ("added_latency_ms", "added (p95 - direct p50) ms"),
    ("next_first_frame_ms_p50", "next to first frame p50 ms"),
    ("next_first_frame_ms_p95", "p95 ms"),
    ("server_rss_mb_per_pair", "RSS / pair MB"),
    ("clients_cpu_pct", "load clients CPU %"),
    ("machine_cpu_pct", "machine CPU %"),
    ("other_cpu_pct", "others' CPU %"),
)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _runs(result: dict[str, Any]) -> list[dict[str, Any]]:
    runs = [result]
    runs += [result[n] for n in ("transcode", "janus") if isinstance(result.get(n), dict)]
    return runs


def table(result: dict[str, Any]) -> str:
    """One load: a row per relay, then the direct baseline and the targets."""
    head = "| " + " | ".join(title for _, title in COLUMNS) + " |"
    rows = [head, "|" + "---|" * len(COLUMNS)]
    for run in _runs(result):
        if "error" in run or "skipped" in run:
            rows.append(f"| {run['relay']} | {run.get('error') or run.get('skipped')} |")
            continue
        rows.append("| " + " | ".join(_cell(run.get(key)) for key, _ in COLUMNS) + " |")
    direct = result.get("direct", {})
    lines = [
        f"{result['pairs']} pairs; relay windows {result.get('seconds')} s, direct window "
        f"{direct.get('seconds')} s.",
        "",
        *rows,
        "",
        f"Direct baseline: latency p50 {_cell(direct.get('latency_ms_p50'))} ms, "
        f"p95 {_cell(direct.get('latency_ms_p95'))} ms, delivered "
        f"{_cell(direct.get('delivered_ratio'))}, load clients {_cell(direct.get('clients_cpu_pct'))}% "
        f"of a core, others {_cell(direct.get('other_cpu_pct'))}%.",
    ]
    if result.get("cpu_ratio") is not None:
        lines.append(
            f"CPU ratio transcode / passthrough: {result['cpu_ratio']} "
            f"(per delivered frame: {_cell(result.get('cpu_ratio_per_delivered_frame'))})."
        )
    targets = result.get("targets")
    if targets:
        lines += ["", "| target | value | met |", "|---|---|---|"]
        for name, target in targets.items():
            met = {True: "yes", False: "**no**", None: "n/a"}[target["met"]]
            lines.append(f"| `{name}` | {_cell(target['value'])} | {met} |")
    warnings = [
        f"{run['relay']}: {w}" for run in _runs(result) for w in run.get("measurement_warnings", [])
    ]
    warnings += [f"direct: {w}" for w in direct.get("measurement_warnings", [])]
    if warnings:
        lines += ["", "Warnings the benchmark raised:", ""]
        lines += [f"- {w}" for w in warnings]
    return "\n".join(lines)


def render(data: dict[str, Any]) -> str:
    results = data.get("sweep", [data])
    parts = [f"Command: `{data.get('command')}`", ""]
    parts += [table(result) + "\n" for result in results]
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m bench.report RESULT.json", file=sys.stderr)
        return 2
    print(render(json.loads(Path(args[0]).read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
