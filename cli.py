"""ds2 command line: parse options, build the configs, call the library. No logic here.

Options of configured commands are not written here: they are derived from the fields of
the config dataclasses (ds2.config.option: default, valid range and help, defined once),
and the configs check their values before any work starts. Installed as ``ds2.cli``
(console script ``ds2``); nothing else imports this module.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(
    help=(
        "Deep Speech 2 speech recognition toolkit.\n\n"
        "Pipeline: `ds2 prepare` makes JSON-lines manifests (audio_filepath, duration, text) "
        "-> `ds2 train` fits a conv + BatchNorm-RNN model with CTC -> `ds2 decode` writes "
        "hypotheses (pred_text) beside the references -> `ds2 score` reports WER and CER. "
        "`ds2 transcribe` prints the text of audio files. See recipes/tiny/run.sh for all of it."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
prepare_app = typer.Typer(
    help="Make manifests: a synthesized corpus, a LibriSpeech tree, or a folder of audio + .txt files. "
    "Bad entries go to a .rejects.json manifest beside the output, with the reason.",
    no_args_is_help=True,
)
app.add_typer(prepare_app, name="prepare")
lm_app = typer.Typer(
    help="n-gram language models with KenLM: build one from text (lmplz, build_binary) and query it.",
    no_args_is_help=True,
)
app.add_typer(lm_app, name="lm")

log = logging.getLogger("ds2")


def _setup_logging(log_file: Path | None = None, rank: int = 0) -> None:
    """INFO to stderr and ``log_file``; under torchrun, ranks other than 0 write only their own
    warnings, to stderr, marked with the rank (rank 0 logs the run and owns the file)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None and rank == 0:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    marker = f"[rank {rank}] " if rank else ""
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s {marker}%(levelname)s %(name)s: %(message)s", handlers=handlers, force=True,
    )


