"""numba CPU kernels behind ``ds2.ctc.ctc_loss(..., backend="numba")``.

Imported lazily by :mod:`ds2.ctc` (numba takes a moment to import and compile; the compiled
kernels are cached on disk).

Layout, per utterance b (prange over the batch):
- one streaming pass over each frame's V logits gives its log-sum-exp; only the columns of
  the characters in the transcript are kept (``U + 1`` keys: blank, then the distinct labels
  in ascending order), so nothing vocabulary-sized enters the time loop;
- alpha for every frame (T x S, S = 2L + 1), beta in two rows; the occupancy of each state is
  added into its character's key in state order (a key-sorted reduction, no races);
- the recursions run in linear space with each column rescaled to sum 1 (Graves et al. 2006,
  section 4.1), which needs no exp/log per state. If a column underflows, or the rescaled
  alpha and beta columns overlap by less than ``_MIN_OVERLAP`` (then flushed values could
  matter), the utterance is recomputed in log space, which cannot underflow.

The backward pass is one fused epilogue over the frames: ``g_b * (softmax - occupancy)``,
zero on padded frames and for utterances whose loss is infinite.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

# Rescaled alpha . beta below this means flushed (subnormal) values could change the result
# by more than 1e-40 relative; log space then.
_MIN_OVERLAP = 1e-250


@njit(cache=True, nogil=True)
def _keys(labels, n_labels, blank):
    """Distinct characters (blank first, then the labels ascending) and each state's key."""
    chars = np.empty(n_labels + 1, dtype=np.int64)
    chars[0] = blank
    n_keys = 1
    if n_labels > 0:
        ordered = np.sort(labels[:n_labels])
        for i in range(n_labels):
            if i == 0 or ordered[i] != ordered[i - 1]:
                chars[n_keys] = ordered[i]
                n_keys += 1
    n_states = 2 * n_labels + 1
    state_key = np.zeros(n_states, dtype=np.int64)
    for i in range(n_labels):
        label = labels[i]
        lo, hi = 1, n_keys  # binary search among the sorted distinct labels
        while lo < hi:
            mid = (lo + hi) // 2
            if chars[mid] < label:
                lo = mid + 1
            else:
                hi = mid
        state_key[2 * i + 1] = lo
    # skip[s]: the s-2 -> s transition exists (s is a label differing from the label before)
    skip = np.zeros(n_states, dtype=np.float64)
    for i in range(1, n_labels):
        if labels[i] != labels[i - 1]:
            skip[2 * i + 1] = 1.0
    return chars[:n_keys], state_key, skip


@njit(cache=True, nogil=True)
def _log_add(a, b):
    if a == -np.inf:
        return b
    if b == -np.inf:
        return a
    if a > b:
        return a + math.log1p(math.exp(b - a))
    return b + math.log1p(math.exp(a - b))


@njit(cache=True, nogil=True)
def _log_space(log_emit, state_key, skip, n_frames, need_grad, occupancy):
    """Log-space alpha/beta for one utterance; returns the loss, fills occupancy (T x keys)."""
    n_states = state_key.shape[0]
    log_alpha = np.full((n_frames, n_states), -np.inf)
    log_alpha[0, 0] = log_emit[0, state_key[0]]
    if n_states > 1:
        log_alpha[0, 1] = log_emit[0, state_key[1]]
    for t in range(1, n_frames):
        for s in range(n_states):
            total = log_alpha[t - 1, s]
            if s >= 1:
                total = _log_add(total, log_alpha[t - 1, s - 1])
            if s >= 2 and skip[s] > 0.0:
                total = _log_add(total, log_alpha[t - 1, s - 2])
            if total > -np.inf:
                log_alpha[t, s] = total + log_emit[t, state_key[s]]
    last = log_alpha[n_frames - 1, n_states - 1]
    if n_states > 1:
        last = _log_add(last, log_alpha[n_frames - 1, n_states - 2])
    if last == -np.inf or not need_grad:
        return -last
    # beta_t(s): log probability of frames t+1.. given state s at t (emission at t excluded)
    beta = np.full(n_states, -np.inf)
    next_beta = np.full(n_states, -np.inf)
    beta[n_states - 1] = 0.0
    if n_states > 1:
        beta[n_states - 2] = 0.0
    for t in range(n_frames - 1, -1, -1):
        if t < n_frames - 1:
            for s in range(n_states):
                total = next_beta[s] + log_emit[t + 1, state_key[s]]
                if s + 1 < n_states:
                    total = _log_add(total, next_beta[s + 1] + log_emit[t + 1, state_key[s + 1]])
                if s + 2 < n_states and skip[s + 2] > 0.0:
                    total = _log_add(total, next_beta[s + 2] + log_emit[t + 1, state_key[s + 2]])
                beta[s] = total
        for s in range(n_states):
            occupancy[t, state_key[s]] += math.exp(log_alpha[t, s] + beta[s] - last)
        beta, next_beta = next_beta, beta
    return -last


