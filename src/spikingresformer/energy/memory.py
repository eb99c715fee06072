"""Memory-aware energy (Lemaire et al. 2022) and equivalent networks without spikes (``docs/energy.md``)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Tuple

if TYPE_CHECKING:  # annotations only: report.py imports this module, not the other way round
    from .report import EnergyReport, LayerRecord, NeuronRecord

PJ_PER_MJ = 1e9

__all__ = ["MemoryCosts", "CostBreakdown", "memory_energy", "equivalent_energy", "energy_models",
           "quantized_bits", "break_even_rate", "EQUIVALENTS", "render_energy_models"]

#: names of the equivalent networks: ReLU activations at T = 1, and ceil(log2(T+1))-bit activations
EQUIVALENTS = ("relu", "quantized")


@dataclass(frozen=True)
class MemoryCosts:
    """Constants of the memory-aware model (defaults: 45 nm, 32-bit words; see ``docs/energy.md``)."""

    e_add_pj: float = 0.1  # one 32-bit integer addition (Horowitz 2014)
    e_mul_pj: float = 3.1  # one 32-bit integer multiplication (Horowitz 2014)
    word_bytes: int = 4  # every weight, potential, activation and spike address is one 32-bit word
    # (buffer bytes, pJ per byte): 10, 20 and 100 pJ per 32-bit access at 8 KiB, 32 KiB and 1 MiB
    breakpoints: Tuple[Tuple[float, float], ...] = ((0.0, 0.0), (8192.0, 2.5), (32768.0, 5.0), (1048576.0, 25.0))
    fifo_words: int = 1000  # spike FIFO between layers, in words (Lemaire et al.'s experiments)

    def __post_init__(self) -> None:
        pts = self.breakpoints
        if len(pts) < 2 or any(len(p) != 2 for p in pts):
            raise ValueError(f"breakpoints must be at least two (bytes, pJ per byte) pairs, got {pts!r}")
        if any(b[0] <= a[0] for a, b in zip(pts, pts[1:])):
            raise ValueError(f"breakpoint sizes must increase strictly, got {[p[0] for p in pts]}")
        for name in ("e_add_pj", "e_mul_pj"):
            if not (getattr(self, name) >= 0 and math.isfinite(getattr(self, name))):
                raise ValueError(f"{name} must be a finite non-negative number, got {getattr(self, name)!r}")
        if self.word_bytes <= 0 or self.fifo_words <= 0:
            raise ValueError(f"word_bytes and fifo_words must be positive, got {self.word_bytes}, {self.fifo_words}")

    def pj_per_byte(self, buffer_bytes: float) -> float:
        """Energy of reading or writing one byte of a buffer of ``buffer_bytes`` bytes."""
        pts = self.breakpoints
        size = min(max(float(buffer_bytes), pts[0][0]), pts[-1][0])
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            if size <= x1:
                return y0 + (y1 - y0) * (size - x0) / (x1 - x0)
        return pts[-1][1]  # pragma: no cover - size is clamped to the last breakpoint

    def word_pj(self, buffer_bytes: float, bits: float = 32) -> float:
        """Energy of one access of ``bits`` bits (default a whole word) to a buffer of ``buffer_bytes`` bytes."""
        return self.pj_per_byte(buffer_bytes) * bits / 8


#: the energy components of a CostBreakdown (``variable_pj`` is a part of their sum, not one of them)
_PARTS = ("synaptic_pj", "addressing_pj", "dense_pj", "bias_pj", "neuron_pj", "state_pj", "weights_pj",
          "potential_pj", "spikes_pj", "activations_pj")


@dataclass
class CostBreakdown:
    """Energy of one layer (or a sum of layers) in pJ per image, by what it pays for."""

    name: str
    stage: str
    synaptic_pj: float = 0.0  # spike-driven accumulations (one addition per SOP)
    addressing_pj: float = 0.0  # locating each spike's targets (additions, and 2 multiplications per conv spike)
    dense_pj: float = 0.0  # multiply-accumulates of real-valued inputs
    bias_pj: float = 0.0  # one addition per output of a layer with a (folded BatchNorm) bias
    neuron_pj: float = 0.0  # membrane updates: leak, threshold
    state_pj: float = 0.0  # membrane-potential reads and writes of the updates (per neuron and step)
    weights_pj: float = 0.0  # weight (or real operand) reads, and bias reads
    potential_pj: float = 0.0  # membrane-potential reads and writes
    spikes_pj: float = 0.0  # spike reads (per consuming layer) and spike writes (per neuron layer)
    activations_pj: float = 0.0  # reads and writes of real-valued activations
    variable_pj: float = 0.0  # the part of the total that scales with the number of spikes
    accesses: Dict[str, float] = field(default_factory=dict)  # access counts (words) by kind

    @property
    def total_pj(self) -> float:
        """Sum of every component."""
        return sum(getattr(self, k) for k in _PARTS)

    def add(self, other: "CostBreakdown") -> None:
        """Add ``other``'s components (and access counts) into this one."""
        for k in (*_PARTS, "variable_pj"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        for k, v in other.accesses.items():
            self.accesses[k] = self.accesses.get(k, 0.0) + v

    def to_dict(self) -> Dict[str, Any]:
        """Plain dict with the total (what JSON and CSV hold)."""
        return dict(asdict(self), total_pj=self.total_pj)

    @classmethod
    def total_of(cls, name: str, stage: str, parts: Iterable["CostBreakdown"]) -> "CostBreakdown":
        """A breakdown that adds up ``parts``."""
        total = cls(name, stage)
        for b in parts:
            total.add(b)
        return total


def quantized_bits(T: float) -> int:
    """Activation bits of the quantised network equivalent to ``T`` steps: ``ceil(log2(T + 1))``."""
    if not (T >= 1):
        raise ValueError(f"T must be at least 1, got {T!r}")
    return max(1, math.ceil(math.log2(T + 1) - 1e-12))


def _spiking_layer(layer: LayerRecord, report: EnergyReport, c: MemoryCosts) -> CostBreakdown:
    """Memory-aware cost of one counted layer of the spiking network."""
    b = CostBreakdown(layer.name, layer.stage)
    wb = c.word_bytes
    weight_buf = layer.weight_elements * wb
    out_buf = layer.outputs_per_step * wb
    steps = layer.steps_computed or report.T
    outputs = layer.outputs_per_step * steps
    if layer.spike_input:
        sops, spikes = layer.sops, layer.input_nonzero
        b.synaptic_pj = sops * c.e_add_pj
        b.addressing_pj = sops * c.e_add_pj + (2 * spikes * c.e_mul_pj if layer.kind == "conv" else 0.0)
        b.spikes_pj = spikes * c.word_pj(c.fifo_words * wb)
        b.weights_pj = sops * c.word_pj(weight_buf)
        b.potential_pj = 2 * sops * c.word_pj(out_buf)
        b.accesses = dict(spike_reads=spikes, weight_reads=sops, potential_reads=sops, potential_writes=sops)
        b.variable_pj = b.synaptic_pj + b.addressing_pj + b.spikes_pj + b.weights_pj + b.potential_pj
    else:
        macs = layer.macs_per_step * steps
        in_elems = _input_elements(layer)
        b.dense_pj = macs * (c.e_add_pj + c.e_mul_pj)
        b.weights_pj = macs * c.word_pj(weight_buf)
        b.activations_pj = macs * c.word_pj(in_elems * wb) + outputs * c.word_pj(out_buf)
        b.accesses = dict(input_reads=macs, weight_reads=macs, output_writes=outputs)
    if layer.adds_bias:
        b.bias_pj = outputs * c.e_add_pj
        b.weights_pj += outputs * c.word_pj(weight_buf)
        b.accesses["bias_reads"] = outputs
    return b


def _spiking_neuron(n: NeuronRecord, report: EnergyReport, c: MemoryCosts) -> CostBreakdown:
    """Memory-aware cost of one neuron layer: per neuron and step one update, one potential read and write."""
    b = CostBreakdown(n.name, n.stage)
    steps = n.neurons_per_step * report.T
    adds, muls = (2, 0) if n.kind.lower() == "if" else (2, 1)  # charge and threshold, and the leak
    b.neuron_pj = steps * (adds * c.e_add_pj + muls * c.e_mul_pj)
    b.state_pj = 2 * steps * c.word_pj(n.neurons_per_step * c.word_bytes)
    b.spikes_pj = n.spikes * c.word_pj(c.fifo_words * c.word_bytes)
    b.accesses = dict(potential_reads=steps, potential_writes=steps, spike_writes=n.spikes)
    b.variable_pj = b.spikes_pj
    return b


def memory_energy(report: EnergyReport, costs: Optional[MemoryCosts] = None) -> Dict[str, Any]:
    """Memory-aware energy of the spiking network: ``layers``, ``neurons``, ``total`` (:class:`CostBreakdown`)."""
    c = costs or MemoryCosts()
    layers = [_spiking_layer(x, report, c) for x in report.layers]
    neurons = [_spiking_neuron(n, report, c) for n in report.neurons]
    total = CostBreakdown.total_of("total", "all", [*layers, *neurons])
    return dict(layers=layers, neurons=neurons, total=total)


def _equivalent_layer(layer: LayerRecord, bits: int, c: MemoryCosts, first: bool) -> CostBreakdown:
    """Memory-aware cost of one layer of a network without spikes (one step, ``bits``-bit activations)."""
    b = CostBreakdown(layer.name, layer.stage)
    wb = c.word_bytes
    in_bits = 32 if first or bits >= 32 else bits
    macs = layer.macs_per_step  # one step
    outputs = layer.outputs_per_step
    in_elems = _input_elements(layer)
    per_mac = (c.e_add_pj + c.e_mul_pj) if in_bits >= 32 else in_bits * c.e_add_pj
    b.dense_pj = macs * per_mac
    if layer.kind == "matmul":
        # both operands are activations here: the real one (32 bits) and the former spike operand
        b.activations_pj = macs * (c.word_pj(layer.weight_elements * wb) + c.word_pj(in_elems * in_bits / 8, in_bits))
    else:
        b.weights_pj = macs * c.word_pj(layer.weight_elements * wb)
        b.activations_pj = macs * c.word_pj(in_elems * in_bits / 8, in_bits)
    b.activations_pj += outputs * c.word_pj(outputs * wb)
    b.accesses = dict(input_reads=macs, weight_reads=macs, output_writes=outputs)
    if layer.adds_bias:
        b.bias_pj = outputs * c.e_add_pj
        b.weights_pj += outputs * c.word_pj(layer.weight_elements * wb)
        b.accesses["bias_reads"] = outputs
    return b


def _input_elements(layer: LayerRecord) -> int:
    """Entries of one step's (spike) operand of ``layer`` per image, from its recorded shape."""
    shape = list(layer.input_shape)
    if layer.kind == "conv":
        return math.prod(shape[-3:]) if len(shape) >= 3 else 0
    if layer.kind == "linear":
        return shape[-1] if shape else 0
    # matmul operand [T, B, heads, K, N] (or [B, heads, K, N]): per image and step, everything after B
    return math.prod(shape[2:]) if len(shape) >= 5 else math.prod(shape[1:])


def equivalent_energy(report: EnergyReport, network: str = "relu",
                      costs: Optional[MemoryCosts] = None) -> Dict[str, Any]:
    """MACs and energy per image of the architecture without spikes (``network``: ``"relu"`` or ``"quantized"``):
    ``macs``, ``bits``, ``ops_mj``, ``memory`` (layers, activations, total) and ``memory_mj``."""
    if network not in EQUIVALENTS:
        raise ValueError(f"unknown equivalent network {network!r}; expected one of {EQUIVALENTS}")
    c = costs or MemoryCosts()
    bits = 32 if network == "relu" else quantized_bits(report.T)
    macs = report.macs_per_image_per_step
    first = report.layers[0].name if report.layers else None
    ops_layers = {x.name: x.macs_per_step * (report.e_mac_pj if bits >= 32 or x.name == first
                                              else bits * report.e_ac_pj) for x in report.layers}
    ops_pj = sum(ops_layers.values())
    layers = [_equivalent_layer(x, bits, c, x.name == first) for x in report.layers]
    # an activation layer per neuron layer: one comparison per element (ReLU) or two (clamp and round)
    acts = [CostBreakdown(n.name, n.stage, neuron_pj=n.neurons_per_step * c.e_add_pj * (1 if bits >= 32 else 2))
            for n in report.neurons]
    total = CostBreakdown.total_of("total", "all", [*layers, *acts])
    return dict(network=network, bits=bits, macs=macs, ops_mj=ops_pj / PJ_PER_MJ, ops_layers_pj=ops_layers,
                memory=dict(layers=layers, activations=acts, total=total), memory_mj=total.total_pj / PJ_PER_MJ)


def break_even_rate(rate: float, fixed_pj: float, variable_pj: float, target_pj: float) -> Optional[float]:
    """Mean firing rate at which ``fixed + variable * r / rate`` equals ``target``: ``None`` when nothing scales
    with the rate (no spikes), 0.0 when the fixed part alone costs more (the spiking network cannot win)."""
    if rate <= 0 or variable_pj <= 0:
        return None
    return max(0.0, rate * (target_pj - fixed_pj) / variable_pj)


def energy_models(report: EnergyReport, costs: Optional[MemoryCosts] = None) -> Dict[str, Any]:
    """Every energy model of the spiking network and both equivalents: ``rows`` (one per network, with the
    break-even firing rates of the equivalents), ``stages`` (energies per stage, mJ) and their parts."""
    c = costs or MemoryCosts()
    mem = memory_energy(report, c)
    rate = report.mean_firing_rate
    # the per-operation model: like "full", but a real-input layer is charged for the steps it computes
    var_ops = report.sops_per_image * report.e_ac_pj
    fixed_ops = sum(x.macs_per_step * (x.steps_computed or report.T) for x in report.layers if not x.spike_input)
    fixed_ops *= report.e_mac_pj
    total_ops = fixed_ops + var_ops
    total = mem["total"]
    rows: List[Dict[str, Any]] = [dict(
        network="spiking", T=report.T, bits=1, macs=report.real_input_macs_per_image_per_step,
        sops=report.sops_per_image, paper_mj=report.energy_mj("paper"), ops_mj=total_ops / PJ_PER_MJ,
        memory_mj=total.total_pj / PJ_PER_MJ, mean_firing_rate=rate,
        memory_variable_mj=total.variable_pj / PJ_PER_MJ,
    )]
    eqs = {name: equivalent_energy(report, name, c) for name in EQUIVALENTS}
    for name, eq in eqs.items():
        rows.append(dict(
            network=name, T=1, bits=eq["bits"], macs=eq["macs"], sops=0.0, paper_mj=None,
            ops_mj=eq["ops_mj"], memory_mj=eq["memory_mj"], mean_firing_rate=None,
            break_even_ops=break_even_rate(rate, fixed_ops, var_ops, eq["ops_mj"] * PJ_PER_MJ),
            break_even_memory=break_even_rate(rate, total.total_pj - total.variable_pj, total.variable_pj,
                                              eq["memory_mj"] * PJ_PER_MJ),
        ))
    order = dict.fromkeys(x.stage for x in [*report.layers, *report.neurons])

    def by_stage(pairs: Iterable[Tuple[str, float]]) -> Dict[str, float]:
        """mJ per stage of ``(stage, pJ)`` pairs; a stage without any (no operations) stays 0."""
        out = dict.fromkeys(order, 0.0)
        for stage, pj in pairs:
            out[stage] += pj / PJ_PER_MJ
        return out

    spiking = by_stage((p.stage, p.total_pj) for p in [*mem["layers"], *mem["neurons"]])
    spiking_ops = by_stage((x.stage, x.sops * report.e_ac_pj if x.spike_input
                            else x.macs_per_step * (x.steps_computed or report.T) * report.e_mac_pj)
                           for x in report.layers)
    eq_stage = {k: by_stage((p.stage, p.total_pj) for p in [*v["memory"]["layers"], *v["memory"]["activations"]])
                for k, v in eqs.items()}
    eq_ops = {k: by_stage((x.stage, v["ops_layers_pj"][x.name]) for x in report.layers) for k, v in eqs.items()}
    stages = [dict(stage=s, spiking_mj=spiking[s], **{f"{k}_mj": eq_stage[k][s] for k in eqs},
                   spiking_ops_mj=spiking_ops[s], **{f"{k}_ops_mj": eq_ops[k][s] for k in eqs}) for s in spiking]
    return dict(costs=asdict(c), rows=rows, stages=stages, spiking_memory=mem, equivalents=eqs)


def _rate(r: Optional[float]) -> str:
    return "n/a" if r is None else f"{r:.3f} (any rate)" if r >= 1.0 else f"{r:.4f}"


def render_energy_models(report: EnergyReport, models: Optional[Dict[str, Any]] = None) -> str:
    """Plain-text table of every energy model for the spiking network and its two equivalents."""
    m = models if models is not None else energy_models(report)
    c = m["costs"]
    rows = m["rows"]
    out = [
        "energy models and equivalent networks (per image)",
        f"{'network':<22} {'steps':>5} {'bits':>4} {'MACs':>14} {'SOPs':>14} {'paper mJ':>9} {'ops mJ':>9} "
        f"{'memory mJ':>10}  break-even rate (ops / memory)",
    ]
    labels = dict(spiking="spiking (this model)", relu="ReLU network, T=1", quantized="quantised, T=1")
    for r in rows:
        paper = "" if r["paper_mj"] is None else f"{r['paper_mj']:.4f}"
        be = "" if r["network"] == "spiking" else f"{_rate(r['break_even_ops'])} / {_rate(r['break_even_memory'])}"
        out.append(f"{labels[r['network']]:<22} {r['T']:>5} {r['bits']:>4} {r['macs']:>14,.0f} {r['sops']:>14,.0f} "
                   f"{paper:>9} {r['ops_mj']:>9.4f} {r['memory_mj']:>10.4f}  {be}")
    spk = rows[0]
    out += [
        f"mean firing rate now: {spk['mean_firing_rate']:.4f}; the spiking network costs less than an equivalent "
        "while its mean rate stays below the break-even rate (spike-driven costs scaled, the rest held)",
        f"ops: E_AC {report.e_ac_pj} pJ per SOP, E_MAC {report.e_mac_pj} pJ per 32-bit MAC (static-image stem "
        f"counted once), {quantized_bits(report.T)}-bit MAC = {quantized_bits(report.T)} x E_AC",
        f"memory: add {c['e_add_pj']} pJ, mul {c['e_mul_pj']} pJ, SRAM "
        + ", ".join(f"{y * c['word_bytes']:g} pJ/word at {x / 1024:g} KiB" for x, y in c["breakpoints"][1:])
        + f", spike FIFO {c['fifo_words']} words (after Lemaire et al. 2022)",
        "memory-aware energy per stage, mJ: " + "; ".join(
            f"{s['stage']} {s['spiking_mj']:.4f} / {s['relu_mj']:.4f} / {s['quantized_mj']:.4f}" for s in m["stages"])
        + "  (spiking / ReLU / quantised)",
    ]
    ev = report.event_stem()
    if ev is not None:
        adds = "n/a (negative inputs)" if ev["additions_per_event"] is None else (
            f"{ev['additions_per_event']:,.0f} additions = {ev['additions_mj']:.4f} mJ")
        out.append(
            f"event input, stem {ev['layer']}: dense MACs on the counts {ev['dense_macs']:,.0f} = {ev['dense_mj']:.4f} mJ; "
            f"additions per event {adds}"
            + ("" if ev["integer_counts"] else " (frames hold fractional counts, e.g. after resizing: an event-mass estimate)")
        )
    return "\n".join(out)
