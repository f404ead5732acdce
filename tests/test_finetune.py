"""Prompts, sample curation without leakage and LoRA fine-tuning, on a tiny random model."""
from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from pipeline import config, db, timing
from pipeline.llm import lora, model, prompts
from pipeline.stages import finetune
from tests.conftest import compose

ROOT = Path(__file__).resolve().parent.parent
TINY = ["model=tiny_random", f"model.cache_dir={ROOT / 'models'}", "finetune.trainer.max_steps=6",
        "finetune.batch_size=8", "finetune.checkpoint_every_n_steps=3", "finetune.samples_per_pair=1",
        "finetune.trainer.enable_progress_bar=false", "finetune.trainer.log_every_n_steps=1", "gate.max_pairs=12", "gate.max_new_tokens=6"]


def test_prompts_are_short_and_carry_the_rag_line():
    tokenizer = model.load_tokenizer(config.compose([f"model.cache_dir={ROOT / 'models'}"]).model)
    plain = prompts.prompt("street food, night market, travel vlog", "chess openings, endgames, blitz chess")
    rag = prompts.prompt("street food, night market, travel vlog", "chess openings, endgames, blitz chess",
                         ["cat videos, kitten care, cat toys"])
    assert plain.startswith("Recent interests:\n- street food") and plain.endswith("Next new interest:")
    assert "Recently followed by: cat videos, kitten care, cat toys\n" in rag
    assert len(tokenizer(plain).input_ids) <= 32 and len(tokenizer(rag).input_ids) <= 48


