"""The report's PNG figures (matplotlib, object-oriented API: no pyplot state, no display needed).

Each function takes numbers the analyses computed and returns PNG bytes.
"""
from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure

GATE_COLOURS = {"input_gate": "tab:blue", "forget_gate": "tab:green", "output_gate": "tab:red"}


def char_label(char: str) -> str:
    return {" ": "␣", "\n": "\\n", "\t": "\\t"}.get(char, char)


def png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def ngram_curve(ngram_bpc: list[float], lstm_bpc: float | None) -> bytes:
    """Bits per character of the n-gram model of each order, with the LSTM's as a line (the paper's Table 2)."""
    figure = Figure(figsize=(6, 3.6))
    ax = figure.subplots()
    orders = np.arange(1, len(ngram_bpc) + 1)
    ax.plot(orders, ngram_bpc, "o-", color="tab:gray", label="n-gram (interpolated modified Kneser-Ney)")
    if lstm_bpc is not None:
        ax.axhline(lstm_bpc, color="tab:red", label=f"LSTM ({lstm_bpc:.3f})")
    best = int(np.argmin(ngram_bpc))
    ax.annotate(f"best n = {best + 1}: {ngram_bpc[best]:.3f}", (best + 1, ngram_bpc[best]),
                textcoords="offset points", xytext=(10, 18), arrowprops=dict(arrowstyle="->"))
    ax.set_xlabel("n (context of n-1 characters)")
    ax.set_ylabel("bits per character (validation)")
    ax.set_xticks(orders)
    low = min(min(ngram_bpc), lstm_bpc if lstm_bpc is not None else np.inf)
    ax.set_ylim(max(0.0, low - 0.3), min(max(ngram_bpc), low + 2.0) + 0.1)
    ax.grid(alpha=0.3)
    ax.legend()
    return png(figure)


def saturation_scatter(fractions: dict[str, dict[str, np.ndarray]]) -> bytes:
    """The paper's Figure 3: per layer, each gate unit at (fraction left-saturated, fraction right-saturated)."""
    layers = next(iter(fractions.values()))["left"].shape[0]
    figure = Figure(figsize=(3.6 * layers, 3.8))
    axes = figure.subplots(1, layers, squeeze=False)[0]
    for layer, ax in enumerate(axes):
        for gate, sides in fractions.items():
            ax.scatter(sides["left"][layer], sides["right"][layer], s=9, alpha=0.6, color=GATE_COLOURS.get(gate),
                       label=gate.replace("_gate", ""))
        ax.plot([0, 1], [1, 0], color="lightgray", lw=0.8, zorder=0)  # left + right = 1: always saturated
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_aspect("equal")
        ax.set_title(f"layer {layer + 1}")
        ax.set_xlabel("fraction left-saturated (< 0.1)")
        if layer == 0:
            ax.set_ylabel("fraction right-saturated (> 0.9)")
            ax.legend(loc="upper right", fontsize=8)
    return png(figure)


def cell_traces(windows: list[dict]) -> bytes:
    """For each feature, its best cell's tanh(c) over a stretch of held-out text, beside the feature scaled to
    [-1, 1] (flipped when the cell is anti-correlated, so the two lines should overlap)."""
    figure = Figure(figsize=(9, 1.6 * len(windows) + 0.4))
    axes = figure.subplots(len(windows), 1, squeeze=False)[:, 0]
    for ax, window in zip(axes, windows):
        feature = np.asarray(window["feature"], float)
        span = np.ptp(feature) or 1.0
        scaled = (feature - feature.min()) / span * 2 - 1
        if window["r"] < 0:
            scaled = -scaled
        ax.plot(scaled, color="tab:gray", lw=1, label=f"{window['name']} (scaled)")
        ax.plot(window["values"], color="tab:red", lw=1, label=f"layer {window['layer'] + 1} cell {window['cell']}")
        ax.set_ylim(-1.1, 1.1)
        ax.set_xlim(0, len(feature) - 1)
        ax.set_yticks([-1, 0, 1])
        ax.legend(loc="upper right", fontsize=7, ncol=2)
        ax.set_title(f"{window['name']}: held-out r = {window['r']:+.2f}", fontsize=9, loc="left")
    axes[-1].set_xlabel("character")
    figure.tight_layout()
    return png(figure)


def error_bars(breakdown: dict) -> bytes:
    rows = breakdown["categories"]
    figure = Figure(figsize=(6, 3.2))
    ax = figure.subplots()
    names = [row["category"] for row in rows][::-1]
    shares = [100 * row["share_of_errors"] for row in rows][::-1]
    ax.barh(names, shares, color="tab:orange")
    for y, share in enumerate(shares):
        ax.text(share + 0.5, y, f"{share:.1f}%", va="center", fontsize=8)
    ax.set_xlabel(f"% of the LSTM's {breakdown['errors']:,} errors (p < 0.5), peeled top to bottom")
    ax.set_xlim(0, max(shares + [1]) * 1.2)
    return png(figure)


def advantage_bars(result: dict) -> bytes:
    """Total bits the LSTM saves over the best n-gram model, by character; and by distance for newlines and
    closers (how far back the information the prediction needs lies)."""
    series = {"newline": result["newline_by_distance"]}
    series.update({f"closing {c}": rows for c, rows in result["closers_by_distance"].items()})
    series = {name: rows for name, rows in series.items() if rows}
    figure = Figure(figsize=(11, 3.6))
    left, right = figure.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    rows = result["by_char_total"]
    left.bar([char_label(r["char"]) for r in rows], [r["total_gain_bits"] for r in rows], color="tab:purple")
    left.set_ylabel("bits saved by the LSTM (total)")
    left.set_title("by character", fontsize=10)
    left.axhline(0, color="black", lw=0.5)
    for name, rows in series.items():
        right.plot([r["distance"] for r in rows], [r["gain_bits"] for r in rows], "o-", label=name)
    right.axhline(0, color="black", lw=0.5)
    right.set_xlabel("distance back to the opener / previous newline")
    right.set_ylabel("mean bits saved per character")
    right.set_title("by distance", fontsize=10)
    right.tick_params(axis="x", labelrotation=45)
    if series:
        right.legend(fontsize=8)
    figure.tight_layout()
    return png(figure)


def long_range(result: dict) -> bytes:
    """The paper's long-range comparison: mean bits the LSTM saves over the best n-gram model on newlines by
    the distance back to the previous newline, and on closing braces by the distance back to their opener;
    each bucket labelled with how many characters it averages."""
    panels = [("newline", "distance back to the previous newline", result["newline_by_distance"]),
              ("closing }", "distance back to the matching {", result["closers_by_distance"].get("}", []))]
    panels = [panel for panel in panels if panel[2]]
    figure = Figure(figsize=(5 * len(panels), 3.4))
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, xlabel, rows) in zip(axes, panels):
        gains = [r["gain_bits"] for r in rows]
        ax.bar([f"{r['distance']}\nn={r['count']:,}" for r in rows], gains,
               color=["tab:purple" if g >= 0 else "tab:gray" for g in gains])
        ax.axhline(0, color="black", lw=0.5)
        ax.set_title(f"{name}: LSTM vs best n-gram", fontsize=10)
        ax.set_xlabel(xlabel)
        ax.tick_params(axis="x", labelsize=8)
    axes[0].set_ylabel("mean bits saved per character")
    figure.tight_layout()
    return png(figure)