def _friendly_errors(command):
    """Known input errors become one clear line on stderr and exit status 1, no traceback.
    Also sets up the process's memory allocator (:func:`ds2.io.compact_heap`)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from ds2.io import compact_heap

        compact_heap()  # batches of many lengths would otherwise grow the process without bound
        try:
            return command(*args, **kwargs)
        except (ValueError, FileNotFoundError) as err:  # AudioError, ConfigError, ManifestError are ValueErrors
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(1) from None

    return wrapper


def _with_options(*config_classes, exclude: tuple[str, ...] = (), optional: tuple[str, ...] = ()):
    """Give a command the options of ``config_classes``, derived from their fields.

    The command is written with its own parameters (arguments, options that are not config
    fields) and a ``**options`` catch-all; the options derived here replace the catch-all
    in the signature typer reads. Fields named in ``optional`` default to None on the
    command line (the command resolves them, e.g. from a tuned decoding.json).
    """
    from ds2.config import cli_fields

    def decorate(command):
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.kind is not p.VAR_KEYWORD]
        derived = []
        for config_class in config_classes:
            for field in cli_fields(config_class, exclude):
                kind, default = field.type, field.default
                if field.name in optional:
                    kind, default = Optional[kind], None
                annotation = Annotated[kind, typer.Option(help=field.help, show_default=default is not None)]
                derived.append(inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                                 annotation=annotation))
        names = [p.name for p in own + derived]
        duplicated = {name for name in names if names.count(name) > 1}
        if duplicated:
            raise TypeError(f"{command.__name__}: options defined twice: {sorted(duplicated)}")

        @functools.wraps(command)
        def wrapper(**kwargs):
            return command(**kwargs)

        wrapper.__signature__ = inspect.Signature(own + derived)
        del wrapper.__wrapped__  # typer must read __signature__, not the catch-all
        return wrapper

    return decorate


def _alphabet(alphabet_file: Optional[Path], alphabet_from: Optional[Path]):
    from ds2.data import read_manifest
    from ds2.text import Alphabet

    if alphabet_file and alphabet_from:
        raise ValueError("give --alphabet or --alphabet-from, not both")
    if alphabet_file:
        return Alphabet.load(alphabet_file)
    if alphabet_from:
        return Alphabet.from_texts(record["text"] for record in read_manifest(alphabet_from))
    return Alphabet()


# --------------------------------------------------------------------------- prepare

from ds2.align import AlignOptions  # noqa: E402  (options of the commands below)
from ds2.augment import AugmentOptions  # noqa: E402
from ds2.decode import BeamSearchOptions, DecodingOptions  # noqa: E402
from ds2.longform import ChunkOptions  # noqa: E402
from ds2.segment import FilterOptions, SegmentOptions  # noqa: E402
from ds2.serve import ServeOptions  # noqa: E402
from ds2.model import ModelConfig  # noqa: E402
from ds2.noise import NoiseOptions, RirOptions  # noqa: E402
from ds2.synth import SynthConfig  # noqa: E402
from ds2.train import TrainConfig  # noqa: E402
from ds2.transcribe import TranscribeOptions  # noqa: E402
from ds2.tune import TuneOptions  # noqa: E402


def _echo_manifests(paths: dict) -> None:
    for split, path in paths.items():
        typer.echo(f"{split}: {path}")


@prepare_app.command("synth")
@_friendly_errors
@_with_options(SynthConfig)
def prepare_synth(
    out_dir: Annotated[Path, typer.Argument(help="Folder for wav/ and train.json, dev.json, test.json.")],
    **options,
):
    """Synthesize a speech corpus with eSpeak NG (no downloads): grammar-generated sentences,
    several voices, rates and pitches; dev/test hold sentences and voices unseen in training."""
    from ds2.config import from_cli
    from ds2.synth import synthesize_corpus

    config = from_cli(SynthConfig, options)
    _setup_logging()
    _echo_manifests(synthesize_corpus(out_dir, config))


@prepare_app.command("noise")
@_friendly_errors
@_with_options(NoiseOptions)
def prepare_noise(
    out_dir: Annotated[Path, typer.Argument(help="Folder for wav/, train.json, test.json, split.json, rejects.json.")],
    collections: Annotated[Optional[list[Path]], typer.Option("--from", help="A noise collection on disk: the MUSAN "
                           "layout (noise/, music/, speech/) or any folder of audio files; repeatable.")] = None,
    **options,
):
    """Noise for augmentation and for noisy test sets: generated white, pink, brown, hum and
    babble (of voices in neither training nor test), and collections on disk; the noises of
    test.json are never in train.json."""
    from ds2.config import from_cli
    from ds2.noise import prepare_noise as run

    config = from_cli(NoiseOptions, options)
    _setup_logging()
    _echo_manifests(run(out_dir, config, collections or []))


@prepare_app.command("rirs")
@_friendly_errors
@_with_options(RirOptions)
def prepare_rirs(
    out_dir: Annotated[Path, typer.Argument(help="Folder for wav/, train.json, test.json, split.json, rejects.json.")],
    collections: Annotated[Optional[list[Path]], typer.Option("--from", help="A folder of measured impulse "
                           "responses (audio files); repeatable.")] = None,
    **options,
):
    """Room impulse responses for reverberation: simulated shoebox rooms (pyroomacoustics),
    and measured responses on disk; test rooms are never training rooms."""
    from ds2.config import from_cli
    from ds2.noise import prepare_rirs as run

    config = from_cli(RirOptions, options)
    _setup_logging()
    _echo_manifests(run(out_dir, config, collections or []))


@prepare_app.command("noisy")
@_friendly_errors
def prepare_noisy(
    manifest: Annotated[Path, typer.Argument(help="Manifest of the clean utterances (e.g. data/test.json).")],
    out_dir: Annotated[Path, typer.Argument(help="Folder for the corrupted audio; the manifest is OUT_DIR.json.")],
    noise: Annotated[Optional[Path], typer.Option(help="Noise manifest (use test noises: ds2 prepare noise).")] = None,
    snr: Annotated[Optional[float], typer.Option(help="Signal-to-noise ratio in dB (with --noise).")] = None,
    rir: Annotated[Optional[Path], typer.Option(help="Impulse response manifest (reverberation, before the noise).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed: which clip, offset and room each utterance gets.")] = 0,
):
    """Write a noisy and/or reverberant copy of a test set once, as audio, so that every model
    is scored on the same files."""
    from ds2.noise import make_noisy_set

    _setup_logging()
    path, n_written, n_rejected = make_noisy_set(manifest, out_dir, noise, snr, rir, seed)
    typer.echo(f"{path}: {n_written} utterances" + (f"; {n_rejected} rejected" if n_rejected else ""))


def _layout_command(layout: str, root_help: str, summary: str) -> None:
    """Register `ds2 prepare LAYOUT ROOT MANIFEST` for one on-disk layout."""

    def command(
        root: Path,
        manifest: Annotated[Path, typer.Argument(help="Output manifest (JSON lines).")],
        alphabet: Annotated[Optional[Path], typer.Option(help="Alphabet JSON to check texts against (default: English).")] = None,
        any_characters: Annotated[bool, typer.Option(help="Do not check characters against an alphabet.")] = False,
        jobs: Annotated[int, typer.Option(min=1, help="Processes reading audio.")] = 1,
    ):
        from ds2 import prepare

        _setup_logging()
        run = getattr(prepare, f"prepare_{layout}")
        result = run(root, manifest, None if any_characters else _alphabet(alphabet, None), jobs)
        typer.echo(
            f"{result.manifest}: {result.n_accepted} utterances, {result.hours:.2f} h; "
            f"{result.n_rejected} rejected -> {result.rejects}"
        )

    # A real object, not a string: this module's annotations are strings evaluated in its
    # globals, where root_help does not exist.
    command.__annotations__["root"] = Annotated[Path, typer.Argument(help=root_help)]
    help_text = f"{summary} Unusable entries go to MANIFEST's .rejects.json with the reason."
    prepare_app.command(layout, help=help_text)(_friendly_errors(command))


_layout_command(
    "librispeech", "A LibriSpeech split: speaker/chapter/*.flac + *.trans.txt.", "Manifest of a LibriSpeech-layout tree."
)
_layout_command(
    "folder", "Folder tree of audio files with same-name .txt transcripts.", "Manifest of audio files beside .txt transcripts."
)


@prepare_app.command("commonvoice")
@_friendly_errors
def prepare_commonvoice(
    root: Annotated[Path, typer.Argument(help="A Common Voice language folder: clips/*.mp3 and train.tsv, dev.tsv, "
                                         "test.tsv (columns read by header name).")],
    out_dir: Annotated[Path, typer.Argument(help="Folder for SPLIT.json and SPLIT.rejects.json, alphabet.json and "
                                            "clips/ (the 16 kHz copies).")],
    splits: Annotated[str, typer.Option(help="TSV names, comma separated; the first is the training split: its "
                                        "sentences give the alphabet, the others are kept whole.")] = "train,dev,test",
    alphabet: Annotated[Optional[Path], typer.Option(help="Alphabet JSON to use instead of the training "
                                                     "sentences' characters.")] = None,
    min_char_count: Annotated[int, typer.Option(min=1, help="A character enters the alphabet when the training "
                                                "sentences have it this often; rarer ones reject their sentence.")] = 1,
    audio_format: Annotated[str, typer.Option(help="flac or wav: decode each mp3 once, write it at 16 kHz to "
                                              "OUT_DIR/clips (training then never decodes mp3); none: the "
                                              "manifests point to the mp3 clips.")] = "flac",
    jobs: Annotated[int, typer.Option(min=1, help="Processes reading (and converting) audio.")] = 1,
):
    """Manifests of a Common Voice language folder, its official splits as given, in any language:
    texts lower-cased with punctuation removed, letters of every script kept. Unusable rows (missing
    clip, empty sentence, unreadable audio) go to SPLIT.rejects.json with the file, line and reason."""
    from ds2.prepare import prepare_commonvoice as run
    from ds2.text import Alphabet

    _setup_logging()
    names = [name.strip() for name in splits.split(",") if name.strip()]
    chosen = Alphabet.load(alphabet) if alphabet else None
    result = run(root, out_dir, names, chosen, min_char_count, None if audio_format == "none" else audio_format, jobs)
    for split, found in result.splits.items():
        typer.echo(f"{split}: {found.manifest}: {found.n_accepted} utterances, {found.hours:.2f} h; "
                   f"{found.n_rejected} rejected -> {found.rejects}")
    typer.echo(f"alphabet: {result.alphabet}")


# --------------------------------------------------------------------------- lm


@lm_app.command("build")
@_friendly_errors
def lm_build(
    texts: Annotated[list[Path], typer.Argument(help="Text files, one sentence a line (normalized into the alphabet "
                                                "here); .gz files are read as gzip.")],
    out_dir: Annotated[Path, typer.Option("--out-dir", "-o", help="Folder for text.txt, lm.arpa, lm.bin, unigrams.txt.")],
    order: Annotated[int, typer.Option(help="n-gram order (2-6).")] = 3,
    memory: Annotated[str, typer.Option(help="lmplz memory cap (-S), e.g. 1G or 20%.")] = "1G",
    prune: Annotated[Optional[str], typer.Option(help='lmplz --prune thresholds per order, e.g. "0 1 1".')] = None,
    alphabet: Annotated[Optional[Path], typer.Option(help="Alphabet JSON (default: English); lines with other characters are dropped.")] = None,
):
    """Build an n-gram LM with KenLM's lmplz (memory capped, --discount_fallback for small corpora)."""
    from ds2.lm import build_lm

    _setup_logging()
    files = build_lm(texts, out_dir, order, _alphabet(alphabet, None), memory, prune)
    typer.echo(
        f"{files.binary}: {order}-gram, {files.n_sentences} sentences, {files.vocabulary} words "
        f"({files.n_rejected} lines dropped); ARPA {files.arpa}, unigrams {files.unigrams}"
    )


