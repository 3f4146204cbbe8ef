"""YAML with positions: parse once, keep the line and column of every key (and list item) by its path.

A path is a tuple of keys and list indices, ``("recover", "train", "token_budget")`` or
``("domains", 1, "corpus")``; :func:`dotted` writes it as ``recover.train.token_budget`` / ``domains[1].corpus``.
"""
from __future__ import annotations

import re
from typing import Any

import yaml

from ..errors import ConfigError

KeyPath = tuple  # of str keys and int list indices
Mark = tuple[int, int]  # (line, column), both 1-based


class _Loader(yaml.SafeLoader):
    """safe_load, plus ``1e-4`` read as a float (YAML 1.1 wants ``1.0e-4``; a string ``'1e-4'`` surprises)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def dotted(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _mark(node) -> Mark:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _walk(node, path: KeyPath, marks: dict, where: str, active: set) -> None:
    if id(node) in active:  # a recursive alias
        return
    active.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            p = path + (key_node.value,)
            if key_node.value in seen:
                line, col = _mark(key_node)
                raise ConfigError(f"{where}:{line}:{col}: {dotted(p)}: duplicate key")
            seen.add(key_node.value)
            marks[p] = _mark(key_node)
            _walk(value_node, p, marks, where, active)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            marks[path + (i,)] = _mark(item)
            _walk(item, path + (i,), marks, where, active)
    active.discard(id(node))


def parse_marked(text: str, where: str) -> tuple[Any, dict[KeyPath, Mark]]:
    """(the document as yaml.safe_load reads it, {path: (line, column)}); bad YAML is a one-line ConfigError."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        marks: dict[KeyPath, Mark] = {(): _mark(node)}
        _walk(node, (), marks, where, set())
        return loader.construct_document(node), marks
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where_at = f"{where}:{mark.line + 1}:{mark.column + 1}" if mark else where
        problem = " ".join(str(e.problem or e.context or "").split())
        raise ConfigError(f"{where_at}: invalid YAML: {problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: invalid YAML: {' '.join(str(e).split())}") from None
    finally:
        loader.dispose()


def deep_merge(base: Any, over: Any) -> Any:
    """Mappings merge key by key (recursively); anything else in ``over`` replaces."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = deep_merge(base[k], v) if k in base else v
        return out
    return over


class Locator:
    """Where a key of the (profile-merged) recipe was written: ``error()`` turns a path + message into one line."""

    def __init__(self, where: str, marks: dict[KeyPath, Mark]):
        self.where = where
        self.origin = {p: (m, p) for p, m in marks.items() if p[:1] != ("profiles",)}
        self.marks = marks

    def overlay(self, base: dict, profile: dict, prefix: KeyPath) -> None:
        """Record the keys a profile (at ``prefix`` in the file) sets as coming from there."""
        def visit(b, over, sub):
            for k, v in over.items():
                p = sub + (k,)
                if isinstance(v, dict) and isinstance(b, dict) and isinstance(b.get(k), dict):
                    visit(b[k], v, p)
                    continue
                for q in [q for q in self.origin if q[:len(p)] == p]:
                    del self.origin[q]
                for q, m in self.marks.items():
                    if q[:len(prefix) + len(p)] == prefix + p:
                        self.origin[q[len(prefix):]] = (m, q)
        visit(base, profile, ())

    def locate(self, path: KeyPath) -> tuple[Mark | None, KeyPath]:
        table = self.origin
        if path[:1] == ("profiles",):  # about the profiles themselves: where the file has them
            table = {p: (m, p) for p, m in self.marks.items()}
        for i in range(len(path), -1, -1):
            if path[:i] in table:
                mark, shown = table[path[:i]]
                return mark, shown + tuple(path[i:])
        return None, tuple(path)

    def error(self, path: KeyPath, message: str) -> ConfigError:
        mark, shown = self.locate(path)
        at = f"{self.where}:{mark[0]}:{mark[1]}" if mark else self.where
        return ConfigError(f"{at}: {dotted(shown)}: {message}" if shown else f"{at}: {message}")
