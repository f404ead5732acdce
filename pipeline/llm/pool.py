"""Decoding over many workers: a pool of Ray actors that decode whole shards of the answer cache's
work list exactly as the single-process path does (issue 24; docs/ray.md).

`decoding(...).fill` is what the decoding stages call in place of `AnswerCache.fill`. With
`ray.workers: 1` it is that call, in this process, and Ray is never imported. Above 1, the missing prompts are cut into
the same shards `AnswerCache.fill` cuts (the sorted work list, every `shard_size` prompts), each
shard goes whole to an idle actor, which decodes it with the same function, settings and batches
as the single process, and this process stores each shard in the answer cache as it comes back.
An answer depends only on its shard, never on the worker or the completion order, so the tables
are the same bytes at any worker count; a killed run keeps every stored shard and resumes.

Plain Ray actors, not Ray Data. The shard is the unit of determinism and of the cache: Ray Data
cuts batches out of its own blocks (a `map_batches` batch can end early at a block boundary, and
the blocks depend on how the dataset was read and split), where an actor here gets exactly the
shard the single process decodes, and the driver writes the cache as each shard returns
(`ray.wait`), so the cache needs no storage the workers share. What Ray Data adds (streaming
datasets larger than memory, autoscaling pools, a vLLM engine in ray.data.llm) does not apply: the
work list is short strings that the driver holds, and the decoder is our own. Each actor loads the
model and adapter once and keeps them; a worker that dies is restarted (`max_restarts`) and its
shard sent again (`max_task_retries`), so a lost worker costs its shard, never a wrong answer.

Placement: on CUDA one actor per GPU (`num_gpus=1`, so Ray gives each its own device); on the CPU
the actors split `torch_threads` (threads per worker: torch_threads // workers, at least 1).
Files: the model and adapter are read by every worker at the path this process resolves (an
absolute path: storage every node mounts at the same place); each worker checks them before it
loads, and also that its device class and package versions are this process's, since both decide
the answer bits that the cache's namespace vouches for. The pipeline's own code is shipped with the
job (Ray's `py_modules`, `runtime_env()`), so a worker runs the decoder this process hashes.
"""
from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pipeline import kernels, manifest
from pipeline.llm import bulk, model

RETRIES = 3  # restarts of a dead worker, and resends of the shard it held
SETUP = "bin/setup --ray"


@dataclass(frozen=True)
class Decoder:
    """What decodes a shard, in this process or in a worker: picklable, every path absolute.

    conf: conf/model as a plain dict; answer(model, tokenizer, texts, trie, settings, exclude,
    advance, seeds) is the bulk function whose results the caller stores (bulk.scored_answers)."""
    conf: dict
    adapter: str | None
    device: str
    dtype: str
    names: dict[int, str]
    settings: bulk.Settings
    answer: Callable

    @classmethod
    def of(cls, m: DictConfig, adapter, device: str, dtype: str, names: dict[int, str],
           settings: bulk.Settings, answer: Callable) -> Decoder:
        """A decoder for conf/model `m`, with the prepared model's directory made absolute: a worker's
        current directory is not this one."""
        spec = OmegaConf.to_container(m, resolve=True)
        if m.source != "pretrained":  # the tokenizer (and the weights of a gguf_wheel) come from here
            spec["cache_dir"] = str(model.prepared_dir(m).resolve().parent)
        elif Path(m.name_or_path).is_dir():
            spec["name_or_path"] = str(Path(m.name_or_path).resolve())
        return cls(spec, str(Path(adapter).resolve()) if adapter else None, device, dtype, dict(names), settings,
                   answer)

    def files(self) -> list[str]:
        """What a worker must be able to read: the prepared model (or a local pretrained directory)
        and the adapter. A hub id is each node's own Hugging Face cache."""
        m = OmegaConf.create(self.conf)
        found = [str(model.prepared_dir(m))] if m.source != "pretrained" else (
            [m.name_or_path] if Path(m.name_or_path).is_absolute() else [])
        return found + ([self.adapter] if self.adapter else [])

    def load(self) -> Callable[..., list]:
        """decode(shard, advance, exclude=None, seeds=None): the model and adapter loaded once."""
        llm, tokenizer = model.load(OmegaConf.create(self.conf), self.adapter, self.device, self.dtype)
        trie = bulk.Trie.build(tokenizer, self.names)
        return lambda shard, advance, exclude=None, seeds=None: self.answer(
            llm, tokenizer, shard, trie, self.settings, exclude, advance, seeds)


