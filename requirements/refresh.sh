#!/usr/bin/env bash
# Re-resolve the locked installs from pyproject.toml (run through `make lock`, then rerun `make test`).
#
#   all.txt               what `make` installs: the [compress,export,llama,serve,dev] extras, less torch
#                         (TORCH_SPEC, a CPU or CUDA build) and llama-cpp-python (built from source)
#   llama-cpp-python.txt  the llama-cpp-python source archive `make` builds its wheel from
#   core.txt, compress.txt, export.txt, llama.txt, serve.txt, dev.txt, gpu.txt
#                         the base install plus one extra each, at the same versions as all.txt
#                         (gpu.txt: onnxruntime-gpu instead of onnxruntime)
#
# Every file pins every package with its sha256 hashes (pip install --require-hashes --no-deps -r FILE).
# A refresh keeps the versions already locked (each file is uv's preference for its own rerun): only
# packages new to a file are resolved; `UPGRADE=1 make lock` re-resolves everything (the figures in
# results/ were measured at the locked versions: rerun them after an upgrade).
# The resolution targets CPython 3.11 on x86-64 Linux, the machines this project runs and measures on.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-uv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
LLAMA_CPP_SPEC=${LLAMA_CPP_SPEC:-llama-cpp-python==0.3.36}
FIND_LINKS=${FIND_LINKS-/opt/wheels}  # where this machine keeps its torch CPU wheel (skipped if absent)
[ -d "$FIND_LINKS" ] || FIND_LINKS=
out=requirements
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "$TORCH_SPEC" > "$tmp/torch.txt"

compile() {  # compile OUT [uv pip compile args...]
  local name=$1; shift
  # uv keeps the versions pinned in an existing output file (unless --upgrade): seed it with the lock
  if [ -z "${UPGRADE:-}" ] && [ -f "$out/$name" ]; then cp "$out/$name" "$tmp/$name"; fi
  "$UV" pip compile ${UPGRADE:+--upgrade} --quiet --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
    ${FIND_LINKS:+--find-links "$FIND_LINKS"} -c "$tmp/torch.txt" --no-emit-package torch \
    --custom-compile-command "make lock" "$@" -o "$tmp/$name"
  # name the constraint files in the annotations, not their temporary paths (a rerun must diff clean)
  sed -e "s|$tmp/pins[a-z-]*\.txt|requirements/all.txt|; s|$tmp/torch\.txt|TORCH_SPEC|" "$tmp/$name" > "$out/$name"
  echo "wrote $out/$name ($(grep -c '==' "$out/$name") packages)"
}

compile all.txt pyproject.toml --extra compress --extra export --extra llama --extra serve --extra dev \
  --no-emit-package llama-cpp-python
echo "$LLAMA_CPP_SPEC" > "$tmp/llama.in"
compile llama-cpp-python.txt "$tmp/llama.in" --no-deps --no-annotate
# the versions of all.txt as plain pins, the constraint of every per-extra file
sed -n 's/^\([A-Za-z0-9][^ ]*==[^ ]*\).*/\1/p' "$out/all.txt" > "$tmp/pins.txt"
compile core.txt pyproject.toml -c "$tmp/pins.txt"
for extra in compress export llama serve dev; do
  compile "$extra.txt" pyproject.toml --extra "$extra" -c "$tmp/pins.txt"
done
# onnxruntime-gpu replaces onnxruntime: every package they share stays at all.txt's version.
grep -v '^onnxruntime==' "$tmp/pins.txt" > "$tmp/pins-gpu.txt"
compile gpu.txt pyproject.toml --extra gpu -c "$tmp/pins-gpu.txt"
