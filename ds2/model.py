"""The Deep Speech 2 acoustic model.

spectrogram -> 1-3 2D convolutions (clipped ReLU) -> N recurrent layers with sequence-wise
batch normalization -> [row convolution, forward-only models] -> fully connected layer
-> output layer (logits over blank + alphabet).

Sequence-wise BatchNorm follows DS2 exactly: h[l,t] = f(BN(W h[l-1,t]) + U h[l,t-1]), the
mean and variance taken over the minibatch and every unpadded time step. BN(W x) is an affine
map of W x with per-unit scale s and shift b, so it equals (diag(s) W) x + b: we fold s and b
into the input weights handed to PyTorch's fused RNN kernels (cuDNN on GPU, the precomputed
input GEMM on CPU), which keeps the recurrence on the fast path. At inference the fold uses
the running averages and costs nothing. The backward direction of a bidirectional layer runs
the same fused kernel over each sequence reversed within its own length, so padding never
enters a real time step.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from ds2 import audio
from ds2.config import ConfigError, check, flag_name, option, parse_ints, parse_pairs, show_ints, show_pairs

CLIP = 20.0  # clipped ReLU ceiling, min(max(x, 0), 20)

# DS2's published convolution stack (channels, (freq, time) filter, (freq, time) stride).
DS2_CONV_CHANNELS = (32, 32, 96)
DS2_CONV_KERNELS = ((41, 11), (21, 11), (21, 11))
DS2_CONV_STRIDES = ((2, 2), (2, 1), (2, 1))

_VF_RNN = {"gru": torch._VF.gru, "rnn": torch._VF.rnn_relu}
_GATES = {"gru": 3, "rnn": 1}


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model; saved in every checkpoint."""

    n_outputs: int = option(29, "Blank + alphabet symbols.", min=2, cli=False)
    n_freq: int = option(audio.N_FREQ, "Spectrogram bins.", min=1, cli=False)
    conv_layers: int = option(2, "2D convolution layers (the first N of the conv lists are used).", min=1, max=3)
    conv_channels: tuple = option(DS2_CONV_CHANNELS, "Channels per conv layer.", each_min=1,
                                  parse=parse_ints, show=show_ints)
    conv_kernels: tuple = option(DS2_CONV_KERNELS, "Filter sizes, frequency x time (DS2's).", each_min=1,
                                 parse=parse_pairs, show=show_pairs)
    conv_strides: tuple = option(DS2_CONV_STRIDES, "Strides, frequency x time.", each_min=1,
                                 parse=parse_pairs, show=show_pairs)
    rnn_type: str = option("gru", "gru, or rnn (simple ReLU RNN).", choices=tuple(_GATES))
    rnn_layers: int = option(3, "Recurrent layers.", min=1)
    rnn_hidden: int = option(256, "Units per recurrent layer.", min=1)
    bidirectional: bool = option(True, "Bidirectional (directions summed) or forward-only recurrent layers.")
    batch_norm: bool = option(True, "Sequence-wise BatchNorm on conv and input-to-hidden products (DS2).")
    lookahead: int = option(0, "Row convolution future steps tau (forward-only models).", min=0)
    fc_hidden: int = option(256, "Units of the fully connected layer.", min=1)
    alphabet: list = option(help="Symbols 1..N (index 0 is the blank).", default_factory=list, cli=False)

    def __post_init__(self):
        self.conv_channels = tuple(int(c) for c in self.conv_channels)
        self.conv_kernels = tuple(tuple(int(k) for k in kernel) for kernel in self.conv_kernels)
        self.conv_strides = tuple(tuple(int(s) for s in stride) for stride in self.conv_strides)
        check(self)
        for name in ("conv_channels", "conv_kernels", "conv_strides"):
            if len(getattr(self, name)) < self.conv_layers:
                raise ConfigError(f"{flag_name(name)}: {self.conv_layers} conv layers need {self.conv_layers} values")
        if self.lookahead and self.bidirectional:
            raise ConfigError("--lookahead (row convolution) is for forward-only models: add --no-bidirectional")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})

    @property
    def time_stride(self) -> int:
        return math.prod(stride[1] for stride in self.conv_strides[: self.conv_layers])


