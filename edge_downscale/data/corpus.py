"""Build, load and describe corpora: deduplicated, near-duplicate-grouped, leak-free splits.

``build_corpus`` runs in three passes:

1. read every document once: skip too-short ones, truncate over-long ones at a line end, drop
   exact duplicates (sha256 of the NFC-normalised, lower-cased, whitespace-collapsed text; the
   first in source order is kept), compute a MinHash of its word shingles, spill the text to disk;
2. group near-duplicates: MinHashLSH proposes candidate pairs, pairs whose estimated Jaccard
   similarity reaches the threshold are joined with union-find. A group's key is the smallest
   exact hash among its members, so it does not depend on reading order;
3. assign each *group* a split from ``sha256(salt + key)`` mapped to [0, 1): near-duplicates
   never straddle splits, and a document keeps its split when unrelated documents are added.
   The splits are written with HF ``datasets`` (columns text, source, group, n_bytes) into a
   temporary directory next to the output, which is renamed into place only when complete.

The manifest ``corpus.json`` records the config, counts and, per split, a sha256 over the split's
documents in order, each document's UTF-8 text followed by one NUL byte (``hash_scheme``).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
import time
import unicodedata
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator, Sequence

from .._io import atomic_path, cache_dir
from ..config import StageConfig, check, check_int, is_int, is_number
from ..errors import ConfigError, CorpusError, require
from .sources import DEMO_DOMAINS, SkipCounts, Source, open_source

MANIFEST = "corpus.json"
FORMAT_VERSION = 1
SPLITS: tuple[str, str, str] = ("train", "validation", "test")
LSH_WEIGHTS = (0.1, 0.9)  # (false positive, false negative) weights for MinHashLSH's band choice
HASH_SCHEME = "sha256 over the split's documents in order: UTF-8 text + one NUL byte each"
SourceSpec = str | os.PathLike


@dataclasses.dataclass
class CorpusConfig(StageConfig):
    """How a corpus is filtered, deduplicated and split.

    ``split_fractions``: (train, validation, test), summing to 1. ``near_dup_threshold``: estimated
    Jaccard similarity of word ``shingle_size``-grams at which two documents are near-duplicates.
    ``max_doc_bytes``: longer documents are truncated at a line end; ``min_doc_bytes``: shorter
    ones (whitespace stripped, after truncation) are skipped. ``max_docs``: stop after this many
    kept documents. ``salt``: mixed into the split hash; change it to draw different splits.
    """

    stage: ClassVar[str] = "data"
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    near_dup_threshold: float = 0.8
    num_perm: int = 128
    shingle_size: int = 5
    max_doc_bytes: int = 200_000
    min_doc_bytes: int = 64
    max_docs: int | None = None
    salt: str = "edge-downscale-v1"
    extensions: tuple[str, ...] = (".txt", ".md", ".py", ".rst")
    text_field: str = "text"

    def validate(self) -> None:
        fr = self.split_fractions
        check(isinstance(fr, tuple) and len(fr) == 3 and all(is_number(x) for x in fr),
              f"split_fractions must be three numbers (train, validation, test), got {fr!r}")
        self.split_fractions = tuple(float(x) for x in fr)  # type: ignore[assignment]
        check(all(x >= 0 for x in self.split_fractions) and abs(sum(self.split_fractions) - 1) < 1e-6,
              f"split_fractions must be >= 0 and sum to 1, got {fr!r}")
        check(self.split_fractions[0] > 0, "split_fractions: the train fraction must be > 0")
        check(is_number(self.near_dup_threshold) and 0 < self.near_dup_threshold <= 1,
              f"near_dup_threshold must be in (0, 1], got {self.near_dup_threshold!r}")
        check_int(self, "num_perm", 16, 1024)
        check_int(self, "shingle_size", 1)
        check_int(self, "min_doc_bytes", 0)
        check(is_int(self.max_doc_bytes) and self.max_doc_bytes > max(self.min_doc_bytes, 0),
              f"max_doc_bytes must be an integer > min_doc_bytes, got {self.max_doc_bytes!r}")
        check(self.max_docs is None or (is_int(self.max_docs) and self.max_docs >= 1),
              f"max_docs must be None or an integer >= 1, got {self.max_docs!r}")
        check(isinstance(self.salt, str) and self.salt != "", "salt must be a non-empty string")
        ext = self.extensions
        check(isinstance(ext, tuple) and all(isinstance(e, str) and len(e) > 1 and e.startswith(".") for e in ext),
              f"extensions must be strings like '.txt', got {ext!r}")
        self.extensions = tuple(e.lower() for e in ext)
        check(isinstance(self.text_field, str) and self.text_field != "",
              "text_field must be a non-empty string")


# --------------------------------------------------------------------------- text helpers


def normalised_words(text: str) -> list[str]:
    """NFC, lower-cased, split on whitespace: the view used for exact and near-duplicate hashing."""
    return unicodedata.normalize("NFC", text).lower().split()


def exact_hash(words: Sequence[str]) -> str:
    return hashlib.sha256(" ".join(words).encode("utf-8")).hexdigest()


def shingles(words: Sequence[str], size: int) -> set[bytes]:
    """Word ``size``-grams (a shorter document is one shingle)."""
    if len(words) <= size:
        return {" ".join(words).encode("utf-8")}
    return {" ".join(words[i:i + size]).encode("utf-8") for i in range(len(words) - size + 1)}


def truncate_utf8(data: bytes, max_bytes: int) -> bytes:
    """At most ``max_bytes``: cut after the last newline that fits, else at a character boundary."""
    if len(data) <= max_bytes:
        return data
    head = data[:max_bytes]
    newline = head.rfind(b"\n")
    if newline >= 0:
        return head[: newline + 1]
    return head.decode("utf-8", "ignore").encode("utf-8")


def split_of(salt: str, group_key: str, fractions: Sequence[float]) -> str:
    """The split of a group: ``sha256(salt + key)`` read as a number in [0, 1)."""
    u = int.from_bytes(hashlib.sha256((salt + group_key).encode("utf-8")).digest()[:8], "big") / 2.0**64
    edge = 0.0
    for name, fraction in zip(SPLITS, fractions):
        edge += fraction
        if u < edge:
            return name
    return next(n for n, f in zip(reversed(SPLITS), reversed(fractions)) if f > 0)  # rounding at 1.0


# --------------------------------------------------------------------------- build


@dataclasses.dataclass
class _Scan:
    """What pass 1 keeps per document (texts themselves go to the spill file)."""

    source_ids: list[str] = dataclasses.field(default_factory=list)
    hashes: list[str] = dataclasses.field(default_factory=list)
    offsets: list[int] = dataclasses.field(default_factory=list)
    sizes: list[int] = dataclasses.field(default_factory=list)
    minhashes: list[Any] = dataclasses.field(default_factory=list)
    read: int = 0
    too_short: int = 0
    truncated: int = 0
    exact_duplicates: int = 0
    max_docs_reached: bool = False


def _scan(sources: Sequence[Source], config: CorpusConfig, spill: Path, skipped: SkipCounts,
          progress: bool) -> _Scan:
    from datasketch import MinHash
    from tqdm.auto import tqdm

    template = MinHash(num_perm=config.num_perm, seed=1)
    scan = _Scan()
    seen: set[str] = set()
    offset = 0
    with open(spill, "wb") as out, tqdm(desc="reading", unit=" docs", disable=not progress) as bar:
        for source in sources:
            bar.set_description(f"reading {source.name}")
            for source_id, text in source.documents(skipped):
                scan.read += 1
                bar.update()
                data = text.encode("utf-8")
                cut = len(data) > config.max_doc_bytes
                if cut:
                    data = truncate_utf8(data, config.max_doc_bytes)
                    text = data.decode("utf-8")
                if len(text.strip().encode("utf-8")) < config.min_doc_bytes:
                    scan.too_short += 1
                    continue
                words = normalised_words(text)
                key = exact_hash(words)
                if key in seen:
                    scan.exact_duplicates += 1
                    continue
                seen.add(key)
                scan.truncated += cut
                minhash = template.copy()
                minhash.update_batch(shingles(words, config.shingle_size))
                out.write(data)
                scan.source_ids.append(source_id)
                scan.hashes.append(key)
                scan.offsets.append(offset)
                scan.sizes.append(len(data))
                scan.minhashes.append(minhash)
                offset += len(data)
                if config.max_docs is not None and len(scan.hashes) >= config.max_docs:
                    scan.max_docs_reached = True
                    return scan
    return scan


def near_duplicate_roots(minhashes: Sequence[Any], threshold: float, num_perm: int,
                         progress: bool = False, desc: str = "near-duplicates") -> list[int]:
    """Union-find over verified MinHash-LSH candidates: the root index of every document's group.

    A root is the smallest index in its group (so "keep the root" keeps the first in order).
    ``minhashes``: datasketch ``MinHash`` objects with ``num_perm`` permutations. Shared by
    ``build_corpus`` (grouping for leak-free splits) and ``edge_downscale.data.prune`` (near-dedup).
    """
    from datasketch import MinHashLSH
    from tqdm.auto import tqdm

    parent = list(range(len(minhashes)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    # Weight recall over precision: a missed pair could leak across splits, while a false
    # candidate only costs one Jaccard estimate below.
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=LSH_WEIGHTS)
    for i, minhash in enumerate(tqdm(minhashes, desc=desc, unit=" docs", disable=not progress)):
        for j in lsh.query(minhash):
            ri, rj = find(i), find(j)
            if ri != rj and minhash.jaccard(minhashes[j]) >= threshold:
                parent[max(ri, rj)] = min(ri, rj)
        lsh.insert(i, minhash)
    return [find(i) for i in range(len(minhashes))]


def _group(scan: _Scan, config: CorpusConfig, progress: bool) -> list[str]:
    """The group key of every kept document (union-find over verified LSH candidates)."""
    roots = near_duplicate_roots(scan.minhashes, config.near_dup_threshold, config.num_perm, progress)
    key_of_root: dict[int, str] = {}
    for h, r in zip(scan.hashes, roots):
        if r not in key_of_root or h < key_of_root[r]:
            key_of_root[r] = h
    return [key_of_root[r] for r in roots]


def _split_rows(spill: str, index: str) -> Iterator[dict[str, Any]]:
    """Rows of one split for ``Dataset.from_generator``: texts read back from the spill file."""
    with open(spill, "rb") as texts, open(index, encoding="utf-8") as rows:
        for line in rows:
            offset, size, source, group = json.loads(line)
            texts.seek(offset)
            yield {"text": texts.read(size).decode("utf-8"), "source": source, "group": group, "n_bytes": size}


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if not (out.exists() or out.is_symlink()):
        return
    if not overwrite:
        raise CorpusError(f"{out} already exists: pass overwrite=True (CLI: --overwrite) to replace it")
    if out.is_symlink() or not out.is_dir():
        raise CorpusError(f"{out} exists and is not a directory: remove it or choose another output directory")
    if not (out / MANIFEST).is_file() and any(out.iterdir()):
        raise CorpusError(
            f"refusing to overwrite {out}: it is not a corpus directory (no {MANIFEST}); "
            "remove it yourself or choose another output directory"
        )


def _as_specs(source: SourceSpec | Sequence[SourceSpec]) -> list[SourceSpec]:
    if isinstance(source, (str, os.PathLike)):
        return [source]
    specs = list(source)
    if not specs:
        raise CorpusError("no sources given: pass a directory, a .jsonl file, a text file or a demo domain")
    return specs


def build_corpus(source: SourceSpec | Sequence[SourceSpec], out_dir: str | os.PathLike,
                 config: CorpusConfig | None = None, progress: bool = True,
                 overwrite: bool = False) -> dict[str, Any]:
    """Build a corpus directory from one or more sources; returns its manifest.

    ``source``: a demo domain name, a directory, a ``.jsonl`` file or a text file (or a list).
    ``out_dir`` must not exist unless ``overwrite`` is true (and then must be a corpus directory).
    """
    from .. import __version__

    datasets = require("datasets", "compress")
    require("datasketch", "compress")
    from tqdm.auto import tqdm

    config = CorpusConfig() if config is None else config
    if not isinstance(config, CorpusConfig):
        raise ConfigError(f"config must be a CorpusConfig, got {type(config).__name__}")
    sources = [open_source(s, config) for s in _as_specs(source)]
    out = Path(out_dir).expanduser()
    _check_out_dir(out, overwrite)
    t0 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".work", dir=out.parent))
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # ours are enough
    try:
        skipped = SkipCounts()
        spill = work / "texts.bin"
        scan = _scan(sources, config, spill, skipped, progress)
        if not scan.hashes:
            raise CorpusError(
                f"no documents left from {', '.join(s.name for s in sources)}: read {scan.read}, "
                f"{scan.too_short} shorter than min_doc_bytes={config.min_doc_bytes}, "
                f"{skipped.non_utf8} not UTF-8, {skipped.invalid_json + skipped.missing_field} bad JSONL lines"
            )
        keys = _group(scan, config, progress)
        splits = [split_of(config.salt, k, config.split_fractions) for k in keys]
        scan.minhashes.clear()

        features = datasets.Features({
            "text": datasets.Value("string"), "source": datasets.Value("string"),
            "group": datasets.Value("string"), "n_bytes": datasets.Value("int64"),
        })
        stats: dict[str, dict[str, Any]] = {}
        parts: dict[str, Any] = {}
        with open(spill, "rb") as texts:
            for name in tqdm(SPLITS, desc="writing splits", disable=not progress):
                rows = [i for i, s in enumerate(splits) if s == name]
                index = work / f"{name}.jsonl"
                digest = hashlib.sha256()
                with open(index, "w", encoding="utf-8") as f:
                    for i in rows:
                        f.write(json.dumps([scan.offsets[i], scan.sizes[i], scan.source_ids[i], keys[i]]) + "\n")
                        texts.seek(scan.offsets[i])
                        digest.update(texts.read(scan.sizes[i]))
                        digest.update(b"\x00")
                if rows:
                    parts[name] = datasets.Dataset.from_generator(
                        _split_rows, features=features, cache_dir=str(work / "hf-cache"),
                        gen_kwargs={"spill": str(spill), "index": str(index)},
                    )
                else:
                    parts[name] = datasets.Dataset.from_dict({k: [] for k in features}, features=features)
                stats[name] = {
                    "documents": len(rows),
                    "bytes": sum(scan.sizes[i] for i in rows),
                    "groups": len({keys[i] for i in rows}),
                    "sha256": digest.hexdigest(),
                }

        group_sizes: dict[str, int] = {}
        for k in keys:
            group_sizes[k] = group_sizes.get(k, 0) + 1
        multi = [n for n in group_sizes.values() if n > 1]
        manifest: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "name": "+".join(s.name for s in sources),
            "sources": [s.describe() for s in sources],
            "config": config.to_dict(),
            "splits": stats,
            "empty_splits": [n for n in SPLITS if stats[n]["documents"] == 0],
            "documents_read": scan.read,
            "documents": len(keys),
            "bytes": sum(scan.sizes),
            "skipped": {"non_utf8": skipped.non_utf8, "too_short": scan.too_short,
                        "invalid_json": skipped.invalid_json, "missing_field": skipped.missing_field,
                        "unreadable": skipped.unreadable},
            "truncated": scan.truncated,
            "exact_duplicates_dropped": scan.exact_duplicates,
            "max_docs_reached": scan.max_docs_reached,
            "groups": len(group_sizes),
            "near_duplicate_groups": len(multi),
            "near_duplicate_documents": sum(multi),
            "largest_group": max(group_sizes.values()),
            "hash_scheme": HASH_SCHEME,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "edge_downscale_version": __version__,
        }
        save_corpus(out, parts, manifest, t0=t0, seconds_key="build_seconds")
        return manifest
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- write


def save_corpus(out: Path, parts: dict[str, Any], manifest: dict[str, Any], *, t0: float | None = None,
                seconds_key: str = "build_seconds", extra_files: dict[str, bytes] | None = None) -> None:
    """Write a corpus directory atomically: the splits (HF ``datasets``) plus ``corpus.json``.

    ``parts``: one ``datasets.Dataset`` per name in SPLITS; ``manifest`` gets ``seconds_key`` (time
    since ``t0``) just before it is written. ``extra_files``: more files (name -> bytes) to place in
    the directory in the same atomic rename. Shared by ``build_corpus`` and the pruning stage.
    """
    datasets = require("datasets", "compress")
    with atomic_path(out) as target:
        # An empty split needs an explicit shard, else it is saved without an arrow file and
        # cannot be loaded back.
        empty = {name: 1 for name in SPLITS if len(parts[name]) == 0}
        datasets.DatasetDict({name: parts[name] for name in SPLITS}).save_to_disk(str(target), num_shards=empty)
        for name, data in (extra_files or {}).items():
            (target / name).write_bytes(data)
        if t0 is not None:
            manifest[seconds_key] = round(time.perf_counter() - t0, 3)
        (target / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def split_digest(texts: Iterable[str]) -> str:
    """The manifest's per-split sha256 (see HASH_SCHEME)."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()


