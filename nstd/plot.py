"""The loss curve of one job, as an SVG beside its JSON log."""

from __future__ import annotations

import io



def curve_name(log_name: str) -> str:
    """The loss curve's file name beside a loss log: a.json -> a.loss.svg."""
    return log_name.removesuffix(".json") + ".loss.svg"


def loss_curve_svg(history: list[dict], title: str) -> bytes:
    """Content, style and total loss against iteration, log scale; scale changes marked."""
    # Imported here: matplotlib takes half a second, which every start of the daemon would pay.
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.6))
    FigureCanvasSVG(fig)  # the OO API: no pyplot, so no global state and no display needed
    ax = fig.add_subplot()
    its = [h["iteration"] for h in history]
    for key, colour in (("total", "black"), ("content", "tab:blue"), ("style", "tab:orange")):
        # A log scale has no zero (the content loss of a content start): leave a gap.
        values = [h[key] if h[key] > 0 else float("nan") for h in history]
        ax.plot(its, values, label=key, color=colour, linewidth=1.5 if key == "total" else 1.0)
    for prev, cur in zip(history, history[1:]):
        if prev.get("scale") != cur.get("scale"):
            ax.axvline(prev["iteration"], color="grey", linestyle=":", linewidth=0.8)
            ax.annotate(f"{cur['scale']} px", (prev["iteration"], 1), xycoords=("data", "axes fraction"),
                        fontsize=7, color="grey", va="top", ha="left")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    # Fixed margins that fit the labels: tight_layout drew the figure once more only to
    # measure it, half the plot's time (benchmarks/RESULTS.md, publishing).
    fig.subplots_adjust(left=0.1, right=0.97, top=0.91, bottom=0.14)
    buf = io.BytesIO()
    fig.savefig(buf, format="svg")
    return buf.getvalue()