@lm_app.command("query")
@_friendly_errors
def lm_query(
    model: Annotated[Path, typer.Argument(help="lm.bin or lm.arpa.")],
    text: Annotated[str, typer.Argument(help="A sentence (normalized before scoring).")],
):
    """Per-word log10 probabilities (n-gram length used, OOV marks) and the sentence's perplexity."""
    from ds2.lm import load_lm, query

    result = query(load_lm(model), text)
    for word, log10_prob, ngram, oov in result.words:
        columns = [word, f"{log10_prob:.4f}", f"{ngram}-gram"] + (["OOV"] if oov else [])
        typer.echo("\t".join(columns))
    typer.echo(f"log10 p = {result.log10_prob:.4f}   perplexity = {result.perplexity:.2f}")


# --------------------------------------------------------------------------- train


@app.command()
@_friendly_errors
@_with_options(TrainConfig, ModelConfig, AugmentOptions, exclude=("train_manifest", "dev_manifest", "out_dir"))
def train(
    train_manifest: Annotated[Path, typer.Argument(help="Training manifest.")],
    dev_manifest: Annotated[Path, typer.Argument(help="Dev manifest: picks the best checkpoint.")],
    out_dir: Annotated[Path, typer.Option("--out-dir", "-o", help="Run folder: checkpoints, logs, curves.png.")],
    alphabet: Annotated[Optional[Path], typer.Option(help="Alphabet JSON (default: English a-z, space, apostrophe).")] = None,
    alphabet_from: Annotated[Optional[Path], typer.Option(help="Build the alphabet from this manifest's texts (any language).")] = None,
    **options,
):
    """Train a DS2 model with CTC: SortaGrad, Nesterov SGD with gradient clipping and per-epoch
    annealing, best-on-dev checkpoint (best.pt), exact --resume from last.pt; online noise,
    reverberation, speed, gain and SpecAugment augmentation (--noise, --rir, --*-prob).
    Data-parallel unchanged under `torchrun --nproc-per-node N -m ds2.cli train ...` (one rank
    per GPU, or gloo on the CPU); --batch-size is then the minibatch of all ranks together."""
    from ds2.config import from_cli
    from ds2.distributed import ranks_from_env
    from ds2.train import train as run

    model = from_cli(ModelConfig, options)
    augment = from_cli(AugmentOptions, options)
    config = from_cli(TrainConfig, options, train_manifest=str(train_manifest), dev_manifest=str(dev_manifest),
                      out_dir=str(out_dir), model=model, augment=augment)
    if config.init and (alphabet or alphabet_from):
        raise ValueError("--init takes the checkpoint's alphabet: drop --alphabet/--alphabet-from")
    chosen_alphabet = None if config.resume or config.init else _alphabet(alphabet, alphabet_from)
    _setup_logging(out_dir / "train.log", ranks_from_env().rank)
    run(config, chosen_alphabet)


