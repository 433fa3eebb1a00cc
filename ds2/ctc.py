"""CTC loss from logits: one entry point, three backends, and a float64 reference.

:func:`ctc_loss` takes the model's logits; the softmax is part of the loss, so the gradient
with respect to the logits is ``softmax - occupancy`` (the CTC posterior of each character at
each frame), times the incoming gradient. Backends:

- ``"cuda"``: our kernel (cuda/ctc_kernel.cu, DS2 appendix A.2), built on first use with
  torch.utils.cpp_extension and cached; CUDA tensors only.
- ``"numba"``: our CPU kernel (:mod:`ds2._ctc_numba`), parallel over the batch.
- ``"torch"``: log_softmax + torch.nn.functional.ctc_loss, the peer the others are checked
  against.
- ``"auto"``: cuda for CUDA tensors when the extension builds, numba on the CPU; torch when
  ours cannot load, with a warning in the log that gives the reason. Training records the
  backend that ran (train.log, run.json, the checkpoints). ``"cuda"`` and ``"numba"`` never
  fall back: they fail with the reason (for cuda, the compiler's error).

The CUDA sources ship inside the package (``ds2.cuda``, mapped from the repository's cuda/
by setup.cfg), so they are found after any kind of install.

Ours and torch agree on the loss; they differ where the loss is infinite (an utterance whose
labels do not fit its frames): torch's gradient there is NaN, ours is zero, so one
unalignable utterance cannot poison a batch.

:func:`reference_ctc_loss` is the recursion of Graves et al. (2006) written out in float64
torch operations (differentiable by autograd): slow, plain, for tests and as documentation.

:func:`feasible` says which utterances can be aligned at all: CTC needs one output step per
label plus one blank between every pair of equal neighbouring labels.

    losses = ctc_loss(logits, labels, output_lengths, label_lengths, reduction="none")
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import logging
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ds2.text import BLANK

log = logging.getLogger(__name__)

BACKENDS = ("auto", "cuda", "numba", "torch")
REDUCTIONS = ("none", "sum", "mean")
_FALLBACK_LOGGED: set[str] = set()  # device types whose fallback to torch's CTC was logged (once each)


def ctc_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    input_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    blank: int = BLANK,
    reduction: str = "mean",
    zero_infinity: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """Connectionist temporal classification loss from logits.

    Parameters
    ----------
    logits: shape = (B, T, V), unnormalized scores (float32, float64, bfloat16 or float16;
        ours accumulate in float32 on the GPU and float64 on the CPU).
    targets: shape = (B, Lmax) zero-padded label indices, or (sum(target_lengths),)
        concatenated.
    input_lengths, target_lengths: shape = (B,), integers; frames past input_lengths[b] are
        ignored and get zero gradient.
    reduction: "none" (per utterance, shape (B,)), "sum", or "mean" (torch's semantics:
        each loss divided by its target length, at least 1, then averaged over the batch).
    zero_infinity: replace the infinite losses of unalignable utterances by zero.
    backend: see the module docstring.

    Returns the loss in float32 (float64 for float64 logits).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, not {reduction!r}")
    name = resolve_backend(backend, logits.device)
    _check_inputs(logits, targets, input_lengths, target_lengths, blank)
    if name == "torch":
        return _torch_ctc_loss(logits, targets, input_lengths, target_lengths, blank, reduction, zero_infinity)
    labels = padded_targets(targets, target_lengths)
    losses = _CTCFunction.apply(
        logits, labels, input_lengths.to(torch.int64), target_lengths.to(torch.int64), blank, zero_infinity, name
    )
    return _reduce(losses, target_lengths, reduction)


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """The backends that run on ``device`` here (ours first, torch last)."""
    device = torch.device(device)
    ours = "cuda" if device.type == "cuda" else "numba"
    loaded = _cuda_extension() if ours == "cuda" else _numba_kernels()
    return ([ours] if loaded is not None else []) + ["torch"]


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend that ``backend`` means for tensors on ``device``; errors name the fix."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown CTC backend {backend!r}; available: {', '.join(BACKENDS)}")
    if backend == "auto":
        chosen = available_backends(device)[0]
        if chosen == "torch" and device.type not in _FALLBACK_LOGGED:
            _FALLBACK_LOGGED.add(device.type)
            ours = "cuda" if device.type == "cuda" else "numba"
            log.warning("--ctc auto: our %s kernel is unavailable (%s); using torch's CTC", ours,
                        _cuda_extension_error if ours == "cuda" else _numba_error)
        return chosen
    if backend == "cuda":
        if device.type != "cuda":
            raise ValueError("the cuda CTC backend needs CUDA tensors; use --ctc numba or auto on the CPU")
        if _cuda_extension() is None:
            raise ValueError(f"--ctc cuda: the CUDA CTC kernel could not be built:\n{_cuda_extension_error}")
    if backend == "numba":
        if device.type != "cpu":
            raise ValueError("the numba CTC backend needs CPU tensors; use --ctc cuda or auto on the GPU")
        if _numba_kernels() is None:
            raise ValueError(f"--ctc numba: the numba CTC kernel cannot load ({_numba_error}); use --ctc torch")
    return backend


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


