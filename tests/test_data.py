"""Corpora: sources, deduplication, near-duplicate grouping and leak-free deterministic splits.

Every test uses real text already on the machine (pydoc topics, licence texts), small enough to
build in well under a second.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytest.importorskip("datasets")
pytest.importorskip("datasketch")

from edge_downscale.data import (  # noqa: E402
    DEMO_DOMAINS,
    CorpusConfig,
    build_corpus,
    corpus_info,
    demo_corpus,
    iter_texts,
    load_corpus,
)
from edge_downscale.data import sources as sources_mod  # noqa: E402
from edge_downscale.errors import ConfigError, CorpusError  # noqa: E402


# --------------------------------------------------------------------------- real text


def _topics(n: int, min_chars: int = 1500) -> list[str]:
    """``n`` distinct pydoc topic texts (reference prose) of at least ``min_chars``."""
    topics = pytest.importorskip("pydoc_data.topics").topics
    seen: set[str] = set()
    out: list[str] = []
    for key in sorted(topics):
        text = topics[key]
        if len(text) >= min_chars and text not in seen:
            seen.add(text)
            out.append(text)
        if len(out) == n:
            return out
    pytest.skip("not enough pydoc topics")


def _licence() -> str:
    """A real licence text: a Debian common licence, else CPython's LICENSE.txt."""
    for candidate in (Path("/usr/share/common-licenses/Apache-2.0"), Path("/usr/share/common-licenses/GPL-2"),
                      Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"):
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8")
    pytest.skip("no licence text on this machine")


def _change_words(text: str, every: int, offset: int) -> str:
    """Replace every ``every``-th word (starting at ``offset``) with a different one; lines kept."""
    out, k = [], 0
    for line in text.split("\n"):
        words = line.split(" ")
        for i, w in enumerate(words):
            if w:
                if k % every == offset:
                    words[i] = f"changed{k}"
                k += 1
        out.append(" ".join(words))
    return "\n".join(out)


def _write_dir(root: Path, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return root


def _rows(corpus: Path) -> dict[str, tuple[str, str]]:
    """source id -> (split, group) over the whole corpus."""
    out = {}
    for split, ds in load_corpus(corpus).items():
        for source, group in zip(ds["source"], ds["group"]):
            assert source not in out, f"{source} appears twice"
            out[source] = (split, group)
    return out


# --------------------------------------------------------------------------- config


def test_config_round_trips_and_validates():
    cfg = CorpusConfig(split_fractions=(0.7, 0.2, 0.1), near_dup_threshold=0.9, max_docs=10,
                       extensions=(".TXT", ".md"))
    assert cfg.extensions == (".txt", ".md")
    assert CorpusConfig.from_json(cfg.to_json()) == cfg
    assert CorpusConfig.from_dict(json.loads(json.dumps(CorpusConfig().to_dict()))) == CorpusConfig()
    for bad in ({"split_fractions": (0.8, 0.1, 0.2)}, {"split_fractions": (0.5, 0.5)},
                {"split_fractions": (0.0, 0.5, 0.5)}, {"near_dup_threshold": 0.0},
                {"num_perm": 4}, {"shingle_size": 0}, {"min_doc_bytes": 100, "max_doc_bytes": 100},
                {"max_docs": 0}, {"salt": ""}, {"extensions": ("txt",)}, {"text_field": ""}):
        with pytest.raises(ConfigError):
            CorpusConfig(**bad)
    with pytest.raises(ConfigError, match="unknown key"):
        CorpusConfig.from_dict({"threshold": 0.5})


# --------------------------------------------------------------------------- dedup / grouping


def test_exact_duplicate_dropped_first_kept(tmp_path):
    texts = _topics(6)
    files = {f"t{i}.txt": t for i, t in enumerate(texts)}
    # Same words, different case and spacing: an exact duplicate after normalisation.
    files["zz_copy.md"] = "  " + texts[2].upper().replace(" ", "   ")
    src = _write_dir(tmp_path / "src", files)
    manifest = build_corpus(src, tmp_path / "out", progress=False)
    assert manifest["exact_duplicates_dropped"] == 1
    assert manifest["documents"] == 6
    rows = _rows(tmp_path / "out")
    assert "t2.txt" in rows and "zz_copy.md" not in rows
    assert sum(s["documents"] for s in manifest["splits"].values()) == 6


def test_near_duplicates_share_group_and_split(tmp_path, monkeypatch):
    licence = _licence()
    others = _topics(12)
    files: dict[str, str] = {"licenses/ORIGINAL": licence}
    for i in range(8):  # a header line plus a few changed words: near-, not exact, duplicates
        files[f"doc/pkg{i}/copyright"] = f"Upstream-Name: pkg{i}\n" + _change_words(licence, 97, i)
    for i, text in enumerate(others):
        files[f"doc/other{i:02d}/copyright"] = text
    root = _write_dir(tmp_path / "fixture", files)
    monkeypatch.setattr(sources_mod, "LEGAL_ROOTS", ((str(root / "licenses"), "*"), (str(root / "doc"), "*/copyright")))

    manifest = build_corpus("legal", tmp_path / "out", progress=False)
    assert manifest["exact_duplicates_dropped"] == 0
    assert manifest["near_duplicate_groups"] == 1
    assert manifest["near_duplicate_documents"] == 9
    rows = _rows(tmp_path / "out")
    split, group = rows["licenses/ORIGINAL"]
    for i in range(8):
        assert rows[f"doc/pkg{i}/copyright"] == (split, group)
    # Unrelated documents are not pulled into the group.
    assert all(rows[f"doc/other{i:02d}/copyright"][1] != group for i in range(12))
    # Every group lies in exactly one split.
    split_of_group: dict[str, set[str]] = {}
    for s, g in rows.values():
        split_of_group.setdefault(g, set()).add(s)
    assert all(len(s) == 1 for s in split_of_group.values())


def test_builds_are_deterministic_and_splits_stable_when_adding(tmp_path):
    texts = _topics(40)
    src = _write_dir(tmp_path / "src", {f"doc{i:02d}.txt": t for i, t in enumerate(texts[:30])})
    a = build_corpus(src, tmp_path / "a", progress=False)
    b = build_corpus(src, tmp_path / "b", progress=False)
    assert a["splits"] == b["splits"]
    assert {k: v["documents"] for k, v in a["splits"].items()} != {"train": 30, "validation": 0, "test": 0}
    before = _rows(tmp_path / "a")
    assert before == _rows(tmp_path / "b")

    _write_dir(src, {f"doc{i:02d}.txt": t for i, t in enumerate(texts) if i >= 30})
    build_corpus(src, tmp_path / "c", progress=False)
    after = _rows(tmp_path / "c")
    assert len(after) == 40
    assert {k: after[k] for k in before} == before

    salted = build_corpus(src, tmp_path / "d", CorpusConfig(salt="other"), progress=False)
    assert salted["splits"] != corpus_info(tmp_path / "c")["splits"]


# --------------------------------------------------------------------------- sources


def test_non_utf8_and_binary_files_skipped_and_counted(tmp_path):
    texts = _topics(3)
    src = _write_dir(tmp_path / "src", {
        "a.txt": texts[0], "b.md": texts[1], "sub/README": texts[2],
        "latin1.txt": texts[0].replace("the", "caf\u00e9").encode("latin-1", "replace"),
        "blob": b"\x7fELF\x00\x00binary" * 20,
        "ignored.bin": b"\xff\xfe" * 100,  # extension not configured: not read at all
        ".hidden.txt": texts[1],
    })
    manifest = build_corpus(src, tmp_path / "out", progress=False)
    assert manifest["skipped"]["non_utf8"] == 2
    assert manifest["documents_read"] == 3
    assert set(_rows(tmp_path / "out")) == {"a.txt", "b.md", "sub/README"}


def test_symlinked_file_read_once(tmp_path):
    texts = _topics(2)
    src = _write_dir(tmp_path / "src", {"GPL-3": texts[0], "other.txt": texts[1]})
    (src / "GPL").symlink_to("GPL-3")
    manifest = build_corpus(src, tmp_path / "out", progress=False)
    assert manifest["documents_read"] == 2 and manifest["exact_duplicates_dropped"] == 0
    assert set(_rows(tmp_path / "out")) == {"GPL-3", "other.txt"}


def test_empty_directory_is_a_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError) as e:
        build_corpus(tmp_path / "empty", tmp_path / "out", progress=False)
    assert "\n" not in str(e.value) and "no input files" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_jsonl_bad_lines_counted(tmp_path):
    texts = _topics(4)
    lines = [json.dumps({"text": t, "id": i}) for i, t in enumerate(texts)]
    lines += [json.dumps({"body": texts[0]}), json.dumps({"text": 3}), "{not json", "[1, 2]", ""]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    manifest = build_corpus(path, tmp_path / "out", progress=False)
    assert manifest["skipped"]["missing_field"] == 2
    assert manifest["skipped"]["invalid_json"] == 2
    assert manifest["documents"] == 4
    assert set(_rows(tmp_path / "out")) == {f"data.jsonl:{i}" for i in range(1, 5)}

    by_body = build_corpus(path, tmp_path / "out2", CorpusConfig(text_field="body"), progress=False)
    assert by_body["documents"] == 1 and by_body["skipped"]["missing_field"] == 5

    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "b.jsonl").write_text(json.dumps({"text": texts[0]}) + "\n", encoding="utf-8")
    (folder / "a.jsonl").write_text(json.dumps({"text": texts[1]}) + "\n{}\n", encoding="utf-8")
    in_dir = build_corpus(folder, tmp_path / "out3", progress=False)
    assert in_dir["skipped"]["missing_field"] == 1
    assert set(_rows(tmp_path / "out3")) == {"a.jsonl:1", "b.jsonl:1"}


