"""Typed conversion of recipe sections from their dict form: each error names the key it is about.

:func:`build` makes a :class:`~edge_downscale.config.StageConfig` from a dict, recursing into nested
configs (by their type hints); a validation message is pinned to the deepest key it names, and a value of
the wrong type (which a config's ``validate`` may not check) is caught against the field's annotation.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re
import types
import typing
from typing import Any, Union

from ..config import StageConfig, is_int, is_number
from ..errors import ConfigError
from ._yaml import dotted


class PathError(ConfigError):
    """A ConfigError about the key at ``path`` (relative to the section that raised it)."""

    def __init__(self, path, message: str):
        self.path, self.message = tuple(path), message
        super().__init__(f"{dotted(self.path)}: {message}" if self.path else message)


# --------------------------------------------------------------------------- typed conversion

@functools.lru_cache(maxsize=None)
def hints(cls: type) -> dict[str, Any]:
    found = typing.get_type_hints(cls)
    return {f.name: found.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def _config_class(hint) -> type | None:
    """The StageConfig subclass in ``hint`` (``X`` or ``X | None``), if any."""
    if isinstance(hint, type) and issubclass(hint, StageConfig):
        return hint
    if typing.get_origin(hint) in (Union, types.UnionType):
        return next((c for c in map(_config_class, typing.get_args(hint)) if c), None)
    return None


def _convert(hint, value, path):
    """Dicts (and lists of dicts) where ``hint`` wants StageConfigs become those configs."""
    cls = _config_class(hint)
    if cls is not None and isinstance(value, dict):
        return build(cls, value, path)
    if typing.get_origin(hint) in (list, tuple) and isinstance(value, (list, tuple)):
        args = typing.get_args(hint)
        item = _config_class(args[0]) if args else None
        if item is not None:
            return [_convert(args[0], v, path + (i,)) for i, v in enumerate(value)]
    return value


def _matches(hint, v) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return any(_matches(a, v) for a in args)
    if hint is type(None):
        return v is None
    simple = {bool: lambda x: isinstance(x, bool), int: is_int, float: is_number,
              str: lambda x: isinstance(x, (str, os.PathLike)), dict: lambda x: isinstance(x, dict)}
    if hint in simple:
        return simple[hint](v)
    if hint in (tuple, list) or origin in (tuple, list):
        if not isinstance(v, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis or (origin is list and args):
            return all(_matches(args[0], x) for x in v)
        return not args or (len(v) == len(args) and all(map(_matches, args, v)))
    if origin is dict:
        return isinstance(v, dict)
    cls = _config_class(hint)
    return cls is None or isinstance(v, (cls, dict))


def _describe(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    names = {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "a string",
             dict: "a mapping", tuple: "a list", list: "a list"}
    if hint in names:
        return names[hint]
    if origin in (tuple, list):
        if len(args) == 2 and args[1] is Ellipsis or (origin is list and args):
            return f"a list of {_describe(args[0]).replace('an ', '').replace('a ', '')}s"
        return f"a list of {len(args)} {_describe(args[0]).replace('an ', '').replace('a ', '')}s" if args else "a list"
    cls = _config_class(hint)
    return f"a mapping of {cls.__name__} fields" if cls else str(hint)


def show(v) -> str:
    return repr(v) if not isinstance(v, (dict, list)) else f"a {'mapping' if isinstance(v, dict) else 'list'}"


def _blame(cls: type, data: dict, message: str, path) -> PathError:
    """The deepest key a validation message names (the user's keys first), else the section itself."""
    hits = []  # (tier, position, key): a key the user set named, one whose value is quoted, any field named
    for name in hints(cls):
        m = re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", message)
        if m:
            hits.append((0 if name in data else 2, m.start(), name))
    for k, v in data.items():  # e.g. "unknown pruning step(s) 'nope'": the key whose value the message quotes
        for s in (v if isinstance(v, (list, tuple)) else [v]):
            if isinstance(s, str) and len(s) > 1 and repr(s) in message:
                hits.append((1, message.find(repr(s)), k))
    if not hits:
        return PathError(path, message)
    name = min(hits)[2]
    text = message[len(name):].lstrip(" :") if message.startswith(name) else message
    return PathError(tuple(path) + (name,), text)


def _mismatch(cls: type, data: dict, path) -> PathError | None:
    found = hints(cls)
    for k, v in data.items():
        if not _matches(found[k], v):
            return PathError(tuple(path) + (k,), f"must be {_describe(found[k])}, got {show(v)}")
    return None


def build(cls: type, data, path=()):
    """``cls`` from its dict form; every error is a PathError naming the key it is about."""
    path = tuple(path)
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise PathError(path, f"must be a mapping of {cls.__name__} fields, got {show(data)}")
    found = hints(cls)
    for k in data:
        if k not in found:
            raise PathError(path + (str(k),), f"unknown key; allowed: {', '.join(sorted(found))}")
    for f in dataclasses.fields(cls):
        if f.init and f.name not in data and f.default is dataclasses.MISSING \
                and f.default_factory is dataclasses.MISSING:
            raise PathError(path + (f.name,), "required")
    values = {k: _convert(found[k], v, path + (k,)) for k, v in data.items()}
    try:
        obj = cls(**values)
    except PathError as e:
        raise PathError(path + e.path, e.message) from None
    except ConfigError as e:
        raise _blame(cls, data, str(e), path) from None
    except (TypeError, ValueError, AttributeError) as e:
        raise _mismatch(cls, data, path) or PathError(path, f"invalid value ({e})") from None
    bad = _mismatch(cls, data, path)
    if bad:
        raise bad
    return obj


@dataclasses.dataclass
class Section(StageConfig):
    """A recipe section: nested sections may be given in their dict form."""

    def __post_init__(self) -> None:
        for name, hint in hints(type(self)).items():
            value = getattr(self, name)
            if isinstance(value, (dict, list)):
                setattr(self, name, _convert(hint, value, (name,)))
        super().__post_init__()

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        return build(cls, data)


def plain(obj):
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj
