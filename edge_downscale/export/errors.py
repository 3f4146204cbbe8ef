"""Export errors."""
from __future__ import annotations

from ..errors import EdgeDownscaleError


class ExportError(EdgeDownscaleError):
    """An export failed or was refused."""