def padded_targets(targets: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
    """Targets as (B, Lmax) int64, zero-padded; concatenated (1-D) targets are split.

    Splitting needs the longest length on the host: one synchronization on the GPU, which
    padded targets (what ds2's collate makes) avoid.
    """
    if targets.dim() == 2:
        return targets.to(torch.int64)
    lengths = target_lengths.to(device=targets.device, dtype=torch.int64)
    width = int(lengths.max()) if lengths.numel() else 0
    if width == 0:
        return torch.zeros(lengths.shape[0], 0, dtype=torch.int64, device=targets.device)
    starts = torch.cumsum(lengths, 0) - lengths
    positions = torch.arange(width, device=targets.device)
    index = (starts[:, None] + positions[None, :]).clamp(max=targets.shape[0] - 1)
    inside = positions[None, :] < lengths[:, None]
    return torch.where(inside, targets.to(torch.int64)[index], 0)


# --------------------------------------------------------------------------- the reference


def reference_ctc_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    input_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    blank: int = BLANK,
    reduction: str = "mean",
    zero_infinity: bool = False,
) -> torch.Tensor:
    """CTC in float64 as Graves et al. (2006, section 4.1) write it, in log space.

    The label sequence l is extended to l' = (blank, l1, blank, l2, ..., lL, blank), S = 2L+1
    states. alpha_1(1) = y_1(blank), alpha_1(2) = y_1(l1), and for t > 1

        alpha_t(s) = (alpha_{t-1}(s) + alpha_{t-1}(s-1) + [skip] alpha_{t-1}(s-2)) y_t(l'_s)

    where the skip from s-2 exists when l'_s is a label different from l'_{s-2}. The loss is
    -ln(alpha_T(S) + alpha_T(S-1)). Autograd gives the gradient. Same arguments and result
    as :func:`ctc_loss`.
    """
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    labels = padded_targets(targets, target_lengths)
    never = -1e300  # finite "log 0": keeps autograd free of inf - inf
    losses = []
    for b in range(logits.shape[0]):
        n_frames, n_labels = int(input_lengths[b]), int(target_lengths[b])
        label = labels[b, :n_labels].tolist()
        if n_labels + sum(x == y for x, y in zip(label, label[1:])) > n_frames:
            losses.append(log_probs.new_tensor(float("inf")))
            continue
        extended = [blank]
        for character in label:
            extended += [character, blank]
        skip = torch.tensor([s >= 2 and extended[s] != blank and extended[s] != extended[s - 2] for s in range(len(extended))])
        start = log_probs.new_full((len(extended),), never)
        alpha = torch.cat([log_probs[b, 0, extended[:2]], start[2:]])
        for t in range(1, n_frames):
            one_back = torch.cat([start[:1], alpha[:-1]])
            two_back = torch.where(skip, torch.cat([start[:2], alpha[:-2]]), never)
            alpha = torch.logsumexp(torch.stack([alpha, one_back, two_back]), dim=0) + log_probs[b, t, extended]
        losses.append(-torch.logsumexp(alpha[-2:], dim=0))
    losses = torch.stack(losses) if losses else log_probs.new_zeros(0)
    if zero_infinity:
        losses = torch.where(torch.isinf(losses), 0.0, losses)
    return _reduce(losses, target_lengths, reduction)


