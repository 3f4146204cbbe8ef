"""Score a model on your own text with the library API (the same code the CLI runs).

    .venv/bin/python examples/evaluate_a_model.py smollm2-135m path/to/some/texts/
"""
import sys

from edge_downscale.config import EvalConfig
from edge_downscale.data import build_corpus, heldout_by_domain
from edge_downscale.eval import evaluate, format_table
from edge_downscale.models import open_backend

model = sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m"
source = sys.argv[2] if len(sys.argv) > 2 else "docs"  # a demo domain or a directory of .txt/.md/.py

if source in ("code", "docs", "legal"):
    domain = source  # demo domains are built into the cache on first use
else:
    build_corpus(source, "my-corpus", overwrite=True)  # dedup + leak-free splits + manifest
    domain = "my-corpus"

config = EvalConfig(max_bytes=16_000, mc_items=20)
with open_backend(model, "llamacpp") as backend:  # or "torch"
    print(format_table(evaluate(backend, heldout_by_domain([domain], config), config)))