def clipped_relu(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(x, 0.0, CLIP)


def time_mask(lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    """Boolean mask, shape = (batch, max_length): True at real (unpadded) time steps."""
    steps = torch.arange(max_length, device=lengths.device)
    return steps[None, :] < lengths[:, None]


class SequenceBatchNorm(nn.Module):
    """Batch normalization whose statistics come only from the values it is given.

    The caller passes the unpadded values, shape = (n_values, n_features), so padding
    never enters the mean or the variance. Returns the per-feature (scale, shift) with
    BN(y) = scale * y + shift, so callers can fold it into a linear map.
    """

    def __init__(self, n_features: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.momentum = momentum
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(n_features))
        self.bias = nn.Parameter(torch.zeros(n_features))
        self.register_buffer("running_mean", torch.zeros(n_features))
        self.register_buffer("running_var", torch.ones(n_features))

    def scale_shift(self, values: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training:
            if values is None or values.shape[0] < 2:
                raise ValueError("batch norm needs at least two values per feature in training")
            mean = values.mean(dim=0)
            var = values.var(dim=0, unbiased=False)
            with torch.no_grad():
                n = values.shape[0]
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(var.detach() * n / (n - 1), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        scale = self.weight * torch.rsqrt(var + self.eps)
        return scale, self.bias - mean * scale


class ConvBlock(nn.Module):
    """Conv2d over (frequency, time) -> masked BN -> clipped ReLU; padded frames zeroed."""

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple, stride: tuple, batch_norm: bool):
        super().__init__()
        padding = (kernel[0] // 2, kernel[1] // 2)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding, bias=not batch_norm)
        self.norm = SequenceBatchNorm(out_channels) if batch_norm else None

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        kernel, stride, pad = self.conv.kernel_size[1], self.conv.stride[1], self.conv.padding[1]
        return torch.div(lengths + 2 * pad - kernel, stride, rounding_mode="floor") + 1

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv(x)  # B x C x F x T
        lengths = self.output_lengths(lengths)
        mask = time_mask(lengths, x.shape[-1])  # B x T
        if self.norm is not None:
            valid = x.permute(0, 3, 2, 1)[mask]  # N_valid x F x C
            scale, shift = self.norm.scale_shift(valid.reshape(-1, valid.shape[-1]) if self.training else None)
            x = x * scale[:, None, None] + shift[:, None, None]
        x = clipped_relu(x) * mask[:, None, None, :]
        return x, lengths


class RecurrentLayer(nn.Module):
    """One (bi)directional GRU or simple-RNN layer with DS2's sequence-wise BatchNorm.

    h[t] = f(BN(W x[t]) + U h[t-1]); BN is folded into W (see module docstring).
    Input and output are time-major and padded: x shape = (T, B, input_size),
    output shape = (T, B, hidden_size) with the two directions summed.
    """

    def __init__(self, input_size: int, hidden_size: int, rnn_type: str, bidirectional: bool, batch_norm: bool):
        super().__init__()
        self.rnn_type = rnn_type
        self.hidden_size = hidden_size
        self.n_directions = 2 if bidirectional else 1
        gated = _GATES[rnn_type] * hidden_size
        bound = 1.0 / math.sqrt(hidden_size)  # PyTorch's RNN initialization
        self.weight_ih = nn.Parameter(torch.empty(self.n_directions * gated, input_size).uniform_(-bound, bound))
        self.weight_hh = nn.Parameter(torch.empty(self.n_directions, gated, hidden_size).uniform_(-bound, bound))
        self.bias_hh = nn.Parameter(torch.empty(self.n_directions, gated).uniform_(-bound, bound))
        if batch_norm:
            self.norm = SequenceBatchNorm(self.n_directions * gated)
            self.bias_ih = None
        else:
            self.norm = None
            self.bias_ih = nn.Parameter(torch.empty(self.n_directions * gated).uniform_(-bound, bound))

    def input_weights(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The input-to-hidden weight and bias with BN folded in, both directions stacked."""
        if self.norm is None:
            return self.weight_ih, self.bias_ih
        products = x[mask] @ self.weight_ih.t() if self.training else None  # N_valid x dirs*G*H
        scale, shift = self.norm.scale_shift(products)
        return self.weight_ih * scale[:, None], shift

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # x: T x B x D; mask: T x B (True where t < length)
        weight_ih, bias_ih = self.input_weights(x, mask)
        weight_ih = weight_ih.view(self.n_directions, -1, x.shape[-1])
        bias_ih = bias_ih.view(self.n_directions, -1)
        hidden0 = x.new_zeros(1, x.shape[1], self.hidden_size)
        output = None
        for direction in range(self.n_directions):
            inputs = x if direction == 0 else reverse_padded(x, lengths)
            weights = [weight_ih[direction], self.weight_hh[direction], bias_ih[direction], self.bias_hh[direction]]
            out, _ = _VF_RNN[self.rnn_type](inputs, hidden0, weights, True, 1, 0.0, self.training, False, False)
            if direction == 1:
                out = reverse_padded(out, lengths)
            output = out if output is None else output + out  # T x B x H
        return output


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence of a time-major padded batch within its own length.

    x shape = (T, B, ...); padding stays at the end, so a forward pass over the result
    sees each sequence's last real frame first and padding only after its first frame.
    """
    steps = torch.arange(x.shape[0], device=x.device)[:, None]  # T x 1
    lengths = lengths.to(x.device)[None, :]  # 1 x B
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)  # T x B
    index = index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(0, index)


class RowConvolution(nn.Module):
    """DS2 lookahead: r[t, i] = sum_{j=0..tau} W[i, j] h[t + j, i], one filter per feature."""

    def __init__(self, n_features: int, tau: int):
        super().__init__()
        self.tau = tau
        self.conv = nn.Conv1d(n_features, n_features, tau + 1, groups=n_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: T x B x H, zero at padded steps, so the future of a sequence's end is silence
        x = x.permute(1, 2, 0)  # B x H x T
        x = self.conv(nn.functional.pad(x, (0, self.tau)))
        return x.permute(2, 0, 1)  # T x B x H


class DeepSpeech2(nn.Module):
    """DS2 acoustic model: features (B, N_FREQ, T) -> logits (B, T', n_outputs)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        convs = []
        channels, n_freq = 1, config.n_freq
        for layer in range(config.conv_layers):
            kernel, stride = config.conv_kernels[layer], config.conv_strides[layer]
            block = ConvBlock(channels, config.conv_channels[layer], kernel, stride, config.batch_norm)
            convs.append(block)
            channels = config.conv_channels[layer]
            n_freq = (n_freq + 2 * (kernel[0] // 2) - kernel[0]) // stride[0] + 1
        self.convs = nn.ModuleList(convs)
        rnn_input = channels * n_freq
        self.rnns = nn.ModuleList(
            RecurrentLayer(
                rnn_input if layer == 0 else config.rnn_hidden,
                config.rnn_hidden,
                config.rnn_type,
                config.bidirectional,
                config.batch_norm,
            )
            for layer in range(config.rnn_layers)
        )
        self.row_conv = RowConvolution(config.rnn_hidden, config.lookahead) if config.lookahead else None
        self.fc = nn.Linear(config.rnn_hidden, config.fc_hidden)
        self.output = nn.Linear(config.fc_hidden, config.n_outputs)

    def output_lengths(self, input_lengths: torch.Tensor) -> torch.Tensor:
        """Exact number of output steps for each input length (frames)."""
        for block in self.convs:
            input_lengths = block.output_lengths(input_lengths)
        return input_lengths

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        features: shape = (B, N_FREQ, T), zero-padded beyond ``lengths``
        lengths: shape = (B,), int64 frame counts
        Returns logits, shape = (B, T', n_outputs), and output lengths, shape = (B,).
        """
        x = features.unsqueeze(1)  # B x 1 x F x T
        for block in self.convs:
            x, lengths = block(x, lengths)  # B x C x F' x T'
        batch, channels, n_freq, n_steps = x.shape
        x = x.permute(3, 0, 1, 2).reshape(n_steps, batch, channels * n_freq)  # T' x B x C*F'
        mask = time_mask(lengths, n_steps).t()  # T' x B
        for rnn in self.rnns:
            x = rnn(x, lengths, mask)  # T' x B x H
        if self.row_conv is not None:
            x = clipped_relu(self.row_conv(x * mask[..., None]))
        x = clipped_relu(self.fc(x))  # T' x B x fc_hidden
        logits = self.output(x).transpose(0, 1)  # B x T' x n_outputs
        return logits, lengths

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
