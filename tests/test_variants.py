"""The recurrent variants of DS2 and its normalization papers (issue 15): cells x normalizations.

Every variant: output shapes, padding invariance (an utterance alone equals the same utterance
in a padded batch, in eval mode), a weights-only save/load round trip, and a few training steps
that lower the CTC loss. Then what is particular to each: the TorchScript loop against PyTorch's
fused kernels, the clip of DS2's simple RNN, recurrent BatchNorm's per-step and beyond-T_max
statistics, LayerNorm's sameness in training and test.
"""

from __future__ import annotations

import io
import itertools

import pytest
import torch

from ds2 import ctc
from ds2.model import CLIP, DeepSpeech2, ModelConfig, RecurrentLayer, time_mask
from ds2.recurrent import ScanLayer

SMALL = dict(conv_layers=1, conv_channels=(4,), conv_kernels=((11, 5),), conv_strides=((4, 2),), rnn_layers=2,
             rnn_hidden=12, fc_hidden=12, n_freq=33, n_outputs=6)
VARIANTS = [(cell, norm) for cell, norm in itertools.product(("gru", "lstm", "rnn", "relu"),
                                                            ("batch", "none", "recurrent", "layer"))
            if not (cell == "relu" and norm in ("recurrent", "layer"))]  # relu: cuDNN's; rnn is DS2's clipped one
IDS = [f"{cell}-{norm}" for cell, norm in VARIANTS]


def _model(cell, norm, bidirectional=True, **overrides):
    torch.manual_seed(0)
    return DeepSpeech2(ModelConfig(**SMALL, rnn_type=cell, rnn_norm=norm, bidirectional=bidirectional, **overrides))


def _batch(seed=1):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(3, 33, 60, generator=generator)
    lengths = torch.tensor([60, 37, 22])
    labels = torch.randint(1, 6, (3, 8), generator=generator)
    return features, lengths, labels, torch.tensor([8, 6, 4])


def _loss(model, features, lengths, labels, label_lengths):
    logits, output_lengths = model(features, lengths)
    return ctc.ctc_loss(logits, labels, output_lengths, label_lengths, reduction="mean", backend="torch")


@pytest.mark.parametrize("cell,norm", VARIANTS, ids=IDS)
def test_every_variant_is_padding_invariant_round_trips_and_learns(cell, norm):
    model = _model(cell, norm)
    assert model.config.fused == (cell in ("gru", "lstm", "relu") and norm in ("batch", "none"))
    features, lengths, labels, label_lengths = _batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = _loss(model, features, lengths, labels, label_lengths)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.9 * losses[0], losses

    model.eval()
    with torch.no_grad():
        logits, output_lengths = model(features, lengths)
        assert logits.shape == (3, 30, 6) and output_lengths.tolist() == [30, 19, 11]
        for b in range(3):  # each utterance alone, cut to its own length
            alone, n = model(features[b : b + 1, :, : lengths[b]], lengths[b : b + 1])
            torch.testing.assert_close(alone[0], logits[b, : int(n)], atol=2e-5, rtol=1e-4)

    buffer = io.BytesIO()
    torch.save({"model_config": model.config.to_dict(), "model": model.state_dict()}, buffer)
    buffer.seek(0)
    payload = torch.load(buffer, weights_only=True)
    restored = DeepSpeech2(ModelConfig.from_dict(payload["model_config"])).eval()
    restored.load_state_dict(payload["model"])
    with torch.no_grad():
        torch.testing.assert_close(restored(features, lengths)[0], logits, atol=0, rtol=0)


def _copy_weights(scan: ScanLayer, fused: RecurrentLayer) -> None:
    with torch.no_grad():
        scan.weight_ih.copy_(fused.weight_ih)
        scan.weight_hh.copy_(fused.weight_hh)
        scan.bias_hh.copy_(fused.bias_hh)
        scan.bias_ih.zero_()
        if fused.norm is None:
            scan.bias_ih.copy_(fused.bias_ih)
        else:
            scan.input_norm.load_state_dict(fused.norm.state_dict())


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("norm", ["batch", "none"])
@pytest.mark.parametrize("training", [True, False])
def test_the_torchscript_loop_computes_what_pytorchs_fused_kernel_does(cell, norm, training):
    torch.manual_seed(3)
    fused = RecurrentLayer(7, 5, cell, True, norm == "batch").train(training)
    scan = ScanLayer(7, 5, cell, True, norm).train(training)
    _copy_weights(scan, fused)
    if norm == "batch" and not training:
        for layer in (fused.norm, scan.input_norm):
            layer.running_mean.copy_(torch.linspace(-1, 1, layer.running_mean.numel()))
            layer.running_var.copy_(torch.linspace(0.5, 2, layer.running_var.numel()))
    lengths = torch.tensor([9, 4, 1, 6])
    mask = time_mask(lengths, 9).t()
    x = torch.randn(9, 4, 7, requires_grad=True)
    expected = fused(x, lengths, mask)
    (grad_fused,) = torch.autograd.grad(expected.square().sum(), x)
    out = scan(x, lengths, mask)
    (grad_scan,) = torch.autograd.grad(out.square().sum(), x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_scan, grad_fused, atol=1e-5, rtol=1e-5)


