"""LoRA fine-tuning: tokenised (prompt, answer) samples, a LightningModule with the step
logic only, and a Trainer, logger and checkpoints built from config."""
from __future__ import annotations

import shutil
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

IGNORE = -100


def encode(tokenizer, prompts: list[str], answers: list[str]) -> list[dict]:
    """Token ids of prompt + answer + EOS; the loss sees only the answer and EOS."""
    out = []
    for prompt, answer in zip(prompts, answers):
        p = tokenizer(prompt, add_special_tokens=False).input_ids
        a = tokenizer(answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        out.append({"input_ids": p + a, "labels": [IGNORE] * len(p) + a})
    return out


def collate(pad_id: int):
    """Dynamic right padding to the longest sample of the batch (cached hidden states, when the
    samples carry them, padded with zeros: the mask hides them)."""
    def pad(batch: list[dict]) -> dict:
        width = max(len(s["input_ids"]) for s in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, s in enumerate(batch):
            n = len(s["input_ids"])
            ids[i, :n] = torch.tensor(s["input_ids"])
            labels[i, :n] = torch.tensor(s["labels"])
            mask[i, :n] = 1
        out = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if "hidden" in batch[0]:
            hidden = torch.zeros((len(batch), width, batch[0]["hidden"].shape[-1]), dtype=batch[0]["hidden"].dtype)
            for i, s in enumerate(batch):
                hidden[i, :len(s["hidden"])] = s["hidden"]
            out["hidden"] = hidden
        return out
    return pad


class Stream(torch.utils.data.Sampler):
    """The sample order as one seeded stream of shuffles, cut into epochs of `per_epoch` samples.

    Epoch e yields the same indices whatever happened before, and checkpoints fall on epoch ends,
    so a run resumed from its last checkpoint trains on exactly what an uninterrupted run does
    (a shuffling DataLoader cannot restore its position inside an epoch). Lightning calls set_epoch."""

    def __init__(self, n: int, per_epoch: int, seed: int):
        super().__init__()
        self.n, self.per_epoch, self.seed, self.epoch = n, per_epoch, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_epoch

    def __iter__(self):
        start, stop = self.epoch * self.per_epoch, (self.epoch + 1) * self.per_epoch
        out, shuffle = [], start // self.n
        while len(out) < self.per_epoch:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + shuffle)).tolist()
            out += order[max(start - shuffle * self.n, 0):stop - shuffle * self.n]
            shuffle += 1
        return iter(out)


class LengthBatches(torch.utils.data.Sampler):
    """Each epoch of `sampler` cut into batches of samples of similar token length, run in a seeded order.

    Batches of random samples carry about 18 % padding on the default prompts (RAG prompts are
    longer); sorted within an epoch, about 1 %. An epoch's batches depend only on the epoch, so
    exact resume from an epoch-end checkpoint holds. Lightning sets the epoch through `.sampler`."""

    def __init__(self, sampler: Stream, lengths: list[int], batch_size: int):
        super().__init__()
        self.sampler, self.lengths, self.batch_size = sampler, lengths, batch_size

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def __iter__(self):
        # A generator: the epoch is read at the first batch, after Lightning has set it (the
        # DataLoader calls iter() on its batch sampler earlier than that).
        ordered = sorted(self.sampler, key=lambda i: self.lengths[i])  # stable: ties keep the stream's order
        batches = [ordered[k:k + self.batch_size] for k in range(0, len(ordered), self.batch_size)]
        shuffle = torch.Generator().manual_seed(self.sampler.seed * 1_000_003 + self.sampler.epoch)
        yield from (batches[i] for i in torch.randperm(len(batches), generator=shuffle).tolist())


@contextmanager
def only_layers(decoder, start: int, stop: int, final_norm: bool = True):
    """The decoder running only its layers [start, stop) (and its final norm only if final_norm),
    so that one forward pass through the public API computes a slice of the stack: the causal mask
    and the rotary positions are built by the decoder itself, from the input's length."""
    layers, norm = decoder.layers, decoder.norm
    decoder.layers = torch.nn.ModuleList(list(layers)[start:stop])
    if not final_norm:
        decoder.norm = torch.nn.Identity()
    try:
        yield decoder
    finally:
        decoder.layers, decoder.norm = layers, norm


def frozen_below(model) -> int:
    """The number of bottom layers without an adapter (0 when every layer has one)."""
    adapted = {int(n.split(".layers.")[1].split(".")[0]) for n, p in model.named_parameters()
               if p.requires_grad and ".layers." in n}
    return min(adapted) if adapted else 0


