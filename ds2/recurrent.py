"""Recurrent layers that PyTorch's fused kernels (cuDNN on the GPU) cannot run.

Three of ds2's recurrent variants have no fused kernel:

- DS2's simple RNN, h[t] = min(max(W x[t] + U h[t-1] + b, 0), 20): cuDNN has only an
  unclipped ReLU;
- recurrent BatchNorm (Cooijmans et al. 2017): the input term W x and the recurrent term
  U h are normalized separately, with statistics per time step, and so is an LSTM's cell state;
- LayerNorm (Ba et al. 2016): the same terms normalized per utterance and step, over the
  layer's units.

:class:`ScanLayer` runs them. The input term of every step is one matrix product over the
whole padded batch, with its normalization, before the recurrence starts. The recurrence is
then a TorchScript loop (:func:`_scan`), so no Python runs per time step. Both directions of a
bidirectional layer go through the same loop: one batched matrix product per step. The
backward direction runs on each utterance reversed within its own length (only the unpadded
part is reversed, as Cooijmans et al. prescribe), so at loop step k every utterance in either
direction is k steps into its pass, and padded steps, all at the end, leave the state alone.

Recurrent BatchNorm's statistics are per loop step k: over the utterances still running at k,
separately for each direction (the forward direction's step k is time k, the backward one's is
time L-1-k of an utterance of L steps). They are kept per step up to ``max_steps``, and the
population statistics of the longest step seen in training are reused beyond it, as in
Cooijmans et al. Gains start at 0.1, their recommendation; the recurrent and input terms have
no shift of their own (the layer's bias is the shift). LayerNorm's gains start at 1 and its
shifts at 0, as in Ba et al.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from ds2.norm import SequenceBatchNorm, sums_and_squares

CLIP = 20.0  # DS2's clipped ReLU ceiling, min(max(x, 0), 20)
GATES = {"rnn": 1, "gru": 3, "lstm": 4}
_CELL = {"rnn": 0, "gru": 1, "lstm": 2}
_NORM = {"none": 0, "batch": 0, "recurrent": 1, "layer": 2}  # the recurrent term's normalization
RECURRENT_BN_GAIN = 0.1  # Cooijmans et al.'s initial gain


def scan_eager(inputs: torch.Tensor, mask: torch.Tensor, weight_hh: torch.Tensor, bias_hh: torch.Tensor, cell: int,
          norm: int, h_gain: torch.Tensor, c_gain: torch.Tensor, c_bias: torch.Tensor, h_mean: torch.Tensor,
          h_var: torch.Tensor, c_mean: torch.Tensor, c_var: torch.Tensor, training: bool, eps: float):
    """The recurrence of every direction at once.

    inputs: shape = (T, D, B, G*H), the input term of each loop step (direction 1 on each
    utterance reversed within its length);
    mask: (T, D, B), True at real steps; weight_hh: (D, G*H, H); bias_hh: (D, 1, G*H).
    norm 1 (recurrent BN): h_gain (D, 1, G*H), c_gain and c_bias (D, 1, H); in eval, the
    population statistics of each loop step: h_mean, h_var (T, D, G*H), c_mean, c_var (T, D, H).
    norm 2 (LayerNorm): h_gain (D, 1, G*H), c_gain and c_bias (D, 1, H).
    Returns the states, shape = (T, D, B, H), and in recurrent-BN training the batch
    statistics of each loop step: (T, D, G*H) twice and (T, D, H) twice (else empty).
    """
    n_steps, n_dirs, batch = inputs.shape[0], inputs.shape[1], inputs.shape[2]
    hidden = weight_hh.shape[2]
    h = inputs.new_zeros(n_dirs, batch, hidden)
    c = inputs.new_zeros(n_dirs, batch, hidden)
    w_t = weight_hh.transpose(1, 2)
    outs: list[torch.Tensor] = []
    h_means: list[torch.Tensor] = []
    h_vars: list[torch.Tensor] = []
    c_means: list[torch.Tensor] = []
    c_vars: list[torch.Tensor] = []
    for k in range(n_steps):
        real = mask[k].unsqueeze(-1)  # D x B x 1
        recurrent = torch.bmm(h, w_t)  # D x B x G*H
        weights = real.to(recurrent.dtype)
        count = weights.sum(1, keepdim=True).clamp(min=1.0)  # D x 1 x 1
        if norm == 1:
            if training:
                mean = (recurrent * weights).sum(1, keepdim=True) / count
                var = ((recurrent - mean).square() * weights).sum(1, keepdim=True) / count
                h_means.append(mean.squeeze(1))
                h_vars.append(var.squeeze(1))
            else:
                mean, var = h_mean[k].unsqueeze(1), h_var[k].unsqueeze(1)
            recurrent = (recurrent - mean) * torch.rsqrt(var + eps) * h_gain
        elif norm == 2:
            var, mean = torch.var_mean(recurrent, -1, unbiased=False, keepdim=True)
            recurrent = (recurrent - mean) * torch.rsqrt(var + eps) * h_gain
        recurrent = recurrent + bias_hh
        x = inputs[k]
        if cell == 0:
            new_h = torch.clamp(x + recurrent, 0.0, 20.0)
        elif cell == 1:  # GRU, gates r, z, n (PyTorch's order and formula)
            xr, xz, xn = x.chunk(3, -1)
            hr, hz, hn = recurrent.chunk(3, -1)
            reset = torch.sigmoid(xr + hr)
            update = torch.sigmoid(xz + hz)
            candidate = torch.tanh(xn + reset * hn)
            new_h = candidate + update * (h - candidate)
        else:  # LSTM, gates i, f, g, o (PyTorch's order)
            gi, gf, gg, go = (x + recurrent).chunk(4, -1)
            new_c = torch.sigmoid(gf) * c + torch.sigmoid(gi) * torch.tanh(gg)
            shown = new_c
            if norm == 1:
                if training:
                    mean = (new_c * weights).sum(1, keepdim=True) / count
                    var = ((new_c - mean).square() * weights).sum(1, keepdim=True) / count
                    c_means.append(mean.squeeze(1))
                    c_vars.append(var.squeeze(1))
                else:
                    mean, var = c_mean[k].unsqueeze(1), c_var[k].unsqueeze(1)
                shown = (new_c - mean) * torch.rsqrt(var + eps) * c_gain + c_bias
            elif norm == 2:
                var, mean = torch.var_mean(new_c, -1, unbiased=False, keepdim=True)
                shown = (new_c - mean) * torch.rsqrt(var + eps) * c_gain + c_bias
            new_h = torch.sigmoid(go) * torch.tanh(shown)
            c = torch.where(real, new_c, c)
        h = torch.where(real, new_h, h)
        outs.append(h)
    empty = inputs.new_zeros(0)
    return (torch.stack(outs), torch.stack(h_means) if len(h_means) > 0 else empty,
            torch.stack(h_vars) if len(h_vars) > 0 else empty, torch.stack(c_means) if len(c_means) > 0 else empty,
            torch.stack(c_vars) if len(c_vars) > 0 else empty)


def _scripted(function):
    """``function`` compiled by TorchScript: the same code with no Python per step
    (benchmarks/rnn_variants.py runs both). torch.jit is deprecated but kept; where it is gone,
    the eager loop runs (slower, same results)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.script(function)
    except Exception as err:  # noqa: BLE001 - any failure to compile leaves the eager code
        warnings.warn(f"TorchScript could not compile the recurrent loop ({err}); running it eagerly")
        return function


