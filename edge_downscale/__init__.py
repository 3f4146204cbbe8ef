"""edge-downscale: one model + domain corpora -> a small, fast, measured ensemble of specialists."""
__version__ = "0.1.0"