@contextmanager
def decoding(decoder: Decoder, cfg: DictConfig):
    """What the decoding stages fill the answer cache with, in place of `cache.fill`:

        with pool.decoding(decoder, cfg) as d:
            answers.update(d.fill(cache, missing, shard_size, exclude=..., label=...))

    With ray.workers=1, d.fill is cache.fill in this process (no Ray import); above 1, the same
    shards on a pool of Ray actors. Either way the model is loaded once for every fill inside the
    block (once per worker)."""
    if cfg.ray.workers == 1:
        yield _InProcess(decoder.load())
    else:
        with _Pool(decoder, cfg) as workers:
            yield workers


def _extras(shard: list[str], exclude: dict | None, seeds: dict | None) -> dict:
    """bulk's per-prompt arguments for one shard: exclude (clusters constrained decoding may not
    answer) and seeds (sampling), each given as prompt -> value."""
    return {"exclude": [exclude[p] for p in shard] if exclude is not None else None,
            "seeds": [seeds[p] for p in shard] if seeds is not None else None}


class _InProcess:
    def __init__(self, decode: Callable[..., list]):
        self.decode = decode

    def fill(self, cache, missing: list[str], shard_size: int, exclude: dict | None = None,
             seeds: dict | None = None, label: str = "decoding") -> dict:
        return cache.fill(missing, lambda shard, advance: self.decode(shard, advance, **_extras(shard, exclude, seeds)),
                          shard_size, label)


