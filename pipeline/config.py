"""Config: conf/ (Hydra) is the source of truth, params.yaml its composition.

Stages read params.yaml only; `python -m pipeline.config [overrides]` recomposes it with Hydra's
compose API and writes it as DVC's Hydra integration does for `dvc exp run -S` (the resolved
composition as OmegaConf.to_yaml prints it), so both give the same bytes. Every composition and
every load is typed and checked by pipeline/schema.py (hydra_plugins/ brings the schema to Hydra).
"""
from __future__ import annotations

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
    # the same bytes here, so the two never disagree (tests/test_dvc_pipeline.py checks).
    cfg = compose(overrides)
    # An output path the stages may not replace is refused here too: `dvc repro` removes a stage's
    # outputs before the stage's own check runs.
    from pipeline import lineage

    for stage in lineage.graph(cfg):
        lineage.check_paths(cfg, stage)
    Path(output).write_text(OmegaConf.to_yaml(cfg), encoding="utf-8")


def compose(overrides: list[str] | None = None) -> DictConfig:
    """The composed, resolved and checked config in memory."""
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(str(CONF_DIR), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=list(overrides or []))
    OmegaConf.resolve(cfg)
    schema.load(cfg)
    return cfg


def load(path: Path | str = PARAMS) -> DictConfig:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no params file; run `python -m pipeline.config` to compose it")
    cfg = schema.load(read_yaml(path.read_text(encoding="utf-8"), str(path)), str(path))
    OmegaConf.set_readonly(cfg, True)
    return cfg


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
