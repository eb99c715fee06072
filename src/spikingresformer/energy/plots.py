"""PNG charts of an :class:`EnergyReport` (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Union

from .report import EnergyReport

__all__ = ["plot_firing_rates", "plot_sops_per_layer", "stage_colours"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def stage_colours(stages: List[str]) -> Dict[str, str]:
    """A fixed colour per stage name: prologue grey, stage1/2/3.. blue/orange/green.., head cyan."""
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22"]
    colours: Dict[str, str] = {}
    for s in stages:
        if s in colours:
            continue
        if s == "prologue":
            colours[s] = "#7f7f7f"
        elif s == "head":
            colours[s] = "#17becf"
        elif s.startswith("stage") and s[5:].isdigit():
            colours[s] = palette[(int(s[5:]) - 1) % len(palette)]
        else:
            colours[s] = palette[len(colours) % len(palette)]
    return colours


def _legend(ax, colours: Dict[str, str], present: List[str]) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(color=colours[s], label=s) for s in colours if s in present]
    ax.legend(handles=handles, loc="upper right", fontsize=8)


def plot_firing_rates(report: EnergyReport, path: Union[str, Path]) -> Path:
    """Bar chart of the firing rate of every neuron layer (execution order), coloured by stage."""
    plt = _pyplot()
    recs = report.neurons
    colours = stage_colours([n.stage for n in recs])
    width = max(8.0, 0.22 * len(recs) + 2)
    fig, ax = plt.subplots(figsize=(width, 4.8))
    xs = range(len(recs))
    ax.bar(xs, [n.firing_rate for n in recs], color=[colours[n.stage] for n in recs])
    ax.axhline(report.mean_firing_rate, color="black", lw=0.8, ls="--")
    ax.text(len(recs) - 0.5, report.mean_firing_rate, f" mean {report.mean_firing_rate:.3f}", va="bottom",
            ha="right", fontsize=8)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([n.name for n in recs], rotation=90, fontsize=6)
    ax.set_xlim(-0.7, len(recs) - 0.3)
    ax.set_ylabel("firing rate (spikes / neuron / step)")
    ax.set_title(f"{report.model}: firing rate per neuron layer (input {list(report.input_shape)}, T={report.T})")
    _legend(ax, colours, [n.stage for n in recs])
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_sops_per_layer(report: EnergyReport, path: Union[str, Path]) -> Path:
    """Bar chart of SOPs per image of every counted layer, coloured by stage.

    Real-input layers (stem, classifier) are drawn hatched and hollow: their count is what their
    non-zero inputs would trigger, shown for auditing but left out of the official total.
    """
    plt = _pyplot()
    recs = report.layers
    colours = stage_colours([x.stage for x in recs])
    width = max(8.0, 0.22 * len(recs) + 2)
    fig, ax = plt.subplots(figsize=(width, 4.8))
    for i, x in enumerate(recs):
        c = colours[x.stage]
        if x.spike_input:
            ax.bar(i, x.sops / 1e6, color=c)
        else:
            ax.bar(i, x.sops / 1e6, facecolor="none", edgecolor=c, hatch="//")
    # The scale follows the spike-input layers; a taller real-input bar is clipped and labelled.
    spike_max = max((x.sops for x in recs if x.spike_input), default=0.0) / 1e6
    if spike_max > 0:
        top = spike_max * 1.15
        ax.set_ylim(0, top)
        for i, x in enumerate(recs):
            if not x.spike_input and x.sops / 1e6 > top:
                ax.text(i, top * 0.98, f" {x.sops / 1e6:.1f} M (real input, clipped)", rotation=90,
                        ha="center", va="top", fontsize=7)
    ax.set_xticks(range(len(recs)))
    ax.set_xticklabels([x.name for x in recs], rotation=90, fontsize=6)
    ax.set_xlim(-0.7, len(recs) - 0.3)
    ax.set_ylabel("SOPs per image, all steps (millions)")
    ax.set_title(
        f"{report.model}: SOPs per layer; total {report.sops_per_image / 1e9:.3f} G -> "
        f"{report.energy_mj('paper'):.3f} mJ (paper), {report.energy_mj('full'):.3f} mJ (full); hatched = real input"
    )
    _legend(ax, colours, [x.stage for x in recs])
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
