"""Cross-check of our counts, layer by layer, with SpikingJelly 2.0's ``op_counter`` (``docs/energy.md``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from .counting import analyze, model_mode
from .report import EnergyReport

__all__ = ["spikingjelly_available", "crosscheck", "CrossCheck", "LayerAgreement", "INSTALL_HINT"]

INSTALL_HINT = "pip install --no-deps 'spikingjelly==2.0.*' && pip install loguru"


def spikingjelly_available() -> bool:
    """Whether SpikingJelly 2.0's operation counter can be imported."""
    try:
        from spikingjelly.activation_based.op_counter import DispatchCounterMode, MACCounter, SynOpCounter  # noqa: F401
    except Exception:  # ImportError, or a missing dependency such as loguru
        return False
    return True


@dataclass
class LayerAgreement:
    """One counted layer, our figures next to SpikingJelly's, per image over all steps."""

    name: str
    kind: str
    spike_input: bool
    ours_sops: float  # ours: SOPs of spike-input layers, 0 for real-input ones (as in the official total)
    sj_sops: float
    ours_macs: float  # ours: dense MACs of real-input layers, over the steps actually computed
    sj_macs: float
    ours_dense_macs: float  # ours: dense MACs as if every activation were non-zero (official convention)

    @property
    def sops_agree(self) -> bool:
        """Exact agreement of the SOP counts."""
        return self.ours_sops == self.sj_sops

    @property
    def macs_agree(self) -> bool:
        """Exact agreement of the MAC counts of real-input products."""
        return self.ours_macs == self.sj_macs


