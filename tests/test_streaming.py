"""Streaming inference equals offline inference of the same model on the same audio."""

import pytest
import torch

from ds2.checkpoint import load_model, save_checkpoint
from ds2.espeak import synthesize
from ds2.features import OnlineNormalizer, feature_statistics, featurizer, spectrogram
from ds2.model import DeepSpeech2, ModelConfig
from ds2.streaming import NotStreamableError, StreamingModel


@pytest.fixture(scope="module")
def speech():
    return [synthesize(text, "en-us", 170, 50) for text in ("the cat sat on the mat", "a dog", "seven green boxes")]


def streaming_model(speech, lookahead=3, rnn_type="gru", kernels=((41, 11), (21, 11)), strides=((2, 3), (2, 1)),
                    seed=0):
    torch.manual_seed(seed)
    mean, var, _ = feature_statistics(speech)
    config = ModelConfig(conv_layers=2, conv_channels=(8, 4), conv_kernels=kernels, conv_strides=strides,
                         rnn_type=rnn_type, rnn_layers=2, rnn_hidden=32, fc_hidden=16, bidirectional=False,
                         lookahead=lookahead, normalize="online", feature_mean=mean, feature_var=var)
    model = DeepSpeech2(config)
    for module in model.modules():  # running averages that are not the identity
        if hasattr(module, "running_mean"):
            module.running_mean.normal_(0, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def offline(model, waveform):
    features = featurizer(model.config)(waveform)
    with torch.no_grad():
        logits, lengths = model(features[None], torch.tensor([features.shape[1]]))
    return torch.log_softmax(logits[0, : int(lengths[0])], dim=-1)


def test_online_normalization_chunk_by_chunk_equals_the_whole(speech):
    raw = spectrogram(speech[0], normalize=False)
    mean, var, frames = feature_statistics(speech)
    assert frames == sum(spectrogram(w).shape[1] for w in speech)
    normalizer = OnlineNormalizer(mean, var, prior=300)
    whole = normalizer(raw)
    state, pieces = normalizer.start(), []
    for start in range(0, raw.shape[1], 7):
        out, state = normalizer.push(state, raw[:, start : start + 7])
        pieces.append(out)
    torch.testing.assert_close(torch.cat(pieces, 1), whole, rtol=0, atol=1e-5)
    # the first frame is normalized with the training statistics (prior) and itself only
    mu, sigma2, x0 = torch.tensor(mean, dtype=torch.float64), torch.tensor(var, dtype=torch.float64), raw[:, 0].double()
    m0 = (300 * mu + x0) / 301
    v0 = (300 * (sigma2 + mu.square()) + x0.square()) / 301 - m0.square()
    torch.testing.assert_close(whole[:, 0], ((x0 - m0) / (v0.sqrt() + 1e-5)).float())
    # and it adapts: a stream with a constant offset is pulled back towards zero mean over time
    shifted = normalizer(raw + 5.0)
    assert shifted[:, -50:].mean().abs() < shifted[:, :50].mean().abs()


@pytest.mark.parametrize("rnn_type,lookahead,kernels,strides", [
    ("gru", 3, ((41, 11), (21, 11)), ((2, 3), (2, 1))),
    ("rnn", 0, ((41, 5), (21, 3)), ((2, 2), (2, 1))),
])
def test_streaming_equals_offline_for_any_chunking(speech, rnn_type, lookahead, kernels, strides):
    model = streaming_model(speech, lookahead, rnn_type, kernels, strides)
    stream = StreamingModel(model)
    for waveform in [speech[0], speech[1], speech[0][:100], speech[0][:161], speech[0][:319], speech[0][:4000]]:
        expected = offline(model, waveform)
        for chunk in (1, 37, 160, 1600, 10**6):
            got = stream.run(waveform, chunk)
            assert got.shape == expected.shape, (len(waveform), chunk)
            torch.testing.assert_close(got, expected, rtol=0, atol=2e-5)


def test_streams_batched_together_each_get_their_own_offline_output(speech):
    """Batch Dispatch: streams at different points, with chunks of different sizes (some
    empty), share every forward call; each stream's output is what it gets alone."""
    model = streaming_model(speech)
    stream = StreamingModel(model)
    sizes = [(800, 3000, 0), (160, 4321, 1), (2500, 17, 0)]
    states = [stream.new_state() for _ in speech]
    positions = [0] * len(speech)
    outputs = [[] for _ in speech]
    call = 0
    while not all(state.finished for state in states):
        active = [i for i, state in enumerate(states) if not state.finished]
        chunks, finals = [], []
        for i in active:
            size = sizes[i][call % 3]
            chunks.append(speech[i][positions[i] : positions[i] + size])
            positions[i] += size
            finals.append(positions[i] >= len(speech[i]))
        for i, out in zip(active, stream.forward(chunks, [states[i] for i in active], finals)):
            outputs[i].append(out)
        call += 1
    for i, waveform in enumerate(speech):
        torch.testing.assert_close(torch.cat(outputs[i]), offline(model, waveform), rtol=0, atol=2e-5)
        assert states[i].steps == len(offline(model, waveform))


def test_a_streamable_model_round_trips_through_a_checkpoint(speech, tmp_path):
    model = streaming_model(speech)
    model.config.alphabet = list(" abcdefghijklmnopqrstuvwxyz'")
    save_checkpoint(tmp_path / "m.pt", model)
    loaded, _ = load_model(tmp_path / "m.pt")
    assert loaded.config.streamable and loaded.config.feature_mean == pytest.approx(model.config.feature_mean)
    torch.testing.assert_close(StreamingModel(loaded).run(speech[2], 1000), offline(model, speech[2]),
                               rtol=0, atol=2e-5)


def test_models_that_need_the_whole_recording_are_refused(speech):
    with pytest.raises(NotStreamableError, match="forward-only"):
        StreamingModel(DeepSpeech2(ModelConfig(rnn_hidden=8, fc_hidden=8)))
    with pytest.raises(NotStreamableError, match="normalize online"):
        StreamingModel(DeepSpeech2(ModelConfig(rnn_hidden=8, fc_hidden=8, bidirectional=False)))
    stream = StreamingModel(streaming_model(speech))
    state = stream.new_state()
    stream.forward_chunk(speech[1], state, final=True)
    with pytest.raises(ValueError, match="already ended"):
        stream.forward_chunk(speech[1], state)
