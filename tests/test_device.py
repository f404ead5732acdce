"""Device discipline, tested on the CPU: every tensor the host builds reaches the model on the
model's device (CI never has a GPU, so a host tensor fed to a CUDA model would first fail on a
user's GPU).

The harness puts the model on a second device of a CPU-only machine. `Remote` is a tensor that
holds its data in a CPU tensor but reports the `meta` device (torch's meta device alone has no
data, and transformers' mask creation reads values with .item(); autograd needs a device torch
has a guard for, which `meta` is and `cuda` is not on a CPU build). Attention runs eagerly (see
`tiny`). Under `elsewhere()`:
- `.to("cuda")`, `.cuda()`, `.to(<the model's device>)` and any factory called with
  `device="cuda"` or the model's device give a Remote; `.cpu()` / `.to("cpu")` give a host tensor;
- every op that mixes a Remote with a host tensor of one or more dimensions raises as CUDA does
  ("Expected all tensors to be on the same device"); host scalars (0-dim) and cross-device copies
  are allowed, as on CUDA; a host generator drawing for a device tensor raises, as on CUDA;
- forward pre-hooks on every submodule check that each tensor input is on its parameters' device,
  naming the module.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves, tree_map

from pipeline import config
from pipeline.llm import bulk, lora, model

ROOT = Path(__file__).resolve().parent.parent
DEVICE = torch.device("meta")  # what a Remote reports
MOVES = {torch.ops.aten._to_copy, torch.ops.aten.to}  # to/_to_copy: under inference_mode `.cpu()` is aten.to
COPIES = {torch.ops.aten.copy_.default, torch.ops.aten._to_copy.default}


def _remote_target(device) -> bool:
    """Whether a device argument names the harness's device ("cuda" in the code under test)."""
    if isinstance(device, torch.Tensor):
        return isinstance(device, Remote)
    if isinstance(device, (str, torch.device)):
        return torch.device(device).type in ("cuda", "meta")
    return False


def _host(x):
    if isinstance(x, Remote):
        return x.inner
    if isinstance(x, torch.device) and x.type in ("cuda", "meta"):
        return torch.device("cpu")
    if isinstance(x, str) and x.split(":")[0] in ("cuda", "meta"):
        return "cpu"
    return x


class Remote(torch.Tensor):
    """A CPU tensor that reports the harness's device: ops run on its data and give Remotes."""

    @staticmethod
    def __new__(cls, inner: torch.Tensor):
        return torch.Tensor._make_wrapper_subclass(cls, inner.shape, strides=inner.stride(), dtype=inner.dtype,
                                                   device=DEVICE, requires_grad=inner.requires_grad)

    def __init__(self, inner: torch.Tensor):
        self.inner = inner

    def __repr__(self):
        return f"Remote({self.inner!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [a for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        host = [a for a in tensors if not isinstance(a, Remote) and a.dim() > 0]
        if host and func not in COPIES:
            raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                               f"{DEVICE} and cpu! ({func}, host tensors of shape {[tuple(h.shape) for h in host]})")
        if any(isinstance(a, torch.Generator) and a.device.type == "cpu" for a in tree_leaves((args, kwargs))):
            raise RuntimeError(f"Expected a '{DEVICE.type}' device type for generator but found 'cpu' ({func})")
        to_host = func.overloadpacket in MOVES and not _remote_target(next(
            (a for a in args[1:] if isinstance(a, (torch.device, str, torch.Tensor))), kwargs.get("device", DEVICE)))
        with torch._C.DisableTorchFunction():  # the op runs on the host data, outside the harness
            out = func(*tree_map(_host, args), **tree_map(_host, kwargs))
        if to_host:
            return out
        if func is torch.ops.aten.copy_.default and not isinstance(args[0], Remote):
            return args[0]  # a copy into a host tensor stays on the host
        return tree_map(lambda o: Remote(o) if type(o) is torch.Tensor else o, out)


