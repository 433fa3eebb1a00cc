"""CTC loss: the one entry point the trainer uses.

:func:`ctc_loss` takes the model's logits (the softmax is part of the loss) and dispatches
to a backend. Today the only backend is "torch" (log_softmax + torch's ctc_loss); faster
kernels plug in here under the same signature.

:func:`feasible` says which utterances can be aligned at all: CTC needs one output step per
label plus one blank between every pair of equal neighbouring labels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ds2.text import BLANK

BACKENDS = ("torch",)


def ctc_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    input_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    blank: int = BLANK,
    reduction: str = "mean",
    zero_infinity: bool = False,
    backend: str = "torch",
) -> torch.Tensor:
    """Connectionist temporal classification loss from logits.

    Parameters
    ----------
    logits: shape = (B, T, V), unnormalized scores (float32/float16/bfloat16).
    targets: shape = (B, S) zero-padded label indices, or (sum(target_lengths),) concatenated.
    input_lengths, target_lengths: shape = (B,), int64.
    reduction: "none" (per utterance, shape (B,)), "sum", or "mean" (torch's semantics:
        each loss divided by its target length, then averaged over the batch).
    zero_infinity: replace the infinite losses of unalignable utterances (and their
        gradients) by zero.

    Returns the loss in float32.
    """
    if backend != "torch":
        raise ValueError(f"unknown CTC backend {backend!r}; available: {', '.join(BACKENDS)}")
    log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # T x B x V
    return F.ctc_loss(
        log_probs,
        targets,
        input_lengths,
        target_lengths,
        blank=blank,
        reduction=reduction,
        zero_infinity=zero_infinity,
    )


def min_frames(labels: torch.Tensor, label_lengths: torch.Tensor) -> torch.Tensor:
    """Fewest output steps that can carry each label sequence: L + number of repeats.

    labels: shape = (B, S), zero-padded; label_lengths: shape = (B,).
    """
    positions = torch.arange(labels.shape[1], device=labels.device)[None, :]
    valid_pair = positions[:, 1:] < label_lengths[:, None]
    repeats = ((labels[:, 1:] == labels[:, :-1]) & valid_pair).sum(dim=1)
    return label_lengths + repeats


def feasible(labels: torch.Tensor, label_lengths: torch.Tensor, output_lengths: torch.Tensor) -> torch.Tensor:
    """Boolean mask, shape = (B,): utterances whose labels fit their output steps."""
    return min_frames(labels, label_lengths) <= output_lengths