# --------------------------------------------------------------------------- decode, transcribe, score


@app.command()
@_friendly_errors
@_with_options(DecodingOptions, BeamSearchOptions, optional=("alpha", "beta"))
def decode(
    checkpoint: Annotated[Optional[Path], typer.Argument(help="Model checkpoint (best.pt); not needed with --logprobs.")],
    manifest: Annotated[Path, typer.Argument(help="Manifest to decode.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output manifest: the input records plus pred_text.")],
    lm: Annotated[Optional[Path], typer.Option(help="KenLM model (lm.bin from `ds2 lm build`): beam search instead of greedy.")] = None,
    save_logprobs: Annotated[Optional[Path], typer.Option(help="Save the acoustic model's log-probs here for later decoding.")] = None,
    logprobs: Annotated[Optional[Path], typer.Option(help="Decode saved log-probs instead of running the model.")] = None,
    **options,
):
    """Decode a manifest: greedy (best path) by default, n-gram LM beam search with --lm
    (DS2 pruning per frame). Writes the input records with pred_text added."""
    from ds2.config import from_cli
    from ds2.decode import beam_options, decode_manifest

    if checkpoint is None and logprobs is None:
        raise ValueError("give a checkpoint or --logprobs")
    decoding = from_cli(DecodingOptions, options)
    beam = None
    if lm is not None or options["hotwords"]:
        base = from_cli(BeamSearchOptions, {**options, "alpha": BeamSearchOptions().alpha,
                                            "beta": BeamSearchOptions().beta}, lm=str(lm or ""))
        beam, tuned = beam_options(base, checkpoint or logprobs, options["alpha"], options["beta"])
    _setup_logging()
    if beam is not None:
        log.info("LM beam search: alpha=%s beta=%s%s", beam.alpha, beam.beta, " (tuned)" if tuned else "")
    count = decode_manifest(checkpoint, manifest, output, decoding, beam, save_logprobs, logprobs)
    kind = f"beam search with {lm}" if lm else "beam search, no LM" if beam else "greedy"
    typer.echo(f"{output}: {count} hypotheses ({kind})")