class _Elsewhere(TorchFunctionMode):
    """Moves to and factories on the harness's device give Remotes."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in ("to", "cuda") and args and isinstance(args[0], torch.Tensor) and not isinstance(args[0], Remote):
            target = kwargs.get("device", next((a for a in args[1:] if isinstance(a, (str, torch.device, torch.Tensor))),
                                               None))
            if name == "cuda" or _remote_target(target):
                rest = {k: v for k, v in kwargs.items() if k in ("dtype", "copy")}
                dtype = next((a for a in args[1:] if isinstance(a, torch.dtype)), rest.pop("dtype", None))
                if isinstance(target, torch.Tensor):
                    dtype = target.dtype
                return Remote(args[0].to(dtype=dtype or args[0].dtype, copy=True))
            return func(*args, **kwargs)
        if name == "tolist" and isinstance(args[0], Remote):
            return args[0].inner.tolist()
        if name == "where" and any(isinstance(a, Remote) for a in args):
            # A number beside device tensors becomes a tensor on their device inside C++, which the
            # meta device leaves without its value: give it as a 0-dim tensor of the other's dtype.
            like = next(a for a in args[1:] if isinstance(a, torch.Tensor)) if len(args) == 3 else None
            args = tuple(Remote(torch.tensor(a, dtype=like.dtype)) if isinstance(a, (int, float)) else a for a in args)
        if _remote_target(kwargs.get("device")):
            out = func(*args, **{**kwargs, "device": "cpu"})
            return tree_map(lambda o: Remote(o) if type(o) is torch.Tensor else o, out)
        return func(*args, **kwargs)


def _check_inputs(module, args, kwargs):
    own = next(module.parameters(), None)
    if own is None:
        return
    for x in tree_leaves((args, kwargs)):
        if isinstance(x, torch.Tensor) and x.dim() > 0 and x.device != own.device:
            raise AssertionError(f"{type(module).__name__} (parameters on {own.device}) got an input on {x.device} "
                                 f"of shape {tuple(x.shape)}")


@contextmanager
def elsewhere(*models):
    """The harness: `models` get input checks on every submodule; moves to cuda land on the device."""
    hooks = [m.register_forward_pre_hook(_check_inputs, with_kwargs=True) for root in models for m in root.modules()]
    try:
        with _Elsewhere():
            yield
    finally:
        for hook in hooks:
            hook.remove()


def tiny(layers: int = 4):
    """A tiny random Llama with SmolLM2's tokenizer, `layers` deep."""
    m = config.compose(["model=tiny_random", f"model.cache_dir={ROOT / 'models'}",
                        f"model.random.num_hidden_layers={layers}"]).model
    llm, tokenizer = model.load(m)
    # SDPA's math kernel is decomposed inside C++, where the bias it builds would be a real meta
    # tensor; eager attention runs as separate ops, each of which the harness sees.
    llm.set_attn_implementation("eager")
    return llm, tokenizer


def test_the_harness_catches_a_host_tensor_fed_to_the_model():
    llm, _ = tiny(2)
    with elsewhere(llm):
        llm.to("cuda")
        assert next(llm.parameters()).device == DEVICE
        ids = torch.tensor([[1, 2, 3]])
        with pytest.raises(AssertionError, match=r"got an input on cpu"):
            llm(input_ids=ids)
        out = llm(input_ids=ids.to("cuda")).logits
        assert out.device == DEVICE
        with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
            out + torch.ones(out.shape)
        assert out.cpu().device.type == "cpu"


FT = ["model=tiny_random", f"model.cache_dir={ROOT / 'models'}", "finetune.batch_size=4", "finetune.lora.top_layers=2"]


def test_the_frozen_layer_fine_tune_runs_on_the_device():
    """The default fine-tune's path with frozen layers: the model moved as lora.train moves it,
    the frozen layers cached (cache_frozen), batches moved as Lightning moves them, two optimiser
    steps; the loss and adapter are those of the same steps on the host."""
    from lightning.fabric.utilities.apply_func import move_data_to_device

    ft = config.compose(FT).finetune
    prompts = [f"Recent interests:\n- a{i}, b\n- c, d{i % 3}\nNext new interest:" for i in range(6)]
    answers = [f" e{i % 2}, f" for i in range(6)]

    def steps(device: str) -> tuple[list[float], dict]:
        torch.manual_seed(0)
        base, tokenizer = tiny(4)
        peft_model = lora.wrap(base, ft.lora).train()
        samples = lora.encode(tokenizer, prompts, answers)
        lower = lora.frozen_below(peft_model)
        assert lower == 2  # the default's shape: adapters on the top layers only
        with elsewhere(peft_model) if device == "cuda" else _nothing():
            peft_model.to(device)  # as lora.train moves it
            lora.cache_frozen(peft_model, samples, tokenizer.pad_token_id, ft.batch_size)
            module = lora.LoraModule(peft_model, ft.optim, 2, lower)
            optimizer = module.configure_optimizers()["optimizer"]
            pad, losses = lora.collate(tokenizer.pad_token_id), []
            for chunk in (samples[:4], samples[4:]):
                batch = move_data_to_device(pad(chunk), next(peft_model.parameters()).device)
                loss = lora.answer_loss(peft_model, batch, lower)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                losses.append(loss.item())
            adapter = {n: p.detach().cpu().clone() for n, p in peft_model.named_parameters() if p.requires_grad}
        return losses, adapter

    host_losses, host_adapter = steps("cpu")
    losses, adapter = steps("cuda")
    assert losses == host_losses
    assert adapter.keys() == host_adapter.keys() and all(torch.equal(adapter[k], host_adapter[k]) for k in adapter)


