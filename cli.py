"""ds2 command line: parse options, build the dataclasses, call the library. No logic here."""

from __future__ import annotations

import functools
import json
import logging
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


def _setup_logging(log_file: Path | None = None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers, force=True
    )


def _friendly_errors(command):
    """Known input errors become one clear line on stderr and exit status 1, no traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from ds2.audio import AudioError

        try:
            return command(*args, **kwargs)
        except (ValueError, AudioError, FileNotFoundError) as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(1) from None

    return wrapper


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


def _pairs(text: str, name: str) -> tuple:
    """'41x11,21x11' -> ((41, 11), (21, 11))."""
    try:
        return tuple(tuple(int(v) for v in item.split("x")) for item in text.split(","))
    except ValueError:
        raise ValueError(f"{name}: expected FxT pairs separated by commas, e.g. 41x11,21x11; got {text!r}") from None


# --------------------------------------------------------------------------- prepare


@prepare_app.command("synth")
@_friendly_errors
def prepare_synth(
    out_dir: Annotated[Path, typer.Argument(help="Folder for wav/ and train.json, dev.json, test.json.")],
    n_train: Annotated[int, typer.Option(help="Training utterances.")] = 2000,
    n_dev: Annotated[int, typer.Option(help="Dev utterances (unseen sentences and voices).")] = 200,
    n_test: Annotated[int, typer.Option(help="Test utterances (unseen sentences and voices).")] = 200,
    seed: Annotated[int, typer.Option(help="Same seed, same corpus.")] = 0,
):
    """Synthesize a speech corpus with eSpeak NG (no downloads): grammar-generated sentences,
    several voices, rates and pitches; dev/test hold sentences and voices unseen in training."""
    from ds2.synth import SynthConfig, synthesize_corpus

    _setup_logging()
    paths = synthesize_corpus(out_dir, SynthConfig(n_train=n_train, n_dev=n_dev, n_test=n_test, seed=seed))
    for split, path in paths.items():
        typer.echo(f"{split}: {path}")


def _layout_command(layout: str, root_help: str, summary: str) -> None:
    """Register `ds2 prepare LAYOUT ROOT MANIFEST` for one on-disk layout."""

    def command(
        root: Path,
        manifest: Annotated[Path, typer.Argument(help="Output manifest (JSON lines).")],
        alphabet: Annotated[Optional[Path], typer.Option(help="Alphabet JSON to check texts against (default: English).")] = None,
        any_characters: Annotated[bool, typer.Option(help="Do not check characters against an alphabet.")] = False,
        jobs: Annotated[int, typer.Option(help="Processes reading audio.")] = 1,
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


# --------------------------------------------------------------------------- lm


@lm_app.command("build")
@_friendly_errors
def lm_build(
    texts: Annotated[list[Path], typer.Argument(help="Text files, one sentence a line (normalized into the alphabet here).")],
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
def train(
    train_manifest: Annotated[Path, typer.Argument(help="Training manifest.")],
    dev_manifest: Annotated[Path, typer.Argument(help="Dev manifest: picks the best checkpoint.")],
    out_dir: Annotated[Path, typer.Option("--out-dir", "-o", help="Run folder: checkpoints, logs, curves.png.")],
    epochs: Annotated[int, typer.Option(help="Passes over the training set.")] = 20,
    batch_size: Annotated[int, typer.Option(help="Most utterances per minibatch.")] = 32,
    batch_seconds: Annotated[float, typer.Option(help="Most padded audio seconds per minibatch (0: no limit).")] = 0.0,
    max_duration: Annotated[Optional[float], typer.Option(help="Skip utterances longer than this (s).")] = None,
    optimizer: Annotated[str, typer.Option(help="sgd (Nesterov momentum, DS2) or adam.")] = "sgd",
    lr: Annotated[Optional[float], typer.Option(help="Learning rate of the first epoch (default: 3e-3 sgd, 1e-3 adam).")] = None,
    momentum: Annotated[float, typer.Option(help="Nesterov momentum (sgd).")] = 0.99,
    anneal: Annotated[float, typer.Option(help="Divide the learning rate by this after each epoch.")] = 1.2,
    weight_decay: Annotated[float, typer.Option(help="L2 weight decay.")] = 0.0,
    grad_clip: Annotated[float, typer.Option(help="Clip the global gradient norm to this.")] = 400.0,
    sortagrad: Annotated[bool, typer.Option(help="First epoch in increasing length order (SortaGrad).")] = True,
    conv_layers: Annotated[int, typer.Option(help="2D convolution layers (1-3).")] = 2,
    conv_channels: Annotated[str, typer.Option(help="Channels per conv layer.")] = "32,32,96",
    conv_kernels: Annotated[str, typer.Option(help="Filter sizes, frequency x time (DS2's).")] = "41x11,21x11,21x11",
    conv_strides: Annotated[str, typer.Option(help="Strides, frequency x time.")] = "2x2,2x1,2x1",
    rnn_type: Annotated[str, typer.Option(help="gru or rnn (simple ReLU RNN).")] = "gru",
    rnn_layers: Annotated[int, typer.Option(help="Recurrent layers.")] = 3,
    rnn_hidden: Annotated[int, typer.Option(help="Units per recurrent layer.")] = 256,
    bidirectional: Annotated[bool, typer.Option(help="Bidirectional (summed) or forward-only recurrent layers.")] = True,
    batch_norm: Annotated[bool, typer.Option(help="Sequence-wise BatchNorm (DS2).")] = True,
    lookahead: Annotated[int, typer.Option(help="Row convolution future steps tau (forward-only models).")] = 0,
    fc_hidden: Annotated[int, typer.Option(help="Units of the fully connected layer.")] = 256,
    alphabet: Annotated[Optional[Path], typer.Option(help="Alphabet JSON (default: English a-z, space, apostrophe).")] = None,
    alphabet_from: Annotated[Optional[Path], typer.Option(help="Build the alphabet from this manifest's texts (any language).")] = None,
    ctc: Annotated[str, typer.Option(help="CTC loss: auto (our CUDA kernel on a GPU, numba on the CPU), cuda, numba, or torch.")] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, ...")] = "auto",
    num_workers: Annotated[int, typer.Option(help="Data loading processes.")] = 1,
    threads: Annotated[int, typer.Option(help="Torch CPU threads (0: default).")] = 0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    checkpoint_every: Annotated[int, typer.Option(help="Save last.pt every N steps (and every epoch).")] = 200,
    max_steps: Annotated[int, typer.Option(help="Stop after N optimizer steps in total (0: no limit).")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue OUT_DIR/last.pt exactly where it stopped.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
):
    """Train a DS2 model with CTC: SortaGrad, Nesterov SGD with gradient clipping and per-epoch
    annealing, best-on-dev checkpoint (best.pt), exact --resume from last.pt."""
    from ds2.model import ModelConfig
    from ds2.train import TrainConfig, train as run

    _setup_logging(out_dir / "train.log")
    model = ModelConfig(
        conv_layers=conv_layers,
        conv_channels=tuple(int(c) for c in conv_channels.split(",")),
        conv_kernels=_pairs(conv_kernels, "--conv-kernels"),
        conv_strides=_pairs(conv_strides, "--conv-strides"),
        rnn_type=rnn_type,
        rnn_layers=rnn_layers,
        rnn_hidden=rnn_hidden,
        bidirectional=bidirectional,
        batch_norm=batch_norm,
        lookahead=lookahead,
        fc_hidden=fc_hidden,
    )
    config = TrainConfig(
        train_manifest=str(train_manifest), dev_manifest=str(dev_manifest), out_dir=str(out_dir),
        epochs=epochs, batch_size=batch_size, batch_seconds=batch_seconds, max_duration=max_duration,
        optimizer=optimizer, lr=lr, momentum=momentum, anneal=anneal, weight_decay=weight_decay,
        grad_clip=grad_clip, sortagrad=sortagrad, seed=seed, num_workers=num_workers, ctc_backend=ctc,
        device=device, checkpoint_every=checkpoint_every, max_steps=max_steps, threads=threads,
        resume=resume, progress=progress, model=model,
    )
    run(config, None if resume else _alphabet(alphabet, alphabet_from))


# --------------------------------------------------------------------------- decode, transcribe, score


@app.command()
@_friendly_errors
def decode(
    checkpoint: Annotated[Optional[Path], typer.Argument(help="Model checkpoint (best.pt); not needed with --logprobs.")],
    manifest: Annotated[Path, typer.Argument(help="Manifest to decode.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output manifest: the input records plus pred_text.")],
    lm: Annotated[Optional[Path], typer.Option(help="KenLM model (lm.bin from `ds2 lm build`): beam search instead of greedy.")] = None,
    alpha: Annotated[Optional[float], typer.Option(help="LM weight, on the LM's NATURAL-log probability (default: decoding.json beside the checkpoint from `ds2 tune`, else 0.5).")] = None,
    beta: Annotated[Optional[float], typer.Option(help="Bonus per word (default: decoding.json beside the checkpoint, else 1.0).")] = None,
    beam_width: Annotated[int, typer.Option(help="Beams kept per step.")] = 100,
    prune_p: Annotated[float, typer.Option(help="DS2 pruning: per frame, the fewest characters whose probability reaches p (1: off).")] = 0.99,
    prune_top: Annotated[int, typer.Option(help="DS2 pruning: at most this many characters per frame.")] = 40,
    jobs: Annotated[int, typer.Option(help="Beam search processes (0: one per core).")] = 0,
    save_logprobs: Annotated[Optional[Path], typer.Option(help="Save the acoustic model's log-probs here for later decoding.")] = None,
    logprobs: Annotated[Optional[Path], typer.Option(help="Decode saved log-probs instead of running the model.")] = None,
    batch_size: Annotated[int, typer.Option(help="Utterances per forward pass.")] = 32,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, ...")] = "auto",
    num_workers: Annotated[int, typer.Option(help="Data loading processes.")] = 1,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
):
    """Decode a manifest: greedy (best path) by default, n-gram LM beam search with --lm
    (DS2 pruning per frame). Writes the input records with pred_text added."""
    from ds2.decode import BeamSearchOptions, DecodingOptions, decode_manifest

    _setup_logging()
    if checkpoint is None and logprobs is None:
        raise ValueError("give a checkpoint or --logprobs")
    options = DecodingOptions(batch_size=batch_size, device=device, num_workers=num_workers, progress=progress)
    beam = None
    if lm is not None:
        from ds2.tune import load_decoding_defaults

        tuned = load_decoding_defaults(checkpoint)
        alpha = alpha if alpha is not None else tuned.get("alpha", 0.5)
        beta = beta if beta is not None else tuned.get("beta", 1.0)
        log.info("LM beam search: alpha=%s beta=%s%s", alpha, beta, " (tuned)" if tuned else "")
        beam = BeamSearchOptions(str(lm), alpha=alpha, beta=beta, beam_width=beam_width,
                                 prune_p=prune_p, prune_top=prune_top, jobs=jobs)
    count = decode_manifest(checkpoint, manifest, output, options, beam, save_logprobs, logprobs)
    typer.echo(f"{output}: {count} hypotheses ({'beam search with ' + str(lm) if lm else 'greedy'})")


@app.command()
@_friendly_errors
def tune(
    logprobs: Annotated[Path, typer.Argument(help="Dev log-probs saved by `ds2 decode --save-logprobs`.")],
    manifest: Annotated[Path, typer.Argument(help="The dev manifest those log-probs belong to.")],
    lm: Annotated[Path, typer.Option(help="KenLM model (lm.bin).")],
    out_dir: Annotated[Path, typer.Option("--out-dir", "-o", help="The model's folder: tune.csv, tune.png, decoding.json go here.")],
    beam_width: Annotated[int, typer.Option(help="Beam width while tuning.")] = 32,
    jobs: Annotated[int, typer.Option(help="Beam search processes (0: one per core).")] = 0,
):
    """Tune the LM weight alpha and word bonus beta on dev: coarse grid, then a finer one around
    the best. The best pair goes to OUT_DIR/decoding.json, the default of `ds2 decode --lm`."""
    from ds2.tune import tune as run

    _setup_logging()
    best = run(logprobs, manifest, lm, out_dir, beam_width, jobs)
    typer.echo(f"best alpha={best['alpha']} beta={best['beta']}: dev WER {best['dev_wer']}% -> {out_dir / 'decoding.json'}")


@app.command()
@_friendly_errors
def transcribe(
    checkpoint: Annotated[Path, typer.Argument(help="Model checkpoint.")],
    files: Annotated[list[Path], typer.Argument(help="Audio files (any rate, mono or stereo).")],
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, ...")] = "auto",
):
    """Print the text of each audio file, one line each, in the order given."""
    from ds2.decode import transcribe as run

    for text in run(checkpoint, files, device):
        typer.echo(text)


@app.command()
@_friendly_errors
def score(
    hypotheses: Annotated[Path, typer.Argument(help="Manifest with reference (text) and hypothesis (pred_text) fields.")],
    ref_field: Annotated[str, typer.Option(help="Field holding the reference.")] = "text",
    hyp_field: Annotated[str, typer.Option(help="Field holding the hypothesis.")] = "pred_text",
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the figures as JSON here.")] = None,
):
    """WER and CER with correct/substitution/deletion/insertion counts (sclite's alignment)."""
    from ds2.data import atomic_write
    from ds2.metrics import score_manifest

    report = score_manifest(hypotheses, ref_field=ref_field, hyp_field=hyp_field)
    typer.echo(report.format())
    if json_out:
        with atomic_write(json_out) as handle:
            json.dump(report.to_dict(), handle, indent=2)


if __name__ == "__main__":
    app()
