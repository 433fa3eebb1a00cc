import json

import pytest
import torch

from conftest import confusable_log_probs
from ds2 import lm
from ds2.data import write_manifest
from ds2.decode import load_decoding_defaults, save_log_probs
from ds2.text import Alphabet
from ds2.tune import TuneOptions, tune


def test_tune_finds_an_lm_weight_that_beats_no_lm_and_stores_it(tmp_path):
    try:
        lm.kenlm_tool("lmplz")
    except lm.LmError as err:
        pytest.skip(str(err))
    alphabet = Alphabet()
    sentences = ["the cat sat", "a cat ran home", "the dog sat here", "my cat is here"]
    text = tmp_path / "text.txt"
    text.write_text("\n".join(sentences * 10) + "\n", encoding="utf-8")
    files = lm.build_lm([text], tmp_path / "lm", order=3)
    manifest = tmp_path / "dev.json"
    write_manifest(manifest, [{"audio_filepath": f"{i}.wav", "duration": 1.0, "text": s} for i, s in enumerate(sentences)])
    cache = {"alphabet": list(alphabet.symbols), "errors": {},
             "log_probs": {i: torch.from_numpy(confusable_log_probs(s, alphabet, {"c": "k", "h": "n"})) for i, s in enumerate(sentences)}}
    save_log_probs(cache, tmp_path / "dev_lp.pt")

    best = tune(tmp_path / "dev_lp.pt", manifest, files.binary, tmp_path, TuneOptions(beam_width=16, jobs=1),
                alphas=(0.0, 1.0, 2.0), betas=(0.0, 1.0))
    rows = (tmp_path / "tune.csv").read_text().splitlines()
    no_lm = [r for r in rows if r.startswith("coarse,0.0,")]
    assert all(float(r.split(",")[3]) > 0 for r in no_lm)  # without the LM, "kat" and "nere" stay
    assert best["alpha"] > 0 and best["dev_wer"] == 0.0
    assert json.loads((tmp_path / "decoding.json").read_text())["alpha"] == best["alpha"]
    assert (tmp_path / "tune.png").read_bytes()[:4] == b"\x89PNG"
    assert load_decoding_defaults(tmp_path / "best.pt")["beta"] == best["beta"]

    empty = tmp_path / "empty.json"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty dev manifest"):
        tune(tmp_path / "dev_lp.pt", empty, files.binary, tmp_path / "x")

    # a cache whose every audio file was unreadable (e.g. a manifest copied away from its relative
    # paths) is refused, instead of "tuning" on empty hypotheses
    unread = {"alphabet": list(alphabet.symbols), "log_probs": {},
              "errors": {i: f"dev.json:{i + 1}: {i}.wav: file not found" for i in range(len(sentences))}}
    save_log_probs(unread, tmp_path / "unread_lp.pt")
    with pytest.raises(ValueError, match="no utterance has log-probs"):
        tune(tmp_path / "unread_lp.pt", manifest, files.binary, tmp_path / "y")
    assert not (tmp_path / "y" / "decoding.json").exists()