@app.command()
@_friendly_errors
@_with_options(TuneOptions)
def tune(
    logprobs: Annotated[Path, typer.Argument(help="Dev log-probs saved by `ds2 decode --save-logprobs`.")],
    manifest: Annotated[Path, typer.Argument(help="The dev manifest those log-probs belong to.")],
    lm: Annotated[Path, typer.Option(help="KenLM model (lm.bin).")],
    out_dir: Annotated[Path, typer.Option("--out-dir", "-o", help="The model's folder: tune.csv, tune.png, decoding.json go here.")],
    **options,
):
    """Tune the LM weight alpha and word bonus beta on dev: coarse grid, then a finer one around
    the best. The best pair goes to OUT_DIR/decoding.json, the default of `ds2 decode --lm`."""
    from ds2.config import from_cli
    from ds2.tune import tune as run

    config = from_cli(TuneOptions, options)
    _setup_logging()
    best = run(logprobs, manifest, lm, out_dir, config)
    typer.echo(f"best alpha={best['alpha']} beta={best['beta']}: dev WER {best['dev_wer']}% -> {out_dir / 'decoding.json'}")


@app.command()
@_friendly_errors
@_with_options(ChunkOptions, AlignOptions)
def align(
    checkpoint: Annotated[Path, typer.Argument(help="Model checkpoint (a bidirectional model aligns best).")],
    manifest: Annotated[Path, typer.Argument(help="Manifest of recordings (any length) and their transcripts.")],
    out_dir: Annotated[Path, typer.Option("--out-dir", "-o", help="Folder for alignments.json, alignments.ctm, "
                                          "alignments.rejects.json, summary.json.")],
    plot: Annotated[Optional[int], typer.Option(help="Also draw record N (0-based): spectrogram, blank "
                                                "probability and word spans, to OUT_DIR/align_N.png.")] = None,
    **options,
):
    """Forced alignment: where each word of each transcript is, in seconds, with a confidence
    (CTC Viterbi; long recordings in chunks and windows, memory bounded). Reports the
    word-start error when the manifest has true word_starts (ds2 prepare synth writes them)."""
    from ds2.align import align_manifest
    from ds2.config import from_cli

    chunks, config = from_cli(ChunkOptions, options), from_cli(AlignOptions, options)
    _setup_logging()
    summary = align_manifest(checkpoint, manifest, out_dir, chunks, config, plot)
    typer.echo(f"{out_dir / 'alignments.json'}: {summary['aligned']} of {summary['records']} records aligned, "
               f"{summary['words']} words ({summary['rejected']} rejected)")
    if "word_start_error" in summary:
        error = summary["word_start_error"]
        typer.echo(f"word start error against the truth ({error['words']} words): median {error['median_ms']} ms, "
                   f"90th percentile {error['p90_ms']} ms, {100 * error['within_50ms']:.1f}% within 50 ms")


