"""`recipe schema/check`: the build recipe's JSON Schema, and validating a recipe file."""
from __future__ import annotations

import click

from ._options import _echo_json, _Group


@click.group(cls=_Group, short_help="Check a build recipe; print the recipe's JSON Schema.")
def recipe():
    """Build recipes: one YAML file describing a whole build (teacher + domains -> specialists -> bundle)."""


@recipe.command("schema", short_help="Print (or write) the recipe's JSON Schema.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the schema to this file.")
def recipe_schema_cmd(out):
    """The JSON Schema (draft 2020-12) of recipe files, for editors (e.g. yaml-language-server)."""
    from .._io import write_json_atomic
    from ..pipeline import recipe_schema

    schema = recipe_schema()
    if out:
        write_json_atomic(out, schema)
        click.echo(f"wrote {out}", err=True)
    else:
        _echo_json(schema)


@recipe.command("check", short_help="Validate a recipe and show what it builds.")
@click.argument("recipe_file", metavar="RECIPE", type=click.Path(dir_okay=False))
@click.option("--profile", default=None, help="Apply this profile of the recipe (default: check every profile).")
@click.option("--json", "as_json", is_flag=True, help="Print the resolved recipe as JSON.")
def recipe_check_cmd(recipe_file, profile, as_json):
    """Validate RECIPE (a YAML file): every error names file:line:column and the key.

    Without --profile the base recipe is shown, and every profile is checked as well.
    """
    from ..pipeline import list_profiles, load_recipe

    resolved = load_recipe(recipe_file, profile)
    others = list_profiles(recipe_file) if profile is None else ()
    for name in others:
        load_recipe(recipe_file, name)
    if as_json:
        _echo_json(resolved.to_dict())
        return
    click.echo(resolved.summary())
    label = f"profile {profile}" if profile else ("profiles " + ", ".join(others) + " also valid" if others else "")
    click.echo(f"ok{': ' + label if label else ''}", err=True)
