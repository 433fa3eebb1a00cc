import inspect
import json
import os
import random
import stat

import numpy as np
import pytest
import torch

from conftest import noise_burst, sweep, write_audio
from ds2 import audio
from ds2.data import (
    Batch,
    BatchCost,
    Bucketing,
    Example,
    ManifestError,
    SortaGradSampler,
    SpeechDataset,
    collate,
    epoch_batch_order,
    make_batches,
    read_manifest,
    write_manifest,
)
from ds2.text import Alphabet


def _lines(path, records):
    """Write manifest lines as given: dicts as JSON, strings verbatim."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((json.dumps(r) if isinstance(r, dict) else r) + "\n" for r in records), encoding="utf-8")
    return path


def _record(name="a.wav", duration=1.0, text="hello", **extra):
    return {"audio_filepath": name, "duration": duration, "text": text, **extra}


# --------------------------------------------------------------------------- read_manifest


def test_read_manifest_is_lazy(tmp_path):
    path = _lines(tmp_path / "m.json", [_record("a.wav"), _record("b.wav"), "{not json"])
    records = read_manifest(path)
    assert inspect.isgenerator(records)
    assert next(records)["line"] == 1
    assert next(records)["line"] == 2  # line 3 is broken, but not read yet
    with pytest.raises(ManifestError, match=f"^{path}:3: invalid JSON"):
        next(records)


@pytest.mark.parametrize(
    "bad_line, reason",
    [
        ("{not json", "invalid JSON"),
        ('["a list"]', "expected a JSON object"),
        (json.dumps({"audio_filepath": "a.wav", "text": "hi"}), "missing field(s) duration"),
        (json.dumps({"duration": 1.0}), "missing field(s) audio_filepath, text"),
        (json.dumps(_record(duration="long")), "duration/offset must be numbers"),
        (json.dumps(_record(duration=None)), "duration/offset must be numbers"),
        (json.dumps(_record(duration=-1.0)), "bad duration"),
        (json.dumps(_record(duration=0)), "bad duration"),
        ('{"audio_filepath": "a.wav", "duration": NaN, "text": "hi"}', "bad duration"),
        ('{"audio_filepath": "a.wav", "duration": Infinity, "text": "hi"}', "bad duration"),
        (json.dumps(_record(offset=-0.5)), "bad duration"),
        ('{"audio_filepath": "a.wav", "duration": 1, "offset": NaN, "text": "hi"}', "bad duration"),
        (json.dumps(_record(text=42)), "text must be a string"),
    ],
)
def test_read_manifest_names_path_and_line(tmp_path, bad_line, reason):
    # A blank line still counts: the number is the line an editor shows.
    path = _lines(tmp_path / "m.json", [_record(), "", bad_line])
    with pytest.raises(ManifestError) as error:
        list(read_manifest(path))
    assert str(error.value).startswith(f"{path}:3: ")
    assert reason in str(error.value)


def test_read_manifest_missing_file(tmp_path):
    with pytest.raises(ManifestError, match="manifest not found"):
        list(read_manifest(tmp_path / "nope.json"))


def test_read_manifest_values_and_extra_fields(tmp_path):
    path = _lines(tmp_path / "m.json", [_record(duration="2.5", offset="0.5", speaker="s1")])
    (record,) = read_manifest(path)
    assert record["duration"] == 2.5 and record["offset"] == 0.5  # numbers, not strings
    assert record["speaker"] == "s1"
    assert record["line"] == 1


def test_relative_paths_resolve_against_the_manifest_folder(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus"
    absolute = tmp_path / "elsewhere" / "c.wav"
    path = _lines(corpus / "m.json", [_record("wav/a.wav"), _record("../b.wav"), _record(str(absolute))])
    monkeypatch.chdir(tmp_path)  # not the manifest's folder
    paths = [record["audio_filepath"] for record in read_manifest(os.path.relpath(path))]
    assert paths == [str(corpus / "wav" / "a.wav"), str(tmp_path / "b.wav"), str(absolute)]
    unresolved = [record["audio_filepath"] for record in read_manifest(path, resolve_paths=False)]
    assert unresolved == ["wav/a.wav", "../b.wav", str(absolute)]


# --------------------------------------------------------------------------- write_manifest


def test_write_manifest_stores_paths_relative_to_the_manifest(tmp_path):
    corpus = tmp_path / "corpus"
    outside = tmp_path / "other" / "c.wav"
    records = [
        {**_record(str(corpus / "wav" / "a.wav")), "line": 7},
        _record(str(outside), pred_text="x"),
    ]
    path = corpus / "m.json"
    assert write_manifest(path, iter(records)) == 2
    stored = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert stored[0] == _record("wav/a.wav")  # relative, and "line" dropped
    assert stored[1] == _record(str(outside), pred_text="x")  # outside the folder: kept absolute
    assert [r["audio_filepath"] for r in read_manifest(path)] == [str(corpus / "wav" / "a.wav"), str(outside)]


def test_write_manifest_keeps_non_ascii_text(tmp_path):
    path = tmp_path / "m.json"
    write_manifest(path, [_record(text="gr\u00f6\u00dfe \u4e16\u754c")])
    assert "gr\u00f6\u00dfe \u4e16\u754c" in path.read_text(encoding="utf-8")
    assert next(read_manifest(path))["text"] == "gr\u00f6\u00dfe \u4e16\u754c"


def _failing_records(n_good):
    for i in range(n_good):
        yield _record(f"new{i}.wav")
    raise RuntimeError("disk on fire")


def test_write_manifest_is_atomic(tmp_path):
    path = tmp_path / "m.json"
    write_manifest(path, [_record("old.wav")])
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_manifest(path, _failing_records(3))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]  # no temporary file left


def test_failed_first_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        write_manifest(tmp_path / "sub" / "m.json", _failing_records(2))
    assert list((tmp_path / "sub").iterdir()) == []


def test_written_files_get_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    path = tmp_path / "m.json"
    write_manifest(path, [_record()])
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600


# --------------------------------------------------------------------------- batching


DURATIONS = [round(d, 2) for d in np.random.default_rng(0).uniform(0.3, 8.0, 60)] + [2.0, 2.0, 2.0]  # ties too


@pytest.mark.parametrize("batch_seconds, batch_size", [(12.0, 4), (30.0, 8), (float("inf"), 5), (5.0, 100)])
def test_make_batches(batch_seconds, batch_size):
    batches = make_batches(DURATIONS, batch_seconds, batch_size)
    assert sorted(i for batch in batches for i in batch) == list(range(len(DURATIONS)))  # each once
    for batch in batches:
        longest = max(DURATIONS[i] for i in batch)
        assert len(batch) <= batch_size
        assert len(batch) == 1 or len(batch) * longest <= batch_seconds
    # Sorted by length: every batch's utterances are no longer than the next batch's.
    for batch, following in zip(batches, batches[1:]):
        assert max(DURATIONS[i] for i in batch) <= min(DURATIONS[i] for i in following)
    # Greedy: no batch could have taken the next utterance.
    for batch, following in zip(batches, batches[1:]):
        newcomer = min(following, key=lambda i: (DURATIONS[i], i))
        assert len(batch) + 1 > batch_size or (len(batch) + 1) * DURATIONS[newcomer] > batch_seconds


def test_make_batches_without_a_seconds_limit_fills_to_batch_size():
    batches = make_batches(DURATIONS, float("inf"), 8)
    assert [len(b) for b in batches] == [8] * 7 + [len(DURATIONS) - 56]


def test_make_batches_long_utterance_gets_its_own_batch():
    assert make_batches([1.0, 1.0, 20.0, 1.0], 4.0, 10) == [[0, 1, 3], [2]]
    assert make_batches([], 4.0, 10) == []


def test_the_cost_counts_padded_audio_and_the_ctc_lattice():
    assert BatchCost()(4, 2.5, 300) == 10.0  # padded audio only
    cost = BatchCost(ctc_seconds_per_cell=1e-4, time_stride=2)
    steps = -(-audio.duration_to_frames(2.5) // 2)  # 126 output steps
    assert cost(4, 2.5, 10) == pytest.approx(4 * (2.5 + 1e-4 * steps * 21))
    assert cost(4, 2.5, 100) - cost(4, 2.5, 10) == pytest.approx(4 * 1e-4 * steps * 180)


def test_long_transcripts_make_smaller_minibatches():
    durations = [5.0] * 40
    labels = [10] * 20 + [200] * 20  # the same audio; half of it a fast talker's (251 output steps)
    cost = BatchCost(ctc_seconds_per_cell=2e-5, time_stride=2)  # about the tests' model (tests/test_train.py)
    # an utterance costs 5 s + 2e-5 x 251 x 21 = 5.1 s with 10 labels, 5 s + 2e-5 x 251 x 401 = 7.0 s with 200
    batches = make_batches(durations, 50.0, 32, labels, cost)
    assert [len(batch) for batch in batches] == [9, 9, 7, 7, 7, 1]  # the third: 2 short transcripts, 5 long
    assert [len(batch) for batch in make_batches(durations, 50.0, 32, labels)] == [10] * 4  # padded audio alone
    for batch, following in zip(batches, batches[1:]):  # greedy, and within the budget
        longest, most = max(durations[i] for i in batch), max(labels[i] for i in batch)
        assert cost(len(batch), longest, most) <= 50.0
        newcomer = following[0]
        assert cost(len(batch) + 1, max(longest, durations[newcomer]), max(most, labels[newcomer])) > 50.0


def _composition(batches):
    return sorted(sorted(batch) for batch in batches)


@pytest.mark.parametrize("sortagrad", [True, False])
def test_each_epoch_after_the_first_is_cut_anew_with_jitter(sortagrad):
    labels = [int(12 * d) for d in DURATIONS]
    bucketing = Bucketing(DURATIONS, 8, 30.0, labels, BatchCost(2e-5, 2), seed=3, sortagrad=sortagrad, jitter=0.1)
    sorted_batches = make_batches(DURATIONS, 30.0, 8, labels, BatchCost(2e-5, 2))
    epochs = {epoch: bucketing.batches(epoch) for epoch in range(4)}
    if sortagrad:  # SortaGrad's first epoch: sorted, cut by the budget, by increasing length
        assert epochs[0] == sorted_batches
    else:
        assert _composition(epochs[0]) != _composition(sorted_batches)
    for epoch in (1, 2, 3):
        assert _composition(epochs[epoch]) != _composition(sorted_batches)
        assert _composition(epochs[epoch]) not in [_composition(epochs[e]) for e in range(epoch)]
    for batches in epochs.values():
        assert sorted(i for batch in batches for i in batch) == list(range(len(DURATIONS)))  # each once
        for batch in batches:
            assert len(batch) <= 8 and (len(batch) == 1 or bucketing.cost_of(batch) <= 30.0)
            assert [DURATIONS[i] for i in batch] == sorted(DURATIONS[i] for i in batch)  # dealt out by length
    # a pure function of (durations, options, seed, epoch): the global random state does not matter
    random.seed(99)
    torch.manual_seed(99)
    again = Bucketing(list(DURATIONS), 8, 30.0, labels, BatchCost(2e-5, 2), seed=3, sortagrad=sortagrad, jitter=0.1)
    assert all(again.batches(epoch) == batches for epoch, batches in epochs.items())
    other_seed = Bucketing(DURATIONS, 8, 30.0, labels, BatchCost(2e-5, 2), seed=4, sortagrad=sortagrad, jitter=0.1)
    assert other_seed.batches(2) != epochs[2]


def test_without_jitter_every_epoch_has_the_same_minibatches_in_a_new_order():
    bucketing = Bucketing(DURATIONS, 5, 20.0, seed=2)
    batches = make_batches(DURATIONS, 20.0, 5)
    for epoch in range(3):
        assert bucketing.batches(epoch) == [batches[i] for i in epoch_batch_order(len(batches), epoch, seed=2)]
    with pytest.raises(ValueError, match="jitter"):
        Bucketing(DURATIONS, 5, jitter=1.0)


def test_jitter_keeps_the_padding_small():
    durations = [round(d, 3) for d in np.random.default_rng(1).uniform(1.0, 10.0, 2000)]
    def padding(batches):
        padded = sum(len(batch) * max(durations[i] for i in batch) for batch in batches)
        return 1 - sum(durations) / padded
    bucketing = Bucketing(durations, 16, jitter=0.05)
    assert padding(bucketing.batches(0)) < 0.01
    assert 0.01 < padding(bucketing.batches(1)) < 0.06  # a random order of lengths would pad about 40 %


def test_epoch_batch_order_sortagrad():
    assert epoch_batch_order(10, epoch=0, seed=1) == list(range(10))
    shuffled = epoch_batch_order(10, epoch=0, seed=1, sortagrad=False)
    assert sorted(shuffled) == list(range(10)) and shuffled != list(range(10))


def test_epoch_batch_order_depends_on_seed_and_epoch_only():
    n = 40
    orders = {(seed, epoch): epoch_batch_order(n, epoch, seed) for seed in (0, 1) for epoch in (1, 2, 3)}
    for order in orders.values():
        assert sorted(order) == list(range(n))
    assert len({tuple(order) for order in orders.values()}) == len(orders)  # all different
    random.seed(123)
    random.shuffle(list(range(10)))  # global random state must not matter
    torch.manual_seed(5)
    assert epoch_batch_order(n, 2, 1) == orders[1, 2]
    assert epoch_batch_order(n, 2, 1, sortagrad=False) == orders[1, 2]  # sortagrad only changes epoch 0


@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
def test_the_sampler_deals_every_minibatch_out_to_the_ranks(world_size):
    bucketing = Bucketing(DURATIONS, 6, seed=4, jitter=0.1)  # 10 of 6 and one of 3 (fewer than 8 ranks)
    samplers = [SortaGradSampler(bucketing, rank=rank, world_size=world_size) for rank in range(world_size)]
    for epoch in (0, 1, 2):
        for sampler in samplers:
            sampler.set_epoch(epoch)
        shards = [list(sampler) for sampler in samplers]
        expected = bucketing.batches(epoch)
        assert all(len(rank_shards) == len(expected) == len(sampler) for rank_shards, sampler in zip(shards, samplers))
        for step, batch in enumerate(expected):
            parts = [[item[0] for item in rank_shards[step]] for rank_shards in shards]
            assert sorted(i for part in parts for i in part) == sorted(batch)  # disjoint, nothing lost
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
            # every item carries the epoch and the global batch's first utterance (augmentation seeds)
            assert all(item[1:] == (epoch, batch[0]) for rank_shards in shards for item in rank_shards[step])
            # neighbours in length: no rank's longest is further from the batch's longest than
            # the batch's spread of world_size utterances
            lengths = sorted(DURATIONS[i] for i in batch)
            for part in parts:
                if part:
                    assert max(DURATIONS[i] for i in part) >= lengths[max(0, len(lengths) - world_size)]
    # SortaGrad's first epoch goes by increasing length on every rank
    samplers[0].set_epoch(0)
    firsts = [DURATIONS[shard[0][0]] for shard in samplers[0]]
    assert firsts == sorted(firsts)


def test_the_sampler_resumes_inside_an_epoch():
    bucketing = Bucketing(DURATIONS, 4, seed=1, jitter=0.1)
    sampler = SortaGradSampler(bucketing, rank=1, world_size=2)
    sampler.set_epoch(3)
    whole = list(sampler)
    resumed = SortaGradSampler(bucketing, rank=1, world_size=2)  # a new process
    resumed.set_epoch(3, start=5)
    assert list(resumed) == whole[5:] and len(resumed) == len(whole) - 5
    with pytest.raises(ValueError, match="rank 2 is not one of 2 ranks"):
        SortaGradSampler(bucketing, rank=2, world_size=2)


# --------------------------------------------------------------------------- dataset


@pytest.fixture
def corpus(tmp_path):
    """Three short utterances, the middle one unreadable; a manifest with relative paths."""
    write_audio(tmp_path / "wav" / "a.wav", sweep(0.5, 16000), 16000)
    (tmp_path / "wav" / "b.wav").write_bytes(np.random.default_rng(0).bytes(2000))
    write_audio(tmp_path / "wav" / "c.wav", noise_burst(0.8, 8000), 8000)
    return _lines(
        tmp_path / "m.json",
        [_record("wav/a.wav", 0.5, "Hi there"), _record("wav/b.wav", 0.6, "broken"), _record("wav/c.wav", 0.8, "ok")],
    )


def test_dataset_item_is_features_and_labels(corpus):
    dataset = SpeechDataset(corpus, Alphabet())
    example = dataset[0]
    assert isinstance(example, Example)
    assert example.features.shape == (audio.N_FREQ, audio.n_frames(8000))
    assert example.labels.tolist() == Alphabet().encode("hi there")
    assert example.index == 0
    assert dataset.durations == [0.5, 0.6, 0.8]


def test_unreadable_file_gives_index_and_message(corpus):
    dataset = SpeechDataset(corpus, Alphabet())
    index, message = dataset[1]
    assert index == 1
    assert message.startswith(f"{corpus}:2: ")
    assert "b.wav" in message


def test_collate_batches_the_rest_and_reports_failures(corpus):
    dataset = SpeechDataset(corpus, Alphabet())
    batch = collate([dataset[i] for i in range(3)])
    assert isinstance(batch, Batch)
    assert batch.indices == [0, 2] and len(batch) == 2
    assert [index for index, _ in batch.failures] == [1]
    frames = [audio.n_frames(8000), audio.n_frames(12800)]
    assert batch.features.shape == (2, audio.N_FREQ, max(frames))
    assert batch.feature_lengths.tolist() == frames
    torch.testing.assert_close(batch.features[0, :, : frames[0]], dataset[0].features)
    assert (batch.features[0, :, frames[0] :] == 0).all()
    alphabet = Alphabet()
    assert batch.label_lengths.tolist() == [8, 2]
    assert batch.labels.tolist() == [alphabet.encode("hi there"), alphabet.encode("ok") + [0] * 6]


def test_collate_of_failures_only(corpus):
    dataset = SpeechDataset(corpus, Alphabet())
    batch = collate([dataset[1]])
    assert len(batch) == 0 and batch.features.shape[0] == 0
    assert batch.failures == [dataset[1]]


def test_missing_audio_file_is_a_failure_not_a_crash(tmp_path):
    manifest = _lines(tmp_path / "m.json", [_record("gone.wav")])
    index, message = SpeechDataset(manifest, Alphabet())[0]
    assert index == 0 and "gone.wav: file not found" in message


def test_segment_with_offset_is_read(tmp_path):
    write_audio(tmp_path / "long.wav", sweep(2.0, 16000), 16000)
    manifest = _lines(tmp_path / "m.json", [_record("long.wav", 0.5, "hi", offset=1.0)])
    example = SpeechDataset(manifest, Alphabet())[0]
    assert example.features.shape[1] == audio.duration_to_frames(0.5)


def test_dataset_skips_unusable_texts_with_path_and_line(tmp_path):
    manifest = _lines(
        tmp_path / "m.json",
        [
            _record(text="Good, text!"),
            _record(text="caf\u00e9"),
            _record(text=""),
            _record(text="... !"),
            _record(text="room 101"),
            _record(duration=30.0, text="too long"),
            _record(text="also good"),
        ],
    )
    dataset = SpeechDataset(manifest, Alphabet(), max_duration=20.0)
    assert len(dataset) == 2
    assert [record["labels"] for record in dataset.records] == [Alphabet().encode(t) for t in ("good text", "also good")]
    assert len(dataset.skipped) == 5
    expected = [(2, "'\u00e9'"), (3, "empty transcript"), (4, "empty transcript"), (5, "'0', '1'"), (6, "longer than 20.0s")]
    for message, (line, reason) in zip(dataset.skipped, expected):
        assert message.startswith(f"{manifest}:{line}: ")
        assert reason in message

    decoding = SpeechDataset(manifest, Alphabet(), require_labels=False)
    assert len(decoding) == 7 and decoding.skipped == []
    assert [record["labels"] for record in decoding.records][1:5] == [[], [], [], []]
