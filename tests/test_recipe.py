"""Recipes: the example loads (both profiles) and round-trips; every bad input is one line naming file:line:col."""
import json
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_downscale.cli import cli
from edge_downscale.errors import ConfigError
from edge_downscale.pipeline import Recipe, list_profiles, load_recipe, recipe_schema

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "recipes" / "smollm2-edge.yaml"
BASE = "teacher: smollm2-135m\ndomains:\n  - {name: code, corpus: code}\n  - {name: docs, corpus: docs}\n"


def write(tmp_path, text, name="recipe.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def error(tmp_path, text, profile=None) -> str:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_recipe(p, profile)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(p))
    return msg[len(str(p)):]


# --------------------------------------------------------------------------- the example


@pytest.mark.parametrize("profile", [None, "quick"])
def test_the_example_loads_and_round_trips_through_json(profile):
    r = load_recipe(EXAMPLE, profile)
    assert r.name == "smollm2-edge" and r.teacher == "smollm2-135m"
    assert [d.name for d in r.domains] == ["code", "docs", "legal"] and r.domains[0].corpus == "code"
    assert r.prune.ratio == 0.3
    assert r.export.format == "gguf" and r.export.member_quant is None and r.baselines == ("smollm2-135m",)
    assert r.source == str(EXAMPLE) and Path(r.law).is_file()
    d = json.loads(json.dumps(r.to_dict()))
    assert d == r.to_dict() and Recipe.from_dict(d) == r
    if profile is None:
        assert r.stages == ("adapt", "prune", "recover") and r.recover.mode == "distill"
        assert r.recover.teacher == "adapted" and r.recover.train.token_budget == 32768
        assert r.prune.method == "activation" and r.prune.multiple == 256 and r.prune.prunenet is None
        assert r.export.quants == ("q8_0", "f16")
    else:
        assert r.stages == ("prune", "recover") and r.recover.mode == "finetune"  # lists replace
        assert r.prune.method == "prunenet" and r.prune.multiple == 64
        assert r.export.quants == ("q8_0", "f16") and r.prune.prunenet.episodes <= 5
        t = r.recover.train
        assert (t.token_budget, t.seq_len, t.batch_size) == (8192, 256, 4)
        assert r.eval.mc_items == 10 and r.eval.max_bytes == 4000 and r.data.corpus.max_docs == 300
        assert r.data.prune.steps == ("dedup", "near-dedup")  # lists replace
        assert r.data.prune.keep == 0.8 and r.data.corpus.split_fractions == (0.8, 0.1, 0.1)  # mappings merge
    assert list_profiles(EXAMPLE) == ("quick",)


def test_the_law_file_is_a_compression_law_results_file():
    from edge_downscale.compress.laws import load_results

    assert load_results(load_recipe(EXAMPLE).law)


def test_defaults_and_the_device_reach_both_train_configs(tmp_path):
    r = load_recipe(write(tmp_path, BASE + "device: cpu\nadapt: {train: {device: cuda}}\n"))
    assert r.name == "recipe" and r.recover.train.device == "cpu" and r.adapt.train.device == "cuda"
    assert r.export.quants == ("q8_0",) and r.data.prune is None and r.ensemble.strategy == "route"
    onnx = load_recipe(write(tmp_path, BASE + "export: {format: onnx}\n"))
    assert onnx.export.quants == ("int8",)


def test_a_profile_is_deep_merged_over_the_base(tmp_path):
    text = BASE + textwrap.dedent("""\
        recover:
          train: {token_budget: 4096, seq_len: 128}
        export: {quants: [q8_0, q4_0]}
        profiles:
          small:
            recover: {train: {token_budget: 1024}}
            export: {quants: [q4_0]}
            domains: [{name: legal}]
        """)
    p = write(tmp_path, text)
    base, small = load_recipe(p), load_recipe(p, "small")
    assert base.recover.train.token_budget == 4096 and small.recover.train.token_budget == 1024
    assert small.recover.train.seq_len == 128 and small.export.quants == ("q4_0",)
    assert [d.name for d in small.domains] == ["legal"] and len(base.domains) == 2


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("text, expected", [
    (BASE + "prune:\n  method: prunenet\n  ratoi: 0.3\n",
     ":7:3: prune.ratoi: unknown key; allowed: calib_domain, calib_sequences, ffn_policy, method, multiple, prunenet, ratio, refit, refit_mode, seed"),
    (BASE + "recover:\n  train:\n    token_budget: abc\n",
     ":7:5: recover.train.token_budget: must be an integer >= 0, got 'abc'"),
    (BASE + "recover:\n  train:\n    lr: fast\n", ":7:5: recover.train.lr: must be a number, got 'fast'"),
    (BASE + "export:\n  quants: [q8_0, q9]\n", ":6:3: export.quants: unknown gguf quantisation 'q9'; allowed:"),
    (BASE + "export:\n  quants: [q8_0]\n  member_quant: q4_0\n", ":7:3: export.member_quant: must be one of quants"),
    (BASE + "prune: {ratio: 1.5}\n", ":5:9: prune.ratio: must be in (0, 1), got 1.5"),
    (BASE + "data:\n  prune:\n    steps: [dedup, nope]\n", ":7:5: data.prune.steps: unknown pruning step(s) 'nope'"),
    (BASE + "recover:\n  distill: {divergence: reverse}\n", ":6:13: recover.distill.divergence: a cached top-k"),
    (BASE + "nme: x\n", ":5:1: nme: unknown key; allowed: adapt, baselines, data, device"),
    (BASE + "device: gpu\n", ":5:1: device: must be one of auto, cpu, cuda, got 'gpu'"),
    (BASE + "  - {name: code, corpus: docs}\n", ":5:6: domains[2].name: duplicate domain name 'code'"),
    (BASE + "  - {corpus: docs}\n", ":5:5: domains[2].name: required"),
    ("domains: [{name: code}]\n", ":1:1: teacher: required"),
    ("teacher: smollm2-135m\n", ":1:1: domains: give at least one domain"),
    (BASE + "prune: {calib_domain: legal}\n", ":5:9: prune.calib_domain: must be one of the domains"),
    (BASE + "ensemble: {strategy: shout}\n", ":5:12: ensemble.strategy: must be one of route, cascade, vote"),
    (BASE + "eval: 3\n", ":5:1: eval: must be a mapping of EvalConfig fields, got 3"),
    (BASE + "baselines: [no-such-model]\n", ":5:13: baselines[0]: unknown model 'no-such-model'"),
    ("teacher: nope\ndomains: [{name: code}]\n", ":1:1: teacher: unknown model 'nope'"),
    (BASE + "name: a b\n", ":5:1: name: must be letters, digits"),
    (BASE + "law: missing.json\n", ":5:1: law: no such file 'missing.json'"),
    (BASE + "adapt: {train: {domain_share: 0.5}}\n", ":5:17: adapt.train.domain_share: 0.5 < 1 mixes in replay"),
    (BASE + "device: cpu\ndevice: cuda\n", ":6:1: device: duplicate key"),
])
def test_a_bad_recipe_is_one_line_naming_file_line_column_and_key(tmp_path, text, expected):
    assert error(tmp_path, text).startswith(expected)


@pytest.mark.parametrize("stages, expected", [
    ("[]", "stages: nothing to build"), ("[recover]", "stages[0]: recover needs prune before it"),
    ("[recover, prune]", "stages[0]: recover needs prune"), ("[adapt, recover, prune]", "stages[1]: recover needs"),
    ("[prune, prune]", "stages[1]: 'prune' appears twice"), ("[prune, distill]", "stages[1]: unknown stage 'distill'"),
])
def test_stage_order_rules(tmp_path, stages, expected):
    assert error(tmp_path, BASE + f"stages: {stages}\n").split(": ", 1)[1].startswith(expected)


@pytest.mark.parametrize("stages", [["prune", "recover"], ["adapt", "prune", "recover"], ["prune", "adapt", "recover"],
                                    ["adapt"], ["prune"], ["adapt", "prune"]])
def test_valid_stage_orders(tmp_path, stages):
    assert load_recipe(write(tmp_path, BASE + f"stages: {json.dumps(stages)}\n")).stages == tuple(stages)


def test_file_yaml_and_top_level_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"nothere.yaml: recipe file not found$"):
        load_recipe(tmp_path / "nothere.yaml")
    assert error(tmp_path, "teacher: x\ndomains: [a\n").startswith(":3:1: invalid YAML")
    assert error(tmp_path, "teacher: x\n  bad: indent\n").startswith(":2:6: invalid YAML: mapping values")
    assert error(tmp_path, "- teacher\n- domains\n").startswith(":1:1: the top level must be a mapping")
    assert error(tmp_path, "# nothing\n").startswith(": the recipe is empty")


