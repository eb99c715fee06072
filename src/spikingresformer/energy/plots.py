"""PNG charts of an :class:`EnergyReport` (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

from .memory import CostBreakdown, energy_models, quantized_bits
from .report import EnergyReport

__all__ = ["plot_energy_models", "plot_firing_rates", "plot_memory_per_layer", "plot_sops_per_layer", "stage_colours"]


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("energy plots need matplotlib: pip install 'spikingresformer[plots]' (or pass --no-plots)") from None

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def stage_colours(stages: List[str]) -> Dict[str, str]:
    """A fixed colour per stage name: prologue grey, stage1/2/3.. blue/orange/green.., head cyan."""
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22"]
    colours: Dict[str, str] = {}
    for s in dict.fromkeys(stages):
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


def _per_layer_axes(labels: List[str]) -> Tuple[Any, Any, Any]:
    """``(pyplot, figure, axes)`` of a chart with one labelled bar slot per entry of ``labels``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(8.0, 0.22 * len(labels) + 2), 4.8))
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=90, fontsize=6)
    ax.set_xlim(-0.7, len(labels) - 0.3)
    return plt, fig, ax


def _save(plt, fig, path: Union[str, Path]) -> Path:
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_firing_rates(report: EnergyReport, path: Union[str, Path]) -> Path:
    """Bar chart of the firing rate of every neuron layer (execution order), coloured by stage."""
    recs = report.neurons
    colours = stage_colours([n.stage for n in recs])
    plt, fig, ax = _per_layer_axes([n.name for n in recs])
    ax.bar(range(len(recs)), [n.firing_rate for n in recs], color=[colours[n.stage] for n in recs])
    ax.axhline(report.mean_firing_rate, color="black", lw=0.8, ls="--")
    ax.text(len(recs) - 0.5, report.mean_firing_rate, f" mean {report.mean_firing_rate:.3f}", va="bottom",
            ha="right", fontsize=8)
    ax.set_ylabel("firing rate (spikes / neuron / step)")
    ax.set_title(f"{report.model}: firing rate per neuron layer (input {list(report.input_shape)}, T={report.T})")
    _legend(ax, colours, [n.stage for n in recs])
    return _save(plt, fig, path)


def plot_sops_per_layer(report: EnergyReport, path: Union[str, Path]) -> Path:
    """Bar chart of SOPs per image of every counted layer, coloured by stage; real-input layers hatched."""
    recs = report.layers
    colours = stage_colours([x.stage for x in recs])
    plt, fig, ax = _per_layer_axes([x.name for x in recs])
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
    ax.set_ylabel("SOPs per image, all steps (millions)")
    ax.set_title(
        f"{report.model}: SOPs per layer; total {report.sops_per_image / 1e9:.3f} G -> "
        f"{report.energy_mj('paper'):.3f} mJ (paper), {report.energy_mj('full'):.3f} mJ (full); hatched = real input"
    )
    _legend(ax, colours, [x.stage for x in recs])
    return _save(plt, fig, path)


def plot_energy_models(report: EnergyReport, path: Union[str, Path], models: Union[dict, None] = None) -> Path:
    """Per stage, the spiking network next to its ReLU and quantised equivalents, in mJ per image
    (two panels: per-operation constants and the memory-aware model)."""
    plt = _pyplot()
    m = models if models is not None else energy_models(report)
    stages = [s["stage"] for s in m["stages"]]
    bits = quantized_bits(report.T)
    series = [("spiking", f"spiking, T={report.T}", "#1f77b4"), ("relu", "ReLU, T=1", "#7f7f7f"),
              ("quantized", f"{bits}-bit activations, T=1", "#ff7f0e")]
    fig, axes = plt.subplots(1, 2, figsize=(max(9.0, 1.9 * len(stages) + 3), 4.6))
    for ax, suffix, title in ((axes[0], "_ops_mj", "per-operation (E_AC / E_MAC)"),
                              (axes[1], "_mj", "memory-aware (after Lemaire et al.)")):
        width = 0.27
        for j, (key, label, colour) in enumerate(series):
            vals = [s[f"{key}{suffix}"] for s in m["stages"]]
            ax.bar([i + (j - 1) * width for i in range(len(stages))], vals, width, label=label, color=colour)
        ax.set_xticks(range(len(stages)))
        ax.set_xticklabels(stages)
        ax.set_ylabel("energy per image (mJ)")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    quantized = next(r for r in m["rows"] if r["network"] == "quantized")
    fig.suptitle(
        f"{report.model}: spiking vs equivalent networks per stage (mean firing rate "
        f"{report.mean_firing_rate:.3f}; break-even vs {bits}-bit: "
        f"{_fmt_rate(quantized['break_even_ops'])} ops, {_fmt_rate(quantized['break_even_memory'])} memory)",
        fontsize=10,
    )
    return _save(plt, fig, path)


def _fmt_rate(r) -> str:
    return "n/a" if r is None else ("any rate" if r >= 1 else f"{r:.3f}")


def plot_memory_per_layer(report: EnergyReport, path: Union[str, Path], models: Union[dict, None] = None) -> Path:
    """Stacked bars of the memory-aware energy of every counted layer by component (uJ per image),
    then one bar per stage for its neuron updates."""
    m = models if models is not None else energy_models(report)
    layers = m["spiking_memory"]["layers"]
    neurons = m["spiking_memory"]["neurons"]
    groups = [
        ("operations", ("synaptic_pj", "addressing_pj", "dense_pj", "bias_pj", "neuron_pj"), "#2ca02c"),
        ("weight reads", ("weights_pj",), "#1f77b4"),
        ("membrane potential", ("potential_pj", "state_pj"), "#d62728"),
        ("spikes and activations", ("spikes_pj", "activations_pj"), "#9467bd"),
    ]
    bars = [(c.name, c) for c in layers] + [  # one bar per stage for its neuron updates
        (f"[{s} neuron updates]", CostBreakdown.total_of(f"{s} neurons", s, [n for n in neurons if n.stage == s]))
        for s in dict.fromkeys(n.stage for n in neurons)
    ]
    plt, fig, ax = _per_layer_axes([name for name, _ in bars])
    bottom = [0.0] * len(bars)
    for label, keys, colour in groups:
        vals = [sum(getattr(c, k) for k in keys) / 1e6 for _, c in bars]
        ax.bar(range(len(bars)), vals, bottom=bottom, color=colour, label=label)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_ylabel("memory-aware energy per image (uJ)")
    ax.set_title(f"{report.model}: memory-aware energy per layer; total "
                 f"{m['spiking_memory']['total'].total_pj / 1e9:.3f} mJ (after Lemaire et al. 2022)")
    ax.legend(fontsize=8, loc="upper right")
    return _save(plt, fig, path)
