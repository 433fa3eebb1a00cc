"""The corpus recipes on tiny fake trees of the real layouts, every stage, and `ds2 prepare commonvoice`.

The trees hold eSpeak NG speech in the corpora's own forms: LibriSpeech's
SUBSET/SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.flac beside SPEAKER-CHAPTER.trans.txt (upper-case
transcripts), Common Voice's clips/*.mp3 at 48 kHz beside tab-separated train/dev/test.tsv read
by header name, in French (accented letters, the ligature œ, apostrophes). The recipes run as a
user runs them (bash run.sh, data and exp in tmp_path) with a tiny model and a few steps.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
from typer.testing import CliRunner

from ds2 import audio, espeak
from ds2.checkpoint import load_checkpoint
from ds2.cli import app
from ds2.data import read_manifest
from ds2.grammar import generate_sentences
from ds2.text import Alphabet

REPO = Path(__file__).resolve().parent.parent
# seconds; each recipe takes 1-3 min on 2 cores, many more when other jobs hold the cores (the
# recipes run nice'd): DS2_RECIPE_TIMEOUT raises it there
RECIPE_TIMEOUT = int(os.environ.get("DS2_RECIPE_TIMEOUT", 900))

# A model small enough to train for a few steps in seconds; the recipes' own options come
# first, so these (given last) win.
TINY_TRAIN = ("--conv-layers 1 --conv-channels 4 --conv-kernels 41x11 --conv-strides 2x2 --rnn-layers 1 "
              "--rnn-hidden 16 --fc-hidden 16 --num-workers 0 --checkpoint-every 0 --log-every 1 "
              "--optimizer adam --lr 3e-3 --no-dry-run --augment-from-epoch 1")
# The recipes augment by default: few, short generated noises and few rooms keep it quick; the
# one epoch is augmented (--augment-from-epoch 1 above; the recipes leave the first clean).
SMALL_AUGMENT = ["--noise-opts", "--kinds white,babble --train-clips 1 --test-clips 1 --clip-seconds 3",
                 "--rir-opts", "--train-rooms 2 --test-rooms 1"]
SMALL_RUN = ["--epochs", "1", "--batch-size", "4", "--threads", "1", "--device", "cpu", "--jobs", "1",
             "--beam-width", "4", "--train-opts", TINY_TRAIN, "--decode-opts", "--num-workers 0", *SMALL_AUGMENT]

FRENCH = [
    "Le garçon mange une pomme.", "Où est la gare, s'il vous plaît ?", "Ma sœur habite à Genève.",
    "L'été dernier était très chaud.", "Nous allons à la plage demain.", "Il a déjà fini son café.",
    "Elle préfère le thé au café.", "Le château est près de la forêt.", "Les élèves écoutent le maître.",
    "La fenêtre est ouverte.", "Quelle heure est-il ?", "Le chien dort sous la table.",
    "Nous avons visité le musée.", "C'est un beau jour d'hiver.", "Le bœuf est dans le pré.",
    "Ça fait longtemps, mon ami.", "Les enfants jouent dans la cour.", "Il pleut depuis ce matin.",
    "Je lis un livre très intéressant.", "La rivière coule vers la mer.",
]
CV_HEADER_NEW = ["client_id", "path", "sentence_id", "sentence", "sentence_domain", "up_votes", "down_votes", "age",
                 "gender", "accents", "variant", "locale", "segment"]
CV_HEADER_OLD = ["client_id", "path", "sentence", "up_votes", "down_votes", "age", "gender", "accent", "locale",
                 "segment"]


def speech(text: str, voice: str, rate: int = 190) -> np.ndarray:
    """eSpeak NG speech of ``text``, float32 at audio.SAMPLE_RATE, shape = (n_samples,)."""
    return espeak.synthesize(text, voice, rate=rate, pitch=50).numpy()


# --------------------------------------------------------------------------- fake trees


def librispeech_tree(root: Path) -> dict[str, int]:
    """A LibriSpeech/ folder: two training subsets (train-clean-360 absent), the four evaluation
    sets; one transcript line of train-clean-100 has no audio. Returns utterances per subset
    (good ones)."""
    rng = random.Random(0)
    layout = {  # subset: [(speaker, chapter, utterances, voice)]
        "train-clean-100": [(19, 198, 5, "en-us+m3"), (26, 495, 5, "en+f2")],
        "train-other-500": [(20, 205, 4, "en-us+f2")],
        "dev-clean": [(84, 121123, 3, "en-us+m1")],
        "dev-other": [(116, 288045, 2, "en+m2")],
        "test-clean": [(121, 127105, 2, "en-us+f4")],
        "test-other": [(367, 130732, 2, "en-gb-x-rp+f5")],
    }
    n_sentences = sum(n for chapters in layout.values() for _, _, n, _ in chapters)
    sentences = iter(generate_sentences(n_sentences, rng, 2, 5))
    counts = {}
    for subset, chapters in layout.items():
        counts[subset] = 0
        for speaker, chapter, n_utterances, voice in chapters:
            folder = root / subset / str(speaker) / str(chapter)
            folder.mkdir(parents=True)
            lines = []
            for index in range(n_utterances):
                utterance = f"{speaker}-{chapter}-{index:04d}"
                text = next(sentences).upper()
                soundfile.write(folder / f"{utterance}.flac", speech(text.lower(), voice), audio.SAMPLE_RATE)
                lines.append(f"{utterance} {text}")
                counts[subset] += 1
            if subset == "train-clean-100" and speaker == 19:
                lines.append(f"{speaker}-{chapter}-{n_utterances:04d} A LINE WHOSE AUDIO IS MISSING")
            (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return counts


def _write_tsv(path: Path, header: list[str], rows: list[dict]) -> None:
    lines = ["\t".join(header)] + ["\t".join(row.get(column, "") for column in header) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def commonvoice_tree(root: Path, n_train: int = 12, n_dev: int = 4, n_test: int = 4,
                     dev_sentence: str | None = None) -> dict:
    """A Common Voice language folder (French): clips/*.mp3 at 48 kHz, train.tsv in the newer
    column order and dev/test.tsv in the older one, validated.tsv. train.tsv also lists a clip that
    is not in clips/ and a row with an empty sentence. Returns the good rows per split."""
    clips = root / "clips"
    clips.mkdir(parents=True)
    sentences = iter(FRENCH * 2)
    plan = {"train": (n_train, ["a1" * 16, "b2" * 16], ("fr+m3", "fr+f2")),
            "dev": (n_dev, ["c3" * 16], ("fr+m1",)), "test": (n_test, ["d4" * 16], ("fr+f4",))}
    rows, clip_number = {}, 1000
    for split, (count, speakers, voices) in plan.items():
        rows[split] = []
        for index in range(count):
            clip_number += 1
            sentence = next(sentences)
            if split == "dev" and index == 0 and dev_sentence:
                sentence = dev_sentence
            name = f"common_voice_fr_{clip_number}.mp3"
            waveform = audio.resample(espeak.synthesize(sentence, voices[index % len(voices)], 180, 50),
                                      audio.SAMPLE_RATE, 48000)
            soundfile.write(clips / name, waveform.numpy(), 48000, format="MP3")
            rows[split].append({"client_id": speakers[index % len(speakers)], "path": name, "sentence": sentence,
                                "sentence_id": f"{clip_number:x}", "up_votes": "2", "down_votes": "0",
                                "locale": "fr"})
    bad = [{"client_id": "a1" * 16, "path": "common_voice_fr_9999.mp3", "sentence": "Ce fichier manque.",
            "locale": "fr"},
           {"client_id": "b2" * 16, "path": rows["train"][0]["path"].replace("1001", "1000"), "sentence": "",
            "locale": "fr"}]
    soundfile.write(clips / bad[1]["path"], audio.resample(espeak.synthesize("rien", "fr", 180, 50),
                                                           audio.SAMPLE_RATE, 48000).numpy(), 48000, format="MP3")
    _write_tsv(root / "train.tsv", CV_HEADER_NEW, rows["train"][:3] + bad[:1] + rows["train"][3:] + bad[1:])
    _write_tsv(root / "dev.tsv", CV_HEADER_OLD, rows["dev"])
    _write_tsv(root / "test.tsv", CV_HEADER_OLD, rows["test"])
    _write_tsv(root / "validated.tsv", CV_HEADER_NEW, rows["train"] + rows["dev"] + rows["test"])
    return rows


def run_recipe(name: str, *args) -> tuple[str, float]:
    """bash recipes/NAME/run.sh ARGS (nice'd); (its output, seconds). Fails with the output's tail."""
    command = ["nice", "-n", "19", "bash", str(REPO / "recipes" / name / "run.sh"), *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=RECIPE_TIMEOUT)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    return output, time.perf_counter() - started


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def assert_augmented(exp: Path, data: Path, output: str) -> None:
    """Training read the recipe's noise and rooms (made once in DATA, test noises apart)."""
    augment = load_checkpoint(exp / "last.pt")["training"]["config"]["augment"]
    assert Path(augment["noise"]).resolve() == (data / "noise" / "train.json").resolve(), augment
    assert Path(augment["rir"]).resolve() == (data / "rirs" / "train.json").resolve(), augment
    assert (augment["noise_prob"], augment["reverb_prob"]) == (0.4, 0.2)
    train_noises = {r["audio_filepath"] for r in _lines(data / "noise" / "train.json")}
    test_noises = {r["audio_filepath"] for r in _lines(data / "noise" / "test.json")}
    assert train_noises and test_noises and not train_noises & test_noises
    assert "augmentation: --noise" in output


def assert_scored(exp: Path, sets: list[str], manifests: dict[str, Path]) -> None:
    """Greedy and LM scores of every set, on all its utterances; a results table row each."""
    for name in sets:
        for kind in ("", "lm_"):
            scores = json.loads((exp / f"score_{kind}{name}.json").read_text())
            assert scores["n_utterances"] == len(_lines(manifests[name])), (kind, name)
            assert 0 <= scores["wer"] and 0 <= scores["cer"], scores
            assert scores["words"]["n_ref"] == sum(len(r["text"].split()) for r in _lines(manifests[name]))
        hypotheses = _lines(exp / f"decode_lm_{name}.json")
        assert all(isinstance(h["pred_text"], str) for h in hypotheses)
    table = (exp / "results.md").read_text().splitlines()
    assert [row.split("|")[1].strip() for row in table[2:2 + len(sets)]] == sets
    tuned = json.loads((exp / "decoding.json").read_text())
    assert {"alpha", "beta"} <= set(tuned) and tuned["beam_width"] == 4
    assert f"alpha={tuned['alpha']}" in table[-1]


# --------------------------------------------------------------------------- the recipes


@pytest.mark.slow
def test_librispeech_recipe_all_stages(tmp_path):
    counts = librispeech_tree(tmp_path / "LibriSpeech")
    lm_text = tmp_path / "librispeech-lm-norm.txt.gz"  # the LM corpus's form: upper case, gzip
    lm_sentences = generate_sentences(300, random.Random(1), 3, 12)
    with gzip.open(lm_text, "wt", encoding="utf-8") as handle:
        handle.write("".join(sentence.upper() + "\n" for sentence in lm_sentences))
    data, exp = tmp_path / "data", tmp_path / "exp"
    output, seconds = run_recipe("librispeech", "--corpus", tmp_path / "LibriSpeech", "--lm-text", lm_text,
                                 "--data", data, "--exp", exp, "--lm-order", 3, "--nproc-per-node", 2, *SMALL_RUN)
    print(f"librispeech recipe: {seconds:.0f} s")

    # stage 1: a manifest per subset present, the training subsets together, the bad line rejected
    assert "train-clean-360: not in" in output
    for subset, count in counts.items():
        assert len(_lines(data / f"{subset}.json")) == count, subset
    rejects = _lines(data / "train-clean-100.rejects.json")
    assert len(rejects) == 1 and "19-198.trans.txt:6: audio file" in rejects[0]["reason"]
    train = _lines(data / "train.json")
    assert len(train) == counts["train-clean-100"] + counts["train-other-500"]
    assert all(r["text"] == r["text"].lower() and r["duration"] > 0.3 for r in train)
    # stage 2: the LM from the LM text, lower-cased into the alphabet
    assert (data / "lm" / "text.txt").read_text().splitlines() == lm_sentences and (data / "lm" / "lm.bin").exists()
    # stage 3: two ranks (torchrun), the DS2 layout overridden by the tiny one, one epoch
    run = json.loads((exp / "run.json").read_text())
    assert run["world_size"] == 2, run
    assert (exp / "best.pt").exists() and (exp / "last.pt").exists()
    assert_augmented(exp, data, output)
    # stages 4-6
    sets = ["dev-clean", "dev-other", "test-clean", "test-other"]
    assert_scored(exp, sets, {name: data / f"{name}.json" for name in sets})
    assert "Successfully finished" in output

    # a rerun skips every stage
    output, _ = run_recipe("librispeech", "--data", data, "--exp", exp, *SMALL_RUN)
    assert all(f"Stage {n}: already done" in output for n in range(1, 7)), output
    # without --lm-text, the LM is the training transcripts'
    data_2 = tmp_path / "data_2"
    data_2.mkdir()
    for manifest in data.glob("*.json"):
        shutil.copy(manifest, data_2)
    run_recipe("librispeech", "--data", data_2, "--exp", exp, "--stage", 2, "--stop-stage", 2, "--lm-order", 3)
    assert sorted((data_2 / "lm" / "text.txt").read_text().splitlines()) == sorted(r["text"] for r in train)


@pytest.mark.slow
def test_commonvoice_recipe_all_stages(tmp_path):
    rows = commonvoice_tree(tmp_path / "fr", dev_sentence=FRENCH[3])  # a training sentence, kept out of the LM
    data, exp = tmp_path / "data", tmp_path / "exp"
    output, seconds = run_recipe("commonvoice", "--corpus", tmp_path / "fr", "--data", data, "--exp", exp,
                                 "--lm-order", 3, *SMALL_RUN)
    print(f"commonvoice recipe: {seconds:.0f} s")

    # stage 1: the good rows of each split, in 16 kHz FLAC; the two bad rows rejected, with reasons
    for split in ("train", "dev", "test"):
        records = list(read_manifest(data / f"{split}.json"))
        assert len(records) == len(rows[split]), split
        assert all(r["audio_filepath"].endswith(".flac") and soundfile.info(r["audio_filepath"]).samplerate == 16000
                   for r in records)
    reasons = [r["reason"] for r in _lines(data / "train.rejects.json")]
    assert len(reasons) == 2 and "train.tsv:5: audio file" in reasons[0] and "train.tsv:15: empty transcript" in reasons[1]
    alphabet = Alphabet.load(data / "alphabet.json")
    assert {"é", "è", "ç", "œ", "à", "ê", "'"} <= set(alphabet.symbols) and "," not in alphabet.symbols
    # stage 2: the LM of the training sentences but the one dev has too; stage 3: the model of the alphabet
    train_texts = [r["text"] for r in read_manifest(data / "train.json")]
    in_dev = "l'été dernier était très chaud"
    assert in_dev in train_texts
    assert (data / "lm" / "text.txt").read_text().splitlines() == [text for text in train_texts if text != in_dev]
    assert "sœur" in (data / "lm" / "unigrams.txt").read_text().split()
    assert (exp / "best.pt").exists()
    assert load_checkpoint(exp / "best.pt")["model_config"]["alphabet"] == list(alphabet.symbols)
    assert_augmented(exp, data, output)
    assert_scored(exp, ["dev", "test"], {name: data / f"{name}.json" for name in ("dev", "test")})
    assert "Successfully finished" in output


# --------------------------------------------------------------------------- ds2 prepare commonvoice


@pytest.fixture
def cli(restore_logging):
    runner = CliRunner()

    def invoke(*args):
        result = runner.invoke(app, [str(a) for a in args])
        return result.exit_code, result.output

    return invoke


def test_prepare_commonvoice(tmp_path, cli):
    rows = commonvoice_tree(tmp_path / "fr", n_train=6, n_dev=2, n_test=1, dev_sentence="Voilà ñandú, cher ami.")
    code, output = cli("prepare", "commonvoice", tmp_path / "fr", tmp_path / "data", "--jobs", 2)
    assert code == 0, output
    assert "train: " in output and "6 utterances" in output and "2 rejected" in output

    train = list(read_manifest(tmp_path / "data" / "train.json"))
    # read by header name: train.tsv (newer columns) and dev.tsv (older order) give the same fields
    assert [r["text"] for r in train] == [Alphabet.normalize(row["sentence"]) for row in rows["train"]]
    assert train[2]["text"] == "ma sœur habite à genève"  # accents and œ kept, lower case, punctuation gone
    assert train[1]["text"] == "où est la gare s'il vous plaît"  # the apostrophe kept
    assert {r["speaker"] for r in train} == {"a1" * 16, "b2" * 16}
    for record, row in zip(train, rows["train"]):  # converted once: 16 kHz FLAC of the mp3's length
        mp3 = soundfile.info(tmp_path / "fr" / "clips" / row["path"])
        assert Path(record["audio_filepath"]).name == row["path"].replace(".mp3", ".flac")
        assert soundfile.info(record["audio_filepath"]).samplerate == audio.SAMPLE_RATE
        assert record["duration"] == pytest.approx(mp3.frames / mp3.samplerate, abs=0.03)
    # relative to the manifest: the data folder can be moved
    assert _lines(tmp_path / "data" / "train.json")[0]["audio_filepath"].startswith("clips/")

    rejects = _lines(tmp_path / "data" / "train.rejects.json")
    assert [r["reason"] for r in rejects] == [
        f"{tmp_path / 'fr' / 'train.tsv'}:5: audio file {tmp_path / 'fr' / 'clips' / 'common_voice_fr_9999.mp3'} not found",
        f"{tmp_path / 'fr' / 'train.tsv'}:9: empty transcript",
    ]
    assert _lines(tmp_path / "data" / "dev.rejects.json") == []

    # the alphabet is the training sentences'; dev keeps its sentence with letters train never had
    alphabet = json.loads((tmp_path / "data" / "alphabet.json").read_text(encoding="utf-8"))
    assert alphabet[0] == " " and {"œ", "é", "ç", "à", "'"} <= set(alphabet) and "ñ" not in alphabet
    dev = [r["text"] for r in read_manifest(tmp_path / "data" / "dev.json")]
    assert dev[0] == "voilà ñandú cher ami"
    assert "outside the training alphabet" in output and "'ñ'" in output
    assert "speakers (client_id) in both" not in output

    # a rerun reuses the converted clips (same manifest), and keeps the mp3s with --audio-format none
    before = (tmp_path / "data" / "train.json").read_text()
    assert cli("prepare", "commonvoice", tmp_path / "fr", tmp_path / "data")[0] == 0
    assert (tmp_path / "data" / "train.json").read_text() == before
    code, output = cli("prepare", "commonvoice", tmp_path / "fr", tmp_path / "mp3", "--audio-format", "none")
    assert code == 0, output
    assert all(r["audio_filepath"].endswith(".mp3") for r in read_manifest(tmp_path / "mp3" / "train.json"))
    assert not (tmp_path / "mp3" / "clips").exists()


def test_prepare_commonvoice_bad_tsvs(tmp_path, cli):
    root = tmp_path / "fr"
    commonvoice_tree(root, n_train=3, n_dev=1, n_test=1)
    lines = (root / "train.tsv").read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    # a row with a field too many and a clip listed twice are rejects, naming the line
    (root / "train.tsv").write_text("\n".join(lines + [lines[1] + "\textra", lines[2]]) + "\n", encoding="utf-8")
    code, output = cli("prepare", "commonvoice", root, tmp_path / "data")
    assert code == 0, output
    reasons = [r["reason"] for r in _lines(tmp_path / "data" / "train.rejects.json")]
    assert f"{root / 'train.tsv'}:7: {len(header) + 1} tab-separated fields, the header has {len(header)}" in reasons
    assert f"{root / 'train.tsv'}:8: clip {lines[2].split(chr(9))[1]} is already listed on line 3" in reasons

    # a speaker in train and dev: said, since Common Voice's own splits never do it
    dev_rows = (root / "dev.tsv").read_text(encoding="utf-8").replace("c3" * 16, "a1" * 16)
    (root / "dev.tsv").write_text(dev_rows, encoding="utf-8")
    code, output = cli("prepare", "commonvoice", root, tmp_path / "data")
    assert code == 0 and "speakers (client_id) in both train and dev: 1; dev does not measure" in output, output

    # no sentence column: one clear error naming the file
    (root / "dev.tsv").write_text("client_id\tpath\ttext\nx\ty.mp3\thello\n", encoding="utf-8")
    code, output = cli("prepare", "commonvoice", root, tmp_path / "data2")
    assert code == 1 and f"error: {root / 'dev.tsv'}: no 'sentence' column in the header line" in output, output
    # a missing split
    (root / "test.tsv").unlink()
    code, output = cli("prepare", "commonvoice", root, tmp_path / "data3", "--splits", "train,test")
    assert code == 1 and f"{root / 'test.tsv'}: not found" in output, output
    code, output = cli("prepare", "commonvoice", root, tmp_path / "data3", "--splits", "train", "--audio-format", "mp3")
    assert code == 1 and "audio format must be flac or wav (or none: keep the clips), got 'mp3'" in output, output