@njit(cache=True, nogil=True)
def _rescale(values, start, stop, column):
    """Divide values[start:stop] by their sum ``column``; False if it under- or overflowed."""
    if not (column > 0.0 and column < np.inf):
        return False
    inverse = 1.0 / column
    for s in range(start, stop):
        values[s] *= inverse
    return True


@njit(cache=True, nogil=True)
def _utterance(logits, labels, n_frames, n_labels, blank, need_grad, lse, occupancy, chars_out):
    """Loss of one utterance; fills lse (T,), occupancy (T x keys) and the key characters.

    Returns (loss, number of keys, whether the log-space path was taken).
    """
    chars, state_key, skip = _keys(labels, n_labels, blank)
    n_keys = chars.shape[0]
    chars_out[:n_keys] = chars
    loss, in_log_space = _utterance_loss(logits, n_frames, n_labels, need_grad, lse, occupancy, chars, state_key, skip)
    return loss, n_keys, in_log_space


@njit(cache=True, nogil=True)
def _utterance_loss(logits, n_frames, n_labels, need_grad, lse, occupancy, chars, state_key, skip):
    """See :func:`_utterance`; the keys are made."""
    n_keys = chars.shape[0]
    n_states = 2 * n_labels + 1
    repeats = 0
    for i in range(1, n_labels):
        if skip[2 * i + 1] == 0.0:
            repeats += 1
    if n_frames == 0:
        return (0.0 if n_labels == 0 else np.inf), False
    if n_labels + repeats > n_frames:
        return np.inf, False

    # One pass over each frame: log-sum-exp, and the log-probs of the keys only.
    vocab = logits.shape[1]
    log_emit = np.empty((n_frames, n_keys))
    for t in range(n_frames):
        peak = -np.inf
        for c in range(vocab):
            x = np.float64(logits[t, c])
            if x > peak:
                peak = x
        total = 0.0
        for c in range(vocab):
            total += math.exp(np.float64(logits[t, c]) - peak)
        lse[t] = peak + math.log(total)
        if math.isnan(lse[t]):  # NaN scores give a NaN loss, as in torch
            return np.nan, False
        for k in range(n_keys):
            log_emit[t, k] = np.float64(logits[t, chars[k]]) - lse[t]

    # Rescaled linear space. Emissions relative to each frame's best key (<= 1) keep the
    # column sums from shrinking; the scales go into log_scale.
    emit = np.empty((n_frames, n_keys))
    log_scale = 0.0
    for t in range(n_frames):
        best = -np.inf
        for k in range(n_keys):
            best = max(best, log_emit[t, k])
        for k in range(n_keys):
            emit[t, k] = math.exp(log_emit[t, k] - best)
        log_scale += best
    # alpha rows carry two leading zeros so s-1 and s-2 need no branches
    alpha = np.zeros((n_frames, n_states + 2))
    alpha[0, 2] = emit[0, state_key[0]]
    if n_states > 1:
        alpha[0, 3] = emit[0, state_key[1]]
    underflow = False
    column = alpha[0, 2] + (alpha[0, 3] if n_states > 1 else 0.0)
    for s in range(2, n_states + 2):
        alpha[0, s] /= column
    log_scale += math.log(column)
    for t in range(1, n_frames):
        # states below lo cannot reach the end any more; states from hi on are unreachable
        lo = max(0, n_states - 2 * (n_frames - t))
        hi = min(n_states, 2 * t + 2)
        prev = alpha[t - 1]
        row = alpha[t]
        column = 0.0
        for s in range(lo, hi):
            value = (prev[s + 2] + prev[s + 1] + skip[s] * prev[s]) * emit[t, state_key[s]]
            row[s + 2] = value
            column += value
        if not _rescale(row, lo + 2, hi + 2, column):
            underflow = True
            break
        log_scale += math.log(column)
    if not underflow:
        end = alpha[n_frames - 1, n_states + 1] + (alpha[n_frames - 1, n_states] if n_states > 1 else 0.0)
        underflow = not end > 0.0
    if underflow:
        occupancy[:n_frames, :] = 0.0
        return _log_space(log_emit, state_key, skip, n_frames, need_grad, occupancy), True
    loss = -(log_scale + math.log(end))
    if not need_grad:
        return loss, False

    # beta in two rows, with two trailing zeros; occupancy gamma_t(s) ~ alpha_t(s) beta_t(s),
    # normalized per frame, so each frame's occupancies sum to one.
    beta = np.zeros(n_states + 2)
    next_beta = np.zeros(n_states + 2)
    weighted = np.zeros(n_states + 2)  # next_beta(s) * emit(t+1, s)
    skip_next = np.zeros(n_states + 2)
    for s in range(n_states - 2):
        skip_next[s] = skip[s + 2]
    beta[n_states - 1] = 1.0
    if n_states > 1:
        beta[n_states - 2] = 1.0
    for t in range(n_frames - 1, -1, -1):
        lo = max(0, n_states - 2 * (n_frames - t))
        hi = min(n_states, 2 * t + 2)
        if t < n_frames - 1:
            hi_next = min(n_states, 2 * t + 4)
            for s in range(n_states):
                weighted[s] = 0.0
            for s in range(lo, hi_next):
                weighted[s] = next_beta[s] * emit[t + 1, state_key[s]]
            column = 0.0
            for s in range(lo, hi):
                value = weighted[s] + weighted[s + 1] + skip_next[s] * weighted[s + 2]
                beta[s] = value
                column += value
            if not _rescale(beta, lo, hi, column):
                underflow = True
                break
            for s in range(hi, n_states):
                beta[s] = 0.0
        row = alpha[t]
        overlap = 0.0
        for s in range(lo, hi):
            overlap += row[s + 2] * beta[s]
        if not overlap > _MIN_OVERLAP:
            underflow = True
            break
        inverse = 1.0 / overlap
        for s in range(lo, hi):
            occupancy[t, state_key[s]] += row[s + 2] * beta[s] * inverse
        beta, next_beta = next_beta, beta
    if underflow:
        occupancy[:n_frames, :] = 0.0
        return _log_space(log_emit, state_key, skip, n_frames, need_grad, occupancy), True
    return loss, False


