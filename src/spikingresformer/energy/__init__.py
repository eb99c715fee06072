"""Energy and firing-rate analysis (SPEC section 6): per-layer MACs, SOPs, firing rates and energies.

``analyze(model, inputs)`` runs a model in eval mode on a batch and returns an :class:`EnergyReport`;
:class:`EnergyMeter` counts during any forward loop (e.g. an evaluation pass); :func:`summarize` gives a
one-line summary for logs. See ``docs/energy.md`` for the conventions.
"""

from .counting import EnergyMeter, analyze, official_param_count, stage_of
from .report import (
    CONVENTIONS,
    E_AC_PJ,
    E_MAC_PJ,
    EnergyReport,
    LayerRecord,
    NeuronRecord,
    render_table,
    sops_to_mj,
    summarize,
)

__all__ = [
    "CONVENTIONS",
    "E_AC_PJ",
    "E_MAC_PJ",
    "EnergyMeter",
    "EnergyReport",
    "LayerRecord",
    "NeuronRecord",
    "analyze",
    "official_param_count",
    "render_table",
    "sops_to_mj",
    "stage_of",
    "summarize",
]
