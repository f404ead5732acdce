"""The assumptions pipeline/llm/transformers_internals.py makes about the installed transformers,
peft and Lightning, one test each, on a tiny random Llama of conf/model/tiny_random.yaml's shape:
an upgrade that breaks one fails here, naming it, instead of silently changing answers, adapters
or saved weights."""
from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import peft
import pytest
import torch
import transformers
from omegaconf import OmegaConf

from pipeline.llm import lora
from pipeline.llm import transformers_internals as internals

ROOT = Path(__file__).resolve().parent.parent
VERSIONS = f"transformers {transformers.__version__}, peft {peft.__version__}, lightning {L.__version__}"
FIX = "update pipeline/llm/transformers_internals.py"


def tiny_llama():
    """conf/model/tiny_random.yaml's Llama (as pipeline.llm.model.load builds it) with a small
    vocabulary: no tokenizer needed."""
    shape = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / "tiny_random.yaml").random)
    torch.manual_seed(shape.pop("seed"))
    config = transformers.LlamaConfig(vocab_size=97, max_position_embeddings=64, tie_word_embeddings=True, **shape)
    return transformers.LlamaForCausalLM(config).eval()


IDS = torch.tensor([[5, 17, 3, 44, 9, 71, 2, 60], [8, 8, 30, 12, 95, 1, 40, 23]])


@torch.inference_mode()
def test_a_reserved_cache_layer_filled_by_hand_decodes_as_a_dynamic_cache_does():
    llm = tiny_llama()
    decoder = llm.get_decoder()
    whole = decoder(input_ids=IDS).last_hidden_state
    prefix = decoder(input_ids=IDS[:, :4], use_cache=True).cache  # transformers' own DynamicCache
    keys, values = internals.cached_states(prefix)
    config = llm.config
    head_dim = config.hidden_size // config.num_attention_heads
    assert keys.shape == values.shape == (config.num_hidden_layers, 2, config.num_key_value_heads, 4, head_dim), (
        f"{VERSIONS}: a cache layer no longer keeps its states in .keys/.values as (rows, heads, positions, "
        f"head_dim); {FIX}")
    # Room for 2 of the 3 tokens fed next: the layer must grow its buffer once.
    kv = torch.zeros(keys.shape[0], 2, *keys.shape[1:3], 6, keys.shape[-1])
    kv[:, 0, :, :, :4], kv[:, 1, :, :, :4] = keys, values
    cache = internals.reserved_cache(kv, used=4)
    step = decoder(input_ids=IDS[:, 4:7], attention_mask=torch.ones(2, 7, dtype=torch.long),
                   position_ids=torch.arange(4, 7).expand(2, 3), cache=cache, use_cache=True).last_hidden_state
    assert torch.allclose(step, whole[:, 4:7], atol=1e-5), (
        f"{VERSIONS}: decoding after a ReservedLayer (a DynamicLayer filled through lazy_initialization) no longer "
        f"gives what the whole sequence gives; {FIX}")
    assert cache.get_seq_length() == 7 and internals.cached_states(cache)[0].shape[3] == 7
    # Rows dropped from the batch keep their states: the second row alone decodes its last token.
    cache.batch_select_indices(torch.tensor([1]))
    last = decoder(input_ids=IDS[1:, 7:], attention_mask=torch.ones(1, 8, dtype=torch.long),
                   position_ids=torch.tensor([[7]]), cache=cache, use_cache=True).last_hidden_state
    assert torch.allclose(last[0, 0], whole[1, 7], atol=1e-5), (
        f"{VERSIONS}: Cache.batch_select_indices no longer reaches ReservedLayer's own; {FIX}")


@torch.no_grad()
def test_a_slice_of_the_decoder_stack_run_from_hidden_states_is_the_whole_stack():
    decoder = tiny_llama().get_decoder()
    mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])  # right padding, as the fine-tune's batches have
    whole = decoder(input_ids=IDS, attention_mask=mask).last_hidden_state
    with internals.only_layers(decoder, 0, 1, final_norm=False) as bottom:
        hidden = bottom(input_ids=IDS, attention_mask=mask, use_cache=False).last_hidden_state
    with internals.only_layers(decoder, 1) as top:
        sliced = top(inputs_embeds=hidden, attention_mask=mask, use_cache=False).last_hidden_state
    assert torch.allclose(sliced, whole, atol=1e-6), (
        f"{VERSIONS}: the decoder's `layers` and `norm` swapped for a slice, fed hidden states as inputs_embeds, no "
        f"longer compute the whole stack; {FIX}")
    assert len(decoder.layers) == 2 and isinstance(decoder.norm, transformers.models.llama.modeling_llama.LlamaRMSNorm)


