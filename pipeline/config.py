"""Config: conf/ (Hydra) is the source of truth, params.yaml its composition.

Stages read params.yaml only; `python -m pipeline.config [overrides]` recomposes it with Hydra's
compose API and writes it as DVC's Hydra integration does for `dvc exp run -S` (the resolved
composition as OmegaConf.to_yaml prints it), so both give the same bytes. Every composition and
every load is typed and checked by pipeline/schema.py (hydra_plugins/ brings the schema to Hydra).
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pipeline import ROOT, schema

CONF_DIR = ROOT / "conf"
PARAMS = ROOT / "params.yaml"


def dump(overrides: list[str] | None = None, output: Path = PARAMS) -> None:
    """Compose conf/config.yaml with Hydra overrides and write it to `output` (nothing is written
    when a setting or an output path is refused)."""
    # `dvc exp run -S` writes OmegaConf.to_yaml of the resolved composition (DVC's compose_and_dump):
    # the same bytes here, so the two never disagree (tests/test_dvc_experiments.py checks).
    cfg = compose(overrides)
    # An output path the stages may not replace is refused here too: `dvc repro` removes a stage's
    # outputs before the stage's own check runs.
    from pipeline import lineage

    lineage.check_every_path(cfg)
    Path(output).write_text(OmegaConf.to_yaml(cfg), encoding="utf-8")


# Names that moved: each config group is named for the stage that owns it, and the documented
# experiments are presets in conf/experiment/. An old name is one line naming the new one.
RENAMED = {"retrieval": "retrieve", "infer": "bulk_infer", "eval": "evaluate"}
MOVED = {"finetune=accurate": "experiment=accurate"}


def refuse_old_names(overrides: list[str], source: str = "overrides") -> None:
    for override in overrides:
        key = override.lstrip("+~").partition("=")[0]
        group = key.split(".")[0].split("@")[0]
        if group in RENAMED:
            fix = (f"write {override.replace(group, RENAMED[group], 1)}" if "=" in override else
                   "recompose it with `python -m pipeline.config`")
            raise ValueError(f"{source}: {override}: the config group {group} is now {RENAMED[group]} "
                             f"(conf/{RENAMED[group]}/); {fix}")
        if override in MOVED:
            raise ValueError(f"{source}: {override}: now a preset, {MOVED[override]} (conf/experiment/)")


def compose(overrides: list[str] | None = None) -> DictConfig:
    """The composed, resolved and checked config in memory."""
    from hydra import compose as hydra_compose, initialize_config_dir

    from pipeline import lineage

    refuse_old_names(list(overrides or []))
    try:
        with initialize_config_dir(str(CONF_DIR), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=list(overrides or []))
    except AssertionError:
        # OmegaConf asserts where Hydra should refuse: an override of a key the chosen group lacks
        # (data=contract with data.synth.*).
        raise ValueError(f"overrides {' '.join(overrides or [])}: cannot be composed: one sets a key that the chosen "
                         "config group does not have (data.synth.* belongs to the synthetic worlds); drop it, or "
                         "choose the group that has it") from None
    refuse_resolvers(cfg, "composition")
    with lineage.unchecked():
        OmegaConf.resolve(cfg)
    schema.load(cfg)
    return cfg


def load(path: Path | str = PARAMS) -> DictConfig:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no params file; run `python -m pipeline.config` to compose it")
    found = read_yaml(path.read_text(encoding="utf-8"), str(path))
    refuse_old_names([k for k in found if k in RENAMED], str(path))
    refuse_resolvers(found, str(path))
    cfg = schema.load(found, str(path))
    OmegaConf.set_readonly(cfg, True)
    return cfg


# ${name:...}: a resolver call (oc.env, oc.decode, hydra:...), whose value comes from outside the
# settings; a plain ${key.path} interpolation names another setting and stays allowed, and so does
# outputs_checked, which returns its value as written (pipeline/lineage.py).
RESOLVER = re.compile(r"\$\{\s*(?!outputs_checked\s*:)[\w.\-]+\s*:")


def refuse_resolvers(cfg: DictConfig, source: str) -> None:
    """Refuse a value taken from outside the settings (the environment, the machine): params.yaml
    and the tracked outputs would depend on who composed them."""
    def walk(node, key: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{key}[{i}]")
        elif isinstance(node, str) and RESOLVER.search(node):
            raise ValueError(f"{source}: {key}={node[:80]!r}: a resolver takes the value from outside the settings "
                             "(the environment, the machine); write the value itself")

    walk(OmegaConf.to_container(cfg, resolve=False), "")


def read_yaml(text: str, source: str, fix: str = "recompose it with `python -m pipeline.config`") -> DictConfig:
    """A params file's text as a config; YAML that does not parse is one line naming `source`, its
    line and what to do (`fix`)."""
    import yaml

    try:
        found = OmegaConf.create(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"{source}:{where}: not valid YAML ({what}); {fix}") from None
    if not isinstance(found, DictConfig):
        raise ValueError(f"{source}: not a mapping of settings; {fix}")
    return found


def main(argv: list[str]) -> None:
    from pipeline import cli

    ap = cli.parser("python -m pipeline.config", __doc__)
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="Hydra overrides, e.g. data=movielens")
    overrides = ap.parse_args(argv).overrides
    with cli.user_errors("config"):
        dump(overrides)
    print(f"wrote {PARAMS.relative_to(ROOT)}" + (f" with {' '.join(overrides)}" if overrides else ""))


if __name__ == "__main__":
    main(sys.argv[1:])