def test_empty_split_recorded_and_loadable(tmp_path):
    src = _write_dir(tmp_path / "src", {f"{i}.txt": t for i, t in enumerate(_topics(4))})
    manifest = build_corpus(src, tmp_path / "out", CorpusConfig(split_fractions=(1.0, 0.0, 0.0)), progress=False)
    assert manifest["empty_splits"] == ["validation", "test"]
    ds = load_corpus(tmp_path / "out")
    assert (len(ds["train"]), len(ds["validation"]), len(ds["test"])) == (4, 0, 0)
    assert ds["test"].column_names == ["text", "source", "group", "n_bytes"]


def test_long_documents_truncated_short_ones_skipped(tmp_path):
    texts = _topics(3, min_chars=3000)
    src = _write_dir(tmp_path / "src", {"long.txt": texts[0], "ok.txt": texts[1][:1500], "tiny.txt": "too short\n"})
    cfg = CorpusConfig(max_doc_bytes=2000, min_doc_bytes=64)
    manifest = build_corpus(src, tmp_path / "out", cfg, progress=False)
    assert manifest["truncated"] == 1 and manifest["skipped"]["too_short"] == 1
    ds = load_corpus(tmp_path / "out")
    row = next(r for split in ds.values() for r in split if r["source"] == "long.txt")
    assert row["n_bytes"] == len(row["text"].encode("utf-8")) <= 2000
    assert row["text"].endswith("\n") and texts[0].startswith(row["text"])