def test_ds2s_simple_rnn_is_clipped_at_20_and_relu_is_not():
    torch.manual_seed(4)
    lengths = torch.tensor([6, 3])
    mask = time_mask(lengths, 6).t()
    x = 50 * torch.rand(6, 2, 3)
    clipped = ScanLayer(3, 4, "rnn", False, "none")
    relu = RecurrentLayer(3, 4, "relu", False, batch_norm=False)
    with torch.no_grad():
        for layer in (clipped, relu):
            layer.weight_ih.fill_(1.0)
            layer.weight_hh.fill_(0.5)
            layer.bias_hh.zero_()
        clipped.bias_ih.zero_()
        relu.bias_ih.zero_()
        assert clipped(x, lengths, mask).max() == CLIP
        assert relu(x, lengths, mask).max() > 10 * CLIP
        # below the clip the two are the same recurrence
        small = x / 1000
        torch.testing.assert_close(clipped(small, lengths, mask), relu(small, lengths, mask))


def test_recurrent_batch_norm_keeps_statistics_per_step_and_reuses_the_last_beyond_t_max():
    torch.manual_seed(5)
    layer = ScanLayer(4, 3, "lstm", False, "recurrent", max_steps=50).train()
    assert torch.allclose(layer.recurrent_gain, torch.tensor(0.1)) and torch.allclose(layer.cell_gain, torch.tensor(0.1))
    lengths = torch.tensor([5, 5, 3])
    mask = time_mask(lengths, 5).t()
    x = torch.randn(5, 3, 4) + torch.arange(5.0)[:, None, None]  # the input's mean grows with the step
    layer(x, lengths, mask)
    norm = layer.input_norm
    assert int(norm.steps_seen) == 5
    products = x @ layer.weight_ih.t()
    for t in range(5):  # statistics of step t over the utterances still running at t
        real = products[t, : int((lengths > t).sum())]
        torch.testing.assert_close(norm.running_mean[t], 0.1 * real.mean(0))
        torch.testing.assert_close(norm.running_var[t], 0.9 + 0.1 * real.var(0))
    assert torch.all(norm.running_mean[5:] == 0)  # never seen
    # Evaluation beyond T_max uses step 4's statistics: whatever the unseen rows hold is never read.
    layer.eval()
    long_lengths = torch.tensor([12])
    long_mask = time_mask(long_lengths, 12).t()
    long_x = torch.randn(12, 1, 4)
    with torch.no_grad():
        before = layer(long_x, long_lengths, long_mask)
        for stats in (layer.input_norm, layer.recurrent_norm, layer.cell_norm):
            stats.running_mean[5:] = float("nan")
            stats.running_var[5:] = float("nan")
        after = layer(long_x, long_lengths, long_mask)
    assert torch.isfinite(after).all()
    torch.testing.assert_close(after, before, atol=0, rtol=0)
    assert norm.step_index(12, torch.device("cpu")).tolist() == [0, 1, 2, 3, 4] + [4] * 7


def test_recurrent_batch_norm_steps_the_backward_direction_from_each_utterances_end():
    """Cooijmans et al.: the backward direction reverses only the unpadded part of each utterance,
    so its loop step k is step L-1-k of an utterance of L steps, and its statistics at k are over
    utterances k steps into their backward pass, as the forward direction's are."""
    torch.manual_seed(6)
    layer = ScanLayer(4, 3, "gru", True, "recurrent", max_steps=50).train()
    lengths = torch.tensor([6, 4, 2])
    mask = time_mask(lengths, 6).t()
    x = torch.randn(6, 3, 4) + torch.arange(6.0)[:, None, None]  # the input's mean grows with time
    layer(x, lengths, mask)
    ahead, back = (torch.where(mask[..., None], x, 0) @ layer.weight_ih.t()).chunk(2, -1)
    for k in range(6):
        running = [b for b in range(3) if lengths[b] > k]
        backward_rows = torch.stack([back[int(lengths[b]) - 1 - k, b] for b in running])
        expected = 0.1 * torch.cat([ahead[k, running].mean(0), backward_rows.mean(0)])
        torch.testing.assert_close(layer.input_norm.running_mean[k], expected)
    # Every pass starts from a zero state at loop step 0 in both directions: U h is 0 there.
    assert torch.all(layer.recurrent_norm.running_mean[0] == 0)
    assert torch.all(layer.recurrent_norm.running_mean[1].abs() > 0)


def test_layer_norm_is_the_same_in_training_and_in_test():
    torch.manual_seed(6)
    layer = ScanLayer(4, 3, "gru", True, "layer")
    lengths = torch.tensor([7, 2])
    mask = time_mask(lengths, 7).t()
    x = torch.randn(7, 2, 4)
    torch.testing.assert_close(layer.train()(x, lengths, mask), layer.eval()(x, lengths, mask), atol=0, rtol=0)
    # per utterance and step: scaling one utterance's inputs does not change the other's outputs
    scaled = x.clone()
    scaled[:, 1] *= 7
    torch.testing.assert_close(layer(scaled, lengths, mask)[:, 0], layer(x, lengths, mask)[:, 0])


def test_a_config_saved_before_rnn_norm_means_what_it_meant():
    old = ModelConfig().to_dict()
    del old["rnn_norm"]
    old.update(rnn_type="rnn", batch_norm=False)
    config = ModelConfig.from_dict(old)
    assert (config.rnn_type, config.rnn_norm, config.fused) == ("relu", "none", True)
    del old["batch_norm"]
    old["rnn_type"] = "gru"
    assert ModelConfig.from_dict(old).rnn_norm == "batch"