@dataclass
class CrossCheck:
    """Result of :func:`crosscheck`: per-layer agreement and the totals of both tools."""

    layers: List[LayerAgreement]
    ours_sops: float
    sj_sops: float
    ours_real_macs: float
    sj_macs_layers: float  # SpikingJelly MACs inside our counted layers
    ours_bn_elements: float  # BatchNorm output elements per image, all steps
    sj_macs_batchnorm: float  # SpikingJelly's MACs inside BatchNorm modules (one per element)
    sj_unmatched: Dict[str, float] = field(default_factory=dict)  # SJ counts in scopes we do not count
    same_output: bool = True  # both passes computed bit-identical outputs
    spikingjelly_version: str = ""
    report: Optional[EnergyReport] = None

    @property
    def disagreements(self) -> List[LayerAgreement]:
        """Layers whose SOP or real-input MAC counts differ."""
        return [x for x in self.layers if not (x.sops_agree and x.macs_agree)]

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready dict (without the embedded report)."""
        d = {k: v for k, v in asdict(self).items() if k not in ("layers", "report")}
        d["layers"] = [dict(asdict(x), sops_agree=x.sops_agree, macs_agree=x.macs_agree) for x in self.layers]
        d["disagreements"] = [x.name for x in self.disagreements]
        return d

    def render(self) -> str:
        """Plain-text table of the per-layer agreement."""
        w = max([len(x.name) for x in self.layers] + [10])
        head = f"{'layer':<{w}}  {'kind':<6} {'SOPs ours':>14} {'SOPs SJ':>14} {'MACs ours':>12} {'MACs SJ':>12}  agree"
        out = [f"cross-check with SpikingJelly {self.spikingjelly_version} op_counter (per image, all steps)",
               "-" * len(head), head, "-" * len(head)]
        for x in self.layers:
            ok = "yes" if x.sops_agree and x.macs_agree else "NO"
            out.append(f"{x.name:<{w}}  {x.kind:<6} {x.ours_sops:>14,.0f} {x.sj_sops:>14,.0f} "
                       f"{x.ours_macs:>12,.0f} {x.sj_macs:>12,.0f}  {ok}")
        out += ["-" * len(head),
                f"SOPs total: ours {self.ours_sops:,.0f}, SpikingJelly {self.sj_sops:,.0f}; "
                f"real-input MACs: ours {self.ours_real_macs:,.0f}, SpikingJelly {self.sj_macs_layers:,.0f}",
                f"BatchNorm: {self.ours_bn_elements:,.0f} output elements; SpikingJelly counts "
                f"{self.sj_macs_batchnorm:,.0f} MACs in BatchNorm modules (the official tool counts 4 per element)"]
        if self.sj_unmatched:
            out.append(f"SpikingJelly counts outside our layers: {self.sj_unmatched}")
        out.append(f"{len(self.layers) - len(self.disagreements)} of {len(self.layers)} layers agree exactly; "
                   f"both passes gave {'identical' if self.same_output else 'DIFFERENT'} outputs")
        return "\n".join(out)


def _scope_totals(counter: Any, root: str) -> Dict[str, float]:
    """SpikingJelly records ``{scope: {op: count}}`` as ``{module name: count}`` (root prefix dropped)."""
    out: Dict[str, float] = {}
    for scope, ops in counter.get_counts().items():
        if scope == "Global" or scope == root:
            continue
        name = scope[len(root) + 1:] if scope.startswith(root + ".") else scope
        out[name] = float(sum(ops.values()))
    return out


def crosscheck(model: nn.Module, inputs: torch.Tensor, *, T: Optional[int] = None) -> CrossCheck:
    """Count ``model`` on one batch with our meter and with SpikingJelly 2.0's counters (in eval mode, without
    gradients) and compare per layer; ``ImportError`` says how to install SpikingJelly 2.0."""
    if not spikingjelly_available():
        raise ImportError(f"the cross-check needs SpikingJelly 2.0's op_counter: {INSTALL_HINT}")
    import spikingjelly
    from spikingjelly.activation_based.op_counter import DispatchCounterMode, MACCounter, SynOpCounter

    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"crosscheck expects one input tensor, got {type(inputs).__name__}")
    x = inputs.to(next(model.parameters()).device)
    report = analyze(model, x, T=T)
    synops, macs = SynOpCounter(), MACCounter()
    with model_mode(model, False):
        reference = model(x)
        with DispatchCounterMode([synops, macs]):
            counted = model(x)
    root = type(model).__name__
    sj_s = {k: v / report.images for k, v in _scope_totals(synops, root).items()}
    sj_m = {k: v / report.images for k, v in _scope_totals(macs, root).items()}
    names = {x.name for x in report.layers}
    bn_names = {n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    layers = [LayerAgreement(
        name=rec.name, kind=rec.kind, spike_input=rec.spike_input,
        ours_sops=rec.sops if rec.spike_input else 0.0, sj_sops=sj_s.get(rec.name, 0.0),
        ours_macs=0.0 if rec.spike_input else float(rec.macs_per_step * (rec.steps_computed or report.T)),
        sj_macs=sj_m.get(rec.name, 0.0), ours_dense_macs=float(rec.macs_per_step * report.T),
    ) for rec in report.layers]
    # SJ counts in leaf modules outside our layers and BatchNorm (parents contain their children's counts)
    outside = {n for n, m in model.named_modules() if not any(True for _ in m.children())} - names - bn_names
    unmatched = {f"{label}:{name}": v for counts, label in ((sj_s, "sops"), (sj_m, "macs"))
                 for name, v in counts.items() if v and name in outside}
    return CrossCheck(
        layers=layers, ours_sops=report.sops_per_image, sj_sops=sum(sj_s.get(n, 0.0) for n in names),
        ours_real_macs=sum(x.ours_macs for x in layers), sj_macs_layers=sum(sj_m.get(n, 0.0) for n in names),
        ours_bn_elements=report.bn_ops_per_image_per_step / 4 * report.T,
        sj_macs_batchnorm=sum(sj_m.get(n, 0.0) for n in bn_names), sj_unmatched=unmatched,
        same_output=bool(torch.equal(reference, counted)),
        spikingjelly_version=getattr(spikingjelly, "__version__", "2.0"), report=report,
    )
