"""An app that embeds a bundle: import the runtime (no torch), stream an answer, print what it cost.

    .venv/bin/python examples/app_embed.py demo-bundle "def fibonacci(n):"

Build the bundle first (`make demo`, or `edge-downscale build examples/recipes/smollm2-edge.yaml
--profile quick --out demo-bundle`). Only the runtime is needed on the device:
`pip install edge-downscale[llama]` (llama.cpp) or `[export]` (onnxruntime).
"""
import sys

from edge_downscale.runtime import Ensemble, GenerationConfig

bundle = sys.argv[1] if len(sys.argv) > 1 else "demo-bundle"
prompt = sys.argv[2] if len(sys.argv) > 2 else "def fibonacci(n):"

# Ensemble.load checks every member and file against the hashes in ensemble.json before use.
with Ensemble.load(bundle) as ensemble:
    final = None
    for chunk in ensemble.generate(prompt, GenerationConfig(max_tokens=48, temperature=0.0), stream=True):
        if chunk.restart:  # a member failed mid-answer: the next one starts over
            print("\n[restarting with another member]", file=sys.stderr)
        print(chunk.text, end="", flush=True)
        final = chunk.final or final
    print()
    u = final.usage
    print(f"answered by {', '.join(final.members)} ({final.reason})", file=sys.stderr)
    per_token = u.joules / max(u.completion_tokens, 1) if u.joules is not None else None
    print(f"{u.prompt_tokens}+{u.completion_tokens} tokens in {u.latency_s:.2f} s; energy "
          f"{u.joules:.2f} J ({per_token:.3f} J/token, source: {u.energy_source})" if per_token is not None
          else "energy: no meter", file=sys.stderr)
