import io

import pytest
import torch

from ds2.model import DeepSpeech2, ModelConfig, RecurrentLayer, RowConvolution, reverse_padded, time_mask


@pytest.fixture(autouse=True)
def _float64():
    # exact comparisons against the step-by-step formula
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def _explicit_bn_rnn(layer: RecurrentLayer, x, lengths):
    """h[t] = f(BN(W x[t]) + U h[t-1]) written out step by step, one sequence at a time.

    BN statistics: mean and (biased) variance of W x over every unpadded step of the batch.
    """
    T, B, _ = x.shape
    H = layer.hidden_size
    dirs = layer.n_directions
    valid = torch.cat([x[: int(lengths[b]), b] for b in range(B)])  # N x D
    products = valid @ layer.weight_ih.t()
    mean, var = products.mean(0), products.var(0, unbiased=False)
    norm = layer.norm
    out = torch.zeros(T, B, H)
    for b in range(B):
        n = int(lengths[b])
        z = (x[:n, b] @ layer.weight_ih.t() - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias
        z = z.view(n, dirs, -1)
        for d in range(dirs):
            U, bh = layer.weight_hh[d], layer.bias_hh[d]
            h = torch.zeros(H)
            steps = range(n) if d == 0 else range(n - 1, -1, -1)
            for t in steps:
                gi, gh = z[t, d], U @ h + bh
                if layer.rnn_type == "gru":
                    r = torch.sigmoid(gi[:H] + gh[:H])
                    u = torch.sigmoid(gi[H : 2 * H] + gh[H : 2 * H])
                    c = torch.tanh(gi[2 * H :] + r * gh[2 * H :])
                    h = (1 - u) * c + u * h
                else:
                    h = torch.relu(gi + gh)
                out[t, b] += h
    return out


@pytest.mark.parametrize("rnn_type", ["gru", "rnn"])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_bn_rnn_matches_the_ds2_formula(rnn_type, bidirectional):
    torch.manual_seed(0)
    layer = RecurrentLayer(5, 4, rnn_type, bidirectional, batch_norm=True).train()
    lengths = torch.tensor([7, 3, 5])
    x = torch.randn(7, 3, 5)
    out = layer(x, lengths, time_mask(lengths, 7).t())
    expected = _explicit_bn_rnn(layer, x, lengths)
    mask = time_mask(lengths, 7).t()
    torch.testing.assert_close(out[mask], expected[mask], rtol=1e-9, atol=1e-9)


def test_padding_does_not_change_bn_statistics_or_outputs():
    torch.manual_seed(1)
    layer = RecurrentLayer(6, 5, "gru", True, batch_norm=True).train()
    lengths = torch.tensor([6, 2, 4])
    x = torch.randn(6, 3, 6)
    out = layer(x, lengths, time_mask(lengths, 6).t())
    stats = layer.norm.running_mean.clone(), layer.norm.running_var.clone()

    layer.norm.running_mean.zero_()
    layer.norm.running_var.fill_(1)
    padded = torch.cat([x, torch.zeros(9, 3, 6)]) * 1.0
    padded[~time_mask(lengths, 15).t()] = 1e3 * torch.randn(int((~time_mask(lengths, 15)).sum()), 6)
    out_padded = layer(padded, lengths, time_mask(lengths, 15).t())
    mask = time_mask(lengths, 6).t()
    torch.testing.assert_close(out_padded[:6][mask], out[mask])
    torch.testing.assert_close(layer.norm.running_mean, stats[0])
    torch.testing.assert_close(layer.norm.running_var, stats[1])


def test_whole_model_ignores_padding_in_training_and_inference():
    torch.manual_seed(2)
    config = ModelConfig(n_freq=21, conv_layers=2, conv_kernels=((5, 3), (3, 3)), rnn_hidden=8, rnn_layers=2, fc_hidden=8)
    model = DeepSpeech2(config).train()
    features, lengths = torch.randn(3, 21, 40), torch.tensor([40, 25, 33])
    features[time_mask(lengths, 40)[:, None, :].expand_as(features).logical_not()] = 0
    logits, out_lengths = model(features, lengths)
    buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}

    model.load_state_dict({**model.state_dict(), **{k: torch.zeros_like(v) if "mean" in k else torch.ones_like(v) for k, v in buffers.items()}})
    longer = torch.cat([features, torch.zeros(3, 21, 30)], dim=2)
    logits_longer, _ = model(longer, lengths)
    for b, n in enumerate(out_lengths.tolist()):
        torch.testing.assert_close(logits_longer[b, :n], logits[b, :n])
    for key, value in buffers.items():
        torch.testing.assert_close(model.state_dict()[key], value)

    model.eval()  # one utterance alone gives the same outputs as inside a padded batch
    batch_logits, _ = model(features, lengths)
    alone, alone_lengths = model(features[1:2, :, :25], lengths[1:2])
    torch.testing.assert_close(alone[0], batch_logits[1, : int(alone_lengths[0])])


