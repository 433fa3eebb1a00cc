"""CPU int8 inference for streaming: dynamic quantization of the recurrent and linear layers.

:func:`quantize_dynamic` copies a forward-only GRU model and gives each recurrent layer a
PyTorch dynamically quantized GRU (int8 weights, activations quantized on the fly) built from
its inference weights, BatchNorm folded into the input weights, and swaps the fully connected
and output layers for dynamically quantized Linear layers. The convolutions and the row
convolution stay float32. :class:`ds2.streaming.StreamingModel` runs the quantized GRUs on
packed sequences, so streams of different chunk lengths still share a batch.

What it changes: benchmarks/serve_latency.py measures the speed-up and WER change side by
side with float32 (README, "Streaming and serving").
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from ds2.model import DeepSpeech2


def quantize_dynamic(model: DeepSpeech2) -> DeepSpeech2:
    """An int8 copy of a forward-only GRU ``model`` for CPU inference (eval mode)."""
    config = model.config
    if config.bidirectional:
        raise ValueError("--int8 quantizes forward-only models for streaming; this model is bidirectional")
    if config.rnn_type != "gru":
        raise ValueError("--int8: PyTorch has dynamically quantized GRUs, not ReLU RNNs; this model's layers are "
                         f"{config.rnn_type}")
    with warnings.catch_warnings():  # torch.ao.quantization's notice that it moves to torchao
        warnings.simplefilter("ignore", DeprecationWarning)
        return _quantize(model)


def _quantize(model: DeepSpeech2) -> DeepSpeech2:
    if "x86" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "x86"
    model = copy.deepcopy(model).cpu().eval()
    with torch.no_grad():
        for layer in model.rnns:
            weight_ih, bias_ih = layer.folded_input_weights(None, None)  # eval: running averages
            gru = nn.GRU(layer.input_size, layer.hidden_size)
            gru.weight_ih_l0.copy_(weight_ih[0])
            gru.bias_ih_l0.copy_(bias_ih[0])
            gru.weight_hh_l0.copy_(layer.weight_hh[0])
            gru.bias_hh_l0.copy_(layer.bias_hh[0])
            layer.quantized = torch.ao.quantization.quantize_dynamic(
                nn.ModuleList([gru]), {nn.GRU}, dtype=torch.qint8)[0]
    torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)
    model.quantized = True
    return model


def run_quantized_layer(layer, x: torch.Tensor, lengths: torch.Tensor, hidden0: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """A quantized layer over a padded batch, shape = (T, B, D), from hidden0, shape = (1, B, H).
    Returns the outputs and each stream's hidden state at its last step, shape = (B, H) (a
    stream with no new step keeps hidden0). A forward-only layer's output at step t is its
    hidden state then, so padding after a stream's end changes nothing it returns (and
    packed sequences, 2x slower here, are not needed)."""
    out, _ = layer.quantized(x.float(), hidden0.float())
    index = (lengths - 1).clamp(min=0).to(out.device)
    last = out[index, torch.arange(out.shape[1], device=out.device)]
    last = torch.where((lengths > 0).to(out.device)[:, None], last, hidden0[0])
    return out, last
