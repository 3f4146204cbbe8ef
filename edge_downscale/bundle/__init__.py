"""The build side of the bundle format: copy members, train and evaluate routers, calibrate cascades.

    from edge_downscale.bundle import BundleConfig, build_bundle
    build_bundle(BundleConfig(out="bundle/", members=[...], router_corpora={"code": "code", ...}))

The runtime (:mod:`edge_downscale.runtime`) loads and verifies what this package writes.
"""
from .build import MEMBERS_DIR, BundleConfig, build_bundle
from .cascade import calibrate_cascade
from .data import calibration_data, texts_by_domain
from .router import DEFAULT_CHUNK_CHARS, FITTERS, chunk_text, evaluate_router, train_router

__all__ = [
    "MEMBERS_DIR", "BundleConfig", "build_bundle", "calibrate_cascade", "calibration_data", "texts_by_domain",
    "DEFAULT_CHUNK_CHARS", "FITTERS", "chunk_text", "evaluate_router", "train_router",
]