def test_a_missing_corpus_names_the_domain(tmp_path):
    msg = error(tmp_path, BASE + "  - {name: mine, corpus: ./texts}\n")
    assert msg.startswith(":5:18: domains[2].corpus: domain 'mine': no corpus directory or file './texts'")
    assert "code, docs, legal" in msg


def test_profile_errors_name_the_profile(tmp_path):
    text = BASE + "profiles:\n  quick:\n    recover:\n      train: {token_budgt: 5}\n"
    assert error(tmp_path, text, "quick").startswith(
        ":8:15: profiles.quick.recover.train.token_budgt: unknown key; allowed:")
    text = BASE + "profiles:\n  quick:\n    recover:\n      train:\n        token_budget: -1\n"
    assert error(tmp_path, text, "quick").startswith(
        ":9:9: profiles.quick.recover.train.token_budget: must be an integer >= 0, got -1")
    assert error(tmp_path, text, "fast").startswith(":5:1: profiles: unknown profile 'fast'; profiles: quick")
    assert error(tmp_path, BASE, "fast").startswith(":1:1: unknown profile 'fast'; profiles: none defined")
    assert error(tmp_path, BASE + "profiles: {quick: 3}\n").startswith(":5:12: profiles.quick: must be a mapping")


def test_relative_paths_resolve_against_the_recipe_file(tmp_path, monkeypatch):
    (tmp_path / "corpora" / "mine").mkdir(parents=True)
    (tmp_path / "corpora" / "notes.txt").write_text("hello " * 40)
    (tmp_path / "laws.json").write_text('{"points": []}')
    sub = tmp_path / "recipes"
    sub.mkdir()
    p = write(sub, """\
        teacher: smollm2-135m
        domains:
          - {name: mine, corpus: ../corpora/mine}
          - {name: notes, corpus: ../corpora/notes.txt}
          - {name: docs}
        adapt: {replay: code}
        law: ../laws.json
        """)
    monkeypatch.chdir(tmp_path / "corpora")  # the working directory plays no part
    r = load_recipe(p)
    assert [d.corpus for d in r.domains] == [str(tmp_path / "corpora" / "mine"),
                                             str(tmp_path / "corpora" / "notes.txt"), "docs"]
    assert r.law == str(tmp_path / "laws.json") and r.adapt.replay == "code"


