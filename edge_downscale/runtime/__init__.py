"""Lightweight runtime: loads exported specialists and scores/generates with them.

Never imports torch or transformers (a test enforces this), so apps can embed it.
"""
from .base import BACKENDS, Backend, backend_class
from .energy import METERS, EnergyMeter, EstimatedMeter, Measurement, NvmlMeter, RaplMeter, auto_meter, energy_fields

__all__ = [
    "BACKENDS", "Backend", "backend_class", "METERS", "EnergyMeter", "EstimatedMeter", "Measurement", "NvmlMeter",
    "RaplMeter", "auto_meter", "energy_fields",
]