def test_loss_sees_only_the_answer():
    tokenizer = model.load_tokenizer(config.compose([f"model.cache_dir={ROOT / 'models'}"]).model)
    [sample] = lora.encode(tokenizer, ["Recent interests:\n- a, b\n- c, d\nNext new interest:"], [" e, f"])
    answer = [t for t in sample["labels"] if t != lora.IGNORE]
    assert answer[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(answer[:-1]) == " e, f"
    assert sample["labels"][: len(sample["input_ids"]) - len(answer)] == [lora.IGNORE] * (len(sample["input_ids"]) - len(answer))


def daily_frame(rows):
    return pd.DataFrame(rows, columns=["day", "c1", "c2", "c_next", "n"]).astype(
        {"day": "datetime64[us]", "c1": "int32", "c2": "int32", "c_next": "int32", "n": "int32"})


def test_curation_is_balanced_deterministic_and_stays_in_the_training_days(tmp_path):
    cfg = compose(tmp_path, "finetune.samples_per_pair=4", "finetune.min_pair_support=3")
    daily = daily_frame([
        ("2024-02-05", 0, 1, 2, 500), ("2024-02-06", 0, 1, 3, 1),  # a head pair
        ("2024-02-10", 1, 2, 3, 3),
        ("2024-02-26", 2, 3, 4, 50),  # held-out days: never a training sample
        ("2024-02-11", 3, 4, 5, 2),  # below min_pair_support
        ("2024-03-02", 0, 1, 5, 99),  # the month we build: never read
    ])
    path = tmp_path / "daily.parquet"
    daily.to_parquet(path)
    con = db.connect(cfg)
    w = finetune.windows(cfg)
    rows = finetune.training_rows(con, path, w, 3)
    drawn = OmegaConf.merge(cfg.finetune, {"labels": "drawn", "seed": 7})
    samples = finetune.curate(rows, drawn, w.test_start)
    assert samples.groupby(["c1", "c2"]).size().to_dict() == {(0, 1): 4, (1, 2): 4}
    assert samples.day.max() < pd.Timestamp(w.test_start)
    assert not ((samples.c_next == samples.c1) | (samples.c_next == samples.c2)).any()
    assert samples.equals(finetune.curate(rows, drawn, w.test_start))
    # top: each pair's most frequent successor of the training days, dated at their end
    own_top = {"labels": "top", "label_prior": 0, "samples_per_pair": 1}
    top = finetune.curate(rows, OmegaConf.merge(cfg.finetune, own_top), w.test_start)
    assert top[["c1", "c2", "c_next"]].values.tolist() == [[0, 1, 2], [1, 2, 3]]
    assert (top.day == pd.Timestamp(w.test_start)).all() and top.day.dtype == rows.day.dtype


def test_top_labels_pool_what_the_last_cluster_leads_to():
    rows = pd.DataFrame([("2024-02-05", 0, 5, 1, 1),  # a thin pair: its own top is one triple
                         ("2024-02-05", 1, 5, 2, 10), ("2024-02-06", 1, 5, 3, 9),  # pairs ending in 5 go to 2
                         ("2024-02-05", 2, 5, 2, 0), ("2024-02-05", 2, 5, 1, 2), ("2024-02-05", 2, 5, 4, 2)],
                        columns=["day", "c1", "c2", "c_next", "n"])
    own = finetune.top_labels(rows, 0)
    assert own.values.tolist() == [[0, 5, 1], [1, 5, 2], [2, 5, 1]]  # ties to the lower id
    pooled = finetune.top_labels(rows, 50)
    # the thin pair takes what pairs ending in 5 were followed by; the pair that saw 2 ten times
    # keeps it; a successor equal to c1 is never a label (evaluate never credits it)
    assert pooled.values.tolist() == [[0, 5, 2], [1, 5, 2], [2, 5, 3]]
    # a pair with strong evidence of its own outweighs the pool
    strong = pd.concat([rows, pd.DataFrame([("2024-02-07", 0, 5, 4, 80)], columns=rows.columns)])
    assert finetune.top_labels(strong, 50).values.tolist()[0] == [0, 5, 4]


def test_lined_samples_see_lines_before_their_day_and_labels_after_it(tmp_path):
    """On every line_every_days-th training day d, a pair with a line (of at least prompts.min_support in
    [d - rag_window_days, d)) is labelled with its top successor of [d, d + line_label_days), never
    from the held-out days."""
    cfg = compose(tmp_path, "finetune.rag_window_days=3", "finetune.line_every_days=2", "finetune.line_label_days=2",
                  "prompts.min_support=2")
    w = finetune.windows(cfg)  # training days [2024-02-02, 2024-02-25)
    daily = daily_frame([
        ("2024-02-01", 0, 1, 7, 2),  # the line at Feb 2 (window Jan 30 - Feb 1) ...
        ("2024-02-02", 0, 1, 8, 1), ("2024-02-03", 0, 1, 9, 3),  # ... its label days: 9 beats 8
        ("2024-02-03", 2, 3, 4, 1),  # a line of support 1 at Feb 4: too thin
        ("2024-02-04", 2, 3, 5, 9),
        ("2024-02-22", 0, 1, 7, 5),  # a line at Feb 24 (in the window) ...
        ("2024-02-25", 0, 1, 6, 9),  # ... but its label days reach the held-out days: no sample
    ])
    path = tmp_path / "daily.parquet"
    daily.to_parquet(path)
    got = finetune.lined(db.connect(cfg), path, w, cfg.finetune, cfg.prompts.min_support, "instance")
    assert got[["day", "c1", "c2", "c_next"]].astype({"day": str}).values.tolist() == [["2024-02-02", 0, 1, 9]]
    assert got.retrieved.tolist() == [[7]]
    # backoff: the thin pair (2, 3) shows what followed its last cluster 3 before Feb 4 instead
    got = finetune.lined(db.connect(cfg), path, w, cfg.finetune, cfg.prompts.min_support, "backoff")
    assert got[["day", "c1", "c2", "c_next"]].astype({"day": str}).values.tolist() == [
        ["2024-02-02", 0, 1, 9], ["2024-02-04", 2, 3, 5]]
    assert got.retrieved.tolist() == [[7], []] and got["last"].tolist() == [[], [4]]
    assert finetune.lined(db.connect(cfg), path, w, OmegaConf.merge(cfg.finetune, {"line_every_days": 0}), 2,
                          "backoff").empty


def test_rag_lines_only_read_days_before_the_sample(tmp_path):
    cfg = compose(tmp_path, "finetune.rag_share=1.0", "finetune.rag_window_days=3", "prompts.min_support=1")
    daily = daily_frame([("2024-02-01", 0, 1, 7, 2), ("2024-02-09", 0, 1, 8, 1),
                         ("2024-02-10", 0, 1, 9, 50),  # the sample's own day: planted future data
                         ("2024-02-11", 0, 1, 9, 50)])
    path = tmp_path / "daily.parquet"
    daily.to_parquet(path)
    samples = pd.DataFrame({"day": pd.to_datetime(["2024-02-10", "2024-02-20"]), "c1": [0, 0], "c2": [1, 1],
                            "c_next": [3, 3]}).astype({"day": "datetime64[us]"})
    retrieved = finetune.with_rag(db.connect(cfg), path, samples, cfg.finetune, cfg.prompts.min_support)
    assert retrieved.tolist() == [[8], []]
    # A successor seen once in the window is too thin for a line at prompts.min_support=2.
    thin = compose(tmp_path, "finetune.rag_share=1.0", "finetune.rag_window_days=3", "prompts.min_support=2")
    assert finetune.with_rag(db.connect(thin), path, samples, thin.finetune, 2).tolist() == [[], []]


def test_the_popular_line_follows_the_rag_share_and_reads_days_before_the_sample(tmp_path):
    daily = daily_frame([("2024-02-08", 0, 1, 7, 5), ("2024-02-09", 2, 1, 8, 3), ("2024-02-09", 0, 1, 6, 1),
                         ("2024-02-10", 0, 1, 9, 50)])  # the sample's own day: planted future data
    path = tmp_path / "daily.parquet"
    daily.to_parquet(path)
    samples = pd.DataFrame({"day": pd.to_datetime(["2024-02-10", "2024-02-10"]), "c1": [0, 2], "c2": [1, 1],
                            "c_next": [3, 3]}).astype({"day": "datetime64[us]"})
    names = {c: f"topic {c}, theme {c}" for c in range(10)}

    def built(*overrides):
        cfg = compose(tmp_path, "finetune.rag_window_days=3", "prompts.min_support=1", *overrides)
        con = db.connect(cfg)
        chosen = finetune.rag_chosen(samples, cfg.finetune)
        rows = samples.assign(retrieved=finetune.with_rag(con, path, samples, cfg.finetune, cfg.prompts.min_support),
                              popular=finetune.with_popular(con, path, samples, chosen, cfg.finetune,
                                                            int(cfg.prompts.popular_n)), last=[[], []])
        return rows, finetune.texts(rows, names)[0]

    rows, texts = built("finetune.rag_share=1.0", "prompts.popular_n=2")
    assert rows.popular.tolist() == [[7, 8], [7, 8]]  # 7 (5x) and 8 (3x) before Feb 10; never 9
    assert all(f"Popular now: {names[7]}; {names[8]}\n" in t for t in texts)
    # popular_n = 0 (the default): every prompt byte for byte as without the setting
    rows, texts = built("finetune.rag_share=1.0")
    assert rows.popular.tolist() == [[], []]
    assert texts == [prompts.for_pair(names, a, b, r) for a, b, r in zip(rows.c1, rows.c2, rows.retrieved)]
    # the line goes only where the RAG line's share puts it
    rows, _ = built("finetune.rag_share=0.0", "prompts.popular_n=2")
    assert rows.popular.tolist() == [[], []]


class Killed(Exception):
    pass


@pytest.mark.slow  # three fine-tunes, one of them killed
def test_adapter_is_bit_identical_and_a_sigtermed_run_resumes(tmp_path):
    def fit(where, *extra):
        cfg = tiny_fit(where, *extra)
        metrics = Path(cfg.paths.metrics)
        return timing.take(), {**json.loads((metrics / "finetune.json").read_text()),
                               **json.loads((metrics / "finetune" / "detail.json").read_text())}

    _, first = fit(tmp_path / "a")
    _, second = fit(tmp_path / "b")
    assert first["adapter_sha256"] == second["adapter_sha256"] and first["steps"] == 6

    real_fit = lora.L.Trainer.fit

    def sigterm_at_step_4(self, *args, **kwargs):
        class Term(lora.L.Callback):
            def on_train_batch_end(self, trainer, *a):
                if trainer.global_step == 4:
                    os.kill(os.getpid(), signal.SIGTERM)  # what timeout, schedulers and preemption send

        self.callbacks.append(Term())
        return real_fit(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lora.L.Trainer, "fit", sigterm_at_step_4)
        with pytest.raises(SystemExit) as stopped:
            fit(tmp_path / "c")
    assert stopped.value.code == 128 + signal.SIGTERM  # never 0: nothing was written
    assert not (tmp_path / "c" / "models").exists() or not list((tmp_path / "c").rglob("adapter_model.safetensors"))
    assert list((tmp_path / "c" / "work" / ".checkpoints").glob("finetune-*/last.ckpt"))  # step 3's, kept
    shutil.rmtree(tmp_path / "c" / "metrics", ignore_errors=True)  # as dvc repro deletes outputs before a rerun
    run, resumed = fit(tmp_path / "c")
    assert run["resumed"] and "resumed" not in resumed and resumed["steps"] == 6
    # the loss curve is the uninterrupted run's, every step once, the ones before the kill included
    curve = "metrics/finetune/plots/metrics/train/loss.tsv"
    assert (tmp_path / "c" / curve).read_text() == (tmp_path / "a" / curve).read_text()
    assert (tmp_path / "c" / curve).read_text().count("\n") == 7  # header and steps 0-5
    assert resumed["adapter_sha256"] == first["adapter_sha256"]  # resuming changes nothing
    assert not list((tmp_path / "c" / "work" / ".checkpoints").glob("finetune-*"))
    # Killed after its last step, before the adapter was written: the rerun has no step left to take.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(finetune, "atomic_path", lambda *a, **k: (_ for _ in ()).throw(Killed()))
        with pytest.raises(Killed):
            fit(tmp_path / "f")
    run, done = fit(tmp_path / "f")
    assert run["resumed"] and done["adapter_sha256"] == first["adapter_sha256"]
    assert done["final_loss"] == first["final_loss"]  # kept in the checkpoint
    # Adapters on the top layer only, from cached lower-layer states: deterministic, and resumable too.
    _, top = fit(tmp_path / "d", "finetune.lora.top_layers=1")
    _, again = fit(tmp_path / "e", "finetune.lora.top_layers=1")
    assert top["adapter_sha256"] == again["adapter_sha256"] != first["adapter_sha256"]


def tiny_fit(where: Path, *extra):
    cfg = compose(where, *TINY, *extra)
    daily = daily_frame([("2024-02-05", a, b, c, 3) for a in range(4) for b in range(4) for c in range(4)
                         if len({a, b, c}) == 3])
    Path(cfg.paths.daily_counts).parent.mkdir(parents=True, exist_ok=True)
    daily.to_parquet(cfg.paths.daily_counts)
    write_clusters(Path(cfg.data.path))
    finetune.run(cfg)
    return cfg


def test_non_finite_training_stops_with_one_line_and_writes_no_adapter(tmp_path):
    # An infinite learning rate makes the first update's weights NaN: the next loss is NaN.
    with pytest.raises(ValueError, match=r"the loss is nan at step 1 .*finetune.optim.lr=inf\); no adapter") as err:
        tiny_fit(tmp_path, "finetune.optim.lr=inf")
    assert "finetune.trainer.precision=32-true" in str(err.value) and "\n" not in str(err.value)
    assert not list(tmp_path.rglob("adapter_model.safetensors"))


def test_a_precision_the_device_cannot_train_in_is_refused_at_composition(tmp_path):
    for precision in ("16-true", "16-mixed"):
        with pytest.raises(ValueError, match=f"finetune.trainer.precision={precision}: expected .*device=cuda or auto"):
            compose(tmp_path, f"finetune.trainer.precision={precision}", "device=cpu")
    for device in ("cuda", "auto"):  # auto may find a GPU: float16 is allowed there
        assert compose(tmp_path, "finetune.trainer.precision=16-mixed", f"device={device}").finetune.trainer.precision == "16-mixed"


def test_float16_with_device_auto_on_the_cpu_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"^params.yaml: finetune.trainer.precision=16-mixed: float16 does not train on "
                                         r"the CPU \(NaN adapters\), and this run is on the CPU; use 32-true or bf16-mixed$"):
        tiny_fit(tmp_path, "finetune.trainer.precision=16-mixed", "device=auto")
    assert not list(tmp_path.rglob("adapter_model.safetensors"))