# --------------------------------------------------------------------------- read


def _missing(path: Path, what: str) -> CorpusError:
    return CorpusError(
        f"{path} is not a corpus directory ({what}): run `edge-downscale data build SOURCE --out {path}`"
    )


def corpus_info(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest (``corpus.json``) of a corpus directory."""
    path = Path(path).expanduser()
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise _missing(path, f"no {MANIFEST}")
    try:
        info = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _missing(path, f"unreadable {MANIFEST}: {e}") from e
    if not isinstance(info, dict) or not isinstance(info.get("splits"), dict):
        raise _missing(path, f"malformed {MANIFEST}")
    return info


def load_corpus(path: str | os.PathLike):
    """The corpus as a memory-mapped ``datasets.DatasetDict`` with splits train/validation/test."""
    datasets = require("datasets", "compress")
    path = Path(path).expanduser()
    corpus_info(path)
    if not (path / "dataset_dict.json").is_file():
        raise _missing(path, "no dataset_dict.json")
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises several types for a damaged directory
        raise _missing(path, f"cannot load it: {e}") from e
    if not isinstance(loaded, datasets.DatasetDict) or set(loaded) != set(SPLITS):
        raise _missing(path, f"expected splits {', '.join(SPLITS)}")
    return loaded


def iter_texts(path: str | os.PathLike, split: str, max_bytes: int | None = None) -> Iterator[str]:
    """Texts of one split in order; with ``max_bytes`` the total is capped (the last text is cut)."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if max_bytes is not None and (not is_int(max_bytes) or max_bytes <= 0):
        raise ConfigError(f"max_bytes must be a positive integer or None, got {max_bytes!r}")
    dataset = load_corpus(path)[split].select_columns(["text"])
    budget = max_bytes
    for batch in dataset.iter(batch_size=256):
        for text in batch["text"]:
            if budget is not None:
                data = text.encode("utf-8")
                if len(data) >= budget:
                    yield data[:budget].decode("utf-8", "ignore")
                    return
                budget -= len(data)
            yield text


def _manifest_matches(path: Path, config: CorpusConfig) -> bool:
    try:
        info = corpus_info(path)
        return (info.get("format_version") == FORMAT_VERSION
                and CorpusConfig.from_dict(info["config"]) == config
                and (path / "dataset_dict.json").is_file())
    except (CorpusError, ConfigError, KeyError, TypeError):
        return False


def demo_corpus(domain: str, config: CorpusConfig | None = None, *, progress: bool = True) -> Path:
    """Path of the built-in ``domain`` corpus, built into the cache on first use.

    A cached build is reused while its manifest's config equals ``config``; otherwise it is rebuilt.
    """
    if domain not in DEMO_DOMAINS:
        raise CorpusError(f"unknown demo domain {domain!r}; available: {', '.join(DEMO_DOMAINS)}")
    config = CorpusConfig() if config is None else config
    path = cache_dir("corpora") / domain
    if not _manifest_matches(path, config):
        build_corpus(domain, path, config, progress=progress, overwrite=True)
    return path
