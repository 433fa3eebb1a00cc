"""Sequence-wise BatchNorm: statistics from unpadded values only (DS2's normalization).

Used by the convolutions and recurrent layers of ds2.model and by ds2.recurrent; see
ds2.model's docstring for how it is folded into the recurrent kernels.
"""

from __future__ import annotations

import torch
from torch import nn


def sums_and_squares(values: torch.Tensor, dims: int | tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum and sum of squares of ``values`` over ``dims``, in float32 (float64 stays float64).

    Reductions only: no masked, squared or float32 copy of ``values`` is made (on the GPU,
    float16 and bfloat16 are read as they are and accumulated in float32). Autocast is held
    off because it would cast the whole tensor to float32 before summing it.
    """
    dtype = torch.promote_types(values.dtype, torch.float32)
    with torch.autocast(values.device.type, enabled=False):
        total = values.sum(dims, dtype=dtype)
        squares = torch.linalg.vector_norm(values, dim=dims, dtype=dtype).square()
    return total, squares


class SequenceBatchNorm(nn.Module):
    """Batch normalization whose statistics come only from unpadded values.

    In training the caller passes, per feature, the number of unpadded values and their sum
    and sum of squares (:func:`sums_and_squares` over padding that is masked or exactly zero),
    so padding never enters the mean or the variance and no copy of the valid values is
    gathered. The statistics and running averages are float32 (float64 in a float64 model)
    whatever the activations' dtype, e.g. bfloat16 under autocast. Returns the per-feature
    (scale, shift) with BN(y) = scale * y + shift, so callers can fold it into a linear map.
    """

    def __init__(self, n_features: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.momentum = momentum
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(n_features))
        self.bias = nn.Parameter(torch.zeros(n_features))
        self.register_buffer("running_mean", torch.zeros(n_features))
        self.register_buffer("running_var", torch.ones(n_features))
        self.sync_group = None  # see DeepSpeech2.sync_batch_norm

    def scale_shift(
        self, count: torch.Tensor | None = None, total: torch.Tensor | None = None, squares: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """count: shape = (), total and squares: shape = (n_features,); only read in training."""
        if self.training:
            if count is None:
                raise ValueError("batch norm in training needs the batch's count, sum and sum of squares")
            count = count.to(total.dtype)  # stays a tensor: reading it as a number would wait for the GPU
            if self.sync_group is not None:
                count, total, squares = _summed_over_ranks(self.sync_group, count, total, squares)
            mean = total / count.clamp(min=1)
            var = (squares / count.clamp(min=1) - mean.square()).clamp(min=0)
            with torch.no_grad():
                momentum = (count > 0).to(self.running_mean.dtype) * self.momentum  # no values: keep the averages
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                unbiased = var * count / (count - 1).clamp(min=1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        else:
            mean, var = self.running_mean, self.running_var
        scale = self.weight * torch.rsqrt(var + self.eps)
        return scale, self.bias - mean * scale


def _summed_over_ranks(group, count: torch.Tensor, total: torch.Tensor, squares: torch.Tensor):
    """count, total and squares summed over the ranks of ``group`` in one all-reduce that
    autograd differentiates (its backward sums the gradients over the ranks the same way)."""
    from torch.distributed.nn.functional import all_reduce

    n_features = total.shape[0]
    packed = all_reduce(torch.cat([count.reshape(1), total, squares]), group=group)
    return packed[0], packed[1 : n_features + 1], packed[n_features + 1 :]