@app.command()
@_friendly_errors
@_with_options(SegmentOptions, ChunkOptions, AlignOptions)
def segment(
    checkpoint: Annotated[Path, typer.Argument(help="Model checkpoint (bidirectional, to align).")],
    manifest: Annotated[Path, typer.Argument(help="Manifest of long recordings and their (possibly flawed) transcripts.")],
    out_dir: Annotated[Path, typer.Option("--out-dir", "-o", help="Folder for segments.json, segments.rejects.json, "
                                          "segment_summary.json.")],
    truth_field: Annotated[Optional[str], typer.Option(help="A field holding the trusted transcript as "
                                                       "[[word, start_seconds], ...]: each segment gets the words "
                                                       "that fall in it as `truth`, to train `ds2 filter`.")] = None,
    **options,
):
    """Cut long recordings into training segments at long pauses of the forced alignment (DS2
    5.1): mean length near --target-seconds, none over --max-seconds, cut between words. No audio
    is copied: segments are (offset, duration) windows that training reads directly."""
    from ds2.config import from_cli
    from ds2.segment import segment_manifest

    config = from_cli(SegmentOptions, options)
    chunks, aligning = from_cli(ChunkOptions, options), from_cli(AlignOptions, options)
    _setup_logging()
    summary = segment_manifest(checkpoint, manifest, out_dir, config, chunks, aligning, truth_field)
    typer.echo(f"{out_dir / 'segments.json'}: {summary['segments']} segments from {summary['recordings']} recordings "
               f"({summary['hours']} h, mean {summary['mean_seconds']} s, longest {summary['max_seconds']} s; "
               f"pause K = {summary['pause_frames_K']} frames); {summary['rejected']} rejected")