def test_refit_mode_is_in_the_prune_task_key_except_for_the_first_mode():
    """A layer refit (a recipe's default) keeps the cache keys it had before modes existed; a sequential one is a new task."""
    from edge_downscale.pipeline.plan import make_plan

    def prune_task(**prune):
        r = Recipe(name="x", teacher="smollm2-135m", domains=[{"name": "code", "corpus": "code"}], stages=["prune"],
                   prune={"method": "activation", **prune})
        return next(t for t in make_plan(r) if t.kind == "prune")

    layer, seq = prune_task(refit=True), prune_task(refit=True, refit_mode="sequential")
    assert "refit_mode" not in layer.params and seq.params["refit_mode"] == "sequential"
    assert layer.key != seq.key
    assert "refit_mode" not in prune_task(refit=False).params
    with pytest.raises(ConfigError, match=r"^prune\.refit_mode: .*sequential, layer"):
        Recipe(name="x", teacher="t", domains=[{"name": "code"}], prune={"refit_mode": "greedy"})


def test_a_domain_overrides_its_own_model_stages_only():
    """domains[i].adapt / .prune / .recover merge over the recipe's sections for that domain; the other domains keep
    the recipe's sections and their cache keys."""
    from edge_downscale.pipeline.plan import make_plan

    def recipe(**code):
        return Recipe(name="x", teacher="smollm2-135m", stages=["adapt", "prune", "recover"],
                      domains=[{"name": "code", "corpus": "code", **code}, {"name": "docs", "corpus": "docs"}],
                      prune={"method": "activation", "ratio": 0.3, "refit": True}, recover={"mode": "distill"})

    plain_r = recipe()
    r = recipe(prune={"ratio": 0.1, "multiple": 128}, recover={"train": {"token_budget": 4096}})
    assert r.section("prune", "code").ratio == 0.1 and r.section("prune", "code").refit is True  # the rest inherited
    assert r.section("prune", "docs") is r.prune and r.section("recover") is r.recover
    assert r.section("recover", "code").train.token_budget == 4096 and r.section("recover", "code").mode == "distill"
    assert Recipe.from_dict(json.loads(json.dumps(r.to_dict()))) == r

    def keys(rec):
        return {(t.kind, t.domain): t for t in make_plan(rec) if t.kind in ("adapt", "prune", "recover")}

    before, after = keys(plain_r), keys(r)
    assert after[("prune", "code")].params["ratio"] == 0.1 and after[("prune", "code")].params["multiple"] == 128
    assert after[("recover", "code")].params["train"]["token_budget"] == 4096
    changed = {k for k in before if before[k].key != after[k].key}
    assert changed == {("prune", "code"), ("recover", "code")}  # adapt and every docs task keep their keys
    assert "code    overrides prune ratio 0.1, multiple 128; recover train.token_budget 4096" in r.summary()


