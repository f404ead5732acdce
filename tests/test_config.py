"""params.yaml is exactly the composition of conf/; bad config fails loudly."""
from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException

from pipeline import config


def test_params_yaml_is_the_composition_of_conf(tmp_path):
    composed = tmp_path / "params.yaml"
    config.dump([], composed)
    assert config.PARAMS.read_text() == composed.read_text(), (
        "params.yaml drifted from conf/: run `python -m pipeline.config` and commit it")


def test_dataset_switch_sets_its_month():
    assert config.compose(["data=movielens"]).period.month == "2017-06"
    assert config.compose(["data=movielens", "period.month=2016-04"]).period.month == "2016-04"
    assert config.compose(["data=contract", "data.path=/x"]).data.path == "/x"


def test_unknown_key_is_rejected():
    with pytest.raises(ConfigCompositionException, match="extract.min_engagment"):
        config.compose(["extract.min_engagment=0.3"])


def test_missing_params_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m pipeline.config"):
        config.load(tmp_path / "params.yaml")
