"""Puts the config schema (pipeline/schema.py) where conf/config.yaml's defaults find it, in every
process where Hydra composes conf/: ours (`python -m pipeline.config`, config.compose) and DVC's
(`dvc exp run -S key=value`, which imports no pipeline code).

Hydra discovers plugins by importing the modules of the `hydra_plugins` namespace package on the
first composition of a process; DVC puts the repository root on the import path for that scan. Each
composition then asks every SearchPathPlugin to shape its search path before any config is loaded,
which is when this one stores the schema in Hydra's ConfigStore (searched as `structured://`), and
registers `outputs_checked` (pipeline/lineage.py: the output paths are checked while DVC resolves
a `dvc exp run -S` composition, before its forced checkout could delete a user's file), and
replaces OmegaConf's `oc.env` resolver with a refusal: params.yaml holds no value taken from the
environment (config.py refuses every resolver where it composes or loads; DVC resolves the
composition itself before it writes params.yaml, so there it must fail while resolving).
"""
from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.config_store import ConfigStore
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import OmegaConf

# Imported here, not in the method: DVC's process can import pipeline only while Hydra scans plugins.
from pipeline import lineage, schema


class PipelineSchema(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        # The path needs nothing of ours (Hydra always searches ConfigStore); the schema must be in it.
        ConfigStore.instance().store(name="schema", node=schema.Config, provider="pipeline")
        OmegaConf.register_new_resolver("oc.env", _refuse_environment, replace=True)
        OmegaConf.register_new_resolver("outputs_checked", lineage.outputs_checked, replace=True)


def _refuse_environment(key, default=None):
    raise ValueError(f"${{oc.env:{key}}}: a setting taken from the environment would make params.yaml and the "
                     "tracked outputs depend on the machine; write the value itself")
