"""LoRA fine-tuning: tokenised (prompt, answer) samples, a LightningModule with the step
logic only, and a Trainer, logger and checkpoints built from config."""
from __future__ import annotations

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
    """Dynamic right padding to the longest sample of the batch."""
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
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
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


def answer_loss(model, batch: dict) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens: the loss a causal LM computes from `labels`, with
    the output head (a vocabulary-sized matmul, a fifth of the forward pass) run only at the
    positions that predict an answer token instead of at every prompt position."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    target = batch["labels"][:, 1:]
    keep = target != IGNORE
    logits = base.get_output_embeddings()(hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), target[keep])


class LoraModule(L.LightningModule):
    """The step logic; checkpoints hold only the trainable (adapter) weights."""

    def __init__(self, model, optim: DictConfig, max_steps: int):
        super().__init__()
        self.model = model
        self.optim = optim
        self.max_steps = max_steps
        self.strict_loading = False  # the frozen base is not in the checkpoint

    def training_step(self, batch, batch_idx):
        loss = answer_loss(self.model, batch)
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


def train(model, tokenizer, prompts: list[str], answers: list[str], ft: DictConfig, ckpt_dir: Path,
          log_dir: Path, accelerator: str = "cpu"):
    """Fit a LoRA adapter on the samples, resuming from ckpt_dir/last.ckpt when a run was killed.

    Returns the peft model and the run's figures."""
    from dvclive.lightning import DVCLiveLogger
    from lightning.pytorch.callbacks import ModelCheckpoint

    L.seed_everything(ft.seed, workers=True, verbose=False)
    peft_model = wrap(model, ft.lora).train()
    samples = encode(tokenizer, prompts, answers)
    every = ft.checkpoint_every_n_steps
    stream = Stream(len(samples), every * ft.batch_size, ft.seed)
    batches = LengthBatches(stream, [len(s["input_ids"]) for s in samples], ft.batch_size)
    loader = DataLoader(samples, batch_sampler=batches, collate_fn=collate(tokenizer.pad_token_id), num_workers=0)
    module = LoraModule(peft_model, ft.optim, ft.trainer.max_steps)
    last = ckpt_dir / "last.ckpt"
    resuming = last.exists()
    trainer = L.Trainer(
        **OmegaConf.to_container(ft.trainer), accelerator=accelerator,
        logger=DVCLiveLogger(dir=str(log_dir), dvcyaml=None, save_dvc_exp=False, resume=resuming),
        callbacks=[ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=every, save_last=True, save_top_k=0)],
        max_epochs=-1, default_root_dir=str(ckpt_dir))
    trainer.fit(module, loader, ckpt_path=str(last) if resuming else None)
    return peft_model, {"steps": trainer.global_step, "resumed": resuming, "samples": len(samples),
                        "final_loss": round(float(trainer.callback_metrics["train/loss"]), 6),
                        "tokens_per_sample": round(sum(len(s["input_ids"]) for s in samples) / len(samples), 2)}