def test_devices_above_one_on_the_cpu_is_one_line_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"finetune.trainer.devices=2: the CPU trains in one process"):
        tiny_fit(tmp_path, "finetune.trainer.devices=2", "device=cpu")


def fake_gpu(monkeypatch, name: str = "NVIDIA H100 80GB HBM3") -> None:
    """torch as it looks on a CUDA machine, as far as the device policy asks."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)


def test_several_gpus_are_refused_in_one_line(tmp_path, monkeypatch):
    fake_gpu(monkeypatch)
    with pytest.raises(ValueError, match=r"^params.yaml: finetune.trainer.devices=4: the fine-tune trains on one GPU "
                                         r"\(decoding scales over GPUs through the pool, ray.workers\); set "
                                         r"finetune.trainer.devices=1$"):
        tiny_fit(tmp_path, "finetune.trainer.devices=4", "device=cuda")


def test_a_checkpoint_belongs_to_its_device_class(tmp_path, monkeypatch):
    """A run on another device class (a CPU checkpoint, then a GPU) does not resume the other's checkpoint."""
    folders = []

    def stop(model, tokenizer, prompts, answers, ft, ckpt_dir, log_dir, accelerator):
        folders.append((ckpt_dir, accelerator))
        raise KeyboardInterrupt

    monkeypatch.setattr(lora, "train", stop)
    for gpu in (False, True):
        if gpu:
            fake_gpu(monkeypatch)
        with pytest.raises(KeyboardInterrupt):
            tiny_fit(tmp_path, "device=auto")
    [(cpu, on_cpu), (cuda, on_gpu)] = folders
    assert (on_cpu, on_gpu) == ("cpu", "gpu") and cpu.parent == cuda.parent and cpu != cuda