def test_a_bad_domain_override_names_the_domain_and_key(tmp_path):
    text = "teacher: smollm2-135m\ndomains:\n  - name: code\n    prune: {ratoi: 0.1}\n"
    assert error(tmp_path, text).startswith(":4:13: domains[0].prune.ratoi: unknown key; allowed: calib_domain")
    text = "teacher: smollm2-135m\ndomains:\n  - name: code\n    prune: {ratio: 2}\n"
    assert error(tmp_path, text).startswith(":4:13: domains[0].prune.ratio: must be in (0, 1), got 2")
    text = "teacher: smollm2-135m\ndomains:\n  - name: code\n    recover: {train: {lr: fast}}\n"
    assert error(tmp_path, text).startswith(":4:23: domains[0].recover.train.lr: must be a number, got 'fast'")
    text = "teacher: smollm2-135m\ndomains:\n  - name: code\n    prune: {calib_domain: legal}\n"
    assert error(tmp_path, text).startswith(":4:13: domains[0].prune.calib_domain: must be one of the domains (code)")
    text = "teacher: smollm2-135m\ndomains:\n  - name: code\n    prune: 0.1\n"
    assert error(tmp_path, text).startswith(":4:5: domains[0].prune: must be a mapping")


def test_nested_sections_accept_their_dict_form():
    r = Recipe(name="x", teacher="t", domains=[{"name": "code"}], prune={"prunenet": {"episodes": 2}},
               recover={"mode": "distill", "train": {"token_budget": 512}})
    assert r.prune.prunenet.episodes == 2 and r.recover.train.token_budget == 512
    assert Recipe.from_dict(r.to_dict()) == r
    r = Recipe(name="x", teacher="t", domains=[{"name": "code"}],
               prune={"method": "ffn-policy", "ffn_policy": {"episodes": 3, "select": "sample"}})
    assert r.prune.method == "ffn-policy" and r.prune.ffn_policy.select == "sample"
    assert Recipe.from_dict(r.to_dict()) == r
    with pytest.raises(ConfigError, match=r"^prune\.method: must be one of prunenet, ffn-policy, random"):
        Recipe(name="x", teacher="t", domains=[{"name": "code"}], prune={"method": "ffn"})
    with pytest.raises(ConfigError, match=r"^recover\.train\.seq_len: .*seq_len >= 8"):
        Recipe(name="x", teacher="t", domains=[{"name": "code"}], recover={"train": {"seq_len": 4}})


# --------------------------------------------------------------------------- schema


def _validate(instance, schema, path="$"):
    """The subset of JSON Schema recipe_schema() uses (jsonschema is not a dependency); raises on a mismatch."""
    types = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    t = schema.get("type")
    if t == "integer":
        assert isinstance(instance, int) and not isinstance(instance, bool), path
    elif t == "number":
        assert isinstance(instance, (int, float)) and not isinstance(instance, bool), path
    elif t:
        assert isinstance(instance, types[t]), f"{path}: not {t}"
    if "enum" in schema:
        assert instance in schema["enum"], f"{path}: {instance!r} not in enum"
    if "const" in schema:
        assert instance == schema["const"], path
    if "anyOf" in schema:
        errors = []
        for arm in schema["anyOf"]:
            try:
                return _validate(instance, arm, path)
            except AssertionError as e:
                errors.append(str(e))
        raise AssertionError(f"{path}: no anyOf arm matched: {errors}")
    for sub in schema.get("allOf", []):
        try:
            _validate(instance, sub["if"], path)
        except AssertionError:
            continue
        _validate(instance, sub["then"], path)
    if isinstance(instance, dict):
        for key in schema.get("required", []):
            assert key in instance, f"{path}: missing {key}"
        props = schema.get("properties", {})
        for key, value in instance.items():
            if key in props:
                _validate(value, props[key], f"{path}.{key}")
            elif schema.get("additionalProperties") is False:
                raise AssertionError(f"{path}: unknown key {key}")
            elif isinstance(schema.get("additionalProperties"), dict):
                _validate(value, schema["additionalProperties"], f"{path}.{key}")
    if isinstance(instance, list) and "items" in schema:
        for i, item in enumerate(instance):
            _validate(item, schema["items"], f"{path}[{i}]")


