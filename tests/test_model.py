import copy
import io
import math
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ds2 import model as ds2_model
from ds2.model import ConvBlock, DeepSpeech2, ModelConfig, RecurrentLayer, RowConvolution, flat_views, time_mask

SMALL = dict(n_freq=21, conv_layers=2, conv_kernels=((5, 3), (3, 3)), rnn_hidden=8, rnn_layers=2, fc_hidden=8)


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
            h, c = torch.zeros(H), torch.zeros(H)
            steps = range(n) if d == 0 else range(n - 1, -1, -1)
            for t in steps:
                gi, gh = z[t, d], U @ h + bh
                if layer.rnn_type == "lstm":
                    i, f, g, o = (gi + gh).view(4, H)
                    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                    h = torch.sigmoid(o) * torch.tanh(c)
                elif layer.rnn_type == "gru":
                    r = torch.sigmoid(gi[:H] + gh[:H])
                    u = torch.sigmoid(gi[H : 2 * H] + gh[H : 2 * H])
                    c = torch.tanh(gi[2 * H :] + r * gh[2 * H :])
                    h = (1 - u) * c + u * h
                else:
                    h = torch.relu(gi + gh)
                out[t, b] += h
    return out


@pytest.mark.parametrize("rnn_type", ["gru", "relu", "lstm"])
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
    assert torch.all(out[~mask] == 0)
    # running averages: the statistics of the gathered products (what boolean indexing gave)
    products = x[mask] @ layer.weight_ih.t()
    torch.testing.assert_close(layer.norm.running_mean, 0.1 * products.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.norm.running_var, 0.9 + 0.1 * products.var(0), rtol=1e-12, atol=1e-12)


def _gathered_conv_batch_norm(block: ConvBlock, x, lengths):
    """ConvBlock as it was: the valid frames gathered by boolean indexing, then mean and var."""
    conv = block.conv(x)  # B x C x F x T
    mask = time_mask(block.output_lengths(lengths), conv.shape[-1])
    valid = conv.permute(0, 3, 2, 1)[mask].reshape(-1, conv.shape[1])  # N_valid*F x C
    mean, var = valid.mean(0), valid.var(0, unbiased=False)
    norm = block.norm
    scale = norm.weight * torch.rsqrt(var + norm.eps)
    y = conv * scale[:, None, None] + (norm.bias - mean * scale)[:, None, None]
    return torch.clamp(y, 0, 20) * mask[:, None, None, :], mean, valid.var(0)


