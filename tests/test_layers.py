"""The package's layers are imported one way only (DESIGN.md): every import statement is checked.

base (errors, config, _io, _env, artifacts) -> runtime -> eval -> models -> data -> compress -> export
-> bundle -> pipeline -> cli; bench and serve may import only the base, runtime and eval, and only the
cli (the top) imports them. Imports inside functions count: a lazy import is still an edge.
"""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "edge_downscale"
BASE = {"__init__", "errors", "config", "_io", "_env", "artifacts"}
ORDER = ["base", "runtime", "eval", "models", "data", "compress", "export", "bundle", "pipeline", "cli"]
RANK = {name: i for i, name in enumerate(ORDER)}
RESTRICTED = {"bench": {"base", "runtime", "eval"}, "serve": {"base", "runtime", "eval"}}


def layer(parts: tuple[str, ...]) -> str:
    """The layer of a module path inside the package, e.g. ('runtime', 'onnx') -> 'runtime'."""
    head = parts[0] if parts else "__init__"
    return "base" if head in BASE else head


def imported_modules(path: Path) -> list[tuple[int, tuple[str, ...]]]:
    """(line, module path inside edge_downscale) of every import of the package in ``path``."""
    rel = path.relative_to(PACKAGE).with_suffix("").parts
    package = rel[:-1] if rel[-1] != "__init__" else rel[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, tuple(a.name.split(".")[1:])) for a in node.names
                    if a.name.split(".")[0] == "edge_downscale"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from ..x import y
                base = package[: len(package) - node.level + 1] if node.level > 1 else package
                target = base + tuple((node.module or "").split(".")) if node.module else base
                if not node.module:  # from . import x: x is a submodule or a name of the package
                    out += [(node.lineno, target + (a.name,) if _is_module(target + (a.name,)) else target)
                            for a in node.names]
                    continue
                out.append((node.lineno, tuple(p for p in target if p)))
            elif node.module and node.module.split(".")[0] == "edge_downscale":
                out.append((node.lineno, tuple(node.module.split(".")[1:])))
    return out


def _is_module(parts: tuple[str, ...]) -> bool:
    return PACKAGE.joinpath(*parts).with_suffix(".py").is_file() or PACKAGE.joinpath(*parts).is_dir()


def edges() -> list[tuple[str, int, str, str]]:
    """(file, line, from layer, to layer) for every import of the package by the package."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        src = layer(path.relative_to(PACKAGE).with_suffix("").parts)
        for line, target in imported_modules(path):
            found.append((str(path.relative_to(PACKAGE.parent)), line, src, layer(target)))
    return found


def test_the_import_graph_has_no_edge_against_the_layer_order():
    bad = []
    for file, line, src, dst in edges():
        if src == dst:
            continue
        if src in RESTRICTED:
            ok = dst in RESTRICTED[src]
        elif dst in RESTRICTED:
            ok = src == "cli"  # the device-side tools are run by the CLI; nothing else imports them
        else:
            assert src in RANK, f"{file}: top-level module {src!r} is in no layer; add it to ORDER"
            assert dst in RANK or dst in RESTRICTED, f"{file}:{line}: imports unknown layer {dst!r}"
            ok = RANK[dst] <= RANK[src]
        if not ok:
            bad.append(f"{file}:{line}: {src} imports {dst}")
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_the_layer_walker_sees_relative_lazy_and_absolute_imports(tmp_path):
    """The checker itself: a relative import inside a function and an absolute one are both edges."""
    found = {(src, dst) for _, _, src, dst in edges()}
    assert ("cli", "runtime") in found or ("cli", "eval") in found  # the CLI imports lower layers lazily
    assert ("runtime", "base") in found
    assert layer(("runtime", "onnx")) == "runtime" and layer(("_io",)) == "base" and layer(()) == "base"


def test_runtime_modules_have_no_import_cycle_between_ensemble_and_strategies():
    """The ensemble imports its strategies and responses, never the reverse."""
    for name in ("strategies", "mixture", "response"):
        targets = {t for _, t in imported_modules(PACKAGE / "runtime" / f"{name}.py")}
        assert ("runtime", "ensemble") not in targets, f"runtime/{name}.py imports runtime.ensemble"
