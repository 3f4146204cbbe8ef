"""Helpers shared by the command modules: the error-handling group, JSON echo, KEY=VALUE parsing and
:func:`config_option`, which builds a click option from a config dataclass field (its default lives there).
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
import sys
from typing import Any

import click

from ..errors import EdgeDownscaleError


class _Group(click.Group):
    """Turns library errors into one line on stderr; commands listed in definition order."""

    def list_commands(self, ctx):
        return list(self.commands)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgeDownscaleError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001 - last resort: one line, not a traceback
            if os.environ.get("EDGE_DOWNSCALE_DEBUG"):
                raise
            click.echo(f"error: unexpected {type(e).__name__}: {e} (set EDGE_DOWNSCALE_DEBUG=1 for details)",
                       err=True)
            sys.exit(1)


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def _key_values(values, what: str, sep: str = "=") -> dict[str, str]:
    out = {}
    for v in values:
        key, found, value = v.partition(sep)
        if not found or not key or not value:
            raise click.BadParameter(f"expected {what}, got {v!r}")
        out[key] = value
    return out


def _option_value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def _apply(options, f):
    """Decorate ``f`` with ``options`` so they appear in list order in --help."""
    for option in reversed(options):
        f = option(f)
    return f


# ----------------------------------------------------------------------------- options from configs
_TYPES = {"int": int, "float": float, "str": str, "int | None": int, "float | None": float, "str | None": str}


def _field(config: type, name: str) -> dataclasses.Field:
    for f in dataclasses.fields(config):
        if f.name == name:
            return f
    raise AttributeError(f"{config.__name__} has no field {name!r}")  # a programming error, caught by the tests


def _field_default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


class _LazyDefault:
    """A config field's default, read when click needs it (parse or --help), not at import.

    For configs whose module imports numpy: ``import edge_downscale.cli`` stays light. It is a callable
    (click calls it for the value) that prints as the value (click shows it with ``show_default``).
    """

    def __init__(self, path: str, name: str):
        self.path, self.name = path, name

    def __call__(self):
        module, _, cls = self.path.partition(":")
        return _field_default(_field(getattr(importlib.import_module(module), cls), self.name))

    def __str__(self) -> str:
        value = self()
        return ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def config_option(config: type | str, name: str, *decls: str, choices=None, **attrs: Any):
    """A click option for field ``name`` of the config dataclass ``config``: the default is the field's.

    ``decls`` default to ``--field-name``. ``config`` is the class, or ``"module:Class"`` for a config
    whose module is heavy (numpy): then the default is read lazily and ``type`` must be given (or str).
    The type otherwise follows the field's annotation; ``choices`` makes a click.Choice; ``show_default``
    is on unless the default is None. Any click keyword given (``default=`` ...) overrides these.
    """
    decls = decls or (f"--{name.replace('_', '-')}",)
    if isinstance(config, str):
        derived: dict[str, Any] = {"default": _LazyDefault(config, name), "show_default": True}
    else:
        f = _field(config, name)
        default = _field_default(f)
        derived = {"default": default, "show_default": default is not None}
        if isinstance(f.type, str) and f.type in _TYPES:
            derived["type"] = _TYPES[f.type]
    if choices is not None:
        derived["type"] = click.Choice(list(choices))
    return click.option(*decls, **{**derived, **attrs})
