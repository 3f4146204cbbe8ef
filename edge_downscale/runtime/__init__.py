"""Lightweight runtime: loads exported specialists and scores/generates with them, alone or as an ensemble.

Never imports torch or transformers (a test enforces this), so apps can embed it::

    from edge_downscale.runtime import Ensemble
    with Ensemble.load("bundle/") as ens:
        print(ens.generate("def parse(path):", max_tokens=64).text)
"""
from .base import BACKENDS, Backend, backend_class
from .energy import METERS, EnergyMeter, EstimatedMeter, Measurement, NvmlMeter, RaplMeter, auto_meter, energy_fields
from .ensemble import ENSEMBLE_FILE, Ensemble, EnsembleSpec, MemberSpec, Response, ResponseChunk
from .generation import Chunk, ContextOverflowError, Generation, GenerationConfig, Scored, Usage
from .strategies import STRATEGIES, Strategy, calibrate_cascade

__all__ = [
    "BACKENDS", "Backend", "backend_class", "METERS", "EnergyMeter", "EstimatedMeter", "Measurement", "NvmlMeter",
    "RaplMeter", "auto_meter", "energy_fields", "ENSEMBLE_FILE", "Ensemble", "EnsembleSpec", "MemberSpec", "Response",
    "ResponseChunk", "Chunk", "ContextOverflowError", "Generation", "GenerationConfig", "Scored", "Usage", "STRATEGIES",
    "Strategy", "calibrate_cascade",
]
