"""The Deep Speech 2 acoustic model.

spectrogram -> 1-3 2D convolutions (clipped ReLU) -> N recurrent layers with sequence-wise
batch normalization -> [row convolution, forward-only models] -> fully connected layer
-> output layer (logits over blank + alphabet).

Sequence-wise BatchNorm follows DS2 exactly: h[l,t] = f(BN(W h[l-1,t]) + U h[l,t-1]), the
mean and variance taken over the minibatch and every unpadded time step. BN(W x) is an affine
map of W x with per-unit scale s and shift b, so it equals (diag(s) W) x + b: we fold s and b
into the input weights handed to PyTorch's fused RNN kernels (cuDNN on GPU, the precomputed
input GEMM on CPU), which keeps the recurrence on the fast path. At inference the fold uses
the running averages, so it is built once and reused. Both directions of a bidirectional
layer run in one kernel call over the padded batch; a padding-flag input column saturates a
gate at padded steps, so padding never enters a real time step (see RecurrentLayer).

Mixed precision: under torch.autocast the batch statistics and running averages stay float32
and the normalized activations keep the autocast dtype.

Data-parallel training: each rank's batch statistics are its own, as in DS2;
:meth:`DeepSpeech2.sync_batch_norm` sums (count, sum, sum of squares) over the ranks instead,
with one differentiable all-reduce per layer, which gives one process's statistics of the
global batch.

Padding and the GPU: padded frames may hold anything (NaN included); they are replaced with
torch.where, never multiplied by a mask, so they reach no output or gradient of a real frame.
Batch statistics are masked sums, not gathers of the valid values. The forward and backward
read no value back to the host (no .item(), int(), bool(tensor), nonzero or boolean
indexing), so on a GPU nothing waits for the device; tests/test_model.py checks the ops on the
CPU (where torch.cuda.set_sync_debug_mode cannot see anything) and with that mode on a GPU.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from functools import lru_cache, partial

import torch
from torch import nn

from ds2 import audio
from ds2.config import ConfigError, check, flag_name, option, parse_ints, parse_pairs, show_ints, show_pairs
from ds2.norm import SequenceBatchNorm, sums_and_squares
from ds2.recurrent import CLIP, ScanLayer, StepBatchNorm


# DS2's published convolution stack (channels, (freq, time) filter, (freq, time) stride).
DS2_CONV_CHANNELS = (32, 32, 96)
DS2_CONV_KERNELS = ((41, 11), (21, 11), (21, 11))
DS2_CONV_STRIDES = ((2, 2), (2, 1), (2, 1))

# A gate pre-activation this large saturates exactly (sigmoid to 1.0, ReLU of its negative to 0)
# in float16 to float64, and it is still a finite float16 (at most 65504).
PADDING_GATE = 1e4

_VF_RNN = {"gru": torch._VF.gru, "relu": torch._VF.rnn_relu}  # LSTM: torch._VF.lstm (its own signature)
_TEMPLATE_RNN = {"gru": nn.GRU, "relu": partial(nn.RNN, nonlinearity="relu"), "lstm": nn.LSTM}
_GATES = {"gru": 3, "relu": 1, "lstm": 4}  # the fused kernels' cells (RecurrentLayer)
RNN_TYPES = ("gru", "lstm", "rnn", "relu")
RNN_NORMS = ("batch", "none", "recurrent", "layer")


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
    rnn_type: str = option("gru", "Recurrent cell: gru; lstm; rnn (DS2's simple RNN, clipped ReLU min(max(x, 0), 20)); "
                           "relu (simple RNN, unclipped ReLU: cuDNN's).", choices=RNN_TYPES)
    rnn_norm: str = option("batch", "Normalization of the recurrent layers: batch (DS2's sequence-wise BatchNorm of "
                           "W x, over the minibatch and every step); none; recurrent (Cooijmans et al.'s recurrent "
                           "BatchNorm: W x and U h, and an LSTM's cell, normalized separately with statistics per "
                           "step); layer (Ba et al.'s LayerNorm of the same terms, per utterance and step).",
                           choices=RNN_NORMS)
    rnn_max_steps: int = option(1000, "Recurrent BatchNorm: steps with statistics of their own; later steps use "
                                "the last step's.", min=1)
    rnn_layers: int = option(3, "Recurrent layers.", min=1)
    rnn_hidden: int = option(256, "Units per recurrent layer.", min=1)
    bidirectional: bool = option(True, "Bidirectional (directions summed) or forward-only recurrent layers.")
    batch_norm: bool = option(True, "BatchNorm on the convolutions' outputs (DS2); --rnn-norm sets the recurrent "
                              "layers'.")
    lookahead: int = option(0, "Row convolution future steps tau (forward-only models).", min=0)
    fc_hidden: int = option(256, "Units of the fully connected layer.", min=1)
    normalize: str = option("utterance", "Feature normalization: utterance (DS2's, whole utterance) or online "
                            "(causal: training-set statistics updated by each stream's frames; for streaming).",
                            choices=("utterance", "online"))
    norm_prior: float = option(3.0, "Online normalization: seconds of audio the training-set statistics weigh "
                               "against a stream's own frames.", above=0)
    feature_mean: list = option(help="Training-set feature mean per bin (online normalization).",
                                default_factory=list, cli=False)
    feature_var: list = option(help="Training-set feature variance per bin (online normalization).",
                               default_factory=list, cli=False)
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
        for name in ("feature_mean", "feature_var"):
            values = getattr(self, name)
            if values and len(values) != self.n_freq:
                raise ConfigError(f"{name}: {len(values)} values for {self.n_freq} frequency bins")
            setattr(self, name, [float(v) for v in values])

    @property
    def fused(self) -> bool:
        """Whether the recurrent layers run in PyTorch's fused kernels (RecurrentLayer; cuDNN on
        a GPU) rather than ds2.recurrent's TorchScript loop (ScanLayer)."""
        return self.rnn_type in _GATES and self.rnn_norm in ("batch", "none")

    @property
    def streamable(self) -> bool:
        """Whether the model can run on a stream chunk by chunk (ds2.streaming)."""
        return (not self.bidirectional and self.normalize == "online" and self.fused
                and self.rnn_type in _VF_RNN)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in values.items() if key in known}
        if "rnn_norm" not in values:  # saved before --rnn-norm: batch_norm covered the recurrent layers too,
            values["rnn_norm"] = "batch" if values.get("batch_norm", True) else "none"
            if values.get("rnn_type") == "rnn":  # and "rnn" was the unclipped ReLU
                values["rnn_type"] = "relu"
        return cls(**values)

    @property
    def time_stride(self) -> int:
        return math.prod(stride[1] for stride in self.conv_strides[: self.conv_layers])


