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
    ("relu", 0, ((41, 5), (21, 3)), ((2, 2), (2, 1))),
])
def test_streaming_equals_offline_for_any_chunking(speech, rnn_type, lookahead, kernels, strides):
    model = streaming_model(speech, lookahead, rnn_type, kernels, strides)
    stream = StreamingModel(model)
    for waveform in [speech[0], speech[1], speech[0][:100], speech[0][:161], speech[0][:319], speech[0][:4000]]:
        expected = offline(model, waveform)
        for chunk in (1, 37, 160, 1600, 10**6) if len(waveform) <= 4000 else (37, 160, 1600, 10**6):
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


# --------------------------------------------------------------------------- StreamDecoder

def spelled(text: str, alphabet, letter_frames=2, gap_frames=1, p=0.95) -> torch.Tensor:
    """(T, V) log-probs that spell ``text``: each character for letter_frames, a blank between."""
    V = len(alphabet)
    rows = []

    def frame(index):
        row = torch.full((V,), (1 - p) / (V - 1))
        row[index] = p
        rows.append(row)

    for char in text:
        for _ in range(letter_frames):
            frame(alphabet.encode(char)[0])
        for _ in range(gap_frames):
            frame(0)
    return torch.log(torch.stack(rows))


def silence(steps: int, alphabet, p=0.97) -> torch.Tensor:
    row = torch.cat([torch.tensor([p]), torch.full((len(alphabet) - 1,), (1 - p) / (len(alphabet) - 1))])
    return torch.log(row).repeat(steps, 1)


def test_endpointing_ends_segments_on_silence_with_timed_words():
    from ds2.streaming import EndpointOptions, StreamDecoder
    from ds2.text import Alphabet

    alphabet = Alphabet()
    frame = 0.03
    first, second = spelled("the cat sat", alphabet), spelled("a dog ran", alphabet)
    log_probs = torch.cat([silence(10, alphabet), first, silence(40, alphabet), second, silence(5, alphabet)])
    decoder = StreamDecoder(alphabet, frame, endpoint=EndpointOptions(silence_ms=600))
    results = []
    for start in range(0, len(log_probs), 7):
        results += decoder.push(log_probs[start : start + 7])
    results += decoder.finish()
    finals = [r for r in results if r["type"] == "final"]
    assert [f["text"] for f in finals] == ["the cat sat", "a dog ran"]
    end_of_first = 10 + len(first) - 1  # spelled() ends with a blank
    # the first segment ends once 600 ms (20 steps) of silence follow its speech
    assert finals[0]["start"] == 0.0 and finals[0]["end"] == pytest.approx((end_of_first + 20) * frame)
    assert finals[1]["start"] == finals[0]["end"] and finals[1]["end"] == pytest.approx(len(log_probs) * frame)
    cat = finals[0]["words"][1]
    assert cat["word"] == "cat" and cat["start"] == pytest.approx((10 + 4 * 3) * frame, abs=frame)
    assert finals[1]["words"][0]["start"] > finals[0]["end"]
    partials = [r["text"] for r in results if r["type"] == "partial"]
    assert "the ca" in partials and partials[-1] == "a dog ran"  # the text grows chunk by chunk
    # a segment never grows past max_segment_s
    decoder = StreamDecoder(alphabet, frame, endpoint=EndpointOptions(silence_ms=5000, max_segment_s=0.9))
    finals = [r for r in decoder.push(torch.cat([first, first])) + decoder.finish() if r["type"] == "final"]
    assert len(finals) >= 2 and all(f["end"] - f["start"] <= 0.9 + 1e-6 for f in finals)


def test_lm_partials_and_finals_come_from_the_incremental_search(tmp_path):
    import numpy as np

    from ds2 import lm
    from ds2.decode import BeamSearchOptions
    from ds2.decode.beam import LmDecoder
    from ds2.streaming import EndpointOptions, StreamDecoder
    from ds2.text import Alphabet
    from test_decode_beam import SENTENCES, noisy_log_probs

    text = tmp_path / "text.txt"
    text.write_text("\n".join(SENTENCES * 5) + "\n", encoding="utf-8")
    files = lm.build_lm([text], tmp_path / "lm", order=3)
    alphabet = Alphabet()
    lm_decoder = LmDecoder(alphabet, BeamSearchOptions(str(files.binary), alpha=0.8, beta=1.0, beam_width=24))
    log_probs = torch.from_numpy(noisy_log_probs("the baker sells fresh bread", np.random.default_rng(4)))
    decoder = StreamDecoder(alphabet, 0.03, lm_decoder, EndpointOptions(silence_ms=10_000))
    results = []
    for start in range(0, len(log_probs), 5):
        results += decoder.push(log_probs[start : start + 5])
    results += decoder.finish()
    expected = lm_decoder.decode(log_probs.numpy())
    final = results[-1]
    assert final["type"] == "final" and final["text"] == expected.text
    assert [w["word"] for w in final["words"]] == expected.text.split()
    assert final["words"][0]["start"] == pytest.approx(expected.words[0].start * 0.03)
    partials = [r["text"] for r in results if r["type"] == "partial"]
    assert partials[0] != partials[-1] and partials[-1].startswith("the baker")


def test_int8_streaming_stays_close_to_float(speech):
    from ds2.quantize import quantize_dynamic

    model = streaming_model(speech, lookahead=2)
    quantized = quantize_dynamic(model)
    assert model.rnns[0].weight_ih.dtype == torch.float32 and not hasattr(model.rnns[0], "quantized")
    for waveform in speech:
        exact, approx = StreamingModel(model).run(waveform, 1600), StreamingModel(quantized).run(waveform, 1600)
        assert approx.shape == exact.shape
        agree = (approx.argmax(-1) == exact.argmax(-1)).float().mean()
        assert agree >= 0.9 and (approx.exp() - exact.exp()).abs().max() < 0.1
    # batched streams of different lengths: each stream's state is read at its own last step
    stream = StreamingModel(quantized)
    states = [stream.new_state() for _ in speech]
    together = stream.forward([w[:3000 + 997 * i] for i, w in enumerate(speech)], states, [True] * len(speech))
    for i, w in enumerate(speech):
        alone = stream.run(w[:3000 + 997 * i], 10**6)
        assert torch.equal(together[i].argmax(-1), alone.argmax(-1))
    with pytest.raises(ValueError, match="bidirectional"):
        quantize_dynamic(DeepSpeech2(ModelConfig(rnn_hidden=8, fc_hidden=8)))
    with pytest.raises(ValueError, match="GRU"):
        quantize_dynamic(streaming_model(speech, rnn_type="relu"))
