"""Recordings of any length through the model in chunks: every frame once, in the right place."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import sweep, write_audio
from ds2 import features, longform
from ds2.audio import HOP_LENGTH, SAMPLE_RATE
from ds2.decode import DecodingOptions, compute_log_probs
from ds2.longform import ChunkOptions, Recording, log_probs_of
from ds2.model import DeepSpeech2, ModelConfig
from ds2.text import Alphabet

N_OUTPUTS = 7


class FrameProbe(torch.nn.Module):
    """A stand-in model whose output frame j is the input's frame j * stride (first bins),
    so any misplaced, repeated or missing frame of a chunked run shows."""

    def __init__(self, stride: int):
        super().__init__()
        self.config = SimpleNamespace(time_stride=stride, n_outputs=N_OUTPUTS)
        self.pieces: list[int] = []  # input frames of every piece seen

    def output_lengths(self, lengths):
        return (lengths + self.config.time_stride - 1) // self.config.time_stride

    def forward(self, feats, lengths):
        self.pieces += lengths.tolist()
        picked = feats[:, :N_OUTPUTS, :: self.config.time_stride].transpose(1, 2)  # B x T' x V
        return picked, self.output_lengths(lengths)


def _raw_spectrogram(waveform):
    return features.spectrogram(waveform, normalize=False)


@pytest.mark.parametrize("stride,chunk,context", [(1, 1.0, 0.1), (2, 0.7, 0.05), (3, 2.0, 0.5), (3, 0.5, 0.03)])
def test_chunked_frames_are_those_of_the_whole_recording(tmp_path, monkeypatch, stride, chunk, context):
    monkeypatch.setattr(longform, "featurizer", lambda config: _raw_spectrogram)  # no per-piece normalization
    path = write_audio(tmp_path / "long.wav", sweep(6.37, SAMPLE_RATE), SAMPLE_RATE)
    whole = FrameProbe(stride)
    (reference,) = log_probs_of(whole, [Recording(str(path))], ChunkOptions(chunk_seconds=100, progress=False))
    probe = FrameProbe(stride)
    options = ChunkOptions(chunk_seconds=chunk, context_seconds=context, chunk_batch=3, progress=False)
    (chunked,) = log_probs_of(probe, [Recording(str(path))], options)
    assert len(probe.pieces) > 3 and max(probe.pieces) <= (chunk + 2 * context) * 100 + 2 * stride + 1
    assert chunked.log_probs.shape == reference.log_probs.shape
    torch.testing.assert_close(chunked.log_probs, reference.log_probs, atol=1e-5, rtol=0)
    assert chunked.frame_seconds == pytest.approx(stride / 100)


def test_a_short_recording_is_one_piece_and_matches_decode(tmp_path):
    torch.manual_seed(0)
    alphabet = Alphabet()
    model = DeepSpeech2(ModelConfig(conv_layers=1, rnn_layers=1, rnn_hidden=16, fc_hidden=16,
                                    alphabet=alphabet.to_list(), n_outputs=len(alphabet))).eval()
    from ds2.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "m.pt", model)
    path = write_audio(tmp_path / "a.wav", sweep(1.3, SAMPLE_RATE), SAMPLE_RATE)
    manifest = tmp_path / "m.json"
    manifest.write_text(f'{{"audio_filepath": "{path}", "duration": 1.3, "text": "a"}}\n')
    expected = compute_log_probs(tmp_path / "m.pt", manifest, DecodingOptions(progress=False, num_workers=0))
    (ours,) = log_probs_of(model, [Recording(str(path))], ChunkOptions(progress=False, device="cpu"))
    assert torch.equal(ours.log_probs, expected["log_probs"][0])


def test_bad_files_are_reported_in_place_and_the_rest_go_on(tmp_path, monkeypatch):
    monkeypatch.setattr(longform, "featurizer", lambda config: _raw_spectrogram)
    good = write_audio(tmp_path / "good.wav", sweep(2.0, SAMPLE_RATE), SAMPLE_RATE)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF" + bytes(np.random.default_rng(0).integers(0, 255, 200, dtype=np.uint8)))
    recordings = [Recording(str(good)), Recording(str(broken)), Recording(str(tmp_path / "missing.wav")),
                  Recording(str(good), offset=0.5, duration=1.0), Recording(str(good), offset=5.0)]
    results = list(log_probs_of(FrameProbe(2), recordings, ChunkOptions(chunk_seconds=0.5, context_seconds=0.1,
                                                                        chunk_batch=4, progress=False)))
    assert [r.recording for r in results] == recordings
    assert [r.error is None for r in results] == [True, False, False, True, False]
    assert "broken.wav" in results[1].error and "file not found" in results[2].error
    assert "past the end" in results[4].error
    whole, segment = results[0].log_probs, results[3].log_probs
    assert len(segment) == pytest.approx(50, abs=1)  # 1 s at stride 2
    start = int(0.5 * SAMPLE_RATE / HOP_LENGTH / 2)
    torch.testing.assert_close(segment[2:-2], whole[start + 2: start + len(segment) - 2], atol=1e-5, rtol=0)
