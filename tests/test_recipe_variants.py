"""recipes/variants/run.sh as a user runs it, on a small synthesized corpus with a small model and a
budget of seconds: the models named, each trained for its budget with dev evaluations, decoded
greedy and with the LM, scored; the table and the plot; a training failure fails the recipe."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import pytest

from ds2.checkpoint import load_checkpoint
from ds2.synth import SynthConfig, synthesize_corpus

REPO = Path(__file__).resolve().parent.parent
SMALL = ("--conv-layers 1 --conv-channels 4 --conv-kernels 41x11 --conv-strides 2x3 --rnn-layers 1 "
         "--rnn-hidden 16 --fc-hidden 16 --batch-size 4 --num-workers 0 --threads 1")


def run(*args) -> subprocess.CompletedProcess:
    command = ["nice", "-n", "19", "bash", str(REPO / "recipes" / "variants" / "run.sh"), *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.slow
def test_variants_recipe_trains_each_model_for_its_budget_and_compares_them(tmp_path):
    corpus = synthesize_corpus(tmp_path / "synth", SynthConfig(n_train=24, n_dev=4, n_test=4, seed=5), progress=False)
    data, exp = Path(corpus["train"]).parent, tmp_path / "exp"  # manifests name audio relative to their folder
    models = ["gru-bn", "gru-bn-bigrams"]
    result = run("--data", data, "--exp", exp, "--minutes", 0.05, "--eval-minutes", 0.02, "--bigrams", 10,
                 "--only", " ".join(models), "--train-opts", SMALL)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    for name in models:
        folder = exp / name
        with open(folder / "dev.csv") as handle:
            rows = list(csv.DictReader(handle))
        minutes = [float(row["train_minutes"]) for row in rows]
        assert len(rows) >= 2 and minutes == sorted(minutes) and minutes[-1] >= 0.05, (name, rows)
        for tag in ("dev", "test", "lm_dev", "lm_test"):
            assert json.loads((folder / f"score_{tag}.json").read_text())["n_utterances"] == 4
    configs = {name: load_checkpoint(exp / name / "best.pt")["model_config"] for name in models}
    assert configs["gru-bn"]["rnn_norm"] == "batch" and configs["gru-bn"]["rnn_type"] == "gru"
    assert configs["gru-bn"]["rnn_hidden"] == 16  # --train-opts came last and won
    assert sum(len(symbol) > 1 for symbol in configs["gru-bn-bigrams"]["alphabet"]) == 10
    table = (exp / "results.md").read_text().splitlines()
    assert [line.split("|")[1].strip() for line in table if line.startswith("| ") and "---" not in line][1:] == models
    assert (exp / "dev_cer.png").stat().st_size > 10_000

    # a model whose training fails: the others go on, the recipe fails and says which
    broken = run("--data", data, "--exp", exp, "--minutes", 0.05, "--only", "gru-bn lstm-bn",
                 "--train-opts", SMALL + " --rnn-max-steps 0")
    assert broken.returncode == 1 and "FAILED: lstm-bn" in broken.stdout + broken.stderr
    assert "gru-bn: done" in broken.stdout  # finished models are not trained again
