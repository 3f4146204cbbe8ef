"""The `edge-downscale` command: a thin click layer over the library's public functions.

One module per command group (build, bench, serve, recipe, models, data, eval, export, prune, train,
laws, bundle, run); shared helpers and the config-driven options in :mod:`._options`. Library errors
(:class:`~edge_downscale.errors.EdgeDownscaleError`) become one-line ``error: ...`` messages and a
non-zero exit code; set EDGE_DOWNSCALE_DEBUG=1 to see tracebacks of unexpected failures.
"""
from __future__ import annotations

import click

from .. import __version__
from . import bench, build, bundle, data, eval, export, laws, models, prune, recipe, run, serve, train
from ._options import _Group


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edge-downscale")
def cli():
    """Turn one language model plus domain corpora into small, fast, measured specialists."""


# In --help order.
for _command in (build.build_cmd, bench.bench_cmd, serve.serve_cmd, recipe.recipe, models.models, data.data,
                 eval.eval_cmd, export.export_cmd, prune.prune_cmd, train.adapt_cmd, train.distill_cmd, laws.laws,
                 bundle.bundle, run.run_cmd, run.chat_cmd):
    cli.add_command(_command)
del _command


def main() -> None:
    cli(prog_name="edge-downscale")


__all__ = ["cli", "main"]
