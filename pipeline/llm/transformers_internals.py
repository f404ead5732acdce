"""Every use this package makes of transformers', peft's and Lightning's internals, beyond what
their public API offers, in one place.

Each function here rests on an assumption about how the installed version works inside; each
assumption has its own test in tests/test_transformers_internals.py, run against the installed
version on a tiny random Llama, so an upgrade that breaks one fails there by name instead of
silently changing answers, adapters or saved weights:
- the KV cache: a DynamicLayer subclass filled by hand (lazy_initialization, keys and values as
  views), in a Cache built from its layers (reserved_cache, cached_states);
- the decoder stack: its `layers` list and final `norm` swapped to run a slice of it, whose input
  is taken as hidden states unchanged (only_layers), and the `.layers.N.` in parameter names
  (layer_of);
- a GGUF-loaded model saved as plain weights once its quantizer is dropped (drop_quantizer);
- Lightning's checkpoint dictionary, whose `global_step` counts the steps taken (checkpoint_step);
- deprecated names the libraries themselves still use, met inside their own code (peft_quiet,
  fit_quiet).
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import Cache, DynamicLayer


class ReservedLayer(DynamicLayer):
    """A cache layer over a buffer with room ahead: appending writes in place, where DynamicLayer
    would copy the whole cache on every forward pass. Assumes DynamicLayer keeps its states in
    `keys` and `values` (batch, heads, positions, head_dim), set up by lazy_initialization, and that
    attention reads them only through update's return value and get_seq_length."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, used: int):
        super().__init__()
        self.lazy_initialization(keys, values)
        self.k_buf, self.v_buf, self.used = keys, values, used
        self._view()

    def _view(self) -> None:
        self.keys, self.values = self.k_buf[:, :, :self.used], self.v_buf[:, :, :self.used]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        end = self.used + key_states.shape[-2]
        if end > self.k_buf.shape[-2]:  # out of room (long free-text answers): grow
            extra = (0, 0, 0, end - self.k_buf.shape[-2])
            self.k_buf = torch.nn.functional.pad(self.k_buf, extra)
            self.v_buf = torch.nn.functional.pad(self.v_buf, extra)
        self.k_buf[:, :, self.used:end], self.v_buf[:, :, self.used:end] = key_states, value_states
        self.used = end
        self._view()
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.k_buf, self.v_buf = self.k_buf[indices], self.v_buf[indices]
        self._view()


def reserved_cache(kv: torch.Tensor, used: int) -> Cache:
    """A KV cache over kv, shaped (layers, 2, rows, heads, positions, head_dim), whose first `used`
    positions hold states already; the decoder appends after them in place."""
    return Cache(layers=[ReservedLayer(kv[layer, 0], kv[layer, 1], used) for layer in range(len(kv))])


def cached_states(cache: Cache) -> tuple[torch.Tensor, torch.Tensor]:
    """(keys, values) of every layer of cache, each shaped (layers, rows, heads, positions, head_dim)."""
    return (torch.stack([layer.keys for layer in cache.layers]),
            torch.stack([layer.values for layer in cache.layers]))


@contextmanager
def only_layers(decoder, start: int, stop: int | None = None, final_norm: bool = True):
    """The decoder running only its layers [start, stop) (stop None: to the top), and its final norm
    only if final_norm, so that one forward pass through the public API computes a slice of the
    stack: the causal mask and the rotary positions are built by the decoder itself, from the
    input's length. Assumes a decoder keeps its stack in `layers` and its final norm in `norm`, and
    passes `inputs_embeds` to its first layer unchanged (a slice above 0 is fed hidden states)."""
    layers, norm = decoder.layers, decoder.norm
    decoder.layers = torch.nn.ModuleList(list(layers)[start:stop])
    if not final_norm:
        decoder.norm = torch.nn.Identity()
    try:
        yield decoder
    finally:
        decoder.layers, decoder.norm = layers, norm


def layer_of(parameter: str) -> int | None:
    """The decoder layer a parameter belongs to, from its name (`...layers.3.self_attn...`, peft's
    wrapping included); None for one outside the stack (embeddings, the final norm)."""
    if ".layers." not in parameter:
        return None
    return int(parameter.split(".layers.")[1].split(".")[0])


def drop_quantizer(model) -> None:
    """Make a model loaded from a GGUF (its weights already dequantised to float32) savable as plain
    safetensors: it carries its quantizer, with which save_pretrained refuses to save."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def checkpoint_step(path: Path) -> int:
    """The optimizer steps a Lightning checkpoint had taken when it was saved."""
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


# Warnings raised inside a library's own code about a deprecated name of another library: not ours
# to fix (we call neither name), so each is silenced by its exact message, around the one call of
# ours that meets it, and every other warning still shows.
PEFT_DEPRECATION = r"`is_gradient_checkpointing` is deprecated"
LIGHTNING_DEPRECATION = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


@contextmanager
def _without(message: str, category: type[Warning]) -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=message, category=category)
        yield


def peft_quiet():
    """Around wrapping a model with peft (get_peft_model, PeftModel.from_pretrained): PeftModel's
    constructor reads transformers' deprecated `is_gradient_checkpointing` alias."""
    return _without(PEFT_DEPRECATION, FutureWarning)


def fit_quiet():
    """Around Lightning's Trainer.fit: Lightning's own pytree helper builds torch's deprecated
    LeafSpec when it flattens the training loader."""
    return _without(LIGHTNING_DEPRECATION, FutureWarning)
