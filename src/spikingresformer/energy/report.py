"""The energy report: per-layer records, totals per convention (``docs/energy.md``), text, JSON and CSV."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from ..fileio import atomic_write_bytes
from .memory import PJ_PER_MJ, energy_models, memory_energy, render_energy_models

__all__ = ["E_MAC_PJ", "E_AC_PJ", "CONVENTIONS", "LayerRecord", "NeuronRecord", "EnergyReport", "sops_to_mj",
           "summarize", "render_table"]

#: 45 nm energy of one 32-bit float multiply-accumulate and one addition, in picojoules.
E_MAC_PJ = 4.6
E_AC_PJ = 0.9
CONVENTIONS = ("paper", "full")

Number = Union[int, float]


def sops_to_mj(sops: float, e_ac_pj: float = E_AC_PJ) -> float:
    """Energy in mJ of ``sops`` synaptic operations at ``e_ac_pj`` pJ each (2.73e9 SOPs -> 2.457 mJ)."""
    return sops * e_ac_pj / PJ_PER_MJ


@dataclass
class LayerRecord:
    """One counted layer (conv, linear or DSSA matmul), figures per image."""

    name: str  # official module name, e.g. "layers.0.0.W"
    stage: str  # "prologue", "stage1".., "head"
    kind: str  # "conv", "linear" or "matmul"
    spike_input: bool  # input (the spike operand for matmuls) is spikes: after_neuron and binary_input
    macs_per_step: Number  # dense MACs per image per time step
    sops: float  # additions triggered by non-zero inputs, per image, summed over T
    input_rate: float = 0.0  # fraction of non-zero input entries (the firing rate of spike inputs)
    after_neuron: bool = False  # structural test: input is (a view of) a neuron layer's output
    binary_input: bool = False  # value test: every input value was 0 or 1
    params: int = 0
    input_shape: List[int] = field(default_factory=list)  # shape of the (spike) operand in the last call
    outputs_per_step: Number = 0  # output entries per image per step
    steps_computed: Number = 0  # steps per image the layer really ran (1 for a static-image stem, else T)
    input_nonzero: float = 0.0  # non-zero input entries per image, all steps (spikes read, for spike input)
    weight_elements: int = 0  # weights (conv, linear) or the real operand's entries per step (matmul)
    adds_bias: bool = False  # one bias per output: the layer's own, or a following BatchNorm folded into it
    value_sops: Optional[float] = None  # additions if an input of value c counts as c events (inputs >= 0)
    integer_input: bool = True  # every input value was a whole number (so value_sops counts real events)


@dataclass
class NeuronRecord:
    """One spiking neuron layer, figures per image."""

    name: str
    stage: str
    kind: str  # "lif", "plif", "if"
    neurons_per_step: Number  # neurons per image (output entries per time step)
    spikes: float  # spikes per image, summed over T
    firing_rate: float  # mean spikes per neuron per step


@dataclass
class EnergyReport:
    """Per-layer operation counts, firing rates and totals of one analysed model and input."""

    model: str
    input_shape: List[int]
    event_input: bool
    T: Number
    images: int
    device: str
    e_mac_pj: float
    e_ac_pj: float
    layers: List[LayerRecord]
    neurons: List[NeuronRecord]
    bn_ops_per_image_per_step: Number
    params: int
    params_no_bn: int

    @property
    def macs_per_image_per_step(self) -> Number:
        """Dense MACs of conv, linear and matmul layers per image per step."""
        return sum(layer.macs_per_step for layer in self.layers)

    @property
    def official_macs_per_image_per_step(self) -> Number:
        """The official tool's "MACs": dense MACs plus 4 per BatchNorm output element."""
        return self.macs_per_image_per_step + self.bn_ops_per_image_per_step

    @property
    def sops_per_image(self) -> float:
        """SOPs per image over all steps, official convention (spike-input layers only)."""
        return sum(layer.sops for layer in self.layers if layer.spike_input)

    @property
    def real_input_sops_per_image(self) -> float:
        """Additions triggered by non-zero real inputs (stem, classifier); not in ``sops_per_image``."""
        return sum(layer.sops for layer in self.layers if not layer.spike_input)

    @property
    def real_input_macs_per_image_per_step(self) -> Number:
        """Dense MACs per step of the layers whose input is real-valued (stem conv, classifier)."""
        return sum(layer.macs_per_step for layer in self.layers if not layer.spike_input)

    @property
    def mean_firing_rate(self) -> float:
        """Spikes per neuron per step over all neuron layers together."""
        neurons = sum(n.neurons_per_step for n in self.neurons) * self.T
        return sum(n.spikes for n in self.neurons) / neurons if neurons else 0.0

    def layer_energy_mj(self, layer: LayerRecord, convention: str = "paper") -> float:
        """Energy of one layer per image in mJ under ``convention``."""
        _check_convention(convention)
        if layer.spike_input:
            return layer.sops * self.e_ac_pj / PJ_PER_MJ
        if convention == "full":
            return self.T * layer.macs_per_step * self.e_mac_pj / PJ_PER_MJ
        return 0.0

    def energy_mj(self, convention: str = "paper") -> float:
        """Energy per image in mJ: ``"paper"`` (E_AC x SOPs) or ``"full"`` (+ E_MAC x T x real-input MACs)."""
        _check_convention(convention)
        energy = self.sops_per_image * self.e_ac_pj / PJ_PER_MJ
        if convention == "full":
            energy += self.T * self.real_input_macs_per_image_per_step * self.e_mac_pj / PJ_PER_MJ
        return energy

    def stage_totals(self) -> List[Dict[str, Any]]:
        """Per stage (in execution order): MACs per step, SOPs, real-input SOPs, energies, firing rate."""
        rows = []
        for stage in dict.fromkeys(rec.stage for rec in [*self.layers, *self.neurons]):
            layers = [x for x in self.layers if x.stage == stage]
            neurons = [n for n in self.neurons if n.stage == stage]
            n_steps = sum(n.neurons_per_step for n in neurons) * self.T
            rows.append(dict(
                stage=stage, layers=len(layers), macs_per_step=sum(x.macs_per_step for x in layers),
                sops=sum(x.sops for x in layers if x.spike_input),
                real_input_sops=sum(x.sops for x in layers if not x.spike_input),
                energy_paper_mj=sum(self.layer_energy_mj(x, "paper") for x in layers),
                energy_full_mj=sum(self.layer_energy_mj(x, "full") for x in layers), neuron_layers=len(neurons),
                firing_rate=(sum(n.spikes for n in neurons) / n_steps) if n_steps else None,
            ))
        return rows

    def totals(self) -> Dict[str, Any]:
        """Every total as a plain dict (what the JSON file's ``totals`` holds)."""
        names = ("macs_per_image_per_step", "bn_ops_per_image_per_step", "official_macs_per_image_per_step",
                 "real_input_macs_per_image_per_step", "sops_per_image", "real_input_sops_per_image", "params",
                 "params_no_bn", "mean_firing_rate")
        return dict({k: getattr(self, k) for k in names}, energy_paper_mj=self.energy_mj("paper"),
                    energy_full_mj=self.energy_mj("full"), energy_memory_mj=self.memory_energy_mj())

    def memory_energy_mj(self) -> float:
        """Energy per image in mJ under the memory-aware model with its default constants."""
        return memory_energy(self)["total"].total_pj / PJ_PER_MJ

    def event_stem(self) -> Optional[Dict[str, Any]]:
        """For event input (else ``None``): the stem as dense MACs on the counts and as additions per event."""
        if not self.event_input or not self.layers:
            return None
        stem = self.layers[0]
        macs = stem.macs_per_step * (stem.steps_computed or self.T)
        adds = stem.value_sops
        return dict(
            layer=stem.name, dense_macs=macs, dense_mj=macs * self.e_mac_pj / PJ_PER_MJ,
            nonzero_additions=stem.sops, additions_per_event=adds,
            additions_mj=None if adds is None else adds * self.e_ac_pj / PJ_PER_MJ,
            integer_counts=stem.integer_input, input_events=stem.input_nonzero if stem.binary_input else None,
        )

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready dict: settings, ``totals``, ``stages``, ``layers``, ``neurons``, ``energy_models``."""
        head = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("layers", "neurons")}
        models = energy_models(self)
        mem = models["spiking_memory"]
        layers = [dict(asdict(x), energy_paper_mj=self.layer_energy_mj(x, "paper"),
                       energy_full_mj=self.layer_energy_mj(x, "full"), energy_memory_mj=c.total_pj / PJ_PER_MJ,
                       memory_pj=c.to_dict()) for x, c in zip(self.layers, mem["layers"])]
        neurons = [dict(asdict(n), energy_memory_mj=c.total_pj / PJ_PER_MJ, memory_pj=c.to_dict())
                   for n, c in zip(self.neurons, mem["neurons"])]
        return dict(
            **head,
            conventions=dict(
                paper="E = E_AC x SOPs of spike-input layers",
                full="E = E_AC x SOPs of spike-input layers + E_MAC x T x MACs/step of real-input layers",
                memory="operations and memory accesses after Lemaire et al. 2022 (docs/energy.md)",
                official_macs="dense MACs of conv, linear and matmul + 4 per BatchNorm output element",
            ),
            totals=self.totals(), stages=self.stage_totals(), layers=layers, neurons=neurons,
            energy_models=dict(costs=models["costs"], rows=models["rows"], stages=models["stages"],
                               memory_total_pj=mem["total"].to_dict()),
            event_stem=self.event_stem(),
        )

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "EnergyReport":
        """Rebuild a report from :meth:`to_dict` output (derived fields are recomputed)."""
        lf = {f.name for f in fields(LayerRecord)}
        nf = {f.name for f in fields(NeuronRecord)}
        head = {f.name: data[f.name] for f in fields(cls) if f.name not in ("layers", "neurons")}
        return cls(
            **head,
            layers=[LayerRecord(**{k: v for k, v in r.items() if k in lf}) for r in data["layers"]],
            neurons=[NeuronRecord(**{k: v for k, v in r.items() if k in nf}) for r in data["neurons"]],
        )

    def to_json(self, path: Union[str, Path, None] = None) -> str:
        """The report as JSON text; also written (atomically) to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            atomic_write_bytes(path, (text + "\n").encode())
        return text

    def write_csv(self, layers_path: Union[str, Path], neurons_path: Union[str, Path, None] = None,
                  models_path: Union[str, Path, None] = None) -> None:
        """Write the layer records, optionally the neuron records and the energy-model table, as CSV."""
        data = self.to_dict()
        _write_rows(layers_path, [_flat(r) for r in data["layers"]])
        if neurons_path is not None:
            _write_rows(neurons_path, [_flat(r) for r in data["neurons"]])
        if models_path is not None:
            _write_rows(models_path, data["energy_models"]["rows"])