@app.command("filter")
@_friendly_errors
@_with_options(FilterOptions)
def filter_command(
    segments: Annotated[Path, typer.Argument(help="segments.json from `ds2 segment`.")],
    out_dir: Annotated[Path, typer.Option("--out-dir", "-o", help="Folder for kept.json, rejected.json, "
                                          "classifier.json, filter_report.json.")],
    classifier: Annotated[Optional[Path], typer.Option(help="Use this classifier.json instead of training one on "
                                                       "the segments that carry a truth.")] = None,
    **options,
):
    """Drop segments whose transcript is probably wrong: a linear classifier on DS2's features
    (CTC cost and its ratios, frames per character, words, characters), trained on the
    segments with a trusted transcript. Reports the kept fraction, the transcripts' WER
    kept/rejected and the classifier's cross-validated precision and recall."""
    from ds2.config import from_cli
    from ds2.segment import filter_segments

    config = from_cli(FilterOptions, options)
    _setup_logging()
    report = filter_segments(segments, out_dir, config, classifier)
    wer = f"; transcript WER {report['wer_all']}% -> kept {report['wer_kept']}%" if report["wer_all"] is not None else ""
    quality = (f"; classifier precision {report['cv_precision']}, recall {report['cv_recall']} (cross-validated)"
               if "cv_precision" in report else "")
    typer.echo(f"{out_dir / 'kept.json'}: kept {report['kept']} of {report['segments']} segments "
               f"({100 * report['kept_fraction']:.1f}%){wer}{quality}")


@app.command()
@_friendly_errors
@_with_options(TranscribeOptions, ChunkOptions, BeamSearchOptions, optional=("alpha", "beta"))
def transcribe(
    checkpoint: Annotated[Path, typer.Argument(help="Model checkpoint.")],
    files: Annotated[list[Path], typer.Argument(help="Audio files of any length (any rate, mono or stereo).")],
    lm: Annotated[Optional[Path], typer.Option(help="KenLM model: beam search with it (alpha/beta from decoding.json "
                                               "beside the checkpoint when tuned).")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write here instead of the standard "
                                                   "output; for srt/vtt of several files, a folder (one file each).")] = None,
    **options,
):
    """Transcribe audio files of any length: text, or words with start, end and confidence
    (json, srt, vtt, ctm). A file that cannot be read is reported on stderr (an empty line in
    text output), the others are transcribed, and the exit status is 1 at the end."""
    from ds2.config import from_cli
    from ds2.decode import beam_options
    from ds2.io import atomic_write
    from ds2.transcribe import render
    from ds2.transcribe import transcribe as run

    config, chunks = from_cli(TranscribeOptions, options), from_cli(ChunkOptions, options)
    if options["n_best"] > 1:
        raise ValueError("--n-best: transcribe writes one text per file; `ds2 decode --n-best` writes N-best lists")
    beam = None
    if lm is not None or options["hotwords"]:
        base = from_cli(BeamSearchOptions, {**options, "alpha": BeamSearchOptions().alpha,
                                            "beta": BeamSearchOptions().beta}, lm=str(lm or ""))
        beam, _ = beam_options(base, checkpoint, options["alpha"], options["beta"])
    per_file = config.format in ("srt", "vtt") and len(files) > 1
    if per_file and output is None:
        raise ValueError(f"{len(files)} files as {config.format}: give --output FOLDER (one file each)")
    failed, collected = 0, []
    if config.stream:
        from ds2.transcribe import transcribe_stream

        show = _show_partial if sys.stderr.isatty() else None
        transcripts = transcribe_stream(checkpoint, files, beam, config, on_partial=show)
    else:
        transcripts = run(checkpoint, files, chunks, beam, config)
    for transcript in transcripts:
        if transcript.error:
            failed += 1
            typer.echo(f"error: {transcript.error}", err=True)
            if config.format != "text":
                continue
        text = render(transcript, config)
        if per_file:
            with atomic_write(output / f"{Path(transcript.path).stem}.{config.format}") as handle:
                handle.write(text)
        elif output is None:
            typer.echo(text, nl=False)
        else:
            collected.append(text)
    if output is not None and not per_file:
        with atomic_write(output) as handle:
            handle.write("".join(collected))
    if failed:
        typer.echo(f"error: {failed} of {len(files)} files could not be transcribed", err=True)
        raise typer.Exit(1)


