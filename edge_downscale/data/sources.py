"""Corpus sources: directories, JSONL files, single text files and the built-in demo domains.

A source yields ``(source_id, text)`` documents lazily, in a deterministic (sorted) order. Text is
decoded as strict UTF-8 (a leading BOM is dropped, line endings become ``\\n``); anything that is
not UTF-8 text, or cannot be parsed, is skipped and counted in a :class:`SkipCounts`, never fatal.

Directory rules: files are found recursively; hidden files and directories (``.name``) are
ignored and directory symlinks are not followed. A file is read when its suffix is one of the
configured extensions, when it has no suffix (``copyright``, ``LICENSE``; a purely numeric suffix
such as ``GPL-2.0`` counts as none), or when it ends in ``.jsonl`` (then one document per line).
Several paths that resolve to the same file are read once.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sysconfig
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

from ..errors import CorpusError

if TYPE_CHECKING:  # pragma: no cover
    from .corpus import CorpusConfig

Document = tuple[str, str]  # (source_id, text)


@dataclasses.dataclass
class SkipCounts:
    """Inputs a source skipped, by reason (recorded in the corpus manifest)."""

    non_utf8: int = 0  # not UTF-8 text (undecodable, or contains NUL bytes)
    unreadable: int = 0  # an OS error while reading (permissions, vanished file)
    invalid_json: int = 0  # a JSONL line that is not a JSON object
    missing_field: int = 0  # a JSONL object without a string text field


@dataclasses.dataclass(frozen=True)
class Source:
    """One input of a corpus build: a name, what it reads, and a way to iterate its documents."""

    kind: str  # "directory", "jsonl", "file" or "demo"
    name: str
    roots: tuple[str, ...]
    _documents: Callable[[SkipCounts], Iterator[Document]] = dataclasses.field(repr=False, compare=False)

    def documents(self, skipped: SkipCounts) -> Iterator[Document]:
        """Iterate the documents, counting skipped inputs into ``skipped``."""
        return self._documents(skipped)

    def describe(self) -> dict[str, object]:
        return {"kind": self.kind, "name": self.name, "roots": list(self.roots)}


@dataclasses.dataclass(frozen=True)
class DemoDomain:
    """A built-in corpus made of real text already present on the machine."""

    name: str
    description: str
    roots: Callable[[], list[str]]  # evaluated at call time, so overrides (LEGAL_ROOTS) apply
    documents: Callable[[SkipCounts], Iterator[Document]]


DEMO_DOMAINS: dict[str, DemoDomain] = {}


def demo_domain(name: str, description: str, roots: Callable[[], list[str]]):
    """Register the decorated ``documents(skipped)`` generator as demo domain ``name``."""

    def register(fn: Callable[[SkipCounts], Iterator[Document]]):
        if name in DEMO_DOMAINS:
            raise ValueError(f"demo domain {name!r} registered twice")
        DEMO_DOMAINS[name] = DemoDomain(name, description, roots, fn)
        return fn

    return register


# --------------------------------------------------------------------------- reading files


def clean_text(text: str) -> str:
    """Drop a leading BOM and turn CRLF / CR line endings into LF."""
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def decode_text(data: bytes) -> str | None:
    """Strict UTF-8 text, or None for anything else (invalid bytes, NULs of a binary file)."""
    if b"\x00" in data:
        return None
    try:
        return clean_text(data.decode("utf-8"))
    except UnicodeDecodeError:
        return None


def read_text_file(path: Path, skipped: SkipCounts) -> str | None:
    try:
        data = path.read_bytes()
    except OSError:
        skipped.unreadable += 1
        return None
    text = decode_text(data)
    if text is None:
        skipped.non_utf8 += 1
    return text


def iter_jsonl(path: Path, text_field: str, skipped: SkipCounts, prefix: str) -> Iterator[Document]:
    """One document per non-blank line of a JSON Lines file, from ``obj[text_field]``."""
    try:
        f = open(path, "rb")
    except OSError:
        skipped.unreadable += 1
        return
    with f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                skipped.non_utf8 += 1
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                skipped.invalid_json += 1
                continue
            if not isinstance(obj, dict):
                skipped.invalid_json += 1
                continue
            text = obj.get(text_field)
            if not isinstance(text, str):
                skipped.missing_field += 1
                continue
            yield f"{prefix}:{lineno}", clean_text(text)


def _read_files(files: Sequence[tuple[str, Path]], text_field: str, skipped: SkipCounts) -> Iterator[Document]:
    for source_id, path in files:
        if path.suffix.lower() == ".jsonl":
            yield from iter_jsonl(path, text_field, skipped, source_id)
            continue
        text = read_text_file(path, skipped)
        if text is not None:
            yield source_id, text


# --------------------------------------------------------------------------- listing files


def _has_no_extension(path: Path) -> bool:
    return path.suffix == "" or path.suffix[1:].isdigit()


def dedupe_links(files: Sequence[tuple[str, Path]]) -> list[tuple[str, Path]]:
    """One entry per real file: its own (symlink-free) path when listed, else the first listed."""
    chosen: dict[str, int] = {}
    for i, (_, path) in enumerate(files):
        real = os.path.realpath(path)
        if real not in chosen or (os.path.abspath(path) == real != os.path.abspath(files[chosen[real]][1])):
            chosen[real] = i
    keep = set(chosen.values())
    return [f for i, f in enumerate(files) if i in keep]


def list_directory(root: Path, want: Callable[[Path], bool],
                   exclude_dirs: Iterable[str] = ()) -> list[tuple[str, Path]]:
    """``(relative posix path, path)`` of wanted files under ``root``, sorted, links deduplicated."""
    excluded = set(exclude_dirs)
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):  # does not follow directory symlinks
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in excluded]
        for name in filenames:
            path = Path(dirpath, name)
            if not name.startswith(".") and want(path) and path.is_file():
                found.append((path.relative_to(root).as_posix(), path))
    found.sort(key=lambda item: item[0])
    return dedupe_links(found)


# --------------------------------------------------------------------------- user paths


def open_source(spec: str | os.PathLike, config: CorpusConfig) -> Source:
    """A :class:`Source` for a demo domain name, a directory, a ``.jsonl`` file or a text file.

    A string equal to a demo domain's name is that domain (write ``./code`` for a directory of that
    name). Directory listings happen here, so an empty directory fails before any work starts.
    """
    if isinstance(spec, str) and spec in DEMO_DOMAINS:
        domain = DEMO_DOMAINS[spec]
        return Source("demo", domain.name, tuple(domain.roots()), domain.documents)
    path = Path(spec).expanduser()
    if not path.exists():
        raise CorpusError(
            f"{str(spec)!r} is neither an existing path nor a demo domain "
            f"(demo domains: {', '.join(DEMO_DOMAINS)})"
        )
    root = str(path.resolve())
    if path.is_dir():
        extensions = {e.lower() for e in config.extensions}

        def want(p: Path) -> bool:
            suffix = p.suffix.lower()
            return suffix in extensions or suffix == ".jsonl" or _has_no_extension(p)

        files = list_directory(path, want)
        if not files:
            raise CorpusError(
                f"no input files under {path}: expected {', '.join(sorted(extensions))}, .jsonl "
                "or extension-less text files"
            )
        return Source("directory", path.resolve().name, (root,),
                      lambda skipped: _read_files(files, config.text_field, skipped))
    if path.suffix.lower() == ".jsonl":
        return Source("jsonl", path.stem, (root,),
                      lambda skipped: iter_jsonl(path, config.text_field, skipped, path.name))
    return Source("file", path.stem, (root,),
                  lambda skipped: _read_files([(path.name, path)], config.text_field, skipped))


# --------------------------------------------------------------------------- demo domains

#: Directory names left out of the ``code`` domain: tests, IDLE, demos, installed packages, and
#: ``pydoc_data`` (its ``topics.py`` is the ``docs`` domain's text).
CODE_EXCLUDE_DIRS: frozenset[str] = frozenset({
    "test", "tests", "idlelib", "site-packages", "dist-packages", "__pycache__", "lib2to3",
    "turtledemo", "pydoc_data",
})

#: ``(root directory, glob pattern)`` pairs of the ``legal`` domain; source ids are
#: ``<root name>/<path under root>``. Point this at a fixture directory in tests.
LEGAL_ROOTS: tuple[tuple[str, str], ...] = (
    ("/usr/share/common-licenses", "*"),
    ("/usr/share/doc", "*/copyright"),
)


def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@demo_domain(
    "code",
    "CPython standard-library Python sources (no tests, idlelib, lib2to3, turtledemo, pydoc_data)",
    roots=lambda: [str(_stdlib_root())],
)
def _code_documents(skipped: SkipCounts) -> Iterator[Document]:
    root = _stdlib_root()
    files = list_directory(root, lambda p: p.suffix == ".py", CODE_EXCLUDE_DIRS)
    if not files:
        raise CorpusError(f"the code demo domain found no .py files under {root} (is the standard library installed?)")
    yield from _read_files(files, "text", skipped)


@demo_domain(
    "docs",
    "Python reference documentation: the pydoc topics of pydoc_data.topics, one document per topic",
    roots=lambda: ["pydoc_data.topics"],
)
def _docs_documents(skipped: SkipCounts) -> Iterator[Document]:
    try:
        from pydoc_data.topics import topics
    except ImportError as e:
        raise CorpusError("the docs demo domain needs pydoc_data, which this Python installation lacks") from e
    for key in sorted(topics):
        yield f"pydoc_data.topics:{key}", clean_text(topics[key])


def _legal_files() -> list[tuple[str, Path]]:
    files: list[tuple[str, Path]] = []
    for root, pattern in LEGAL_ROOTS:
        base = Path(root)
        if base.is_dir():
            found = sorted(p for p in base.glob(pattern) if p.is_file())
            files.extend((f"{base.name}/{p.relative_to(base).as_posix()}", p) for p in found)
    return dedupe_links(files)


@demo_domain(
    "legal",
    "Software licences and Debian copyright files (/usr/share/common-licenses, /usr/share/doc/*/copyright)",
    roots=lambda: [str(Path(root) / pattern) for root, pattern in LEGAL_ROOTS],
)
def _legal_documents(skipped: SkipCounts) -> Iterator[Document]:
    files = _legal_files()
    if not files:
        where = ", ".join(str(Path(root) / pattern) for root, pattern in LEGAL_ROOTS)
        raise CorpusError(
            f"the legal demo domain found no files ({where}); on a non-Debian system point "
            "edge_downscale.data.sources.LEGAL_ROOTS at a directory of licence texts"
        )
    yield from _read_files(files, "text", skipped)