def clipped_relu(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(x, 0.0, CLIP)


def time_mask(lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    """Boolean mask, shape = (batch, max_length): True at real (unpadded) time steps."""
    steps = torch.arange(max_length, device=lengths.device)
    return steps[None, :] < lengths[:, None]


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
        """x: shape = (B, C_in, F, T), zero at padded frames. Returns the output, shape =
        (B, C_out, F', T'), zero at padded frames, and the output lengths, shape = (B,)."""
        x = self.conv(x)  # B x C x F x T
        lengths = self.output_lengths(lengths)
        mask = time_mask(lengths, x.shape[-1])[:, None, None, :]  # B x 1 x 1 x T
        if self.norm is not None:
            sums = ()
            if self.training:
                # Sum over frequency first (the mask does not depend on it), then keep real frames.
                per_frame = sums_and_squares(x, 2)  # B x C x T each
                total, squares = (torch.where(mask[:, :, 0], s, 0).sum((0, 2)) for s in per_frame)
                sums = (lengths.sum() * x.shape[2], total, squares)
            scale, shift = self.norm.scale_shift(*sums)
            # computed in float32, returned in the activations' dtype
            x = torch.addcmul(shift[:, None, None], x, scale[:, None, None]).to(x.dtype)
        x = torch.where(mask, clipped_relu(x), 0)
        return x, lengths


class RecurrentLayer(nn.Module):
    """One (bi)directional GRU or simple-RNN layer with DS2's sequence-wise BatchNorm.

    h[t] = f(BN(W x[t]) + U h[t-1]); BN is folded into W (see module docstring).
    Input and output are time-major and padded: x shape = (T, B, input_size),
    output shape = (T, B, hidden_size) with the two directions summed, zero at padded steps.
    Both directions run in one call of PyTorch's fused kernel (cuDNN's bidirectional mode
    on the GPU) over the padded batch: the input gets a padding-flag column whose weight
    saturates a gate at padded steps (GRU: update gate 1, so h[t] = h[t+1]; ReLU RNN: 0),
    so the backward direction holds h = 0 exactly until a sequence's last real step.
    """

    def __init__(self, input_size: int, hidden_size: int, rnn_type: str, bidirectional: bool, batch_norm: bool):
        super().__init__()
        self.rnn_type = rnn_type
        self.input_size = input_size
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
        # The flag column, then zeros up to a multiple of 8 columns (tensor cores' alignment).
        # Constants, not state: left out of the state_dict, so checkpoints are unchanged.
        kernel_input = (input_size + 1 + 7) // 8 * 8
        padding_input = torch.zeros(kernel_input)
        padding_input[input_size] = 1.0
        padding_weight = torch.zeros(self.n_directions, gated, kernel_input - input_size)
        if rnn_type == "gru":  # gates r, z, n: z = sigmoid(big) = 1
            padding_weight[:, hidden_size : 2 * hidden_size, 0] = PADDING_GATE
        elif rnn_type == "lstm":  # gates i, f, g, o: input and forget gates 0, so c = 0 and h = 0
            padding_weight[:, : 2 * hidden_size, 0] = -PADDING_GATE
        else:  # relu(-big) = 0
            padding_weight[:, :, 0] = -PADDING_GATE
        self.register_buffer("padding_input", padding_input, persistent=False)
        self.register_buffer("padding_weight", padding_weight, persistent=False)
        self._inference_weights = None  # (key, weights): see kernel_weights

    def folded_input_weights(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Input-to-hidden weight, shape = (directions, G*H, input_size), and bias, shape =
        (directions, G*H), with BN folded in; x (training only): exactly zero at padded steps."""
        weight_ih = self.weight_ih.view(self.n_directions, -1, self.input_size)
        if self.norm is None:
            return weight_ih, self.bias_ih.view(self.n_directions, -1)
        sums = ()
        if self.training:
            products = x @ self.weight_ih.t()  # T x B x dirs*G*H, exactly zero at padded steps
            sums = (lengths.sum(), *sums_and_squares(products, (0, 1)))
        scale, shift = self.norm.scale_shift(*sums)
        return weight_ih * scale.view(self.n_directions, -1, 1), shift.view(self.n_directions, -1)

    def kernel_weights(self, x: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
        """What the fused kernel runs with: [w_ih, w_hh, b_ih, b_hh] per direction, BN folded
        into w_ih and b_ih, the padding-flag columns appended to w_ih, in the kernel's dtype,
        and on the GPU views of one buffer in cuDNN's layout (see :func:`flat_views`).

        x: shape = (T, B, input_size), exactly zero at padded steps; its statistics are used
        in training, so there the weights are new at every step. In inference they depend only
        on parameters and running averages: they are built once and reused until one of those
        changes (an optimizer step, load_state_dict, a move to another device or dtype).
        """
        dtype = _kernel_dtype(x)
        key = self._inference_key(dtype) if not (self.training or torch.is_grad_enabled()) else None
        if key is not None and self._inference_weights is not None and self._inference_weights[0] == key:
            return self._inference_weights[1]
        weight_ih, bias_ih = self.folded_input_weights(x, lengths)
        weight_ih = torch.cat([weight_ih, self.padding_weight.to(weight_ih.dtype)], dim=2)
        weights = [
            w.to(dtype)
            for direction in range(self.n_directions)
            for w in (weight_ih[direction], self.weight_hh[direction], bias_ih[direction], self.bias_hh[direction])
        ]
        if x.is_cuda:
            layout = _cudnn_layout(self.rnn_type, weight_ih.shape[2], self.hidden_size, self.n_directions == 2, x.device, dtype)
            if layout is not None:
                weights = flat_views(weights, *layout)
        if key is not None:
            self._inference_weights = (key, weights)
        return weights

    def _inference_key(self, dtype: torch.dtype) -> tuple | None:
        """Identifies the parameters and running averages as they are now (None: do not cache)."""
        sources = [self.weight_ih, self.weight_hh, self.bias_hh]
        sources += [self.bias_ih] if self.norm is None else [*self.norm.parameters(), *self.norm.buffers()]
        if any(t.is_inference() for t in sources):  # they have no version counter
            return None
        return dtype, tuple((t.device, t.data_ptr(), t._version) for t in sources)

    def _apply(self, fn, recurse=True):
        self._inference_weights = None  # .to(), .half(), ...: rebuild from the converted parameters
        return super()._apply(fn, recurse)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: shape = (T, B, input_size); lengths: shape = (B,); mask: shape = (T, B), True
        where t < length. Padding may hold anything (NaN included): it is replaced here."""
        batch = x.shape[1]
        padded = nn.functional.pad(x, (0, self.padding_input.shape[0] - self.input_size))
        inputs = torch.where(mask[..., None], padded, self.padding_input.to(x.dtype))  # T x B x D', padding flagged
        weights = self.kernel_weights(inputs[..., : self.input_size], lengths)
        dtype = weights[0].dtype
        hidden0 = inputs.new_zeros(self.n_directions, batch, self.hidden_size, dtype=dtype)
        bidirectional = self.n_directions == 2
        if self.rnn_type == "lstm":
            out = torch._VF.lstm(inputs.to(dtype), (hidden0, hidden0), weights, True, 1, 0.0, self.training,
                                 bidirectional, False)[0]
        else:
            out = _VF_RNN[self.rnn_type](inputs.to(dtype), hidden0, weights, True, 1, 0.0, self.training,
                                         bidirectional, False)[0]
        out = out.unflatten(-1, (self.n_directions, self.hidden_size)).sum(-2)  # T x B x H
        return torch.where(mask[..., None], out, 0)


def _kernel_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the recurrent kernel runs in.

    Under CUDA autocast, PyTorch runs cuDNN RNNs in float16 whatever the autocast dtype
    (aten/src/ATen/cudnn/AutocastRNN.cpp), and bfloat16 inputs are not cuDNN-acceptable at
    all; weights made float16 here leave autocast nothing to cast and re-flatten.
    """
    if x.is_cuda and torch.is_autocast_enabled("cuda"):
        return torch.float16
    return x.dtype


@lru_cache(maxsize=None)
def _cudnn_layout(rnn_type: str, input_size: int, hidden_size: int, bidirectional: bool,
                  device: torch.device, dtype: torch.dtype) -> tuple[tuple[int, ...], int] | None:
    """Where cuDNN wants each weight in its flat buffer: (offsets, size), or None.

    Learnt once per shape from an nn.GRU / nn.RNN built on the device, whose parameters
    PyTorch flattens into cuDNN's layout; None where it does not (cuDNN off or unusable).
    """
    with torch.inference_mode(False), torch.no_grad():
        template = _TEMPLATE_RNN[rnn_type](input_size, hidden_size, bidirectional=bidirectional, device=device, dtype=dtype)
    weights = [w for layer in template.all_weights for w in layer]
    storage = weights[0].untyped_storage()
    if any(w.untyped_storage().data_ptr() != storage.data_ptr() for w in weights):
        return None
    return tuple(w.storage_offset() for w in weights), storage.nbytes() // weights[0].element_size()


def flat_views(weights: list[torch.Tensor], offsets: tuple[int, ...], size: int) -> list[torch.Tensor]:
    """``weights`` copied into one buffer of ``size`` elements at ``offsets`` (elements; gaps
    are zero), returned as views of it; differentiable.

    cuDNN takes a weight list as it is only when its tensors are views of one buffer at the
    offsets it expects (PyTorch's try_get_weight_buf); any other list it copies into a new
    buffer at every call, warns that the weights "are not part of single contiguous chunk
    of memory", and keeps the copy for the backward.
    """
    pieces, end = [], 0
    for offset, weight in sorted(zip(offsets, weights), key=lambda pair: pair[0]):
        pieces += [weight.new_zeros(offset - end), weight.reshape(-1)]
        end = offset + weight.numel()
    flat = torch.cat(pieces + [weights[0].new_zeros(size - end)])
    return [flat[offset : offset + weight.numel()].view_as(weight) for offset, weight in zip(offsets, weights)]


def recurrent_layer(input_size: int, config: ModelConfig) -> nn.Module:
    """One of ``config``'s recurrent layers: fused (RecurrentLayer) where PyTorch has the
    kernel, else ds2.recurrent's ScanLayer."""
    if config.fused:
        return RecurrentLayer(input_size, config.rnn_hidden, config.rnn_type, config.bidirectional,
                              config.rnn_norm == "batch")
    return ScanLayer(input_size, config.rnn_hidden, config.rnn_type, config.bidirectional, config.rnn_norm,
                     config.rnn_max_steps)


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
            recurrent_layer(rnn_input if layer == 0 else config.rnn_hidden, config) for layer in range(config.rnn_layers)
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
        features: shape = (B, N_FREQ, T); frames beyond ``lengths`` are ignored (zeroed here)
        lengths: shape = (B,), int64 frame counts
        Returns logits, shape = (B, T', n_outputs), and output lengths, shape = (B,).
        """
        lengths = lengths.to(features.device)
        frames = time_mask(lengths, features.shape[-1])  # B x T
        x = torch.where(frames[:, None, :], features, 0).unsqueeze(1)  # B x 1 x F x T
        for block in self.convs:
            x, lengths = block(x, lengths)  # B x C x F' x T'
        batch, channels, n_freq, n_steps = x.shape
        x = x.permute(3, 0, 1, 2).reshape(n_steps, batch, channels * n_freq)  # T' x B x C*F'
        mask = time_mask(lengths, n_steps).t()  # T' x B
        for rnn in self.rnns:
            x = rnn(x, lengths, mask)  # T' x B x H, zero at padded steps
        if self.row_conv is not None:
            x = clipped_relu(self.row_conv(x))
        x = clipped_relu(self.fc(x))  # T' x B x fc_hidden
        logits = self.output(x).transpose(0, 1)  # B x T' x n_outputs
        return logits, lengths

    def sync_batch_norm(self, enabled: bool = True, group=None) -> None:
        """Batch statistics over every rank of a torch.distributed ``group`` (default: all
        ranks of the started process group) instead of each rank's own utterances: one
        all-reduce of (count, sum, sum of squares) per BatchNorm layer in the forward and one
        in the backward. Training then computes what one process computes on the global
        batch. A training-time setting, not saved with the model; ``enabled=False`` undoes it.
        """
        if enabled and group is None:
            import torch.distributed as dist

            if not dist.is_initialized():
                raise ValueError("sync_batch_norm: no torch.distributed process group is started")
            group = dist.group.WORLD
        for module in self.modules():
            if isinstance(module, SequenceBatchNorm):
                module.sync_group = group if enabled else None

    def batch_norm_statistics(self) -> list[torch.Tensor]:
        """The running averages of every BatchNorm layer (buffers, in place)."""
        return [buffer for module in self.modules() if isinstance(module, (SequenceBatchNorm, StepBatchNorm))
                for buffer in (module.running_mean, module.running_var)]

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
