"""CTC loss: every backend against the float64 reference and torch, on the same cases.

The suite runs over "numba" (CPU), "torch" (CPU) and "cuda" (marked requires_cuda: skipped
without a GPU). Comparisons are made in float64 so that a 1e-5 relative tolerance tests the
kernels rather than float32 rounding.
"""

import itertools
import logging
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

import pytest
import torch

from ds2 import ctc

BACKENDS = [
    pytest.param(("numba", "cpu"), id="numba"),
    pytest.param(("torch", "cpu"), id="torch"),
    pytest.param(("cuda", "cuda"), id="cuda", marks=pytest.mark.requires_cuda),
]


@pytest.fixture(params=BACKENDS)
def backend(request):
    name, device = request.param
    if name not in ctc.available_backends(device):
        pytest.fail(f"backend {name} should load on {device}")
    return name, torch.device(device)


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


def _run(backend, logits, targets, input_lengths, target_lengths, reduction="none", **options):
    """Loss and gradient of ``loss.sum()`` from one backend, back on the CPU in float64."""
    name, device = backend
    x = logits.detach().to(device).requires_grad_()
    loss = ctc.ctc_loss(
        x, targets.to(device), input_lengths.to(device), target_lengths.to(device),
        reduction=reduction, backend=name, **options,
    )
    loss.sum().backward()
    return loss.detach().cpu().double(), x.grad.cpu().double()