@njit(parallel=True, cache=True)
def forward(logits, labels, input_lengths, label_lengths, blank, need_grad, losses, lse, occupancy, chars, n_keys, log_space):
    """Per-utterance losses; with need_grad, what :func:`backward` needs.

    logits: (B, T, V) float32; labels: (B, Lmax) int64; lengths: (B,) int64.
    Outputs: losses (B,) float64; lse (B, T) float64; occupancy (B, T, K) float64 with
    K >= min(Lmax, V - 1) + 1; chars (B, K) int64 (key -> character); n_keys (B,) int64;
    log_space (B,) bool: the utterance needed the log-space path.
    """
    for b in prange(logits.shape[0]):
        losses[b], n_keys[b], log_space[b] = _utterance(
            logits[b], labels[b], input_lengths[b], label_lengths[b], blank, need_grad,
            lse[b], occupancy[b], chars[b],
        )


@njit(parallel=True, cache=True)
def backward(logits, input_lengths, scale, lse, occupancy, chars, n_keys, grad):
    """grad[b, t] = scale[b] * (softmax(logits[b, t]) - occupancy[b, t]); zero past the length.

    scale: (B,) float64, the incoming gradient of each loss (0 where the loss is infinite).
    grad: (B, T, V) float32, fully written.
    """
    batch, frames, vocab = logits.shape
    for row in prange(batch * frames):
        b = row // frames
        t = row % frames
        g = scale[b]
        if t >= input_lengths[b] or g == 0.0:
            for c in range(vocab):
                grad[b, t, c] = 0.0
            continue
        for c in range(vocab):
            grad[b, t, c] = g * math.exp(np.float64(logits[b, t, c]) - lse[b, t])
        for k in range(n_keys[b]):
            grad[b, t, chars[b, k]] -= g * occupancy[b, t, k]


def set_threads(n: int) -> None:
    """Use n threads (capped at what numba was started with)."""
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
