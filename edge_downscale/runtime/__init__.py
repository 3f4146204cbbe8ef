"""Lightweight runtime: loads exported specialists and scores/generates with them, alone or as an ensemble.

What a device needs and nothing more: backends, generation, bundles (loading and verification),
strategies, router inference and energy meters. Never imports torch or transformers (a test
enforces this), nor the build-side packages, so apps can embed it::

    from edge_downscale.runtime import Ensemble
    with Ensemble.load("bundle/") as ens:
        print(ens.generate("def parse(path):", max_tokens=64).text)
"""
from .base import BACKENDS, FORMAT_BACKENDS, Backend, artifact_backend, backend_class, open_artifact
from .energy import METERS, EnergyMeter, EstimatedMeter, Measurement, NvmlMeter, RaplMeter, auto_meter, energy_fields
from .ensemble import ENSEMBLE_FILE, Ensemble, EnsembleSpec, MemberSpec
from .generation import Chunk, ContextOverflowError, Generation, GenerationConfig, Scored, Usage
from .response import MemberError, Response, ResponseChunk
from .strategies import STRATEGIES, Strategy

__all__ = [
    "BACKENDS", "FORMAT_BACKENDS", "Backend", "artifact_backend", "backend_class", "open_artifact", "METERS", "EnergyMeter",
    "EstimatedMeter", "Measurement", "NvmlMeter", "RaplMeter", "auto_meter", "energy_fields", "ENSEMBLE_FILE",
    "Ensemble", "EnsembleSpec", "MemberSpec", "MemberError", "Response", "ResponseChunk", "Chunk",
    "ContextOverflowError", "Generation", "GenerationConfig", "Scored", "Usage", "STRATEGIES", "Strategy",
]