# --------------------------------------------------------------------------- backends


def _check_inputs(logits, targets, input_lengths, target_lengths, blank):
    """Shapes and dtypes (never values on the GPU: that would synchronize)."""
    if logits.dim() != 3 or not logits.is_floating_point():
        raise ValueError(f"logits must be a (B, T, V) floating tensor, got {tuple(logits.shape)} {logits.dtype}")
    batch = logits.shape[0]
    for name, lengths in (("input_lengths", input_lengths), ("target_lengths", target_lengths)):
        if lengths.shape != (batch,) or lengths.is_floating_point():
            raise ValueError(f"{name} must be an integer tensor of shape ({batch},), got {tuple(lengths.shape)} {lengths.dtype}")
    if targets.is_floating_point() or targets.dim() not in (1, 2) or (targets.dim() == 2 and targets.shape[0] != batch):
        raise ValueError(f"targets must be integer (B, Lmax) or concatenated (N,), got {tuple(targets.shape)} {targets.dtype}")
    if not 0 <= blank < logits.shape[2]:
        raise ValueError(f"blank={blank} is not a class index for V={logits.shape[2]}")
    if logits.device.type == "cpu":
        if bool((input_lengths > logits.shape[1]).any()) or bool((input_lengths < 0).any()):
            raise ValueError(f"input_lengths must lie in [0, {logits.shape[1]}], got {input_lengths.tolist()}")
        limit = targets.shape[1] if targets.dim() == 2 else targets.shape[0]
        if bool((target_lengths > limit).any()) or bool((target_lengths < 0).any()):
            raise ValueError(f"target_lengths must lie in [0, {limit}], got {target_lengths.tolist()}")
        if targets.dim() == 1 and int(target_lengths.sum()) != targets.shape[0]:
            raise ValueError("concatenated targets must hold exactly sum(target_lengths) labels")
        if targets.dim() == 2:
            used = torch.arange(targets.shape[1])[None, :] < target_lengths[:, None]
            labels = targets[used]
        else:
            labels = targets
        bad = (labels < 0) | (labels >= logits.shape[2]) | (labels == blank)
        if bool(bad.any()):
            raise ValueError(
                f"targets hold {int(labels[bad][0])}, which is not a label: labels lie in [0, {logits.shape[2]}) "
                f"and are not the blank ({blank})"
            )


