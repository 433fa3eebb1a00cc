"""The numba kernel of CTC forced alignment: Viterbi over the extended label sequence.

States s = 0 .. 2L: even s is a blank, odd s = 2k+1 the k-th label. A frame moves from s to
s (stay), s+1 (advance) or s+2 (skip a blank between two different labels). Only the band
of states that can still reach the end is visited at each frame:
max(0, S - 2(T - t)) <= s <= min(S - 1, 2t + 1). The backpointers take one byte per
(frame, state). Imported lazily by ds2.alignment.
"""

from __future__ import annotations

import numpy as np
from numba import njit

NEG_INF = -np.inf


@njit(cache=True, nogil=True)
def viterbi(log_probs, labels, blank):
    """Best CTC path of ``labels`` through ``log_probs``.

    log_probs: float32/64 (T, V); labels: int64 (L,). Returns (states, score): states int32
    (T,), the extended-sequence state of each frame, and the path's total log-probability
    (-inf when the labels cannot fit: T < L + repeats).
    """
    n_frames = log_probs.shape[0]
    n_labels = labels.shape[0]
    n_states = 2 * n_labels + 1
    states = np.zeros(n_frames, dtype=np.int32)
    if n_frames == 0:
        return states, NEG_INF
    token = np.empty(n_states, dtype=np.int64)
    skip = np.zeros(n_states, dtype=np.bool_)
    for s in range(n_states):
        token[s] = blank if s % 2 == 0 else labels[(s - 1) // 2]
        if s >= 2 and s % 2 == 1 and token[s] != token[s - 2]:
            skip[s] = True
    back = np.zeros((n_frames, n_states), dtype=np.int8)
    previous = np.full(n_states, NEG_INF)
    current = np.full(n_states, NEG_INF)
    previous[0] = log_probs[0, token[0]]
    if n_states > 1:
        previous[1] = log_probs[0, token[1]]
    for t in range(1, n_frames):
        low = max(0, n_states - 2 * (n_frames - t))
        high = min(n_states - 1, 2 * t + 1)
        for s in range(n_states):
            current[s] = NEG_INF
        for s in range(low, high + 1):
            best = previous[s]
            move = 0
            if s >= 1 and previous[s - 1] > best:
                best = previous[s - 1]
                move = 1
            if skip[s] and previous[s - 2] > best:
                best = previous[s - 2]
                move = 2
            current[s] = best + log_probs[t, token[s]]
            back[t, s] = move
        previous, current = current, previous
    last = n_states - 1
    if n_states > 1 and previous[n_states - 2] > previous[last]:
        last = n_states - 2
    score = previous[last]
    if score == NEG_INF:
        return states, NEG_INF
    s = last
    for t in range(n_frames - 1, -1, -1):
        states[t] = s
        s -= back[t, s]
    return states, score