def test_fewer_steps_than_the_logging_interval_still_write_the_loss_curve(tmp_path):
    cfg = tiny_fit(tmp_path, "finetune.trainer.max_steps=2", "finetune.trainer.log_every_n_steps=5")
    curve = Path(cfg.paths.metrics) / "finetune" / "plots" / "metrics" / "train" / "loss.tsv"
    assert curve.exists() and len(curve.read_text().splitlines()) >= 2  # header and the last step


def write_clusters(data_dir: Path):
    from tests.conftest import events_frame, write_dataset

    write_dataset(data_dir, events_frame([(1, 0, 0, 0.9)]), n_clusters=4)


def test_parse_is_exact_match():
    names = {0: "street food, night market", 1: "chess, go"}
    assert prompts.parse([" chess, go", "chess, go, poker", "Chess, go", ""], names) == [1, None, None, None]


def tiny_batch():
    cfg = config.compose(["model=tiny_random", f"model.cache_dir={ROOT / 'models'}"])
    llm, tokenizer = model.load(cfg.model)
    samples = lora.encode(tokenizer, ["Recent interests:\n- a, b\n- c, d\nNext new interest:", "Recent interests:\n- e\n- f\n"
                                      "Recently followed by: g, h\nNext new interest:"], [" g, h", " i"])
    return cfg, llm.train(), lora.collate(tokenizer.pad_token_id)(samples)