def _flat(row: Dict[str, Any]) -> Dict[str, Any]:
    """A CSV row: lists joined by spaces, the ``memory_pj`` breakdown spread into ``memory_*`` columns."""
    out: Dict[str, Any] = {}
    for k, v in row.items():
        if k == "memory_pj":
            for mk, mv in v.items():
                if mk not in ("name", "stage", "accesses"):
                    out[f"memory_{mk}"] = mv
        elif isinstance(v, list):
            out[k] = " ".join(map(str, v))
        else:
            out[k] = v
    return out


def _write_rows(path: Union[str, Path], rows: List[Dict[str, Any]]) -> None:
    """Write ``rows`` (dicts with the same keys) as a CSV file, atomically."""
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)) or ["name"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown energy convention {convention!r}; expected one of {CONVENTIONS}")


def _si(x: float, digits: int = 3) -> str:
    """``x`` with a G/M/k suffix."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.{digits}f} {suffix}"
    return f"{x:.{digits}g}"


def summarize(report: EnergyReport) -> str:
    """Short text summary for logs: SOPs, MACs, both energies and the mean firing rate, per image."""
    return (
        f"energy [{report.model}, T={report.T}, {report.images} images]: "
        f"{_si(report.sops_per_image)} SOPs/img, "
        f"{_si(report.official_macs_per_image_per_step)} MACs/img/step (official count), "
        f"{report.energy_mj('paper'):.4g} mJ (paper) / {report.energy_mj('full'):.4g} mJ (full), "
        f"mean firing rate {report.mean_firing_rate:.4f}"
    )


def render_table(report: EnergyReport) -> str:
    """Plain-text table: layers grouped by stage with stage subtotals, totals, neurons, energy models."""
    models = energy_models(report)
    mem_uj = {c.name: c.total_pj / 1e6 for c in models["spiking_memory"]["layers"]}
    neuron_uj = {c.stage: 0.0 for c in models["spiking_memory"]["neurons"]}
    for c in models["spiking_memory"]["neurons"]:
        neuron_uj[c.stage] += c.total_pj / 1e6
    w = max([len(x.name) for x in report.layers] + [len(n.name) for n in report.neurons] + [12])
    out = [
        f"{report.model}  input {list(report.input_shape)} ({'event frames' if report.event_input else 'images'}), "
        f"T={report.T}, {report.images} image(s), device {report.device}",
        f"E_MAC = {report.e_mac_pj} pJ, E_AC = {report.e_ac_pj} pJ; per image. "
        "input: spikes = counted as SOPs; real = dense MACs (full convention only)",
    ]
    header = (f"{'layer':<{w}}  {'kind':<6} {'input':<6} {'MACs/step':>12} {'SOPs':>12} {'in-rate':>8} "
              f"{'E paper uJ':>11} {'E full uJ':>11} {'E mem uJ':>11}")
    rule = "-" * len(header)
    out += [rule, header, rule]
    stages = report.stage_totals()
    for st in stages:
        rows = [x for x in report.layers if x.stage == st["stage"]]
        if not rows:
            continue
        for x in rows:
            out.append(
                f"{x.name:<{w}}  {x.kind:<6} {'spikes' if x.spike_input else 'real':<6} "
                f"{_si(x.macs_per_step):>12} {_si(x.sops):>12} {x.input_rate:>8.4f} "
                f"{report.layer_energy_mj(x, 'paper') * 1e3:>11.3f} {report.layer_energy_mj(x, 'full') * 1e3:>11.3f}"
                f" {mem_uj[x.name]:>11.3f}"
            )
        if neuron_uj.get(st["stage"]):
            out.append(f"{'(neuron updates)':<{w}}  {'':<6} {'':<6} {'':>12} {'':>12} {'':>8} {'':>11} {'':>11} "
                       f"{neuron_uj[st['stage']]:>11.3f}")
        stage_mem = sum(mem_uj[x.name] for x in rows) + neuron_uj.get(st["stage"], 0.0)
        out += [
            f"{'[' + st['stage'] + ' total]':<{w}}  {'':<6} {'':<6} {_si(st['macs_per_step']):>12} "
            f"{_si(st['sops']):>12} {'':>8} {st['energy_paper_mj'] * 1e3:>11.3f} "
            f"{st['energy_full_mj'] * 1e3:>11.3f} {stage_mem:>11.3f}",
            "",
        ]
    out.append(rule)
    t = report.totals()
    out += [
        f"MACs per image per step (conv + linear + matmul, dense): {_si(t['macs_per_image_per_step'])}",
        f"  + 4 x BatchNorm output elements:                        {_si(t['bn_ops_per_image_per_step'])}",
        f"  = official-tool MACs per image per step:                {_si(t['official_macs_per_image_per_step'])}"
        f" ({t['official_macs_per_image_per_step']})",
        f"MACs per step of real-input layers (stem, classifier):    {_si(t['real_input_macs_per_image_per_step'])}",
        f"SOPs per image, spike-input layers (official convention): {_si(t['sops_per_image'])}",
        f"SOPs per image triggered by real inputs (not counted):    {_si(t['real_input_sops_per_image'])}",
        f"parameters (conv, linear, BN; official count):            {t['params']:,}"
        f" ({t['params_no_bn']:,} without BN)",
        f"mean firing rate (spikes per neuron per step):            {t['mean_firing_rate']:.4f}",
        f"energy, paper convention (E_AC x SOPs):                   {t['energy_paper_mj']:.4f} mJ",
        f"energy, full convention (+ E_MAC x T x real-input MACs):  {t['energy_full_mj']:.4f} mJ",
        f"energy, memory-aware model (operations + memory traffic): {t['energy_memory_mj']:.4f} mJ",
        "",
        render_energy_models(report, models),
        "",
        "firing rates per neuron layer",
        f"{'neuron layer':<{w}}  {'kind':<5} {'neurons/step':>13} {'spikes/img':>12} {'rate':>8}",
    ]
    for st in stages:
        ns = [n for n in report.neurons if n.stage == st["stage"]]
        out += [f"{n.name:<{w}}  {n.kind:<5} {_si(n.neurons_per_step):>13} {_si(n.spikes):>12} "
                f"{n.firing_rate:>8.4f}" for n in ns]
        if ns:
            out.append(f"{'[' + st['stage'] + ' mean]':<{w}}  {'':<5} {'':>13} {'':>12} {st['firing_rate']:>8.4f}")
    return "\n".join(out)
