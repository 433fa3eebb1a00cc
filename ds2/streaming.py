"""Streaming inference: a forward-only DS2 model on audio as it arrives, many streams at once.

A streamable model (``ModelConfig.streamable``: forward-only recurrent layers, online feature
normalization) computes on a stream, chunk by chunk, exactly what it computes on the whole
recording (to float rounding; tests/test_streaming.py checks it), because every stage keeps
just the state it needs:

- STFT: the samples the next frame's window needs; the first frame's reflected left edge
  from the first 161 samples; the right edge (reflected, as ``torch.stft(center=True)``) at
  the end of the stream.
- Online normalization (:class:`ds2.features.OnlineNormalizer`): the running count, sum and
  sum of squares per frequency bin, starting from the training set's statistics.
- Each 2D convolution: the input frames not yet fully used (its left zero padding at the
  start, its right padding appended at the end). BatchNorm uses running averages: a fixed
  affine map per channel.
- Each recurrent layer: its hidden state.
- Row convolution: the last ``lookahead`` recurrent outputs, waiting for their future.

So a stream's output lags its input by the model's lookahead: the convolutions' future half
widths and the row convolution's ``lookahead`` steps (:attr:`StreamingModel.lookahead_ms`).

Batch Dispatch: :meth:`StreamingModel.forward` takes chunks of many streams (of any lengths)
and runs each stage once for all of them: the STFT and normalization per stream (cheap), the
convolutions, recurrent layers, row convolution and output layers on the padded batch. The
hidden state of stream b is read at its own last new step, so streams with less new audio,
or none, lose nothing by sharing the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ds2.audio import HOP_LENGTH, HOP_MS, N_FFT
from ds2.features import OnlineNormalizer, analysis_window, log_power
from ds2.model import _VF_RNN, DeepSpeech2, clipped_relu, time_mask

_HALF = N_FFT // 2  # torch.stft(center=True) pads this many samples on each side


class NotStreamableError(ValueError):
    pass


@dataclass
class StreamState:
    """Everything one stream carries between chunks (see the module docstring)."""

    samples: torch.Tensor  # waveform kept for later frames, float32, starting at sample `sample_start`
    sample_start: int = 0
    received: int = 0  # samples received
    frames: int = 0  # spectrogram frames made
    norm: tuple = ()  # OnlineNormalizer state
    conv: list = field(default_factory=list)  # per conv layer: pending input, shape = (C_in, F_in, m)
    hidden: list = field(default_factory=list)  # per recurrent layer: shape = (H,)
    pending: torch.Tensor | None = None  # recurrent outputs awaiting the row convolution, shape = (m, H)
    steps: int = 0  # output steps emitted
    finished: bool = False

    @property
    def seconds(self) -> float:
        return self.received / (HOP_LENGTH * 1000 / HOP_MS)


class StreamingModel:
    """A streamable :class:`DeepSpeech2` run chunk by chunk on one stream or many.

    ``forward_chunk(chunk, state) -> (log_probs, state)`` for one stream;
    :meth:`forward` for a batch of streams (Batch Dispatch). Chunks are 16 kHz float32
    waveforms of any length (empty included); ``final=True`` ends a stream and flushes what
    its lookahead held back.
    """

    def __init__(self, model: DeepSpeech2):
        config = model.config
        if config.bidirectional:
            raise NotStreamableError("a bidirectional model needs the whole recording: streaming needs a forward-only "
                                     "model (ds2 train --no-bidirectional --normalize online)")
        if config.normalize != "online":
            raise NotStreamableError("per-utterance feature normalization needs the whole recording: streaming needs "
                                     "--normalize online")
        if not config.streamable:
            raise NotStreamableError(f"--rnn-type {config.rnn_type} --rnn-norm {config.rnn_norm}: streaming runs GRU or "
                                     "ReLU layers with batch or no normalization (PyTorch's fused kernels)")
        self.model = model.eval()
        self.config = config
        self.device = next(model.parameters()).device
        self.normalizer = OnlineNormalizer(config.feature_mean, config.feature_var, config.norm_prior * 1000 / HOP_MS)
        self.tau = config.lookahead

    @property
    def lookahead_ms(self) -> float:
        """How far the model looks past an output step's own frames (ms of audio)."""
        ms, frame_ms = 0.0, float(HOP_MS)
        for block in self.model.convs:
            ms += block.conv.padding[1] * frame_ms
            frame_ms *= block.conv.stride[1]
        return ms + self.tau * frame_ms + _HALF * 1000 / (HOP_LENGTH * 1000 / HOP_MS)

    @property
    def frame_seconds(self) -> float:
        return self.config.time_stride * HOP_MS / 1000

    def new_state(self) -> StreamState:
        state = StreamState(samples=torch.zeros(0), norm=self.normalizer.start())
        for block in self.model.convs:
            channels, pad = block.conv.in_channels, block.conv.padding[1]
            n_freq = self._conv_input_freq(block)
            state.conv.append(torch.zeros(channels, n_freq, pad, device=self.device))
        state.hidden = [torch.zeros(layer.hidden_size, device=self.device) for layer in self.model.rnns]
        state.pending = torch.zeros(0, self.config.rnn_hidden, device=self.device)
        return state

    def _conv_input_freq(self, block) -> int:
        n_freq = self.config.n_freq
        for other in self.model.convs:
            if other is block:
                return n_freq
            kernel, stride, pad = other.conv.kernel_size[0], other.conv.stride[0], other.conv.padding[0]
            n_freq = (n_freq + 2 * pad - kernel) // stride + 1
        raise ValueError("not a block of this model")

    def forward_chunk(self, chunk: torch.Tensor, state: StreamState | None = None, final: bool = False
                      ) -> tuple[torch.Tensor, StreamState]:
        """One stream: log-probs, shape = (steps, V), of the output steps this chunk completes."""
        state = state if state is not None else self.new_state()
        return self.forward([chunk], [state], [final])[0], state

    @torch.no_grad()
    def forward(self, chunks: list[torch.Tensor], states: list[StreamState], finals: list[bool]) -> list[torch.Tensor]:
        """Chunks of several streams through the model in one batch; states are updated in
        place. Returns each stream's new log-probs, shape = (steps, V), float32 on the CPU."""
        if not (len(chunks) == len(states) == len(finals)):
            raise ValueError("forward: one chunk, state and final flag per stream")
        for state in states:
            if state.finished:
                raise ValueError("forward: the stream has already ended")
        features = [self._features(chunk, state, final) for chunk, state, final in zip(chunks, states, finals)]
        x = [f[None].to(self.device) for f in features]  # each (1, F, t)
        for layer, block in enumerate(self.model.convs):
            x = self._conv(block, layer, x, states, finals)
        x = [item.reshape(item.shape[0] * item.shape[1], item.shape[2]).t() for item in x]  # each (t', C*F')
        lengths = torch.tensor([len(item) for item in x])
        batch = nn.utils.rnn.pad_sequence(x) if len(x) else torch.zeros(0, 0, 0)  # T' x B x D
        if batch.shape[0] == 0:
            outputs = [torch.zeros(0, self.config.rnn_hidden, device=self.device) for _ in states]
        else:
            mask = time_mask(lengths.to(self.device), batch.shape[0]).t()  # T' x B
            for layer, rnn in enumerate(self.model.rnns):
                batch = self._recurrent(rnn, layer, batch, lengths, mask, states)
            outputs = [batch[: int(length), b] for b, length in enumerate(lengths)]
        outputs = self._row_conv(outputs, states, finals)
        results = []
        for state, out, final in zip(states, outputs, finals):
            if len(out):
                out = self.model.output(clipped_relu(self.model.fc(out)))
                out = torch.log_softmax(out.float(), dim=-1).cpu()
            else:
                out = torch.zeros(0, self.config.n_outputs)
            state.steps += len(out)
            state.finished = final
            results.append(out)
        return results

    # -- stages ---------------------------------------------------------------------------

    def _features(self, chunk: torch.Tensor, state: StreamState, final: bool) -> torch.Tensor:
        """The normalized spectrogram frames this chunk completes, shape = (F, t)."""
        chunk = torch.as_tensor(chunk, dtype=torch.float32).reshape(-1).cpu()
        samples = torch.cat([state.samples, chunk])
        received = state.received + len(chunk)
        if final and received < N_FFT:  # spectrogram() pads very short clips with zeros
            samples = torch.cat([samples, torch.zeros(N_FFT - received)])
            received = N_FFT
        if final:
            last = 1 + received // HOP_LENGTH
        else:
            last = (received - _HALF) // HOP_LENGTH + 1 if received > _HALF else 0
        first = state.frames
        raw = torch.zeros(self.config.n_freq, 0)
        if last > first:
            # samples of frames first..last-1, centered windows reflected at both edges
            index = torch.arange(first * HOP_LENGTH - _HALF, (last - 1) * HOP_LENGTH + _HALF)
            index = torch.where(index < 0, -index, index)
            index = torch.where(index >= received, 2 * (received - 1) - index, index)
            piece = samples[index - state.sample_start]
            stft = torch.stft(piece, n_fft=N_FFT, hop_length=HOP_LENGTH, window=analysis_window(),
                              center=False, return_complex=True)
            raw = log_power(stft)
        keep_from = max(0, min(last * HOP_LENGTH - _HALF, received - _HALF - 1))
        state.samples = samples[keep_from - state.sample_start:].clone()
        state.sample_start = keep_from
        state.received = received if not final else state.received + len(chunk)
        state.frames = max(first, last)
        out, state.norm = self.normalizer.push(state.norm, raw)
        return out

    def _conv(self, block, layer: int, inputs: list[torch.Tensor], states: list[StreamState], finals: list[bool]
              ) -> list[torch.Tensor]:
        conv = block.conv
        kernel, stride, pad = conv.kernel_size[1], conv.stride[1], conv.padding[1]
        buffers, counts = [], []
        for item, state, final in zip(inputs, states, finals):
            buffer = torch.cat([state.conv[layer], _as_chw(item, state.conv[layer])], dim=-1)
            if final:
                buffer = nn.functional.pad(buffer, (0, pad))
            count = (buffer.shape[-1] - kernel) // stride + 1 if buffer.shape[-1] >= kernel else 0
            buffers.append(buffer)
            counts.append(count)
            state.conv[layer] = buffer[..., count * stride:].clone()
        width = max(b.shape[-1] for b in buffers)
        if max(counts) == 0:
            return [torch.zeros(block.conv.out_channels, self._out_freq(block), 0, device=self.device) for _ in inputs]
        batch = torch.stack([nn.functional.pad(b, (0, width - b.shape[-1])) for b in buffers])  # B x C x F x W
        out = nn.functional.conv2d(batch, conv.weight, conv.bias, conv.stride, (conv.padding[0], 0))
        if block.norm is not None:
            scale, shift = block.norm.scale_shift()
            out = torch.addcmul(shift[:, None, None], out, scale[:, None, None]).to(out.dtype)
        out = clipped_relu(out)
        return [out[b, ..., :count] for b, count in enumerate(counts)]

    def _out_freq(self, block) -> int:
        kernel, stride, pad = block.conv.kernel_size[0], block.conv.stride[0], block.conv.padding[0]
        return (self._conv_input_freq(block) + 2 * pad - kernel) // stride + 1

    def _recurrent(self, rnn, layer: int, x: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor,
                   states: list[StreamState]) -> torch.Tensor:
        """One forward-only layer over the padded batch from each stream's hidden state."""
        if getattr(rnn, "quantized", None) is not None:  # ds2.quantize: int8 GRU on packed sequences
            from ds2.quantize import run_quantized_layer

            hidden0 = torch.stack([state.hidden[layer] for state in states])[None]
            out, last = run_quantized_layer(rnn, torch.where(mask[..., None], x, 0), lengths, hidden0)
            for b, state in enumerate(states):
                state.hidden[layer] = last[b].clone()
            return torch.where(mask[..., None], out, 0)
        padded = nn.functional.pad(x, (0, rnn.padding_input.shape[0] - rnn.input_size))
        inputs = torch.where(mask[..., None], padded, rnn.padding_input.to(x.dtype))
        weights = rnn.kernel_weights(inputs[..., : rnn.input_size], lengths.to(self.device))
        dtype = weights[0].dtype
        hidden0 = torch.stack([state.hidden[layer] for state in states])[None].to(dtype)  # 1 x B x H
        out, _ = _VF_RNN[rnn.rnn_type](inputs.to(dtype), hidden0, weights, True, 1, 0.0, False, False, False)
        for b, (state, length) in enumerate(zip(states, lengths.tolist())):
            if length:
                state.hidden[layer] = out[length - 1, b].clone()
        return torch.where(mask[..., None], out, 0)

    def _row_conv(self, outputs: list[torch.Tensor], states: list[StreamState], finals: list[bool]
                  ) -> list[torch.Tensor]:
        """Row convolution (when the model has one): each step once its ``tau`` future steps exist."""
        if self.model.row_conv is None:
            return outputs
        tau = self.tau
        buffers, counts = [], []
        for out, state, final in zip(outputs, states, finals):
            buffer = torch.cat([state.pending, out.to(state.pending.dtype)])
            if final:
                buffer = nn.functional.pad(buffer, (0, 0, 0, tau))
            count = max(0, len(buffer) - tau)
            buffers.append(buffer)
            counts.append(count)
            state.pending = buffer[count:].clone()
        if max(counts) == 0:
            return [buffer[:0] for buffer in buffers]
        width = max(len(b) for b in buffers)
        batch = torch.stack([nn.functional.pad(b, (0, 0, 0, width - len(b))) for b in buffers]).transpose(1, 2)
        out = clipped_relu(self.model.row_conv.conv(batch)).transpose(1, 2)  # B x (width - tau) x H
        return [out[b, :count] for b, count in enumerate(counts)]

    # -- whole recordings -----------------------------------------------------------------

    def run(self, waveform: torch.Tensor, chunk_samples: int = 1600) -> torch.Tensor:
        """A whole waveform fed ``chunk_samples`` at a time; the log-probs, shape = (T', V)."""
        state, pieces = self.new_state(), []
        for start in range(0, max(1, len(waveform)), chunk_samples):
            end = start + chunk_samples
            out, _ = self.forward_chunk(waveform[start:end], state, final=end >= len(waveform))
            pieces.append(out)
        return torch.cat(pieces)