def test_unknown_source_lists_demo_domains(tmp_path):
    with pytest.raises(CorpusError) as e:
        build_corpus("no-such-domain", tmp_path / "out", progress=False)
    assert all(name in str(e.value) for name in ("code", "docs", "legal"))


# --------------------------------------------------------------------------- output directory


def test_existing_out_dir_needs_overwrite_and_stays_untouched(tmp_path):
    texts = _topics(5)
    src = _write_dir(tmp_path / "src", {f"{i}.txt": t for i, t in enumerate(texts)})
    out = tmp_path / "out"
    build_corpus(src, out, progress=False)
    snapshot = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    (src / "new.txt").write_text(_topics(6)[5], encoding="utf-8")
    with pytest.raises(CorpusError, match="overwrite"):
        build_corpus(src, out, progress=False)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == snapshot
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left

    manifest = build_corpus(src, out, progress=False, overwrite=True)
    assert manifest["documents"] == 6 == corpus_info(out)["documents"]

    other = tmp_path / "not-a-corpus"
    other.mkdir()
    (other / "keep.txt").write_text("precious", encoding="utf-8")
    with pytest.raises(CorpusError, match="not a corpus directory"):
        build_corpus(src, other, progress=False, overwrite=True)
    assert (other / "keep.txt").read_text(encoding="utf-8") == "precious"


