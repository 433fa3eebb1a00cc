"""benchmarks/train_throughput.py: the plain-PyTorch peer is a faithful DS2 of our layer sizes,
the analytic FLOP count (the MFU's numerator) is torch's count, and the benchmark runs."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.train_throughput import CONFIGS, BaselineDS2, make_batch, n_parameters, training_flops  # noqa: E402
from ds2.model import DeepSpeech2  # noqa: E402


def forward_flops(model: torch.nn.Module, features: torch.Tensor, lengths: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(features, lengths)
    return counter.get_total_flops()


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_the_flop_count_is_torchs_count_of_the_forward(name):
    config = CONFIGS[name]
    features, lengths = torch.randn(2, config.n_freq, 90), torch.tensor([90, 90])
    counted = training_flops(config, lengths.tolist()) / 3
    assert forward_flops(BaselineDS2(config).eval(), features, lengths) == counted
    # ours does a little more: the padding-flag input columns, and in training the input
    # products once more for the BatchNorm statistics (not model FLOPs)
    assert counted < forward_flops(DeepSpeech2(config).eval(), features, lengths) < 1.01 * counted


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_the_baseline_has_our_layer_sizes_and_ignores_padding(name):
    config = CONFIGS[name]
    torch.manual_seed(0)
    baseline, ours = BaselineDS2(config).eval(), DeepSpeech2(config).eval()
    assert abs(n_parameters(baseline) - n_parameters(ours)) < 1e-3 * n_parameters(ours)
    batch = make_batch(3, (1.0, 2.0), config.n_outputs, seed=0)
    logits, lengths = baseline(batch.features, batch.feature_lengths)  # T' x B x V
    expected_logits, expected_lengths = ours(batch.features, batch.feature_lengths)  # B x T' x V
    assert torch.equal(lengths, expected_lengths) and logits.shape == expected_logits.transpose(0, 1).shape
    for b in range(3):  # each utterance alone gives what it gives in the padded batch
        n = int(batch.feature_lengths[b])
        alone, _ = baseline(batch.features[b : b + 1, :, :n], batch.feature_lengths[b : b + 1])
        torch.testing.assert_close(alone[:, 0], logits[: int(lengths[b]), b], rtol=1e-4, atol=1e-5)


def test_the_benchmark_runs_on_the_cpu_and_writes_both_rows(tmp_path):
    table = tmp_path / "throughput.csv"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "train_throughput.py"), "--device", "cpu", "--configs", "tiny",
         "--batch", "2", "--seconds", "1,1.5", "--steps", "1", "--warmup", "0", "--repeats", "1", "--csv", str(table)],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "| tiny | ours |" in result.stdout and "| tiny | baseline |" in result.stdout
    with open(table, newline="") as stream:
        rows = {row["model"]: row for row in csv.DictReader(stream)}
    assert {row["status"] for row in rows.values()} == {"ok"}
    assert (rows["ours"]["ctc"], rows["baseline"]["ctc"]) == ("numba", "torch")
    assert float(rows["ours"]["ratio_ours_over_baseline"]) == pytest.approx(
        float(rows["ours"]["steps_per_s"]) / float(rows["baseline"]["steps_per_s"]))
    assert float(rows["ours"]["audio_h_per_h"]) > 0 and float(rows["baseline"]["peak_mib"]) > 0