class Worker:
    """One Ray actor: checks the files and its device, then loads the model once and decodes shards."""

    def __init__(self, decoder: Decoder, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.decoder, self.decode = decoder, None

    def check(self, device_class: str, packages: dict) -> str | None:
        """None when this worker can decode as the driver would (and has loaded the model), else what
        stops it (one line)."""
        import ray

        node = f"Ray worker on node {ray.util.get_node_ip_address()}"
        for path in self.decoder.files():
            if not os.access(path, os.R_OK):
                return (f"{path}: not readable by the {node}; the model and adapter must be on storage every "
                        "node mounts at the same path (docs/ray.md)")
        mine = kernels.device_class(self.decoder.device)
        if mine != device_class:
            return (f"the {node} decodes as {mine}, the driver as {device_class}: answers would differ in their "
                    "low bits; give it the same device and kernels (docs/ray.md)")
        differ = sorted(k for k in packages if manifest.packages().get(k) != packages[k])
        if differ:
            return f"the {node} has other versions of {', '.join(differ)} than the driver; install requirements.txt there"
        self.loaded()
        return None

    def answers(self, shard: list[str], extras: dict) -> list:
        return self.loaded()(shard, lambda n: None, **extras)

    def loaded(self) -> Callable[..., list]:
        """The decode function, the model loaded once; again in a restarted actor (a new process,
        whose check() ran in its first life)."""
        if self.decode is None:
            self.decode = self.decoder.load()
        return self.decode


class _Pool:
    """The actors of one `decoding` block, on the Ray cluster at ray.address (a local one started for
    the block when null), gone when it ends."""

    def __init__(self, decoder: Decoder, cfg: DictConfig):
        self.decoder, self.workers, self.address = decoder, cfg.ray.workers, cfg.ray.address
        self.cuda = decoder.device == "cuda"
        self.threads = 1 if self.cuda else max(1, cfg.torch_threads // self.workers)

    def __enter__(self) -> _Pool:
        self.ray = _import_ray()
        self.started = not self.ray.is_initialized()
        if self.started:
            _connect(self.ray, self.address, self.workers * self.threads)
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        """The actors, each checked and with its model loaded; what stops one is a one-line error."""
        need, have = ("GPU", 1) if self.cuda else ("CPU", self.threads)
        total = self.ray.cluster_resources().get(need, 0)
        if total < self.workers * have:
            raise ValueError(f"params.yaml: ray.workers={self.workers} needs {self.workers * have:g} {need}s "
                             f"({have} per worker) and the Ray cluster has {total:g}")
        env = {k: os.environ[k] for k in (*kernels.PORTABLE, *kernels.CUBLAS, "OMP_WAIT_POLICY") if k in os.environ}
        actor = self.ray.remote(Worker).options(
            num_cpus=1 if self.cuda else have, num_gpus=1 if self.cuda else 0,
            max_restarts=RETRIES, max_task_retries=RETRIES, runtime_env={"env_vars": env})
        self.actors = [actor.remote(self.decoder, self.threads) for _ in range(self.workers)]
        device_class = kernels.device_class(self.decoder.device)
        try:
            problems = self.ray.get([a.check.remote(device_class, manifest.packages()) for a in self.actors])
        except self.ray.exceptions.RayTaskError as exc:  # the model's own one-line errors, raised in a worker
            raise ValueError(f"{str(exc.cause).splitlines()[0]} (in a Ray worker)") from None
        for problem in filter(None, problems):
            raise ValueError(problem)

    def fill(self, cache, missing: list[str], shard_size: int, exclude: dict | None = None,
             seeds: dict | None = None, label: str = "decoding") -> dict:
        """cache.fill's shards of missing, decoded by the actors; each stored as it comes back."""
        shards = [missing[start:start + shard_size] for start in range(0, len(missing), shard_size)]
        done = {}
        with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()) as bar:
            task = bar.add_task(label, total=len(missing))
            for shard, outputs in self._run(shards, lambda shard: _extras(shard, exclude, seeds)):
                cache.add(shard, outputs)
                done.update(zip(shard, outputs))
                bar.advance(task, len(shard))
        return done

    def _run(self, shards: list[list[str]], extras: Callable[[list[str]], dict]):
        """(shard, answers) for every shard, in the order they complete; each actor holds one shard at
        a time, so a fast worker takes more of them."""
        todo = list(reversed(range(len(shards))))
        running = {}

        def send(actor) -> None:
            i = todo.pop()
            running[actor.answers.remote(shards[i], extras(shards[i]))] = (i, actor)

        for actor in self.actors[:len(shards)]:
            send(actor)
        while running:
            (ref,), _ = self.ray.wait(list(running), num_returns=1)
            i, actor = running.pop(ref)
            try:
                outputs = self.ray.get(ref)
            except self.ray.exceptions.RayTaskError as exc:  # a one-line error raised in a worker (out of memory)
                if not isinstance(exc.cause, ValueError):
                    raise
                raise ValueError(f"{str(exc.cause).splitlines()[0]} (in a Ray worker)") from None
            if todo:
                send(actor)
            yield shards[i], outputs

    def __exit__(self, *exc) -> None:
        for actor in getattr(self, "actors", []):
            self.ray.kill(actor)
        if self.started:
            self.ray.shutdown()


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ValueError(f"params.yaml: ray.workers above 1 needs Ray, which is not installed; `{SETUP}` installs it "
                         "(requirements-ray.txt), or set ray.workers=1") from None
    return ray


@contextmanager
def keep_callers_sigterm():
    """ray.init puts its own SIGTERM handler (sys.exit(15)) in place of the caller's: the stage's own
    (cli.terminated: one line, status 143, old outputs kept) comes back once Ray has started."""
    before = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if before is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, before)


def _connect(ray, address: str | None, cpus: int) -> None:
    """A local Ray for this run (address null), or the running cluster at address; an address where
    nothing answers is refused at once (Ray itself would retry for minutes)."""
    with keep_callers_sigterm():
        _init(ray, address, cpus)


def _init(ray, address: str | None, cpus: int) -> None:
    if address is None:
        ray.init(num_cpus=cpus, include_dashboard=False, configure_logging=False, runtime_env=runtime_env())
        return
    if address != "auto":
        host, _, port = address.removeprefix("ray://").rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except (OSError, ValueError):
            raise ValueError(f"params.yaml: ray.address={address!r}: no Ray head answers there (host:port of "
                             "`ray start --head`, ray://host:port for Ray Client, auto, or null for a local Ray)") from None
    try:
        ray.init(address=address, configure_logging=False, runtime_env=runtime_env())
    except ConnectionError as exc:
        raise ValueError(f"params.yaml: ray.address={address!r}: {str(exc).splitlines()[0]}") from None


def runtime_env() -> dict:
    """The Ray job's runtime environment: the pipeline's code shipped to every worker, so it runs the
    decoder this process hashes into the cache's namespace (a Ray the caller started should get it too)."""
    return {"py_modules": [str(Path(__file__).resolve().parents[1])]}
