"""A scratch copy of the repository on a tiny synthetic world, for the tests that run DVC itself
(test_dvc_pipeline.py, test_dvc_experiments.py): each module builds its own, so the two can run
on separate pytest-xdist workers."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from pipeline.config import ROOT

TINY = ["data.synth.n_events=60000", "data.synth.n_clusters=6", "data.synth.cold_clusters=1",
        "data.synth.n_users=2000"]
# Appended to the scratch copy's conf/config.yaml, so every composition (dvc exp run included)
# keeps the tiny model; its untrained adapter cannot pass the gate, hence the override.
TINY_CONF = """
model:
  cache_dir: {models}
finetune:
  samples_per_pair: 1
  batch_size: 8
  trainer: {{max_steps: 4, log_every_n_steps: 1, enable_progress_bar: false}}
gate:
  max_pairs: 10
  max_new_tokens: 6
  override_reason: tiny random model in CI
  min_held_out_triples: 50
# What no assertion here depends on, shortened: a random model's answers are noise at any length
# (decoding is most of bulk_infer's time), and evaluate's repeats and resamples only narrow intervals.
bulk_infer:
  max_new_tokens: 8
evaluate:
  repeat_pairs: 50
  bootstrap: 200
"""


def sh(repo: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "test",
           "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def failed(repo: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=repo, capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    assert done.returncode != 0, f"{' '.join(args)} should have failed:\n{done.stdout}"
    return done


def fails(repo: Path, *args: str) -> str:
    return failed(repo, *args).stderr


def make(tmp_path_factory) -> Path:
    """A fresh clone-like copy: tracked and new files, no outputs, its own DVC cache and remote."""
    repo = tmp_path_factory.mktemp("repo")
    def git_files(*flags):
        return subprocess.run(["git", "ls-files", *flags], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.split()

    # What a clone would hold: tracked files plus new sources, not stage outputs lying around.
    listed = git_files() + [n for n in git_files("-o", "--exclude-standard") if not n.startswith(("work/", "metrics/"))]
    for name in listed:
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    py = sys.executable
    conf = repo / "conf" / "config.yaml"
    conf.write_text(conf.read_text().replace("- model: smollm2", "- model: tiny_random")
                    + TINY_CONF.format(models=ROOT / "models"))
    sh(repo, py, "-m", "pipeline.config")
    sh(repo, "git", "init", "-q")
    # The default remote lives in the user's home: releases here push to a scratch one instead.
    sh(repo, py, "-m", "dvc", "remote", "modify", "--local", "releases", "url", str(tmp_path_factory.mktemp("remote")))
    sh(repo, py, "-m", "pipeline.data", "synth", *TINY)
    sh(repo, py, "-m", "pipeline.data", "movielens")
    sh(repo, py, "-m", "dvc", "add", "-q", "data")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "tiny world")
    return repo