def test_conv_batch_norm_masked_sums_equal_the_boolean_index_reference():
    torch.manual_seed(9)
    block = ConvBlock(2, 3, (5, 3), (2, 1), batch_norm=True).train()
    reference = copy.deepcopy(block)
    x, lengths = torch.randn(3, 2, 9, 12), torch.tensor([12, 7, 9])
    x = x * time_mask(lengths, 12)[:, None, None, :]
    weights = torch.randn(3, 3, 5, 12)  # a loss that weighs every output differently
    out, _ = block(x, lengths)
    (out * weights).sum().backward()
    expected, mean, unbiased = _gathered_conv_batch_norm(reference, x, lengths)
    (expected * weights).sum().backward()
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(block.norm.running_mean, 0.1 * mean.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(block.norm.running_var, 0.9 + 0.1 * unbiased.detach(), rtol=1e-12, atol=1e-12)
    for (name, param), expected_param in zip(block.named_parameters(), reference.parameters()):
        torch.testing.assert_close(param.grad, expected_param.grad, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("padding", [math.nan, math.inf, 1e3], ids=["nan", "inf", "huge"])
def test_padding_does_not_change_bn_statistics_outputs_or_gradients(padding):
    torch.manual_seed(1)
    layer = RecurrentLayer(6, 5, "gru", True, batch_norm=True).train()
    polluted_layer = copy.deepcopy(layer)
    lengths = torch.tensor([6, 2, 4])
    x = torch.randn(6, 3, 6, requires_grad=True)
    out = layer(x, lengths, time_mask(lengths, 6).t())
    mask = time_mask(lengths, 6).t()
    (out[mask] ** 2).sum().backward()

    padded = torch.cat([x.detach(), torch.zeros(9, 3, 6)])
    padded = torch.where(time_mask(lengths, 15).t()[..., None], padded, padding * torch.randn(15, 3, 6)).requires_grad_()
    out_padded = polluted_layer(padded, lengths, time_mask(lengths, 15).t())
    (out_padded[:6][mask] ** 2).sum().backward()
    torch.testing.assert_close(out_padded[:6][mask], out[mask])
    assert torch.all(out_padded[time_mask(lengths, 15).t().logical_not()] == 0)
    torch.testing.assert_close(padded.grad[:6], x.grad)
    assert torch.all(padded.grad[6:] == 0)
    for (name, param), polluted in zip(layer.named_parameters(), polluted_layer.parameters()):
        torch.testing.assert_close(polluted.grad, param.grad, msg=name)
    torch.testing.assert_close(polluted_layer.norm.running_mean, layer.norm.running_mean)
    torch.testing.assert_close(polluted_layer.norm.running_var, layer.norm.running_var)


@pytest.mark.parametrize("padding", [math.nan, 1e6], ids=["nan", "huge"])
def test_whole_model_padding_content_reaches_no_output_gradient_or_statistic(padding):
    torch.manual_seed(8)
    model = DeepSpeech2(ModelConfig(**SMALL)).train()
    polluted_model = copy.deepcopy(model)
    features, lengths = torch.randn(3, 21, 40), torch.tensor([40, 25, 33])
    frames = time_mask(lengths, 40)[:, None, :]
    results = []
    for net, padded in ((model, torch.where(frames, features, 0)), (polluted_model, torch.where(frames, features, padding))):
        padded.requires_grad_()
        logits, out_lengths = net(padded, lengths)
        assert torch.isfinite(logits).all()
        real = time_mask(out_lengths, logits.shape[1])
        logits[real].log_softmax(-1).sum().backward()
        results.append((logits.detach()[real], padded.grad, net))
    (clean, clean_grad, _), (polluted, polluted_grad, _) = results
    torch.testing.assert_close(polluted, clean)
    torch.testing.assert_close(polluted_grad, clean_grad)
    assert torch.all(polluted_grad.masked_select(frames.logical_not()) == 0)
    for (name, param), polluted_param in zip(model.named_parameters(), polluted_model.parameters()):
        assert torch.isfinite(polluted_param.grad).all(), name
        torch.testing.assert_close(polluted_param.grad, param.grad, msg=name)
    for (name, buffer), polluted_buffer in zip(model.named_buffers(), polluted_model.buffers()):
        torch.testing.assert_close(polluted_buffer, buffer, msg=name)


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


def _reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence of a time-major padded batch (T, B, ...) within its own length."""
    steps = torch.arange(x.shape[0])[:, None]  # T x 1
    index = torch.where(steps < lengths[None, :], lengths[None, :] - 1 - steps, steps)  # T x B
    return x.gather(0, index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x))


def _directions_one_after_the_other(layer: RecurrentLayer, x, lengths, mask):
    """The layer as it was: one unidirectional kernel call per direction, the backward one
    over each sequence reversed within its length."""
    x = torch.where(mask[..., None], x, 0)
    weight_ih, bias_ih = layer.folded_input_weights(x, lengths)
    kernel = {"gru": torch._VF.gru, "relu": torch._VF.rnn_relu}[layer.rnn_type]
    hidden0 = x.new_zeros(1, x.shape[1], layer.hidden_size)
    output = 0
    for direction in range(layer.n_directions):
        inputs = x if direction == 0 else _reverse_padded(x, lengths)
        weights = [weight_ih[direction], layer.weight_hh[direction], bias_ih[direction], layer.bias_hh[direction]]
        out, _ = kernel(inputs, hidden0, weights, True, 1, 0.0, layer.training, False, False)
        output = output + (out if direction == 0 else _reverse_padded(out, lengths))
    return torch.where(mask[..., None], output, 0)


def test_reverse_padded_reverses_within_length():
    x = torch.arange(12.0).view(4, 3, 1)  # T x B x 1
    lengths = torch.tensor([4, 2, 3])
    out = _reverse_padded(x, lengths)[..., 0].t().tolist()
    assert out == [[9.0, 6.0, 3.0, 0.0], [4.0, 1.0, 7.0, 10.0], [8.0, 5.0, 2.0, 11.0]]


@pytest.mark.parametrize("rnn_type", ["gru", "relu"])
@pytest.mark.parametrize("batch_norm", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_bidirectional_layer_is_one_kernel_call_equal_to_the_directions_run_separately(monkeypatch, rnn_type, batch_norm, training):
    torch.manual_seed(10)
    layer = RecurrentLayer(6, 5, rnn_type, True, batch_norm).train(training)
    if batch_norm:  # running averages that are not the initial ones
        layer.norm.running_mean.uniform_(-1, 1)
        layer.norm.running_var.uniform_(0.5, 2)
    lengths = torch.tensor([9, 4, 1, 7])
    mask = time_mask(lengths, 9).t()
    x = torch.randn(9, 4, 6)
    calls = []
    kernel = ds2_model._VF_RNN[rnn_type]
    monkeypatch.setitem(ds2_model._VF_RNN, rnn_type, lambda *args: calls.append(args[7]) or kernel(*args))
    out = layer(x, lengths, mask)
    assert calls == [True]  # one call, in the kernel's bidirectional mode
    expected = _directions_one_after_the_other(layer, x, lengths, mask)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_inference_weights_are_built_once_and_rebuilt_after_any_change():
    torch.manual_seed(11)
    layer = RecurrentLayer(5, 4, "gru", True, batch_norm=True).eval()
    lengths = torch.tensor([6, 4])
    x, mask = torch.randn(6, 2, 5), time_mask(lengths, 6).t()

    def fresh_output():
        twin = RecurrentLayer(5, 4, "gru", True, batch_norm=True).eval()
        twin.load_state_dict(layer.state_dict())
        return twin(x, lengths, mask)

    with torch.no_grad():
        first = layer.kernel_weights(x, lengths)
        assert layer.kernel_weights(x, lengths) is first
        layer.weight_hh.add_(0.1)  # what an optimizer step does
        second = layer.kernel_weights(x, lengths)
        assert second is not first and torch.equal(second[1], layer.weight_hh[0])
        torch.testing.assert_close(layer(x, lengths, mask), fresh_output())
        layer.norm.running_var.mul_(2)  # what a training step does to the averages
        assert layer.kernel_weights(x, lengths) is not second
        torch.testing.assert_close(layer(x, lengths, mask), fresh_output())
        state = {key: value + 0.01 for key, value in layer.state_dict().items()}
        kept = layer.kernel_weights(x, lengths)
        layer.load_state_dict(state)
        assert layer.kernel_weights(x, lengths) is not kept
        torch.testing.assert_close(layer(x, lengths, mask), fresh_output())
        layer.float()
        assert layer.kernel_weights(x.float(), lengths)[0].dtype == torch.float32
    assert layer.kernel_weights(x.float(), lengths) is not layer.kernel_weights(x.float(), lengths)  # grad on: no reuse
    layer.train()
    with torch.no_grad():
        assert layer.kernel_weights(x.float(), lengths) is not layer.kernel_weights(x.float(), lengths)


def test_flat_views_put_every_weight_in_one_buffer_at_its_offset():
    weights = [torch.randn(6, 3, requires_grad=True), torch.randn(4, requires_grad=True), torch.randn(2, 2, requires_grad=True)]
    offsets, size = (10, 0, 4), 30  # out of order, gaps between and after, as a cuDNN layout may be
    views = flat_views(weights, offsets, size)
    storage = views[0].untyped_storage()
    assert storage.nbytes() == size * views[0].element_size()
    for view, weight, offset in zip(views, weights, offsets):
        assert view.untyped_storage().data_ptr() == storage.data_ptr() and view.storage_offset() == offset
        assert torch.equal(view, weight)
    sum((view * (i + 1)).sum() for i, view in enumerate(views)).backward()
    for i, weight in enumerate(weights):
        assert torch.equal(weight.grad, torch.full_like(weight, i + 1.0))


class _OpLog(TorchDispatchMode):
    """Records the ATen ops that run, forward and backward, with their arguments."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append((func, args))
        return func(*args, **(kwargs or {}))


_HOST_READS = {"aten::nonzero", "aten::masked_select", "aten::_local_scalar_dense", "aten::is_nonzero", "aten::item"}


def _waits_for_the_device(func, args) -> bool:
    """Ops that on a GPU copy a value to the host (their output size or a Python number)."""
    name = func._schema.name
    if name in _HOST_READS or name.startswith("aten::unique") or name.startswith("aten::_unique"):
        return True
    if name in ("aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"):
        return any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in args[1])
    return False


@pytest.mark.parametrize("config", [dict(), dict(rnn_type="rnn", bidirectional=False, lookahead=2),
                                    dict(rnn_type="lstm", rnn_norm="recurrent"), dict(rnn_norm="layer")],
                         ids=["bigru", "rnn-rowconv", "lstm-recurrent-bn", "gru-layernorm"])
def test_forward_and_backward_never_wait_for_the_device(config):
    # The CPU cannot show synchronizations (torch.cuda.set_sync_debug_mode sees only CUDA);
    # the ops that cause them can be seen: boolean indexing, nonzero, .item(), ...
    torch.manual_seed(12)
    model = DeepSpeech2(ModelConfig(**SMALL, **config)).train()
    features, lengths = torch.randn(3, 21, 40), torch.tensor([40, 25, 33])
    with _OpLog() as log:
        logits, _ = model(features, lengths)
        logits.square().sum().backward()
        model.eval()
        with torch.no_grad():
            model(features, lengths)
    waits = sorted({func._schema.name for func, args in log.ops if _waits_for_the_device(func, args)})
    assert not waits, f"ops that wait for the GPU: {waits}"
    assert len(log.ops) > 100  # the log saw the model


def test_autocast_bfloat16_trains_with_float32_batch_norm():
    torch.manual_seed(5)
    model = DeepSpeech2(ModelConfig(**SMALL)).float().train()
    reference = copy.deepcopy(model)
    initial = copy.deepcopy(model.state_dict())
    features, lengths = torch.randn(3, 21, 40, dtype=torch.float32), torch.tensor([40, 25, 33])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, out_lengths = model(features, lengths)
        assert logits.dtype == torch.bfloat16
        logits.float().log_softmax(-1).sum().backward()
    reference_logits, _ = reference(features, lengths)
    real = time_mask(out_lengths, logits.shape[1])
    torch.testing.assert_close(logits.float()[real], reference_logits[real], rtol=0.05, atol=0.05)
    for key, value in model.state_dict().items():
        if "running" in key:
            assert value.dtype == torch.float32 and torch.isfinite(value).all(), key
            assert not torch.equal(value, initial[key]), key
            torch.testing.assert_close(value, reference.state_dict()[key], rtol=1e-2, atol=2e-3, msg=key)
    assert all(torch.isfinite(param.grad).all() for param in model.parameters())


@pytest.mark.requires_cuda
def test_cuda_step_is_sync_free_runs_cudnn_on_the_weights_as_given_and_matches_the_cpu():
    torch.manual_seed(13)
    cpu = DeepSpeech2(ModelConfig(**SMALL)).float().train()
    gpu = copy.deepcopy(cpu).cuda()
    features, lengths = torch.randn(3, 21, 40, dtype=torch.float32), torch.tensor([40, 25, 33])
    expected, out_lengths = cpu(features, lengths)
    features, lengths = features.cuda(), lengths.cuda()
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        gpu(features, lengths)  # first use: cuDNN's weight layouts are learnt
        with torch.autocast("cuda", dtype=torch.bfloat16):
            gpu(features, lengths)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("error")
            try:
                logits, _ = gpu(features, lengths)
                logits.square().sum().backward()
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    gpu(features, lengths)[0].float().square().sum().backward()
                gpu.eval()
                with torch.no_grad():
                    gpu(features, lengths)
                    gpu(features, lengths)
            finally:
                torch.cuda.set_sync_debug_mode(0)
    assert not [w for w in caught if "contiguous chunk" in str(w.message)]  # cuDNN did not re-flatten
    real = time_mask(out_lengths, expected.shape[1])
    torch.testing.assert_close(logits.cpu()[real], expected.detach()[real], rtol=1e-4, atol=1e-5)
    assert all(buffer.dtype == torch.float32 and torch.isfinite(buffer).all() for buffer in gpu.buffers())


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