@pytest.mark.parametrize("strides", [((2, 2), (2, 1), (2, 1)), ((2, 3), (2, 1), (1, 1)), ((1, 1), (2, 2), (2, 2))])
def test_output_lengths_are_exact(strides):
    config = ModelConfig(n_freq=41, conv_layers=3, conv_strides=strides, conv_kernels=((7, 11), (5, 11), (3, 5)),
                         conv_channels=(2, 2, 2), rnn_hidden=4, rnn_layers=1, fc_hidden=4)
    model = DeepSpeech2(config).eval()
    for n in [1, 2, 3, 7, 10, 11, 50, 101]:
        logits, lengths = model(torch.randn(1, 41, n), torch.tensor([n]))
        assert logits.shape[1] == int(lengths[0]) == int(model.output_lengths(torch.tensor([n]))[0])


def test_reverse_padded_reverses_within_length():
    x = torch.arange(12.0).view(4, 3, 1)  # T x B x 1
    lengths = torch.tensor([4, 2, 3])
    out = reverse_padded(x, lengths)[..., 0].t().tolist()
    assert out == [[9.0, 6.0, 3.0, 0.0], [4.0, 1.0, 7.0, 10.0], [8.0, 5.0, 2.0, 11.0]]


def test_row_convolution_sees_exactly_tau_future_steps():
    torch.manual_seed(3)
    row = RowConvolution(3, tau=2)
    x = torch.randn(10, 1, 3)
    base = row(x)
    beyond = x.clone()
    beyond[5:] += 1.0  # step 5 is 3 steps after t=2
    torch.testing.assert_close(row(beyond)[:3], base[:3])
    within = x.clone()
    within[4] += 1.0  # t=2 sees t=2..4
    assert not torch.allclose(row(within)[2], base[2])
    assert torch.allclose(row(within)[:2], base[:2])


def test_forward_only_model_with_lookahead_is_causal_beyond_its_context():
    torch.manual_seed(4)
    config = ModelConfig(n_freq=21, conv_layers=1, conv_kernels=((5, 3),), conv_strides=((2, 1),), rnn_hidden=6,
                         rnn_layers=2, fc_hidden=6, bidirectional=False, lookahead=3)
    model = DeepSpeech2(config).eval()
    features = torch.randn(1, 21, 30)
    logits, _ = model(features, torch.tensor([30]))
    changed = features.clone()
    changed[:, :, 20:] += 5.0
    logits_changed, _ = model(changed, torch.tensor([30]))
    # conv reaches 1 frame ahead, the row convolution 3: outputs before 20-1-3 are untouched
    torch.testing.assert_close(logits_changed[0, :16], logits[0, :16])
    assert not torch.allclose(logits_changed[0, 16:20], logits[0, 16:20])


def test_config_round_trips_through_a_weights_only_checkpoint():
    config = ModelConfig(rnn_type="rnn", bidirectional=False, lookahead=5, alphabet=list("ab c"))
    model = DeepSpeech2(config)
    buffer = io.BytesIO()
    torch.save({"model_config": config.to_dict(), "model": model.state_dict()}, buffer)
    buffer.seek(0)
    payload = torch.load(buffer, weights_only=True)
    restored = DeepSpeech2(ModelConfig.from_dict(payload["model_config"]))
    restored.load_state_dict(payload["model"])
    assert restored.config == config