def _random_case(seed, batch, frames, labels, vocab, ragged=True, repeats=True, scale=1.0):
    """float64 logits and feasible labels (with repeated neighbours when ``repeats``)."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, frames, vocab, generator=generator, dtype=torch.float64) * scale
    targets = torch.randint(1, vocab, (batch, labels), generator=generator)
    if repeats:
        targets[:, 1::3] = targets[:, 0::3][:, : targets[:, 1::3].shape[1]]
    input_lengths = torch.full((batch,), frames)
    target_lengths = torch.full((batch,), labels)
    if ragged:
        input_lengths = torch.randint(frames // 2, frames + 1, (batch,), generator=generator)
        target_lengths = torch.randint(0, labels + 1, (batch,), generator=generator)
    # shorten the labels until they fit
    while not bool(ctc.feasible(targets, target_lengths, input_lengths).all()):
        target_lengths = torch.where(ctc.feasible(targets, target_lengths, input_lengths), target_lengths, target_lengths - 1)
    return logits, targets, input_lengths, target_lengths


def _torch64(logits, targets, input_lengths, target_lengths, reduction="none", **options):
    return _run(("torch", torch.device("cpu")), logits.double(), targets, input_lengths, target_lengths, reduction, **options)


def assert_agrees(got, expected, rtol=1e-5, atol=1e-8):
    (loss, grad), (loss_ref, grad_ref) = got, expected
    torch.testing.assert_close(loss, loss_ref, rtol=rtol, atol=atol)
    torch.testing.assert_close(grad, grad_ref, rtol=rtol, atol=max(atol, 1e-7))


# --------------------------------------------------------------------------- every backend


def test_hand_computed_two_frames(backend):
    # y1 = (0.5, 0.4, 0.1), y2 = (0.6, 0.3, 0.1); label "1" over 2 frames: paths 11, 01, 10.
    probs = torch.tensor([[[0.5, 0.4, 0.1], [0.6, 0.3, 0.1]]], dtype=torch.float64)
    p = 0.4 * 0.3 + 0.5 * 0.3 + 0.4 * 0.6  # = 0.51
    loss, grad = _run(backend, probs.log(), torch.tensor([[1]]), torch.tensor([2]), torch.tensor([1]))
    assert float(loss[0]) == pytest.approx(-math.log(p), rel=1e-6)
    occupancy = torch.tensor([[0.15 / p, 0.36 / p, 0.0], [0.24 / p, 0.27 / p, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(grad[0], probs[0] - occupancy, rtol=1e-6, atol=1e-9)


def test_matches_the_sum_over_alignments(backend):
    logits = torch.randn(3, 4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    targets = torch.tensor([[1, 2], [1, 1], [2, 0]])
    loss, _ = _run(backend, logits, targets, torch.tensor([4, 4, 3]), torch.tensor([2, 2, 1]))
    log_probs = torch.log_softmax(logits, dim=-1)
    expected = [
        _brute_force_nll(log_probs[0], [1, 2]),
        _brute_force_nll(log_probs[1], [1, 1]),
        _brute_force_nll(log_probs[2, :3], [2]),
    ]
    assert loss.tolist() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    "seed,batch,frames,labels,vocab",
    [(0, 4, 30, 8, 6), (1, 6, 50, 20, 29), (2, 3, 17, 9, 3), (3, 5, 40, 12, 300), (4, 2, 60, 40, 5)],
)
def test_random_ragged_batches_agree_with_torch(backend, seed, batch, frames, labels, vocab):
    case = _random_case(seed, batch, frames, labels, vocab)
    assert_agrees(_run(backend, *case), _torch64(*case))


def test_empty_targets_are_all_blank(backend):
    logits = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    targets, input_lengths, target_lengths = torch.zeros(2, 0, dtype=torch.long), torch.tensor([5, 3]), torch.tensor([0, 0])
    loss, grad = _run(backend, logits, targets, input_lengths, target_lengths)
    log_probs = torch.log_softmax(logits, dim=-1)
    assert loss.tolist() == pytest.approx([-float(log_probs[0, :, 0].sum()), -float(log_probs[1, :3, 0].sum())], rel=1e-9)
    assert_agrees((loss, grad), _torch64(logits, torch.zeros(2, 1, dtype=torch.long), input_lengths, target_lengths))


def test_frames_exactly_labels_plus_repeats(backend):
    # "1 1 2" needs 1, blank, 1, 2 = 4 frames; "3 4 5" needs 3.
    logits = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    targets = torch.tensor([[1, 1, 2], [3, 4, 5]])
    case = (logits, targets, torch.tensor([4, 3]), torch.tensor([3, 3]))
    loss, grad = _run(backend, *case)
    log_probs = torch.log_softmax(logits, dim=-1)
    only_path = -float(log_probs[0, 0, 1] + log_probs[0, 1, 0] + log_probs[0, 2, 1] + log_probs[0, 3, 2])
    assert float(loss[0]) == pytest.approx(only_path, rel=1e-9)
    assert_agrees((loss, grad), _torch64(*case))


def test_unalignable_is_infinite_with_zero_gradient(backend):
    logits = torch.randn(3, 3, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    targets = torch.tensor([[1, 1], [1, 2], [3, 3]])
    input_lengths, target_lengths = torch.tensor([2, 3, 3]), torch.tensor([2, 2, 2])  # 1st and 3rd need 3, 3 frames
    if backend[0] == "torch":
        pytest.skip("torch's own gradient is NaN for an infinite loss; ours is zero")
    loss, grad = _run(backend, logits, targets, input_lengths, target_lengths)
    assert math.isinf(float(loss[0])) and math.isfinite(float(loss[1])) and math.isfinite(float(loss[2]))
    assert torch.all(grad[0] == 0) and torch.all(torch.isfinite(grad))
    _, grad_ok = _torch64(logits[1:2], targets[1:2], input_lengths[1:2], target_lengths[1:2])
    torch.testing.assert_close(grad[1:2], grad_ok, rtol=1e-5, atol=1e-9)


def test_zero_infinity(backend):
    logits = torch.randn(2, 2, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    case = (logits, torch.tensor([[1, 1], [2, 0]]), torch.tensor([2, 2]), torch.tensor([2, 1]))
    loss, grad = _run(backend, *case, zero_infinity=True)
    expected_loss, expected_grad = _torch64(*case, zero_infinity=True)
    assert float(loss[0]) == 0.0 and torch.all(grad[0] == 0)
    assert_agrees((loss, grad), (expected_loss, expected_grad))


def test_nan_scores_give_a_nan_loss_and_leave_the_others_alone(backend):
    if backend[0] == "torch":
        pytest.skip("torch's gradient is NaN for a NaN loss; ours is zero")
    logits, targets, input_lengths, target_lengths = _random_case(17, 3, 12, 4, 6, ragged=False)
    logits[1, 5, 2] = math.nan
    loss, grad = _run(backend, logits, targets, input_lengths, target_lengths)
    assert math.isnan(float(loss[1])) and torch.all(grad[1] == 0)
    expected = _torch64(logits[[0, 2]], targets[[0, 2]], input_lengths[[0, 2]], target_lengths[[0, 2]])
    assert_agrees((loss[[0, 2]], grad[[0, 2]]), expected)


@pytest.mark.parametrize("padding", [1e4, math.nan, -math.inf], ids=["huge", "nan", "-inf"])
def test_padded_frames_are_ignored_and_get_zero_gradient(backend, padding):
    logits, targets, input_lengths, target_lengths = _random_case(7, 4, 20, 5, 7)
    polluted = logits.clone()
    for b, n in enumerate(input_lengths.tolist()):
        polluted[b, n:] = padding  # whatever lies past the end must not matter
    loss, grad = _run(backend, polluted, targets, input_lengths, target_lengths)
    clean_loss, clean_grad = _run(backend, logits, targets, input_lengths, target_lengths)
    torch.testing.assert_close(loss, clean_loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, clean_grad, rtol=1e-12, atol=0)  # zero past the end, as before inside
    for b, n in enumerate(input_lengths.tolist()):
        assert torch.all(grad[b, n:] == 0)


def test_concatenated_targets_equal_padded(backend):
    logits, targets, input_lengths, target_lengths = _random_case(8, 4, 25, 6, 9)
    concatenated = torch.cat([targets[b, :n] for b, n in enumerate(target_lengths.tolist())])
    assert_agrees(
        _run(backend, logits, concatenated, input_lengths, target_lengths),
        _run(backend, logits, targets, input_lengths, target_lengths),
        rtol=1e-12,
        atol=1e-12,
    )


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_reductions_follow_torch_semantics(backend, reduction):
    case = _random_case(9, 5, 20, 6, 8)
    assert_agrees(_run(backend, *case, reduction=reduction), _torch64(*case, reduction=reduction))


def test_gradcheck_float64(backend):
    name, device = backend
    logits, targets, input_lengths, target_lengths = _random_case(10, 2, 6, 3, 4)
    x = logits.to(device).requires_grad_()
    function = lambda z: ctc.ctc_loss(  # noqa: E731
        z, targets.to(device), input_lengths.to(device), target_lengths.to(device), reduction="mean", backend=name
    )
    assert torch.autograd.gradcheck(function, (x,), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_float32_logits_stay_close_to_float64(backend):
    case = _random_case(11, 8, 120, 30, 29, scale=3.0)
    loss32, grad32 = _run(backend, case[0].float(), *case[1:])
    loss64, grad64 = _torch64(*case)
    torch.testing.assert_close(loss32, loss64, rtol=1e-4 if backend[0] == "torch" else 2e-5, atol=0)
    assert float((grad32 - grad64).abs().max()) < (5e-3 if backend[0] == "torch" else 1e-4)


def test_deterministic_bit_for_bit(backend):
    case = _random_case(12, 6, 80, 25, 29)
    first, second = _run(backend, case[0].float(), *case[1:]), _run(backend, case[0].float(), *case[1:])
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


# --------------------------------------------------------------------------- our kernels


@pytest.mark.parametrize(
    "backend_param",
    [pytest.param(("numba", "cpu"), id="numba"), pytest.param(("cuda", "cuda"), id="cuda", marks=pytest.mark.requires_cuda)],
)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_logits(backend_param, dtype):
    case = _random_case(13, 4, 40, 10, 29)
    rounded = case[0].to(dtype)
    loss, grad = _run((backend_param[0], torch.device(backend_param[1])), rounded, *case[1:])
    expected = _torch64(rounded.double(), *case[1:])
    torch.testing.assert_close(loss, expected[0], rtol=2e-5, atol=0)
    assert float((grad - expected[1]).abs().max()) < 1e-2  # the gradient is stored in the logits' dtype


def test_numba_log_space_fallback_on_peaky_scores():
    # Scores 200x a unit normal: rescaled linear space underflows; the kernel must notice.
    case = _random_case(14, 4, 60, 15, 10, ragged=False, scale=200.0)
    got = _run(("numba", torch.device("cpu")), *case)
    assert ctc._NumbaKernel.last_log_space > 0, "the case should need the log-space path"
    assert_agrees(got, _torch64(*case), rtol=1e-9, atol=1e-9)


def test_numba_forward_only_matches():
    case = _random_case(15, 3, 30, 8, 12)
    with torch.no_grad():
        loss = ctc.ctc_loss(*case, reduction="none", backend="numba")
    torch.testing.assert_close(loss.double(), _torch64(*case)[0], rtol=1e-12, atol=0)


def test_reference_matches_torch():
    case = _random_case(16, 3, 12, 4, 5)
    x = case[0].clone().requires_grad_()
    loss = ctc.reference_ctc_loss(x, *case[1:], reduction="none")
    loss.sum().backward()
    assert_agrees((loss.detach(), x.grad), _torch64(*case), rtol=1e-10, atol=1e-12)


def test_unknown_backend_and_wrong_device_are_refused():
    args = (torch.randn(1, 2, 3), torch.tensor([[1]]), torch.tensor([2]), torch.tensor([1]))
    with pytest.raises(ValueError, match="unknown CTC backend"):
        ctc.ctc_loss(*args, backend="nope")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        ctc.ctc_loss(*args, backend="cuda")


def test_auto_means_numba_on_the_cpu_and_training_uses_it():
    from ds2.train import TrainConfig

    assert ctc.resolve_backend("auto", torch.device("cpu")) == "numba"
    assert ctc.available_backends("cpu") == ["numba", "torch"]
    assert ctc.resolve_backend(TrainConfig("train.json", "dev.json", "exp").ctc, torch.device("cpu")) == "numba"


@pytest.mark.parametrize(
    "targets,message",
    [(torch.tensor([[1, 0]]), "not a label"), (torch.tensor([[1, 7]]), "not a label"), (torch.tensor([[-1, 2]]), "not a label")],
)
def test_bad_labels_are_named(targets, message):
    with pytest.raises(ValueError, match=message):
        ctc.ctc_loss(torch.randn(1, 5, 4), targets, torch.tensor([5]), torch.tensor([2]))


def test_bad_lengths_are_named():
    with pytest.raises(ValueError, match="input_lengths must lie in"):
        ctc.ctc_loss(torch.randn(1, 5, 4), torch.tensor([[1]]), torch.tensor([6]), torch.tensor([1]))
    with pytest.raises(ValueError, match="target_lengths must lie in"):
        ctc.ctc_loss(torch.randn(1, 5, 4), torch.tensor([[1]]), torch.tensor([5]), torch.tensor([2]))


def test_feasibility_counts_repeats():
    labels = torch.tensor([[1, 1, 2, 0], [3, 4, 5, 6], [7, 7, 7, 0]])
    lengths = torch.tensor([3, 4, 3])
    assert ctc.min_frames(labels, lengths).tolist() == [4, 4, 5]
    assert ctc.feasible(labels, lengths, torch.tensor([4, 3, 5])).tolist() == [True, False, True]


def _nvcc():
    return shutil.which("nvcc") or next((p for p in ["/usr/local/cuda/bin/nvcc"] if Path(p).exists()), None)


@pytest.mark.skipif(_nvcc() is None, reason="nvcc is not installed")
def test_cuda_source_compiles(monkeypatch):
    # No GPU to query here: name the architecture (Hopper) unless the environment does.
    if not torch.cuda.is_available() and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    extension = ctc.build_cuda_extension()
    assert callable(extension.forward) and callable(extension.backward)
    assert "log occupancy" in extension.forward.__doc__


# --------------------------------------------------------------------------- the CUDA source on CPU threads
# tests/cuda_emulation compiles cuda/ctc_device.cuh (the kernels themselves, unchanged) with
# g++ against a small emulation of blocks, barriers and warp shuffles, and runs the launch
# sequence of cuda/ctc_kernel.cu in float32. Without a GPU this is how CI executes the kernels.

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def emulated_kernels(tmp_path_factory):
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("g++ is not installed")
    binary = tmp_path_factory.mktemp("emulation") / "run_kernels"
    subprocess.run(
        [compiler, "-std=c++20", "-O1", "-pthread", "-I", str(REPO / "cuda"), "-I", str(REPO / "tests" / "cuda_emulation"),
         str(REPO / "tests" / "cuda_emulation" / "run_kernels.cpp"), "-o", str(binary)],
        check=True, capture_output=True, text=True,
    )

    def run(logits, targets, input_lengths, target_lengths, scale=None, blank=0):
        batch, frames, vocab = logits.shape
        scale = torch.ones(batch) if scale is None else scale
        inputs, outputs = binary.parent / "in.bin", binary.parent / "out.bin"
        with open(inputs, "wb") as handle:
            np.array([batch, frames, vocab, targets.shape[1], blank], dtype=np.int32).tofile(handle)
            logits.float().numpy().tofile(handle)
            for tensor in (targets, input_lengths, target_lengths):
                tensor.long().numpy().tofile(handle)
            scale.float().numpy().tofile(handle)
        subprocess.run([str(binary), str(inputs), str(outputs)], check=True)
        values = np.fromfile(outputs, dtype=np.float32)
        loss = torch.from_numpy(values[:batch].copy()).double()
        return loss, torch.from_numpy(values[batch:].reshape(batch, frames, vocab).copy()).double()

    return run


@pytest.mark.parametrize(
    "seed,batch,frames,labels,vocab",
    [(0, 4, 30, 8, 6), (1, 6, 50, 20, 29), (2, 3, 17, 9, 3), (3, 5, 40, 12, 300), (4, 2, 60, 40, 5), (5, 3, 40, 20, 29)],
)
def test_cuda_kernels_emulated_agree_with_torch(emulated_kernels, seed, batch, frames, labels, vocab):
    logits, *rest = _random_case(seed, batch, frames, labels, vocab)
    logits = logits.float().double()  # the emulation runs in float32
    loss, grad = emulated_kernels(logits, *rest)
    expected_loss, expected_grad = _torch64(logits, *rest)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=0)
    assert float((grad - expected_grad).abs().max()) < 1e-4


def test_cuda_kernels_emulated_edge_cases(emulated_kernels):
    probs = torch.tensor([[[0.5, 0.4, 0.1], [0.6, 0.3, 0.1]]], dtype=torch.float64)
    loss, grad = emulated_kernels(probs.log(), torch.tensor([[1]]), torch.tensor([2]), torch.tensor([1]))
    assert float(loss[0]) == pytest.approx(-math.log(0.51), rel=1e-6)
    occupancy = torch.tensor([[0.15, 0.36, 0.0], [0.24, 0.27, 0.0]], dtype=torch.float64) / 0.51
    torch.testing.assert_close(grad[0], probs[0] - occupancy, rtol=0, atol=1e-6)

    # unalignable, NaN scores, zero frames, all-blank, and a normal one; incoming gradient 0.5
    logits = torch.randn(5, 6, 5, generator=torch.Generator().manual_seed(18), dtype=torch.float64)
    logits[1, 2, 3] = math.nan
    targets = torch.tensor([[1, 1, 0], [1, 2, 0], [0, 0, 0], [0, 0, 0], [2, 2, 3]])
    input_lengths, target_lengths = torch.tensor([2, 6, 0, 4, 6]), torch.tensor([2, 2, 0, 0, 3])
    loss, grad = emulated_kernels(logits, targets, input_lengths, target_lengths, scale=torch.full((5,), 0.5))
    assert math.isinf(float(loss[0])) and math.isnan(float(loss[1])) and float(loss[2]) == 0.0
    assert torch.all(grad[:3] == 0) and torch.all(grad[3, 4:] == 0)
    expected_loss, expected_grad = _torch64(logits[3:], targets[3:], input_lengths[3:], target_lengths[3:])
    torch.testing.assert_close(loss[3:], expected_loss, rtol=1e-6, atol=0)
    assert float((grad[3:] - 0.5 * expected_grad).abs().max()) < 1e-5

    # labels of width 0 (every target empty)
    logits = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(19), dtype=torch.float64)
    loss, _ = emulated_kernels(logits, torch.zeros(2, 0, dtype=torch.long), torch.tensor([4, 2]), torch.tensor([0, 0]))
    log_probs = torch.log_softmax(logits, dim=-1)
    assert loss.tolist() == pytest.approx([-float(log_probs[0, :, 0].sum()), -float(log_probs[1, :2, 0].sum())], rel=1e-6)


def test_cuda_kernels_emulated_are_deterministic(emulated_kernels):
    case = _random_case(20, 4, 40, 15, 29)
    first, second = emulated_kernels(*case), emulated_kernels(*case)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_cuda_build_failure_is_an_error_for_cuda_and_a_logged_fallback_for_auto(monkeypatch, caplog):
    def broken_build(verbose=False):
        raise RuntimeError("Error building extension 'ds2_ctc_cuda'\nnvcc fatal : Unsupported gpu architecture 'compute_99'")

    monkeypatch.setattr(ctc, "build_cuda_extension", broken_build)
    monkeypatch.setattr(ctc, "_FALLBACK_LOGGED", set())
    ctc._cuda_extension.cache_clear()
    try:
        with pytest.raises(ValueError, match="--ctc cuda: the CUDA CTC kernel could not be built") as error:
            ctc.resolve_backend("cuda", torch.device("cuda"))
        assert "Unsupported gpu architecture 'compute_99'" in str(error.value)  # the compiler's own words
        with caplog.at_level(logging.WARNING, logger="ds2.ctc"):
            assert ctc.resolve_backend("auto", torch.device("cuda")) == "torch"
        assert any("--ctc auto: our cuda kernel is unavailable" in m and "compute_99" in m for m in caplog.messages)
    finally:
        ctc._cuda_extension.cache_clear()


def test_cuda_sources_ship_inside_the_package():
    sources = ctc.cuda_sources()
    assert (sources / "ctc_kernel.cu").is_file() and (sources / "ctc_device.cuh").is_file()
    import ds2.cuda

    assert Path(ds2.cuda.__file__).parent == sources
