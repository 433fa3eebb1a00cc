import itertools
import math

import pytest
import torch

from ds2 import ctc


def _brute_force_nll(log_probs: torch.Tensor, labels: list[int], blank: int = 0) -> float:
    """-log of the sum over every length-T path that collapses to ``labels``."""
    T, V = log_probs.shape
    total = -math.inf
    for path in itertools.product(range(V), repeat=T):
        collapsed = [s for s, _ in itertools.groupby(path) if s != blank]
        if collapsed == labels:
            score = sum(float(log_probs[t, s]) for t, s in enumerate(path))
            total = max(total, score) + math.log1p(math.exp(-abs(total - score))) if total > -math.inf else score
    return -total


def test_loss_from_logits_equals_the_sum_over_alignments():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3, dtype=torch.float64)
    targets = torch.tensor([[1, 2], [1, 1]])
    losses = ctc.ctc_loss(logits, targets, torch.tensor([4, 4]), torch.tensor([2, 2]), reduction="none")
    log_probs = torch.log_softmax(logits, dim=-1)
    expected = [_brute_force_nll(log_probs[0], [1, 2]), _brute_force_nll(log_probs[1], [1, 1])]
    assert losses.tolist() == pytest.approx(expected, rel=1e-6)


def test_reductions_follow_torch_semantics():
    torch.manual_seed(1)
    logits = torch.randn(3, 6, 5)
    targets = torch.tensor([[1, 2, 3], [4, 0, 0], [2, 2, 0]])
    input_lengths, target_lengths = torch.tensor([6, 5, 6]), torch.tensor([3, 1, 2])
    none = ctc.ctc_loss(logits, targets, input_lengths, target_lengths, reduction="none")
    assert float(ctc.ctc_loss(logits, targets, input_lengths, target_lengths, reduction="sum")) == pytest.approx(float(none.sum()))
    mean = ctc.ctc_loss(logits, targets, input_lengths, target_lengths, reduction="mean")
    assert float(mean) == pytest.approx(float((none / target_lengths).mean()))


def test_unalignable_utterance_is_infinite_or_zeroed():
    logits = torch.randn(1, 2, 4, requires_grad=True)
    targets, lengths = torch.tensor([[1, 1]]), torch.tensor([2])  # needs 3 steps: 1, blank, 1
    assert math.isinf(float(ctc.ctc_loss(logits, targets, lengths, lengths, reduction="none")[0].detach()))
    zeroed = ctc.ctc_loss(logits, targets, lengths, lengths, reduction="sum", zero_infinity=True)
    zeroed.backward()
    assert float(zeroed.detach()) == 0.0 and torch.all(logits.grad == 0)


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown CTC backend"):
        ctc.ctc_loss(torch.randn(1, 2, 3), torch.tensor([[1]]), torch.tensor([2]), torch.tensor([1]), backend="nope")


def test_feasibility_counts_repeats():
    labels = torch.tensor([[1, 1, 2, 0], [3, 4, 5, 6], [7, 7, 7, 0]])
    lengths = torch.tensor([3, 4, 3])
    assert ctc.min_frames(labels, lengths).tolist() == [4, 4, 5]
    assert ctc.feasible(labels, lengths, torch.tensor([4, 3, 5])).tolist() == [True, False, True]
