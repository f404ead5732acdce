"""Registers the config schema (pipeline/schema.py) wherever Hydra composes conf/.

Hydra imports every module of the `hydra_plugins` namespace package on the first composition of
a process. DVC's `dvc exp run -S key=value` composes params.yaml in its own process with the
repository root on that search path (dvc.utils.hydra.compose_and_dump, `plugins_path`), so this
import is how the schema's types, enums and ranges are checked there, where no pipeline code runs.
"""
import pipeline.schema  # noqa: F401  (registers the schema and its checks on import)