@torch.no_grad()
def cache_frozen(model, samples: list[dict], pad_id: int, batch_size: int) -> None:
    """Add to each sample the hidden states its tokens have when they enter the lowest adapted
    layer. The layers below hold no adapter, so these never change during training: computed once
    here (in a fixed order of length-sorted batches, so the same bits every run and on resume),
    each step runs only the adapted layers. Samples with the same tokens share one computation
    (the default curation repeats a fifth of its sequences: a pair's line and label recur on
    other days); the tensor is shared too, as nothing writes to it. Batches are built on the host and
    run on the model's device; the states come back to the host, where the DataLoader's batches are
    built (the trainer moves each batch to the device)."""
    lower = frozen_below(model)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    device = next(base.parameters()).device
    was_training = base.training
    base.eval()
    first: dict[tuple, int] = {}
    for i, s in enumerate(samples):
        first.setdefault(tuple(s["input_ids"]), i)
    order = sorted(first.values(), key=lambda i: len(samples[i]["input_ids"]))
    pad = collate(pad_id)
    with only_layers(base.get_decoder(), 0, lower, final_norm=False) as decoder:
        for k in range(0, len(order), batch_size):
            chunk = order[k:k + batch_size]
            batch = pad([samples[i] for i in chunk])
            hidden = decoder(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                             use_cache=False).last_hidden_state
            for row, i in enumerate(chunk):
                samples[i]["hidden"] = hidden[row, :len(samples[i]["input_ids"])].to("cpu", copy=True)
    for s in samples:
        s["hidden"] = samples[first[tuple(s["input_ids"])]]["hidden"]
    base.train(was_training)


def answer_loss(model, batch: dict, lower: int = 0) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens: the loss a causal LM computes from `labels`, with
    the output head (a vocabulary-sized matmul, a fifth of the forward pass) run only at the
    positions that predict an answer token instead of at every prompt position. A batch with
    cached states (cache_frozen) runs only the layers from `lower` up, from those states."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder()
    if "hidden" in batch:
        with only_layers(decoder, lower, len(decoder.layers)) as top:
            hidden = top(inputs_embeds=batch["hidden"], attention_mask=batch["attention_mask"],
                         use_cache=False).last_hidden_state
    else:
        hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    target = batch["labels"][:, 1:]
    keep = target != IGNORE
    logits = base.get_output_embeddings()(hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), target[keep])


class NonFinite(ValueError):
    """Training produced a NaN or an infinity: the adapter would be garbage."""


class LoraModule(L.LightningModule):
    """The step logic; checkpoints hold only the trainable (adapter) weights."""

    def __init__(self, model, optim: DictConfig, max_steps: int, lower: int = 0):
        super().__init__()
        self.model = model
        self.optim = optim
        self.max_steps = max_steps
        self.lower = lower  # layers whose output the batches carry (cache_frozen)
        self.strict_loading = False  # the frozen base is not in the checkpoint
        self.last_loss = None  # kept in checkpoints: a run resumed at max_steps takes no step to log one

    def training_step(self, batch, batch_idx):
        loss = answer_loss(self.model, batch, self.lower)
        if not torch.isfinite(loss):
            raise NonFinite(f"the loss is {loss.item()} at step {self.global_step}")
        self.last_loss = loss.item()
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.optim.lr, weight_decay=self.optim.weight_decay)
        warmup = max(1, self.optim.warmup_steps)
        decay = max(1, self.max_steps - warmup)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min((step + 1) / warmup, max(0.0, (self.max_steps - step) / decay)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint):
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["last_loss"] = self.last_loss

    def on_load_checkpoint(self, checkpoint):
        self.last_loss = checkpoint["last_loss"]


def normalise_config(path: Path) -> None:
    """peft keeps target_modules as a set and writes it in hash-seed order; sorted, the adapter
    directory has the same bytes in every process."""
    import json

    config = json.loads(path.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def wrap(model, lora: DictConfig):
    """The model with LoRA adapters on lora.target_modules of its top lora.top_layers layers (all
    when null or when the model has fewer).

    Below the lowest adapted layer nothing needs a gradient, so autograd records nothing there: the
    frozen lower layers run forward only and the backward pass stops at the first adapted layer."""
    from peft import LoraConfig, get_peft_model

    layers = int(model.config.num_hidden_layers)
    top = layers if lora.top_layers is None else min(lora.top_layers, layers)
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules), task_type="CAUSAL_LM",
                        layers_to_transform=list(range(layers - top, layers)))
    return get_peft_model(model, config)


def keep_curve_before(live: Path, step: int) -> None:
    """Keep only the rows DVCLive logged before the checkpoint a run resumes from (`step` steps
    taken; the logger numbers them from 0), so the resumed run logs the rest once, as an
    uninterrupted run does."""
    for tsv in (live / "plots" / "metrics").rglob("*.tsv"):
        header, *rows = tsv.read_text().splitlines(keepends=True)
        at = header.rstrip("\n").split("\t").index("step")
        tsv.write_text("".join([header] + [row for row in rows if int(row.split("\t")[at]) < step]))