def _reduce(losses: torch.Tensor, target_lengths: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    return (losses / target_lengths.to(losses.device).clamp(min=1).to(losses.dtype)).mean()


def _torch_ctc_loss(logits, targets, input_lengths, target_lengths, blank, reduction, zero_infinity):
    # Padded frames are set to 0 before the softmax: the softmax backward mixes all of a frame's
    # scores, so a NaN or inf there would give NaN where the gradient must be zero.
    frames = torch.arange(logits.shape[1], device=logits.device) < input_lengths.to(logits.device)[:, None]  # B x T
    logits = torch.where(frames[..., None], logits, 0)
    log_probs = F.log_softmax(logits.to(_float_dtype(logits)), dim=-1).transpose(0, 1)  # T x B x V
    return F.ctc_loss(
        log_probs, targets, input_lengths, target_lengths,
        blank=blank, reduction=reduction, zero_infinity=zero_infinity,
    )


class _CTCFunction(torch.autograd.Function):
    """Per-utterance losses from one of our kernels; the backward is the fused epilogue."""

    @staticmethod
    def forward(ctx, logits, labels, input_lengths, target_lengths, blank, zero_infinity, backend):
        kernel = _NumbaKernel if backend == "numba" else _CudaKernel
        losses, state = kernel.forward(logits, labels, input_lengths, target_lengths, blank, ctx.needs_input_grad[0])
        unusable = ~torch.isfinite(losses)
        if zero_infinity:
            losses = torch.where(torch.isinf(losses), 0.0, losses)
        ctx.kernel, ctx.state, ctx.logits_dtype = kernel, state, logits.dtype
        ctx.save_for_backward(logits, input_lengths, unusable)
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        logits, input_lengths, unusable = ctx.saved_tensors
        scale = torch.where(unusable, 0.0, grad_losses)  # an infinite loss has no useful gradient
        grad = ctx.kernel.backward(logits, input_lengths, ctx.state, scale)
        return grad.to(ctx.logits_dtype), None, None, None, None, None, None


class _NumbaKernel:
    last_log_space = 0  # utterances of the last call that took the log-space path (benchmarks)

    @staticmethod
    def forward(logits, labels, input_lengths, target_lengths, blank, need_grad):
        with _torch_threads_kept() as threads:
            return _NumbaKernel._forward(logits, labels, input_lengths, target_lengths, blank, need_grad, threads)

    @staticmethod
    def _forward(logits, labels, input_lengths, target_lengths, blank, need_grad, threads):
        kernels = _numba_kernels()
        kernels.set_threads(threads)
        batch, n_frames, vocab = logits.shape
        values = _numpy_logits(logits)
        labels = labels.contiguous().numpy()
        n_keys_max = min(labels.shape[1], vocab - 1) + 1
        losses = np.empty(batch)
        lse = np.zeros((batch, n_frames))
        occupancy = np.zeros((batch, n_frames, n_keys_max) if need_grad else (batch, n_frames, 1))
        chars = np.zeros((batch, n_keys_max), dtype=np.int64)
        n_keys = np.zeros(batch, dtype=np.int64)
        log_space = np.zeros(batch, dtype=np.bool_)
        kernels.forward(
            values, labels, input_lengths.numpy(), target_lengths.numpy(), blank, need_grad,
            losses, lse, occupancy, chars, n_keys, log_space,
        )
        _NumbaKernel.last_log_space = int(log_space.sum())
        return torch.from_numpy(losses).to(_float_dtype(logits)), (lse, occupancy, chars, n_keys)

    @staticmethod
    def backward(logits, input_lengths, state, scale):
        lse, occupancy, chars, n_keys = state
        values = _numpy_logits(logits)
        grad = np.empty(values.shape, dtype=values.dtype)
        with _torch_threads_kept():
            _numba_kernels().backward(
                values, input_lengths.numpy(), scale.double().contiguous().numpy(), lse, occupancy, chars, n_keys, grad
            )
        return torch.from_numpy(grad)


@contextlib.contextmanager
def _torch_threads_kept():
    """Yield torch's CPU thread count and restore it afterwards.

    numba's OpenMP threading layer shares libgomp with torch, and its first parallel launch
    leaves numba's own thread count there: torch ops after it would silently run on more
    threads than ``torch.set_num_threads`` asked for, in another summation order (which
    broke the bitwise-exact --resume with ``--threads 1``).
    """
    threads = torch.get_num_threads()
    try:
        yield threads
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def _float_dtype(logits: torch.Tensor) -> torch.dtype:
    """What losses come back in: float64 for float64 logits, else float32."""
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def _numpy_logits(logits: torch.Tensor) -> np.ndarray:
    return logits.detach().to(_float_dtype(logits)).contiguous().numpy()


class _CudaKernel:
    @staticmethod
    def forward(logits, labels, input_lengths, target_lengths, blank, need_grad):
        losses, lse, occupancy, sorted_state, sorted_char = _cuda_extension().forward(
            logits, labels, input_lengths, target_lengths, blank, need_grad
        )
        return losses, (target_lengths, lse, occupancy, sorted_state, sorted_char, blank)

    @staticmethod
    def backward(logits, input_lengths, state, scale):
        target_lengths, lse, occupancy, sorted_state, sorted_char, blank = state
        return _cuda_extension().backward(
            logits, input_lengths, target_lengths, lse, occupancy, sorted_state, sorted_char,
            scale.to(lse.dtype).contiguous(), blank,
        )


_numba_error = "not tried"


@lru_cache(maxsize=None)
def _numba_kernels():
    global _numba_error
    try:
        from ds2 import _ctc_numba
    except ImportError as error:
        _numba_error = f"{type(error).__name__}: {error}"
        log.warning("numba CTC kernel unavailable (%s); --ctc auto uses torch's CTC on the CPU", _numba_error)
        return None
    log.info("numba CTC kernel: the first call after an install compiles it (~10 s), later runs load it from the cache")
    return _ctc_numba


_cuda_extension_error = "not tried"


@lru_cache(maxsize=None)
def _cuda_extension():
    """Build (or load from torch's extension cache) cuda/; None with one warning if it fails."""
    global _cuda_extension_error
    log.info("loading the CUDA CTC kernel (the first build compiles cuda/, about a minute)")
    try:
        extension = build_cuda_extension()
    except Exception as error:  # compiler missing, CUDA toolkit mismatch, ...
        lines = str(error).strip().splitlines()
        _cuda_extension_error = f"{type(error).__name__}: " + "\n".join(lines[-20:])
        log.warning("CUDA CTC kernel unavailable; --ctc auto uses torch's CTC on the GPU. The build said:\n%s",
                    _cuda_extension_error)
        return None
    _cuda_extension_error = ""
    return extension


def cuda_sources() -> Path:
    """The folder of the CUDA sources, inside the installed package (ds2.cuda)."""
    return Path(str(importlib.resources.files("ds2.cuda")))


def build_cuda_extension(verbose: bool = False):
    """Compile cuda/ctc_kernel.cu + cuda/ctc_binding.cpp with torch.utils.cpp_extension.

    Compiled once per source version into torch's extension cache (TORCH_EXTENSIONS_DIR).
    Without a GPU to query, set TORCH_CUDA_ARCH_LIST (e.g. "9.0").
    """
    from torch.utils import cpp_extension

    sources_dir = cuda_sources()
    if not os.environ.get("CUDA_HOME") and Path("/usr/local/cuda/bin/nvcc").exists():
        # torch guesses CUDA_HOME from the nvcc on PATH, which may be a bare symlink
        os.environ["CUDA_HOME"] = cpp_extension.CUDA_HOME = "/usr/local/cuda"
    sources = [sources_dir / "ctc_binding.cpp", sources_dir / "ctc_kernel.cu"]
    missing = [str(path) for path in sources if not path.exists()]
    if missing:
        raise FileNotFoundError(f"CUDA sources not found: {', '.join(missing)}")
    # torch rebuilds when a listed source changes, not a header: name the build by all of cuda/
    digest = hashlib.sha1()
    for path in sorted(sources_dir.iterdir()):
        if path.suffix in (".cu", ".cuh", ".cpp", ".h"):
            digest.update(path.name.encode() + path.read_bytes())
    return cpp_extension.load(
        name=f"ds2_ctc_cuda_{digest.hexdigest()[:12]}",
        sources=[str(path) for path in sources],
        extra_cflags=["-O3"],
        extra_cuda_cflags=["-O3"],
        verbose=verbose,
    )