def test_answer_loss_is_the_models_own_loss():
    _, llm, batch = tiny_batch()
    own = llm(**batch).loss
    assert torch.allclose(lora.answer_loss(llm, batch), own, rtol=1e-5, atol=1e-6)
    # A different answer token changes it: the loss reads the labels, not a constant.
    batch["labels"][batch["labels"] != lora.IGNORE] = 5
    assert not torch.allclose(lora.answer_loss(llm, batch), own)


def test_top_layers_adapt_only_the_top_and_train_from_cached_lower_states():
    cfg, llm, batch = tiny_batch()
    wrapped = lora.wrap(llm, OmegaConf.merge(cfg.finetune.lora, {"top_layers": 1}))
    adapted = {n.split(".layers.")[1].split(".")[0] for n, p in wrapped.named_parameters() if p.requires_grad}
    assert adapted == {"1"} and lora.frozen_below(wrapped) == 1  # the tiny model has layers 0 and 1
    recorded = []
    wrapped.get_base_model().get_decoder().layers[0].register_forward_hook(
        lambda module, args, out: recorded.append((out[0] if isinstance(out, tuple) else out).requires_grad))
    full = lora.answer_loss(wrapped, batch)
    full.backward()
    assert recorded == [False]
    grads = {n: p.grad.clone() for n, p in wrapped.named_parameters() if p.requires_grad}
    # The same loss and gradients from the layer-0 states computed once: layer 0 does not run again.
    tokenizer = model.load_tokenizer(cfg.model)
    samples = lora.encode(tokenizer, ["Recent interests:\n- a, b\n- c, d\nNext new interest:", "Recent interests:\n- e\n- f\n"
                                      "Recently followed by: g, h\nNext new interest:"], [" g, h", " i"])
    twin = dict(samples[0])
    lora.cache_frozen(wrapped, samples + [twin], tokenizer.pad_token_id, batch_size=2)
    # One batch of the two distinct sequences: the twin shares the first sample's states.
    assert recorded == [False, False] and twin["hidden"] is samples[0]["hidden"]
    assert all(s["hidden"].shape[0] == len(s["input_ids"]) for s in samples)
    wrapped.zero_grad()
    cached = lora.answer_loss(wrapped, lora.collate(tokenizer.pad_token_id)(samples), lower=1)
    cached.backward()
    assert recorded == [False, False]  # layer 0 skipped
    assert torch.allclose(cached, full, rtol=1e-5, atol=1e-6)
    assert all(torch.allclose(p.grad, grads[n], rtol=1e-4, atol=1e-6)
               for n, p in wrapped.named_parameters() if p.requires_grad)
    assert len(wrapped.get_base_model().get_decoder().layers) == 2  # the stack is whole again


def test_length_batches_cover_each_epoch_with_little_padding_and_follow_the_epoch():
    from lightning.fabric.utilities.data import _set_sampler_epoch
    from torch.utils.data import DataLoader

    lengths = [30 + (7 * i) % 25 for i in range(100)]
    stream = lora.Stream(len(lengths), per_epoch=40, seed=3)
    batches = lora.LengthBatches(stream, lengths, batch_size=8)
    epoch0 = list(batches)
    assert len(epoch0) == len(batches) == 5 and sorted(sum(epoch0, [])) == sorted(stream)
    assert all(max(lengths[i] for i in b) - min(lengths[i] for i in b) <= 8 for b in epoch0)  # sorted, not random
    assert list(batches) == epoch0
    # Lightning moves the epoch through the batch sampler's `.sampler`, as it does for a plain sampler.
    _set_sampler_epoch(DataLoader(range(100), batch_sampler=batches), 1)
    assert stream.epoch == 1 and list(batches) != epoch0 and sorted(sum(list(batches), [])) == sorted(stream)