def test_parameter_names_carry_their_decoder_layer_through_peft():
    llm = tiny_llama()
    layers = llm.get_decoder().layers
    for name, parameter in llm.named_parameters():
        at = internals.layer_of(name)
        held = at is not None and any(parameter is p for p in layers[at].parameters())
        assert held or (at is None and all(parameter is not p for p in layers.parameters())), (
            f"{VERSIONS}: parameter {name} is not in decoder layer {at}; {FIX}")
    settings = OmegaConf.create({"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"],
                                 "top_layers": 1})
    adapted = {internals.layer_of(n) for n, p in lora.wrap(llm, settings).named_parameters() if p.requires_grad}
    assert adapted == {1}, f"{VERSIONS}: peft's names of the adapter weights no longer carry `.layers.N.`; {FIX}"


def test_a_model_carrying_a_gguf_quantizer_saves_plain_weights_once_it_is_dropped(tmp_path):
    """What prepare meets after loading the GGUF (bin/setup runs it on the real file): the quantizer
    from_pretrained leaves on the model blocks save_pretrained, and dropping it saves float32 weights."""
    from transformers.quantizers import AutoHfQuantizer

    llm = tiny_llama()
    gguf = transformers.GgufConfig(gguf_file="model.gguf")
    llm.hf_quantizer, llm.config.quantization_config = AutoHfQuantizer.from_config(gguf), gguf
    with pytest.raises(ValueError, match="not serializable"):
        llm.save_pretrained(tmp_path / "refused")
    internals.drop_quantizer(llm)
    llm.save_pretrained(tmp_path / "saved")
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "saved", dtype=torch.float32)
    assert not hasattr(again.config, "quantization_config") and getattr(again, "hf_quantizer", None) is None, (
        f"{VERSIONS}: a model saved after drop_quantizer still loads as quantized; {FIX}")
    assert all(torch.equal(p, q) for p, q in zip(llm.state_dict().values(), again.state_dict().values()))


class _Steps(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))

    def training_step(self, batch, batch_idx):
        return (self.weight * batch).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_lightning_checkpoint_counts_its_steps_and_fit_meets_no_other_warning(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_last=True,
                                                   save_top_k=0)])
    loader = torch.utils.data.DataLoader(torch.ones(8, 1), batch_size=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with internals.fit_quiet():
            trainer.fit(_Steps(), loader)
    assert internals.checkpoint_step(tmp_path / "last.ckpt") == trainer.global_step == 3, (
        f"{VERSIONS}: a checkpoint's `global_step` no longer counts the steps taken; {FIX}")
    # Lightning's own warnings about this toy (no workers, few batches) are UserWarnings; none of the
    # deprecations fit_quiet exists for gets through.
    assert not [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]


@pytest.mark.parametrize("meet, quiet, message", [
    (lambda: tiny_llama().is_gradient_checkpointing, internals.peft_quiet, internals.PEFT_DEPRECATION),
    (lambda: isinstance(torch.utils._pytree.LeafSpec(), torch.utils._pytree.TreeSpec), internals.fit_quiet,
     internals.LIGHTNING_DEPRECATION),
], ids=["peft", "lightning"])
def test_each_silenced_deprecation_is_still_raised_and_only_it_is_silenced(meet, quiet, message):
    """What peft (PeftModel reading transformers' alias) and Lightning (its pytree helper building
    torch's LeafSpec) call inside: once the library stops warning, drop its filter."""
    import re

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        meet()
        with quiet():
            meet()
            warnings.warn("another deprecation", FutureWarning)
    found = [str(w.message) for w in caught]
    assert len(found) == 2 and re.match(message, found[0]) and found[1] == "another deprecation", (
        f"{VERSIONS}: {found}; a deprecation silenced in {FIX.split()[-1]} changed or is gone: update or drop "
        "its filter")