def train(model, tokenizer, prompts: list[str], answers: list[str], ft: DictConfig, ckpt_dir: Path,
          log_dir: Path, accelerator: str = "cpu"):
    """Fit a LoRA adapter on the samples, resuming from ckpt_dir/last.ckpt when a run was killed.

    Returns the peft model and the run's figures. SIGTERM ends the process with status 143 and
    keeps the checkpoints; a non-finite loss or weight is a ValueError naming the precision."""
    from dvclive.lightning import DVCLiveLogger
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    settings = OmegaConf.to_container(ft.trainer)
    if settings["devices"] > 1:
        # Several GPUs would need DDP: a batch sampler Lightning can shard, one writer and each rank's
        # own device. Decoding, the bulk of the work, already spreads over GPUs (the Ray pool).
        raise ValueError(f"params.yaml: finetune.trainer.devices={settings['devices']}: " + (
            "the CPU trains in one process" if accelerator == "cpu" else
            "the fine-tune trains on one GPU (decoding scales over GPUs through the pool, ray.workers)")
            + "; set finetune.trainer.devices=1")
    if accelerator == "cpu" and settings["precision"].startswith("16-"):
        # device=auto can only be told from device=cuda here, once torch has looked for a GPU.
        raise ValueError(f"params.yaml: finetune.trainer.precision={settings['precision']}: float16 does not train on "
                         "the CPU (NaN adapters), and this run is on the CPU; use 32-true or bf16-mixed")
    # DVCLive writes the loss curve (a DVC output) only at logged steps: a run shorter than the
    # logging interval logs its last step.
    settings["log_every_n_steps"] = min(settings["log_every_n_steps"], settings["max_steps"])
    L.seed_everything(ft.seed, workers=True, verbose=False)
    peft_model = wrap(model, ft.lora).train()
    samples = encode(tokenizer, prompts, answers)
    lower = frozen_below(peft_model)
    if lower:
        peft_model.to("cuda" if accelerator == "gpu" else "cpu")
        cache_frozen(peft_model, samples, tokenizer.pad_token_id, ft.batch_size)
    every = ft.checkpoint_every_n_steps
    stream = Stream(len(samples), every * ft.batch_size, ft.seed)
    batches = LengthBatches(stream, [len(s["input_ids"]) for s in samples], ft.batch_size)
    loader = DataLoader(samples, batch_sampler=batches, collate_fn=collate(tokenizer.pad_token_id), num_workers=0)
    module = LoraModule(peft_model, ft.optim, ft.trainer.max_steps, lower)
    last = ckpt_dir / "last.ckpt"
    resuming = last.exists()
    # The curve is written beside the checkpoints, which outlive a killed run (dvc repro deletes
    # the stage's outputs before it reruns), and copied to log_dir once training ends.
    live = ckpt_dir / "live"
    if resuming:
        keep_curve_before(live, torch.load(last, map_location="cpu", weights_only=False)["global_step"])
    trainer = L.Trainer(
        **settings, accelerator=accelerator,
        logger=DVCLiveLogger(dir=str(live), dvcyaml=None, save_dvc_exp=False, resume=resuming),
        callbacks=[ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=every, save_last=True, save_top_k=0)],
        max_epochs=-1, default_root_dir=str(ckpt_dir))
    try:
        trainer.fit(module, loader, ckpt_path=str(last) if resuming else None)
    except SIGTERMException:
        # Lightning ends the loop on SIGTERM with a SystemExit of status 0, as if it had finished.
        kept = f"a rerun resumes from {last}" if last.exists() else f"no checkpoint yet (one every {every} steps)"
        print(f"finetune: stopped by SIGTERM at step {trainer.global_step}; {kept}", file=sys.stderr)
        raise SystemExit(128 + signal.SIGTERM) from None
    except NonFinite as exc:
        raise ValueError(f"{exc} (finetune.trainer.precision={ft.trainer.precision}, finetune.optim.lr="
                         f"{ft.optim.lr}); no adapter written") from None
    shutil.copytree(live, log_dir, dirs_exist_ok=True)
    broken = sorted(n for n, p in peft_model.named_parameters() if p.requires_grad and not torch.isfinite(p).all())
    if broken:
        raise ValueError(f"{len(broken)} adapter weights are not finite after training, {broken[0]} first "
                         f"(finetune.trainer.precision={ft.trainer.precision}, finetune.optim.lr={ft.optim.lr}); "
                         "no adapter written")
    return peft_model, {"steps": trainer.global_step, "resumed": resuming, "samples": len(samples),
                        "final_loss": round(module.last_loss, 6),
                        "tokens_per_sample": round(sum(len(s["input_ids"]) for s in samples) / len(samples), 2)}