@contextmanager
def _nothing():
    yield


@pytest.mark.parametrize("constrained,temperature", [(False, 0.0), (True, 0.0), (False, 0.8)])
def test_bulk_decoding_runs_on_the_device(constrained, temperature):
    """The gate's (free), bulk_infer's (constrained) and evaluate's (sampled) decoding with the model
    on the device: the same answers and log-probabilities as on the host."""
    names = {0: "street food, night market", 1: "chess openings, endgames", 2: "cat videos, kitten care",
             3: "chess puzzles, blitz"}
    llm, tokenizer = tiny(2)
    trie = bulk.Trie.build(tokenizer, names)
    texts = [f"Recent interests:\n- {names[a]}\n- {names[b]}\nNext new interest:" for a in names for b in names if a != b]
    settings = bulk.Settings(constrained, 6, 4, temperature)
    seeds = list(range(len(texts))) if temperature else None
    exclude = [(a, b) for a in names for b in names if a != b]
    host = bulk.scored_answers(llm, tokenizer, texts, trie, settings, exclude, seeds=seeds)
    with elsewhere(llm):
        llm.to("cuda")
        moved = bulk.scored_answers(llm, tokenizer, texts, trie, settings, exclude, seeds=seeds)
    assert moved == host


def test_cuda_out_of_memory_in_bulk_decoding_is_one_line_and_keeps_finished_shards(tmp_path, monkeypatch):
    from pipeline.llm.cache import AnswerCache

    names = {0: "street food, night market", 1: "chess openings, endgames", 2: "cat videos, kitten care"}
    llm, tokenizer = tiny(2)
    trie = bulk.Trie.build(tokenizer, names)
    texts = [f"Recent interests:\n- {names[a]}\n- {names[b]}\nNext new interest:" for a in names for b in names]
    settings = bulk.Settings(True, 6, 64)
    feed, shards = bulk._Batch.feed, []

    def feed_until_the_second_shard(batch, rows):
        if len(shards) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
                                              "capacity of 23.55 GiB of which 1.10 GiB is free.")
        return feed(batch, rows)

    def decode(shard, advance):
        shards.append(shard)
        return bulk.scored_answers(llm, tokenizer, shard, trie, settings, advance=advance)

    monkeypatch.setattr(bulk._Batch, "feed", feed_until_the_second_shard)
    cache = AnswerCache(tmp_path, {"test": 1})
    with pytest.raises(ValueError) as err:
        cache.fill(texts, decode, shard_size=5)
    assert str(err.value).startswith("CUDA out of memory decoding at batch size 64 (CUDA out of memory. Tried to "
                                     "allocate 2.00 GiB.") and "\n" not in str(err.value)
    assert "lower bulk_infer.batch_size.cuda (gate.batch_size.cuda for the gate)" in str(err.value)
    assert sorted(cache.load()) == sorted(texts[:5])  # the finished shard is kept


def test_the_memory_per_row_is_the_decoders_own_kv_buffer():
    llm, _ = tiny(2)
    rows, room = 3, 17
    batch = bulk._Batch(llm, 0, [[] for _ in range(rows)], room)
    held = sum(t.numel() * t.element_size() for layer in batch.cache.layers for t in (layer.k_buf, layer.v_buf))
    assert bulk.row_bytes(llm.config, room, 1, 4)["kv"] * rows == held
    assert bulk.row_bytes(llm.config, room, 3, 2)["logits"] == llm.config.vocab_size * 3 * (2 + 4 + 4)
