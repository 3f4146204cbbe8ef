"""Export errors (defined with the others in :mod:`edge_downscale.errors`)."""
from ..errors import ExportError

__all__ = ["ExportError"]