def test_load_corpus_of_missing_or_malformed_dir(tmp_path):
    with pytest.raises(CorpusError, match="edge-downscale data build"):
        load_corpus(tmp_path / "nothing")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "corpus.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(CorpusError, match="edge-downscale data build"):
        load_corpus(bad)


# --------------------------------------------------------------------------- demo domains


def test_docs_demo_domain(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_DOWNSCALE_CACHE", str(tmp_path / "cache"))
    path = demo_corpus("docs", progress=False)
    assert path == tmp_path / "cache" / "corpora" / "docs"
    ds = load_corpus(path)
    assert all(len(ds[s]) > 0 for s in ("train", "validation", "test"))
    info = corpus_info(path)
    assert info["documents_read"] == 79 and info["empty_splits"] == []
    assert all(src.startswith("pydoc_data.topics:") for src in ds["train"]["source"])

    stamp = (path / "corpus.json").stat().st_mtime_ns
    assert demo_corpus("docs", progress=False) == path
    assert (path / "corpus.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    capped = list(iter_texts(path, "test", max_bytes=1000))
    assert sum(len(t.encode("utf-8")) for t in capped) == 1000
    assert list(iter_texts(path, "validation")) == list(ds["validation"]["text"])
    with pytest.raises(ConfigError):
        list(iter_texts(path, "dev"))

    before = info["splits"]
    demo_corpus("docs", CorpusConfig(salt="other"), progress=False)
    rebuilt = corpus_info(path)
    assert rebuilt["config"]["salt"] == "other" and rebuilt["splits"] != before  # a different config rebuilds


def test_demo_domains_registered():
    assert set(DEMO_DOMAINS) == {"code", "docs", "legal"}
    assert all(d.description for d in DEMO_DOMAINS.values())


def test_import_loads_no_heavy_modules():
    code = ("import sys, edge_downscale.data; "
            "print([m for m in ('torch', 'datasets', 'datasketch', 'transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- resolving corpora, held-out text


def test_resolve_corpus_names_a_demo_domain_or_a_directory(tmp_path, monkeypatch):
    from edge_downscale.data import resolve_corpus

    monkeypatch.setenv("EDGE_DOWNSCALE_CACHE", str(tmp_path / "cache"))
    assert resolve_corpus("docs", progress=False) == tmp_path / "cache" / "corpora" / "docs"
    built = tmp_path / "mine"
    built.mkdir()
    assert resolve_corpus(str(built)) == built and resolve_corpus(built) == built
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs").mkdir()
    assert resolve_corpus("docs", progress=False) == tmp_path / "cache" / "corpora" / "docs"  # the name wins
    assert resolve_corpus("./docs") == Path("./docs")
    for bad in ("klingon", str(tmp_path / "nothing")):
        with pytest.raises(ConfigError, match="unknown domain") as e:
            resolve_corpus(bad)
        msg = str(e.value)
        assert "neither a corpus directory nor a demo domain" in msg and "code, docs, legal" in msg
        assert "edge-downscale data build" in msg and "\n" not in msg


def test_heldout_texts_are_capped_seeded_and_loaded_per_domain(tmp_path, monkeypatch):
    from edge_downscale.config import EvalConfig
    from edge_downscale.data import heldout_by_domain, heldout_texts
    from edge_downscale.errors import EvalError

    monkeypatch.setenv("EDGE_DOWNSCALE_CACHE", str(tmp_path / "cache"))
    config = EvalConfig(max_bytes=3000)
    texts, all_texts = heldout_texts("docs", config)
    assert all_texts == [t for t in load_corpus(demo_corpus("docs", progress=False))["test"]["text"] if t]
    assert 0 < sum(len(t.encode("utf-8")) for t in texts) <= 3000
    assert heldout_texts("docs", config) == (texts, all_texts)  # seeded
    assert heldout_by_domain(["docs"], config) == {"docs": (texts, all_texts)}
    assert heldout_texts("docs", EvalConfig(max_bytes=None))[0] != texts
    empty = tmp_path / "empty"
    src = _write_dir(tmp_path / "src", {f"{i}.txt": t for i, t in enumerate(_topics(2))})
    build_corpus(src, empty, CorpusConfig(split_fractions=(1.0, 0.0, 0.0)), progress=False)
    with pytest.raises(EvalError, match="split is empty"):
        heldout_texts(str(empty), config)
