import torch

from ds2.decode import greedy_decode
from ds2.text import Alphabet


def _logits(paths: list[list[int]], n_outputs: int) -> torch.Tensor:
    """One-hot-ish logits whose argmax follows each path (padded with index 1)."""
    T = max(len(p) for p in paths)
    logits = torch.zeros(len(paths), T, n_outputs)
    for b, path in enumerate(paths):
        for t in range(T):
            logits[b, t, path[t] if t < len(path) else 1] = 5.0
    return logits


def test_greedy_merges_repeats_drops_blanks_and_respects_lengths():
    alphabet = Alphabet()  # 1 = space, 2 = apostrophe, 3 = a, ...
    c, a, t = (alphabet.encode(ch)[0] for ch in "cat")
    paths = [[c, c, 0, a, a, 0, 0, t], [t, 0, t, t, 0, 0], [0, 0, 0]]
    texts = greedy_decode(_logits(paths, len(alphabet)), torch.tensor([8, 6, 3]), alphabet)
    assert texts == ["cat", "tt", ""]


def test_greedy_ignores_steps_beyond_the_length():
    alphabet = Alphabet()
    a = alphabet.encode("a")[0]
    logits = _logits([[a, 0, a, a, a]], len(alphabet))
    assert greedy_decode(logits, torch.tensor([2]), alphabet) == ["a"]
    assert greedy_decode(logits, torch.tensor([5]), alphabet) == ["aa"]