_scan = _scripted(scan_eager)


def reversed_within(lengths: torch.Tensor, n_steps: int) -> torch.Tensor:
    """Time indices, shape = (n_steps, B), that reverse each utterance within its length and
    leave its padding where it is (an involution): L-1-t for t < L, else t."""
    steps = torch.arange(n_steps, device=lengths.device)[:, None]
    lengths = lengths.to(steps.device)[None, :]
    return torch.where(steps < lengths, lengths - 1 - steps, steps)


def _take_steps(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values: shape = (T, B, n); the rows ``index`` (T, B) of each utterance's time axis."""
    return values.gather(0, index[..., None].expand_as(values))


class StepBatchNorm(nn.Module):
    """Recurrent BatchNorm's statistics: a mean and variance per time step and feature.

    Running averages are kept for the first ``max_steps`` steps; ``steps_seen`` is the longest
    step count training has seen (at most ``max_steps``), and evaluation uses step
    min(t, steps_seen - 1)'s statistics at step t: Cooijmans et al.'s reuse beyond T_max.
    """

    def __init__(self, n_features: int, max_steps: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.max_steps, self.momentum, self.eps = max_steps, momentum, eps
        self.register_buffer("running_mean", torch.zeros(max_steps, n_features))
        self.register_buffer("running_var", torch.ones(max_steps, n_features))
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.long))

    def step_index(self, n_steps: int, device: torch.device) -> torch.Tensor:
        """The statistics' step for each of ``n_steps`` steps (a tensor: no wait for the GPU)."""
        last = (self.steps_seen - 1).clamp(min=0)
        return torch.minimum(torch.arange(n_steps, device=device), last)

    def population(self, n_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = self.step_index(n_steps, self.running_mean.device)
        return self.running_mean[index], self.running_var[index]  # T x n each

    @torch.no_grad()
    def update(self, means: torch.Tensor, variances: torch.Tensor, counts: torch.Tensor) -> None:
        """Per-step batch statistics, shape = (T, n_features), over counts (T,) values each."""
        steps = min(means.shape[0], self.max_steps)
        unbiased = variances[:steps] * (counts[:steps] / (counts[:steps] - 1).clamp(min=1))[:, None]
        momentum = (counts[:steps] > 0).to(means.dtype)[:, None] * self.momentum
        self.running_mean[:steps].lerp_(means[:steps].to(self.running_mean.dtype), momentum)
        self.running_var[:steps].lerp_(unbiased.to(self.running_var.dtype), momentum)
        self.steps_seen.clamp_(min=steps)

    def normalize(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """values: shape = (T, B, n), mask: (T, B). Zero-mean, unit-variance per step and feature
        (the batch's statistics in training, updating the averages; the population's in eval)."""
        if self.training:
            weights = mask[..., None].to(values.dtype)
            counts = weights.sum(1)  # T x 1
            mean = (values * weights).sum(1) / counts.clamp(min=1)
            var = ((values - mean[:, None]).square() * weights).sum(1) / counts.clamp(min=1)
            self.update(mean.detach(), var.detach(), counts[:, 0].detach())
        else:
            mean, var = self.population(values.shape[0])
        return (values - mean[:, None]) * torch.rsqrt(var[:, None] + self.eps)


class ScanLayer(nn.Module):
    """A (bi)directional clipped-RNN, GRU or LSTM layer with any of ds2's normalizations.

    Same interface as :class:`ds2.model.RecurrentLayer`: x shape = (T, B, input_size) padded,
    output shape = (T, B, hidden_size), the directions summed, zero at padded steps.
    norm: none; batch (DS2's sequence-wise BatchNorm of W x over the batch and all steps);
    recurrent (Cooijmans et al.); layer (Ba et al.).
    """

    scan = staticmethod(_scan)

    def __init__(self, input_size: int, hidden_size: int, rnn_type: str, bidirectional: bool, norm: str,
                 max_steps: int = 1000):
        super().__init__()
        self.rnn_type, self.norm_type = rnn_type, norm
        self.input_size, self.hidden_size = input_size, hidden_size
        self.n_directions = 2 if bidirectional else 1
        gated = GATES[rnn_type] * hidden_size
        dirs = self.n_directions
        bound = 1.0 / math.sqrt(hidden_size)
        self.weight_ih = nn.Parameter(torch.empty(dirs * gated, input_size).uniform_(-bound, bound))
        self.weight_hh = nn.Parameter(torch.empty(dirs, gated, hidden_size).uniform_(-bound, bound))
        self.bias_ih = nn.Parameter(torch.empty(dirs * gated).uniform_(-bound, bound))
        self.bias_hh = nn.Parameter(torch.empty(dirs, gated).uniform_(-bound, bound))
        self.input_norm = self.recurrent_norm = self.cell_norm = None
        gain = {"recurrent": RECURRENT_BN_GAIN, "layer": 1.0}.get(norm, 1.0)
        if norm == "batch":
            self.input_norm = SequenceBatchNorm(dirs * gated)
        elif norm in ("recurrent", "layer"):
            self.input_gain = nn.Parameter(torch.full((dirs * gated,), gain))
            self.recurrent_gain = nn.Parameter(torch.full((dirs, 1, gated), gain))
            if rnn_type == "lstm":  # the cell state is normalized too
                self.cell_gain = nn.Parameter(torch.full((dirs, 1, hidden_size), gain))
                self.cell_bias = nn.Parameter(torch.zeros(dirs, 1, hidden_size))
            if norm == "recurrent":
                self.input_norm = StepBatchNorm(dirs * gated, max_steps)
                self.recurrent_norm = StepBatchNorm(dirs * gated, max_steps)
                if rnn_type == "lstm":
                    self.cell_norm = StepBatchNorm(dirs * hidden_size, max_steps)
            else:
                self.input_bias = nn.Parameter(torch.zeros(dirs * gated))
        elif norm != "none":
            raise ValueError(f"unknown recurrent normalization {norm!r}")

    def input_term(self, products: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Normalized W x + b of every loop step, shape = (T, B, D*G*H), from W x in loop order
        (exactly zero at padding)."""
        if self.norm_type == "batch":
            sums = (lengths.sum(), *sums_and_squares(products, (0, 1))) if self.training else ()
            scale, shift = self.input_norm.scale_shift(*sums)
            return products * scale + shift + self.bias_ih
        if self.norm_type == "recurrent":
            return self.input_norm.normalize(products, mask) * self.input_gain + self.bias_ih
        if self.norm_type == "layer":
            per_direction = products.unflatten(-1, (self.n_directions, -1))
            var, mean = torch.var_mean(per_direction, -1, unbiased=False, keepdim=True)
            normalized = ((per_direction - mean) * torch.rsqrt(var + 1e-5)).flatten(-2)
            return normalized * self.input_gain + self.input_bias + self.bias_ih
        return products + self.bias_ih

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = torch.where(mask[..., None], x, 0)
        n_steps, batch = x.shape[:2]
        dirs, hidden = self.n_directions, self.hidden_size
        products = x @ self.weight_ih.t()  # T x B x D*GH
        if dirs == 2:  # the backward direction runs on each utterance reversed within its length
            reverse = reversed_within(lengths, n_steps)
            ahead, back = products.chunk(2, -1)
            products = torch.cat([ahead, _take_steps(back, reverse)], -1)
        inputs = self.input_term(products, lengths, mask).unflatten(-1, (dirs, -1)).permute(0, 2, 1, 3)  # T x D x B x GH
        masks = mask[:, None, :].expand(n_steps, dirs, batch)
        gated = self.weight_hh.shape[1]
        empty = x.new_zeros(0)
        h_gain = c_gain = c_bias = h_mean = h_var = c_mean = c_var = empty
        norm = _NORM[self.norm_type]
        eps = 1e-5
        if norm:
            h_gain = self.recurrent_gain
            if self.rnn_type == "lstm":
                c_gain, c_bias = self.cell_gain, self.cell_bias
        if norm == 1 and not self.training:
            h_mean, h_var = (s.view(-1, dirs, gated) for s in self.recurrent_norm.population(n_steps))
            if self.cell_norm is not None:
                c_mean, c_var = (s.view(-1, dirs, hidden) for s in self.cell_norm.population(n_steps))
            eps = self.recurrent_norm.eps
        # Without the JIT's optimizing passes (fusion): the same graph then computes the same floats
        # on every call, as a resumed run must (the profiling executor optimizes only after some calls).
        with torch.jit.optimized_execution(False):
            states, *stats = self.scan(inputs, masks, self.weight_hh, self.bias_hh[:, None, :], _CELL[self.rnn_type],
                                       norm, h_gain, c_gain, c_bias, h_mean, h_var, c_mean, c_var, self.training, eps)
        if norm == 1 and self.training:
            counts = mask.sum(1).to(x.dtype)  # the same at loop step k in both directions
            h_means, h_vars, c_means, c_vars = (s.flatten(1).detach() if s.numel() else s for s in stats)
            self.recurrent_norm.update(h_means, h_vars, counts)
            if c_means.numel():
                self.cell_norm.update(c_means, c_vars, counts)
        if dirs == 2:
            states = torch.stack([states[:, 0], _take_steps(states[:, 1], reverse)], 1)
        return torch.where(mask[..., None], states.sum(1), 0)
