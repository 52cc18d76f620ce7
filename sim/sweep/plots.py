"""The plots of a sweep (matplotlib): SPEED's speedup as a heatmap over two swept axes, and latency against cost or
accuracy where the spec gives them."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from sim.files import atomic_write
from sim.sweep.spec import Spec

MAX_PANELS = 12  # heatmap panels (one per value of the other swept axes) before a `where` must narrow them
SPEEDUP_PNG, COST_PNG, ACCURACY_PNG = PLOT_FILES = ("speedup.png", "latency-cost.png", "latency-accuracy.png")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: Path) -> None:
    fig.tight_layout()
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    _pyplot().close(fig)


def heatmap_axes(spec: Spec) -> tuple[str, str] | None:
    """The heatmap's (x, y): the spec's, else the first two swept axes other than the decoder."""
    if "x" in spec.heatmap and "y" in spec.heatmap:
        return spec.heatmap["x"], spec.heatmap["y"]
    swept = [a for a in spec.swept if a != "decoder"]
    return (swept[0], swept[1]) if len(swept) >= 2 else None


def _panel(ax: Any, cells: dict[tuple, dict[str, Any]], xs: list, ys: list, norm: Any) -> Any:
    """One heatmap panel: the speedup of each (x, y) cell, written in it ("no fit": the run does not fit)."""
    image = [[(cells.get((vx, vy)) or {}).get("speedup_vs_sequential", float("nan")) for vx in xs] for vy in ys]
    mesh = ax.imshow(image, cmap="RdBu", norm=norm, aspect="auto", origin="lower")
    for (i, vy), (j, vx) in itertools.product(enumerate(ys), enumerate(xs)):
        r = cells.get((vx, vy))
        value = (r or {}).get("speedup_vs_sequential")
        text = "n/a" if r is None else "no fit" if r["status"] != "ok" else f"{value:.2f}x" if value else "-"
        dark = value is not None and abs(norm(value) - 0.5) > 0.3  # white text on the dark ends of the map
        ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
    ax.set_xticks(range(len(xs)), [str(v) for v in xs], fontsize=7, rotation=30)
    ax.set_yticks(range(len(ys)), [str(v) for v in ys], fontsize=7)
    return mesh


def speedup_heatmap(rows: list[dict[str, Any]], spec: Spec, out: Path) -> str:
    """SPEED's speedup over sequential decoding of the same configuration, over two axes, a panel per value of the
    other swept axes; cells that do not fit the device are marked. Returns what was written, or why not."""
    axes = heatmap_axes(spec)
    if axes is None:
        return "no heatmap: it needs two swept axes besides the decoder"
    x, y = axes
    where = spec.heatmap.get("where") or {}
    speed = [r for r in rows if r["point"]["decoder"] == "speed"
             and all(str(r["point"].get(k)) == str(v) for k, v in where.items())]
    if not speed or any(a not in speed[0]["point"] for a in axes):
        return f"no heatmap: no SPEED rows with axes {x} and {y}"
    others = [a for a in spec.swept if a not in (x, y, "decoder", *where)]
    panels = list(dict.fromkeys(tuple(r["point"][a] for a in others) for r in speed))
    if len(panels) > MAX_PANELS:
        return (f"no heatmap: {len(panels)} panels over {', '.join(others)}; fix some with plots.heatmap.where")
    xs = list(dict.fromkeys(r["point"][x] for r in speed))
    ys = list(dict.fromkeys(r["point"][y] for r in speed))
    plt = _pyplot()
    from matplotlib.colors import TwoSlopeNorm

    cols = min(len(panels), 3)
    lines = (len(panels) + cols - 1) // cols
    size = (1.2 + 0.9 * len(xs) * cols, 0.9 + 0.55 * len(ys) * lines)
    fig, grid = plt.subplots(lines, cols, squeeze=False, figsize=size)
    values = [r.get("speedup_vs_sequential") for r in speed if r.get("speedup_vs_sequential")]
    norm = TwoSlopeNorm(vcenter=1.0, vmin=min([*values, 0.99]), vmax=max([*values, 1.01]))
    for ax, panel in itertools.zip_longest(grid.flat, panels):
        if panel is None:
            ax.axis("off")
            continue
        cells = {(r["point"][x], r["point"][y]): r for r in speed if tuple(r["point"][a] for a in others) == panel}
        mesh = _panel(ax, cells, xs, ys, norm)
        ax.set_xlabel(x, fontsize=8)
        ax.set_ylabel(y, fontsize=8)
        if others:
            ax.set_title(", ".join(f"{a}={v}" for a, v in zip(others, panel)), fontsize=8)
    fig.colorbar(mesh, ax=grid.ravel().tolist(), label="SPEED speedup over sequential decoding")
    fig.suptitle(f"SPEED speedup ({spec.path.name})", fontsize=9, y=1.0)
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
    return str(out)


def latency_against(rows: list[dict[str, Any]], column: str, label: str, out: Path) -> str:
    """ms/token against `column` (cost per million tokens, or accuracy), a series per hardware and decoder."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    shown = [r for r in rows if r["status"] == "ok" and r.get(column) is not None]
    colors = {hw: f"C{i % 10}" for i, hw in enumerate(dict.fromkeys(r["hardware"] for r in shown))}  # one per device
    for (hw, decoder), group in itertools.groupby(sorted(shown, key=lambda r: (r["hardware"], r["decoder"])),
                                                  key=lambda r: (r["hardware"], r["decoder"])):
        group = list(group)
        ax.scatter([r["s_per_token"] * 1e3 for r in group], [r[column] for r in group], s=18, color=colors[hw],
                   marker="o" if decoder == "speed" else "x", label=f"{hw}, {decoder}")
    ax.set_xlabel("projected decode latency (ms / token)")
    ax.set_ylabel(label)
    ax.set_xscale("log")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    _save(fig, out)
    return str(out)


def plot_all(rows: list[dict[str, Any]], spec: Spec, folder: Path) -> list[str]:
    """Every plot the spec allows; lines saying what was written (or why a heatmap was not)."""
    written = [speedup_heatmap(rows, spec, folder / SPEEDUP_PNG)]
    if spec.cost:
        written.append(latency_against(rows, "cost_per_million_tokens", "$ per million tokens", folder / COST_PNG))
    if spec.accuracy:
        written.append(latency_against(rows, "accuracy", "accuracy", folder / ACCURACY_PNG))
    return written