def _as_chw(item: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A stage's new frames as (C, F, t) like the layer's buffer."""
    return item.reshape(like.shape[0], like.shape[1], -1).to(like.dtype)


# --------------------------------------------------------------------------- decoding a stream


@dataclass(frozen=True)
class EndpointOptions:
    """When a stream's segment (an utterance within it) is over and gets its final result."""

    silence_ms: float = 700.0  # this much trailing blank after some speech ends a segment
    max_segment_s: float = 30.0  # a segment this long is ended wherever it is
    blank_threshold: float = 0.9  # a step counts as silence when P(blank) is at least this


class StreamDecoder:
    """A stream's log-probs -> partial and final results, segment by segment.

    Greedy partials at every chunk (the best path, collapsed); with an ``lm_decoder``
    (:class:`ds2.decode.beam.LmDecoder`) the partials and finals come from its incremental
    search instead. Endpointing: when a segment holds some speech and then ``silence_ms`` of
    steps whose blank probability is at least ``blank_threshold``, it is finished (a final
    result, words timed) and a new segment starts; the acoustic model's state carries on.

    Results are dicts: ``{"type": "partial" | "final", "text", "start", "end", "words"}``,
    times in seconds from the start of the stream; ``words`` (finals only): ``{"word",
    "start", "end", "confidence"}``.
    """

    def __init__(self, alphabet, frame_seconds: float, lm_decoder=None, endpoint: EndpointOptions = EndpointOptions()):
        self.alphabet = alphabet
        self.frame_seconds = frame_seconds
        self.lm_decoder = lm_decoder
        self.endpoint = endpoint
        self.silence_steps = max(1, round(endpoint.silence_ms / 1000 / frame_seconds))
        self.max_steps = max(1, round(endpoint.max_segment_s / frame_seconds))
        self.log_blank_threshold = float(torch.log(torch.tensor(endpoint.blank_threshold)))
        self.step = 0  # steps of the stream seen
        self.finals: list[dict] = []
        self._new_segment()

    def _new_segment(self) -> None:
        self.segment_start = self.step
        self.segment: list[torch.Tensor] = []  # the segment's log-probs, chunk by chunk
        self.labels: list[int] = []  # greedy path, collapsed, blanks dropped
        self.last_label = 0
        self.trailing_silence = 0
        self.search = self.lm_decoder.stream() if self.lm_decoder is not None else None

    @property
    def segment_steps(self) -> int:
        return self.step - self.segment_start

    def push(self, log_probs: torch.Tensor) -> list[dict]:
        """New steps, shape = (t, V): finals of the segments they end, then a partial."""
        results = []
        while len(log_probs):
            # the steps up to this segment's end (when one ends within them)
            take, ended = self._scan(log_probs)
            self._add(log_probs[:take])
            log_probs = log_probs[take:]
            if ended:
                final = self._final()
                if final is not None:
                    results.append(final)
                self._new_segment()
        results.append(self._partial())
        return results

    def finish(self) -> list[dict]:
        """The end of the stream: the last segment's final (if it holds any speech)."""
        final = self._final()
        self._new_segment()
        return [final] if final is not None else []

    def _scan(self, log_probs: torch.Tensor) -> tuple[int, bool]:
        silent = (log_probs[:, 0] >= self.log_blank_threshold).tolist()
        speech, trailing = bool(self.labels), self.trailing_silence
        for i, quiet in enumerate(silent):
            if quiet:
                trailing += 1
            else:
                trailing, speech = 0, True
            if (speech and trailing >= self.silence_steps) or self.segment_steps + i + 1 >= self.max_steps:
                return i + 1, True
        return len(log_probs), False

    def _add(self, log_probs: torch.Tensor) -> None:
        if not len(log_probs):
            return
        self.segment.append(log_probs)
        best = log_probs.argmax(-1).tolist()
        for label in best:
            if label != self.last_label and label != 0:
                self.labels.append(label)
            self.last_label = label
        blank = (log_probs[:, 0] >= self.log_blank_threshold).tolist()
        for quiet in blank:
            self.trailing_silence = self.trailing_silence + 1 if quiet else 0
        if self.search is not None:
            self.search.feed(log_probs.numpy())
        self.step += len(log_probs)

    def _times(self) -> tuple[float, float]:
        return round(self.segment_start * self.frame_seconds, 3), round(self.step * self.frame_seconds, 3)

    def _partial(self) -> dict:
        if self.search is not None and self.search.frames:
            text = self.search.partial().text
        else:
            text = self.alphabet.decode(self.labels)
        start, end = self._times()
        return {"type": "partial", "text": " ".join(text.split()), "start": start, "end": end}

    def _final(self) -> dict | None:
        if not self.segment:
            return None
        start, end = self._times()
        offset = self.segment_start * self.frame_seconds
        if self.search is not None:
            best = self.search.finalize(timing=True)[0]
            text = " ".join(best.text.split())
            words = [{"word": w.word, "start": round(offset + w.start * self.frame_seconds, 3),
                      "end": round(offset + w.end * self.frame_seconds, 3), "confidence": round(w.confidence, 4)}
                     for w in best.words]
        else:
            text = " ".join(self.alphabet.decode(self.labels).split())
            words = self._aligned_words(torch.cat(self.segment), text, offset) if text else []
        if not text:
            return None
        final = {"type": "final", "text": text, "start": start, "end": end, "words": words}
        self.finals.append(final)
        return final

    def _aligned_words(self, log_probs: torch.Tensor, text: str, offset: float) -> list[dict]:
        """The words of a greedy text placed on the segment's steps by CTC forced alignment."""
        from ds2.alignment import AlignmentError, align

        try:
            alignment = align(log_probs, text, self.alphabet)
        except AlignmentError:  # a best path always fits its own frames; a safeguard
            return [{"word": word, "start": None, "end": None, "confidence": None} for word in text.split()]
        return [{"word": w.text, "start": round(offset + w.start * self.frame_seconds, 3),
                 "end": round(offset + w.end * self.frame_seconds, 3), "confidence": round(w.score, 4)}
                if w.aligned else {"word": w.text, "start": None, "end": None, "confidence": None}
                for w in alignment.words]