def _example_yaml():
    import yaml

    return yaml.safe_load(EXAMPLE.read_text())


def test_the_schema_validates_the_example_and_rejects_unknown_keys_and_bad_choices():
    schema = recipe_schema()
    assert schema["$schema"].endswith("2020-12/schema") and schema["required"] == ["teacher", "domains"]
    json.dumps(schema)
    doc = _example_yaml()
    _validate(doc, schema)
    try:
        import jsonschema
    except ImportError:
        jsonschema = None
    if jsonschema is not None:
        jsonschema.Draft202012Validator(schema).validate(doc)
    for bad in ({**doc, "nme": 1}, {**doc, "prune": {"ratoi": 0.3}}, {**doc, "export": {"quants": ["int8"]}},
                {**doc, "profiles": {"quick": {"recover": {"train": {"token_budgt": 1}}}}},
                {**doc, "stages": ["distill"]}, {**doc, "ensemble": {"router_kind": "psychic"}}):
        with pytest.raises(AssertionError):
            _validate(bad, schema)


def test_every_key_of_the_example_is_in_the_schema():
    schema = recipe_schema()

    def walk(doc, sch, path):
        sch = next((a for a in sch.get("anyOf", []) if a.get("type") == "object"), sch)
        if isinstance(doc, dict) and sch.get("properties") is not None:
            for k, v in doc.items():
                sub = sch["properties"].get(k) or (sch.get("additionalProperties") or None)
                assert sub, f"{path}.{k} is not in the schema"
                walk(v, sub, f"{path}.{k}")

    walk(_example_yaml(), schema, "$")
    assert schema["properties"]["recover"]["properties"]["train"]["properties"]["train"]["enum"] == ["ffn", "all", "lora"]
    assert "description" in schema["properties"]["prune"]["properties"]["ratio"]


# --------------------------------------------------------------------------- CLI


def test_recipe_schema_and_check_commands(tmp_path):
    runner = CliRunner()
    res = runner.invoke(cli, ["recipe", "schema"])
    assert res.exit_code == 0 and json.loads(res.output)["title"] == "edge-downscale recipe"
    out = tmp_path / "schema.json"
    res = runner.invoke(cli, ["recipe", "schema", "--out", str(out)])
    assert res.exit_code == 0 and json.loads(out.read_text()) == recipe_schema()
    res = runner.invoke(cli, ["recipe", "check", str(EXAMPLE)])
    assert res.exit_code == 0 and "smollm2-edge" in res.output and "activation ratio 0.3" in res.output
    res = runner.invoke(cli, ["recipe", "check", str(EXAMPLE), "--profile", "quick", "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["recover"]["train"]["token_budget"] == 8192
    assert "recipe" in runner.invoke(cli, ["--help"]).output


@pytest.mark.parametrize("text", [BASE + "prune: {ratoi: 0.3}\n",
                                  BASE + "profiles: {quick: {recover: {mode: guess}}}\n"])
def test_recipe_check_of_a_bad_recipe_is_one_error_line(tmp_path, text):
    p = write(tmp_path, text)
    res = CliRunner().invoke(cli, ["recipe", "check", str(p)])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code in (1, 2) and len(lines) == 1 and lines[0].startswith(f"error: {p}:5:")
    assert "Traceback" not in res.output


def test_the_law_predicts_each_domain_at_its_own_ratio():
    from edge_downscale.pipeline.estimate import predicted_quality

    pred = predicted_quality(load_recipe(EXAMPLE))["per_domain"]
    r = load_recipe(EXAMPLE)
    assert {d: v["ratio"] for d, v in pred.items()} == {d: r.section("prune", d).ratio for d in r.domain_names}
    loss = {d: v["pruned_no_recovery"] - v["dense"] for d, v in pred.items()}
    assert sorted(loss, key=loss.get) == sorted(pred, key=lambda d: pred[d]["ratio"])  # more pruned, more lost
