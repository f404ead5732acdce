"""params.yaml is exactly the composition of conf/; bad config fails loudly."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException

from pipeline import config, sweep


def test_params_yaml_is_the_composition_of_conf(tmp_path):
    composed = tmp_path / "params.yaml"
    config.dump([], composed)
    assert config.PARAMS.read_text() == composed.read_text(), (
        "params.yaml drifted from conf/: run `python -m pipeline.config` and commit it")


def test_dataset_switch_sets_its_month():
    assert config.compose(["data=movielens"]).period.month == "2017-06"
    assert config.compose(["data=movielens", "period.month=2016-04"]).period.month == "2016-04"
    assert config.compose(["data=contract", "data.path=/x"]).data.path == "/x"


def test_the_accurate_preset_changes_only_the_fine_tune():
    default, accurate = config.compose([]), config.compose(["experiment=accurate"])
    assert (accurate.finetune.label_prior, accurate.finetune.lora.top_layers, accurate.finetune.lora.r) == (50, None, 8)
    assert list(accurate.finetune.lora.target_modules) == ["q_proj", "v_proj"]  # a list is replaced, not merged
    assert accurate.finetune.min_pair_support == default.finetune.min_pair_support  # the default's interpolations
    assert {k: v for k, v in accurate.items() if k != "finetune"} == {k: v for k, v in default.items() if k != "finetune"}
    assert config.compose(["experiment=accurate", "finetune.trainer.max_steps=7"]).finetune.trainer.max_steps == 7


def test_unknown_key_is_rejected():
    with pytest.raises(ConfigCompositionException, match="extract.min_engagment"):
        config.compose(["extract.min_engagment=0.3"])


def test_missing_params_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m pipeline.config"):
        config.load(tmp_path / "params.yaml")


# The schema (pipeline/schema.py): every bad setting of issue 11 is refused while composing, in one
# line that names the key, the value and what is allowed.
BAD = [
    ("retrieve.top_n=0", ">= 1"), ("retrieve.top_n=-1", ">= 1"),
    ("retrieve.window_days=0", ">= 1"), ("retrieve.window_days=-7", ">= 1"),
    ("finetune.rag_share=2", "in [0, 1]"), ("bulk_infer.max_new_tokens=0", ">= 1"),
    ("finetune.trainer.max_steps=0", ">= 1"), ("finetune.samples_per_pair=0", ">= 1"),
    ("bulk_infer.shard_size.cpu=0", ">= 1"), ("gate.max_pairs=0", ">= 1"),
    ("data.time_range.start=garbage", "a date YYYY-MM-DD"), ("data.time_range.start=2024-02-30", "a date"),
    ("torch_threads=0", ">= 1"), ("prompts.min_support=many", "could not be converted to Integer"),
    ("evaluate.repeat_pairs=0", ">= 1"), ("evaluate.repeat_pairs=-5", ">= 1"),
    ("gate.min_exact_match=1.5", "in [0, 1]"), ("gate.min_exact_match=-0.1", "in [0, 1]"),
    ("gate.min_test_recall=2", "in [0, 1]"), ("gate.min_test_recall=-1", "in [0, 1]"),
    ("period.month=2024-13", "a month YYYY-MM"), ("refresh.every_days=0", ">= 1"),
    ("gate.hybrid_taus=[0, 3]", "integers >= 1"), ("evaluate.drift_k=[]", "a non-empty list"),
    ("finetune.trainer.precision=32", "one of 32-true, 16-mixed"), ("duckdb.memory_limit=lots", "a size such as 1500MB"),
    # enums
    ("bulk_infer.decoding=beam", "expected one of [free, constrained]"), ("engine=flink", "[duckdb, spark]"),
    ("kernels=fast", "[portable, native]"), ("device=gpu", "[auto, cpu, cuda]"),
    ("extract.form=sorted", "[auto, ordered, partitioned]"), ("extract.dedupe=none", "[first_occurrence, consecutive]"),
    ("data.unknown_items=keep", "[drop, error]"), ("bulk_infer.dtype=int8", "[float32, bfloat16, float16]"),
    ("retrieve.method=random", "[frequency, trend]"), ("model.source=hub", "[gguf_wheel, pretrained, random]"),
]
# Rules between keys: the message names the key that breaks them and the one it depends on.
BAD_TOGETHER = [
    (["data.time_range.start=2024-05-01"], "data.time_range.end=2024-04-01", "after data.time_range.start (2024-05-01)"),
    (["model.source=pretrained"], "model.name_or_path=None", "model.source=pretrained"),
    (["finetune.test_days=28"], "finetune.test_days=28", "fewer than finetune.train_days (28)"),
    (["data.synth.cold_clusters=50"], "data.synth.cold_clusters=50", "fewer than data.synth.n_clusters (50)"),
    (["prompts.popular_n=4"], "prompts.popular_n=4", "at most retrieve.popular_n (3)"),
    (["engine=spark", "extract.form=ordered"], "extract.form=ordered", "ordered relies on DuckDB"),
    (["refresh.until=2024-04-02"], "refresh.until=2024-04-02", "a day of period.month (2024-03)"),
    (["data=contract"], "data.path is missing", "give data.path="),
    (["extract.min_engagement=1.5"], "extract.min_engagement=1.5", "inside data.engagement_range [0.0, 1.0]"),
    (["evaluate.support_buckets.cold=2"], "evaluate.support_buckets={'cold': 2, 'tail': 1", "start at 0 and ascend"),
    (["model=tiny_random", "model.random.num_attention_heads=3"], "model.random.num_attention_heads=3",
     "a divisor of model.random.hidden_size (64)"),
    (["model=tiny_random", "model.random.num_key_value_heads=3"], "model.random.num_key_value_heads=3",
     "a divisor of model.random.num_attention_heads (4)"),
]


def refusal(overrides: list[str]) -> str:
    """What `python -m pipeline.config OVERRIDES` prints (its exit status is 1)."""
    from pipeline import cli

    with pytest.raises(SystemExit) as done, cli.user_errors("config"):
        config.compose(overrides)
    return done.value.code


@pytest.mark.parametrize(("override", "allowed"), BAD, ids=[o for o, _ in BAD])
def test_a_setting_out_of_range_is_refused_in_one_line(override, allowed):
    message = refusal([override])
    key, value = override.split("=", 1)
    assert "\n" not in message and f"{key}={value}" in message and allowed in message, message


@pytest.mark.parametrize(("overrides", "named", "allowed"), BAD_TOGETHER, ids=[" ".join(o) for o, _, _ in BAD_TOGETHER])
def test_settings_that_contradict_each_other_are_refused_in_one_line(overrides, named, allowed):
    message = refusal(overrides)
    assert "\n" not in message and named in message and allowed in message, message


@pytest.mark.parametrize("override", ["retrieve.popular_n=0", "prompts.popular_n=0", "evaluate.repeat_pairs=null",
                                      "model=tiny_random", "data=movielens", "refresh.until=2024-03-31",
                                      "model.name_or_path=HuggingFaceTB/SmolLM2-135M"])
def test_settings_in_range_compose(override):
    config.compose(["model.source=pretrained", override] if "name_or_path" in override else [override])


def test_a_fresh_process_composing_as_dvc_does_gets_types_and_enums_but_not_ranges(tmp_path):
    """`dvc exp run -S` composes in DVC's own process, which imports no pipeline code: it puts the
    repository root on the import path while Hydra scans for plugins, then composes with Hydra's
    compose API. The schema comes in through hydra_plugins/ (types and enums); ranges have no hook
    there and are left to the first stage's config.load (tests/test_dvc_experiments.py)."""
    script = f"""
import sys
from hydra import compose, initialize_config_dir
from hydra.core.plugins import Plugins
from hydra.plugins.search_path_plugin import SearchPathPlugin
root = {str(config.ROOT)!r}
sys.path.append(root)
found = [p.__name__ for p in Plugins.instance().discover(SearchPathPlugin)]
sys.path.remove(root)
assert "pipeline.config" not in sys.modules
print(found)
for override in ("retrieve.method=random", "retrieve.top_n=0"):
    try:
        with initialize_config_dir(root + "/conf", version_base=None):
            print(compose(config_name="config", overrides=[override]).retrieve.top_n)
    except Exception as exc:
        print(str(exc.__cause__ or exc).splitlines()[0])
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    found, enum, out_of_range = done.stdout.splitlines()
    assert found == "['PipelineSchema']"
    assert "Invalid value 'random', expected one of [frequency, trend]" in enum, enum
    assert out_of_range == "0"


def test_a_stage_refuses_a_bad_params_yaml_in_one_line(tmp_path, monkeypatch):
    """params.yaml edited by hand: every stage loads it through the same schema."""
    from pipeline import cli
    from pipeline.__main__ import main

    params = tmp_path / "params.yaml"
    params.write_text(config.PARAMS.read_text().replace("  top_n: 1\n", "  top_n: 0\n", 1))
    load = config.load
    monkeypatch.setattr(config, "load", lambda: load(params))
    monkeypatch.delenv(cli.DEBUG, raising=False)
    with pytest.raises(SystemExit) as done:
        main(["retrieve"])
    assert done.value.code == f"retrieve: {params}: retrieve.top_n=0: expected >= 1"

    params.write_text(config.PARAMS.read_text() + "extra: 1\n")
    with pytest.raises(SystemExit) as done:
        main(["retrieve"])
    assert done.value.code == f"retrieve: {params}: extra: not a setting (the settings are in conf/ and pipeline/schema.py)"


def test_an_added_unknown_key_is_refused_at_composition_and_nothing_is_written(tmp_path):
    written = tmp_path / "params.yaml"
    for override, named in (("+foo=1", "foo"), ("+data.bar=2", "data.bar")):
        with pytest.raises(ValueError, match=rf"^{named}: not a setting"):
            config.dump([override], written)
        assert not written.exists()


@pytest.mark.parametrize("text, line", [("data:\n  name: x\n  path: [a, b\nmodel: 1\n", 4), ("a: 1\n  b: 2\n", 2)])
def test_params_yaml_that_is_not_yaml_is_named_with_its_line(tmp_path, monkeypatch, text, line):
    from pipeline import cli, lookup
    from pipeline.__main__ import main

    params = tmp_path / "params.yaml"
    params.write_text(text)
    load = config.load
    monkeypatch.setattr(config, "load", lambda: load(params))
    monkeypatch.delenv(cli.DEBUG, raising=False)
    for entry, args, prog in ((main, ["extract"], "extract"), (main, ["bulk_infer"], "bulk_infer"),
                              (lookup.main, ["0", "1"], "lookup")):
        with pytest.raises(SystemExit) as done:
            entry(args)
        assert done.value.code.startswith(f"{prog}: {params}: line {line}: not valid YAML ("), done.value.code


def test_a_value_taken_from_the_environment_is_refused_at_composition_and_at_load(tmp_path, capsys):
    for value in ("${oc.env:HOME}", "${oc.env:HOME,/tmp}/tables", "'${oc.decode:${oc.env:PATH}}'"):
        with pytest.raises(ValueError, match=r"^composition: paths.tables=.*: a resolver takes the value from outside"):
            config.compose([f"paths.tables={value}"])
    params = tmp_path / "params.yaml"
    params.write_text(config.PARAMS.read_text().replace("tables: tables", "tables: ${oc.env:HOME}/tables"))
    with pytest.raises(ValueError, match=rf"^{params}: paths.tables='\$\{{oc.env:HOME\}}/tables': a resolver"):
        config.load(params)
    # A plain interpolation names another setting, and stays allowed.
    assert config.compose(["paths.tables=${paths.metrics}/tables"]).paths.tables == "metrics/tables"
    with pytest.raises(SystemExit, match=r"^config: composition: paths.tables="):
        config.main(["paths.tables=${oc.env:HOME}"])


def test_dvc_composing_a_value_from_the_environment_fails_while_resolving(tmp_path):
    """DVC resolves the composition itself before it writes params.yaml: the plugin's oc.env refuses."""
    script = f"""
import sys
from hydra import compose, initialize_config_dir
from hydra.core.plugins import Plugins
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import OmegaConf
root = {str(config.ROOT)!r}
sys.path.append(root)
Plugins.instance().discover(SearchPathPlugin)
sys.path.remove(root)
with initialize_config_dir(root + "/conf", version_base=None):
    cfg = compose(config_name="config", overrides=["paths.tables=${{oc.env:HOME}}"])
try:
    OmegaConf.resolve(cfg)
    print("resolved", cfg.paths.tables)
except Exception as exc:
    print(str(exc).splitlines()[0])
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "a setting taken from the environment would make params.yaml" in done.stdout, done.stdout


def test_an_override_of_a_key_the_chosen_group_lacks_is_one_line():
    for overrides in (["data=contract", "data.synth.n_users=3"], ["data=movielens", "data.synth.n_clusters=4"]):
        with pytest.raises(SystemExit, match=r"^config: overrides .*: cannot be composed: one sets a key that the chosen"):
            config.main(overrides)


@pytest.mark.parametrize("override, new", [
    ("retrieval.top_n=3", "retrieve.top_n=3"), ("infer.dtype=bfloat16", "bulk_infer.dtype=bfloat16"),
    ("eval=default", "evaluate=default"), ("+eval.horizon=2", "evaluate.horizon=2"),
    ("finetune=accurate", "experiment=accurate")])
def test_an_old_group_name_is_one_line_naming_the_new_one(override, new):
    with pytest.raises(ValueError, match=re.escape(new)):
        config.compose([override])
    with pytest.raises(ValueError, match=re.escape(new)):
        sweep.jobs([override], multirun=False)


def test_params_written_under_old_group_names_is_refused_naming_the_new_ones(tmp_path):
    old = tmp_path / "params.yaml"
    old.write_text(config.PARAMS.read_text().replace("\nevaluate:", "\neval:"))
    with pytest.raises(ValueError, match=r"params.yaml: eval: the config group eval is now evaluate"):
        config.load(old)


def test_presets_compose_and_overrides_win_over_them():
    tiny = config.compose(["experiment=scale_1000", "finetune.trainer.max_steps=3"])
    assert (tiny.model.source, tiny.data.synth.n_clusters, tiny.bulk_infer.max_new_tokens) == ("random", 1000, 1)
    assert tiny.finetune.trainer.max_steps == 3 and tiny.gate.override_reason == "tiny random model"
    golden = config.compose(["experiment=golden"])
    assert (golden.finetune.labels, golden.finetune.lora.r) == ("drawn", 8)  # golden builds on accurate
    assert config.compose(["experiment=paper_prompt"]).prompts.evidence == "instance"
