"""Energy and firing-rate analysis: per-layer MACs, SOPs, firing rates and energies (``docs/energy.md``)."""

from .counting import EnergyMeter, analyze, official_param_count, stage_of
from .sj_crosscheck import CrossCheck, crosscheck, spikingjelly_available
from .memory import (MemoryCosts, break_even_rate, energy_models, equivalent_energy, memory_energy,
                     quantized_bits, render_energy_models)
from .report import (CONVENTIONS, E_AC_PJ, E_MAC_PJ, EnergyReport, LayerRecord, NeuronRecord, render_table,
                     sops_to_mj, summarize)

__all__ = [
    "CONVENTIONS",
    "CrossCheck",
    "E_AC_PJ",
    "E_MAC_PJ",
    "EnergyMeter",
    "EnergyReport",
    "LayerRecord",
    "MemoryCosts",
    "NeuronRecord",
    "analyze",
    "break_even_rate",
    "crosscheck",
    "energy_models",
    "equivalent_energy",
    "memory_energy",
    "official_param_count",
    "quantized_bits",
    "render_energy_models",
    "render_table",
    "sops_to_mj",
    "spikingjelly_available",
    "stage_of",
    "summarize",
]
