"""The sweep as a PNG: server CPU and delivery against the number of pairs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

COLOURS = {"passthrough": "tab:blue", "transcode": "tab:red", "janus": "tab:green"}


def _runs(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every relay measured at one load, by name."""
    runs = {str(result["relay"]): result}
    for name in ("transcode", "janus"):
        if isinstance(result.get(name), dict):
            runs[name] = result[name]
    # A relay that failed or was skipped at this load leaves a gap in its line.
    return {name: run for name, run in runs.items() if "server_cpu_pct" in run}


def plot_sweep(results: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (cpu_axes, delivery_axes) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    by_relay: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for result in results:
        for name, run in _runs(result).items():
            by_relay.setdefault(name, []).append((int(result["pairs"]), run))
    for name, points in sorted(by_relay.items()):
        points.sort(key=lambda p: p[0])
        pairs = [p for p, _ in points]
        colour = COLOURS.get(name)
        cpu_axes.plot(
            pairs,
            [r["server_cpu_pct"] for _, r in points],
            "o-",
            color=colour,
            label=f"{name} server",
        )
        cpu_axes.plot(
            pairs,
            [r["clients_cpu_pct"] for _, r in points],
            "x:",
            color=colour,
            alpha=0.6,
            label=f"load clients ({name} run)",
        )
        delivery_axes.plot(
            pairs,
            [
                r["delivered_ratio"] if r["delivered_ratio"] is not None else float("nan")
                for _, r in points
            ],
            "o-",
            color=colour,
            label=name,
        )
    # What the rest of the machine used during our server's runs: a starved run shows here.
    others = [(int(r["pairs"]), r["other_cpu_pct"]) for r in results if "other_cpu_pct" in r]
    if others:
        cpu_axes.plot(
            [p for p, _ in others],
            [v for _, v in others],
            "s--",
            color="grey",
            alpha=0.7,
            label=f"other processes ({results[0]['relay']} run)",
        )
    pairs_measured = sorted({int(r["pairs"]) for r in results})
    for axes in (cpu_axes, delivery_axes):
        axes.set_xticks(pairs_measured)
    cores = results[0].get("machine", {}).get("cpus") if results else None
    if cores:
        cpu_axes.axhline(100 * cores, color="grey", linestyle="--", linewidth=1)
        cpu_axes.text(
            0.02,
            100 * cores,
            f" {cores} cores",
            va="bottom",
            color="grey",
            transform=cpu_axes.get_yaxis_transform(),
        )
    cpu_axes.set_xlabel("pairs")
    cpu_axes.set_ylabel("CPU, % of one core")
    cpu_axes.set_title("Server CPU")
    cpu_axes.grid(alpha=0.3)
    cpu_axes.legend(fontsize=7)
    delivery_axes.axhline(0.995, color="grey", linestyle="--", linewidth=1)
    delivery_axes.set_xlabel("pairs")
    delivery_axes.set_ylabel("video frames received / sent")
    delivery_axes.set_title("Delivery")
    delivery_axes.set_ylim(top=1.005)
    delivery_axes.grid(alpha=0.3)
    delivery_axes.legend(fontsize=7, loc="lower left")
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