@app.command()
@_friendly_errors
@_with_options(ServeOptions, BeamSearchOptions, exclude=("n_best", "decoder"), optional=("alpha", "beta"))
def serve(
    checkpoint: Annotated[Path, typer.Argument(help="A streamable model (ds2 train --no-bidirectional --normalize "
                                                    "online).")],
    lm: Annotated[Optional[Path], typer.Option(help="KenLM model: LM beam-search partials and finals (alpha/beta "
                                               "from decoding.json beside the checkpoint when tuned).")] = None,
    **options,
):
    """Serve the model over HTTP and WebSocket: a live-transcription page at /, POST
    /v1/transcribe (a file -> JSON), WS /v1/stream (16-bit PCM in, partial and final results
    out), /health and /metrics. Chunks of all streams are batched for the model (Batch
    Dispatch). Binds to 127.0.0.1 unless --host says otherwise."""
    from ds2.config import from_cli
    from ds2.serve import serve as run

    config = from_cli(ServeOptions, options)
    beam = _stream_beam(checkpoint, lm, options)
    _setup_logging()
    run(str(checkpoint), config, beam)


def _stream_beam(checkpoint: Path, lm: Optional[Path], options: dict):
    """The beam-search options of serve and transcribe --stream (None: greedy)."""
    from ds2.config import from_cli
    from ds2.decode import beam_options

    if lm is None and not options.get("hotwords"):
        return None
    defaults = BeamSearchOptions()
    base = from_cli(BeamSearchOptions, {**options, "alpha": defaults.alpha, "beta": defaults.beta, "n_best": 1,
                                        "decoder": "ds2"}, lm=str(lm or ""))
    beam, _ = beam_options(base, checkpoint, options["alpha"], options["beta"])
    return beam


def _show_partial(path: str, result: dict) -> None:
    """transcribe --stream on a terminal: the partial result rewritten in place, finals kept."""
    if result["type"] == "partial":
        sys.stderr.write("\r\033[K" + result["text"][-(shutil.get_terminal_size().columns - 1):])
    else:
        sys.stderr.write(f"\r\033[K[{result['start']:.2f}-{result['end']:.2f}] {result['text']}\n")
    sys.stderr.flush()


@app.command()
@_friendly_errors
def score(
    hypotheses: Annotated[Path, typer.Argument(help="Manifest with reference (text) and hypothesis (pred_text) fields.")],
    ref_field: Annotated[str, typer.Option(help="Field holding the reference.")] = "text",
    hyp_field: Annotated[str, typer.Option(help="Field holding the hypothesis.")] = "pred_text",
    normalize: Annotated[bool, typer.Option(help="Score both texts after ds2's scoring normalization (lower case, "
                                            "no punctuation), as training and tuning do; --no-normalize compares "
                                            "them as written (sclite -s).")] = True,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the figures as JSON here.")] = None,
):
    """WER and CER with correct/substitution/deletion/insertion counts (sclite's alignment)."""
    from ds2.io import atomic_write
    from ds2.metrics import score_manifest

    report = score_manifest(hypotheses, ref_field=ref_field, hyp_field=hyp_field, normalize=normalize)
    typer.echo(report.format())
    if json_out:
        with atomic_write(json_out) as handle:
            json.dump(report.to_dict(), handle, indent=2)


if __name__ == "__main__":
    app()
