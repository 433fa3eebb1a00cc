"""Training's data path on the CPU: what each audio format costs to decode, and how loader workers scale.

    .venv/bin/python benchmarks/loader.py                     # 48 synthesized utterances of 2-8 s
    .venv/bin/python benchmarks/loader.py --manifest data/train.json --utterances 200 --csv loader.csv

Data: by default --utterances utterances of --seconds (2-8 s), synthesized with eSpeak by
ds2.synth (its training voices, seed --seed) into a temporary folder; with --manifest, the
first --utterances of that manifest. Each utterance is read once (ds2.audio.load_audio: 16 kHz
mono) and written with soundfile in every format:
- WAV 16 kHz: PCM16, what `ds2 prepare synth` writes.
- FLAC 16 kHz: PCM16, what LibriSpeech ships and what `ds2 prepare commonvoice` converts to.
- MP3 16 kHz: MPEG layer III (libsndfile >= 1.1 writes it through LAME, reads through mpg123);
  Common Voice's format (its clips are at 32-48 kHz, which adds resampling as below). The row
  says so where this libsndfile has no MP3.
- WAV 22.05 kHz: PCM16 at eSpeak's native rate, so every read resamples to 16 kHz
  (torchaudio's windowed sinc, as ds2.audio does). Made by resampling the 16 kHz audio up:
  the cost of reading it does not depend on what it holds.
- as given (with --manifest only): the manifest's own files, unconverted (in the loader table
  with --loader-formats given).

Measurement: torch runs on one thread (as each loader worker does: ds2.data sets it), so the
costs are those of one core. Each stage is timed (time.perf_counter) over a pass over all the
utterances; one untimed pass first (warm-up: page cache, first-call costs), then --repeats
passes, formats taken in turn within each repeat so that the machine's load drifts over all
alike; the table shows medians.

Decoding table, one row per format and stage:
- stage: "read+resample" is ds2.audio.load_audio (soundfile decode, downmix, resample to
  16 kHz); "features" is ds2.features.spectrogram on the decoded waveform (161-bin log
  spectrogram, per-utterance normalization); "item" is ds2.data.SpeechDataset's __getitem__
  (both, plus the labels): what a loader worker does per utterance.
- kbit/s: the files' size per second of audio.
- ms/utt, ms/audio-s: wall time per utterance and per second of audio.
- x real time: seconds of audio per second of one core (1000 / ms per audio-s).
- vs WAV 16k: ms of this row / ms of WAV 16 kHz's row of the same stage (> 1: costlier).
- cpu/wall: the process's CPU time over the wall time of the passes; below 1 the core was
  not wholly ours (the machine was busy), and every figure of the row is that much slower.
- SNR dB (read rows): the decoded 16 kHz waveform against WAV 16 kHz's ("inf": identical).
- note (only when there is one): why a format could not be written here.

Loader table: ds2.data.make_loader over the --loader-formats' datasets with training's
batching: data.Bucketing of at most --batch-size utterances and --batch-size x 15 s of padded
audio (`ds2 train`'s default budget, without the model's CTC term), later epochs' cuts
(jitter 0.05, shuffled order), epochs 1, 2, ... joined until a pass holds --loader-utterances
utterances. Persistent workers (as `ds2 train` keeps them), pin_memory off; one untimed pass
starts the workers, then --repeats timed passes (from iter() to the last batch), alternating
the order of the settings. The main process only takes the batches (in training it runs the
model meanwhile, and with 0 workers it also loads).
- utt/s, audio-s/s: utterances and seconds of audio delivered per second of wall time
  (audio-s/s = audio-h/h: the "x real time" of the whole loader).
- vs 0 workers: audio-s/s over the same format's with num_workers=0.
- CPU ms/audio-s: CPU time of this process and the workers (/proc/PID/stat, 10 ms ticks) per
  second of audio delivered: the work, whoever did it, including handing batches between
  processes. cores busy: that CPU time over the wall time; below the number of workers
  (or 1 with none), the processes waited: for each other, or for cores the machine gave to
  other work.
More workers than the cores in the header cannot help: they share those cores.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.ctc import fmt, parse_seconds, write_csv  # noqa: E402
from ds2 import audio  # noqa: E402
from ds2.data import Bucketing, SpeechDataset, make_loader, read_manifest, write_manifest  # noqa: E402
from ds2.features import spectrogram  # noqa: E402
from ds2.synth import SynthConfig, synthesize_corpus  # noqa: E402
from ds2.text import Alphabet  # noqa: E402

BUDGET_SECONDS_PER_UTTERANCE = 15.0  # ds2.train's default --batch-seconds per --batch-size utterance
JITTER = 0.05  # ds2.train's default --bucket-jitter
STAGES = ("read+resample", "features", "item")
CSV_FIELDS = ["table", "format", "stage", "workers", "utterances", "audio_s", "kbit_per_s", "ms_per_utt",
              "ms_per_audio_s", "x_real_time", "utt_per_s", "ratio", "cpu_ms_per_audio_s", "cpu_over_wall", "snr_db",
              "status"]


@dataclass(frozen=True)
class Format:
    label: str
    suffix: str
    sample_rate: int
    options: dict  # soundfile.write's format and subtype


FORMATS = {
    "wav16": Format("WAV 16 kHz", "wav", audio.SAMPLE_RATE, dict(format="WAV", subtype="PCM_16")),
    "flac16": Format("FLAC 16 kHz", "flac", audio.SAMPLE_RATE, dict(format="FLAC", subtype="PCM_16")),
    "mp3": Format("MP3 16 kHz", "mp3", audio.SAMPLE_RATE, dict(format="MP3", subtype="MPEG_LAYER_III")),
    "wav22": Format("WAV 22.05 kHz", "wav", 22050, dict(format="WAV", subtype="PCM_16")),
}
GIVEN = "given"  # the --manifest's own files


# ---------------------------------------------------------------------------------- data


def read(record: dict) -> torch.Tensor:
    """A manifest record's audio as SpeechDataset reads it (its segment, if it has an offset)."""
    return audio.load_audio(record["audio_filepath"], offset=record.get("offset", 0.0),
                            duration=record["duration"] if "offset" in record else None)


def label(name: str) -> str:
    return FORMATS[name].label if name in FORMATS else "as given"


def synthesized_records(folder: Path, n: int, seconds: tuple[float, float], seed: int) -> list[dict]:
    """``n`` utterances of ``seconds`` (LOW, HIGH) synthesized by ds2.synth (fewer if the draw
    has fewer in range: the header says how many)."""
    config = SynthConfig(n_train=n + n // 2 + 2, n_dev=0, n_test=0, seed=seed, min_words=6, max_words=14)
    manifest = synthesize_corpus(folder, config, progress=False, workers=1)["train"]
    return [r for r in read_manifest(manifest) if seconds[0] <= r["duration"] <= seconds[1]][:n]


def write_formats(records: list[dict], folder: Path, formats: list[str]) -> dict[str, tuple[Path | None, str]]:
    """Each record's audio written in every format, with a manifest per format.

    Returns {format: (manifest, status)}; status is "ok", or why the format could not be
    written (the manifest is then None).
    """
    waveforms = [read(record).numpy() for record in records]
    written = {}
    for name in formats:
        spec = FORMATS[name]
        if spec.options["format"] not in soundfile.available_formats():
            written[name] = (None, f"unsupported: libsndfile {soundfile.__libsndfile_version__} has no "
                                   f"{spec.options['format']}")
            continue
        out = []
        try:
            for index, (record, waveform) in enumerate(zip(records, waveforms)):
                samples = waveform
                if spec.sample_rate != audio.SAMPLE_RATE:
                    samples = audio.resample(torch.from_numpy(waveform), audio.SAMPLE_RATE, spec.sample_rate).numpy()
                path = folder / name / f"{index:05d}.{spec.suffix}"
                path.parent.mkdir(parents=True, exist_ok=True)
                soundfile.write(str(path), np.clip(samples, -1.0, 1.0), spec.sample_rate, **spec.options)
                out.append({"audio_filepath": str(path), "duration": len(waveform) / audio.SAMPLE_RATE,
                            "text": record["text"]})
        except Exception as error:  # noqa: BLE001 - e.g. a libsndfile built without LAME: the row says it
            written[name] = (None, f"unsupported: libsndfile {soundfile.__libsndfile_version__}: {error}")
            continue
        manifest = folder / f"{name}.json"
        write_manifest(manifest, out)
        written[name] = (manifest, "ok")
    return written


def snr_db(reference: np.ndarray, decoded: np.ndarray) -> float:
    """10 log10(reference energy / difference energy) over the common length (inf: identical)."""
    n = min(len(reference), len(decoded))
    noise = float(np.sum((decoded[:n].astype(np.float64) - reference[:n]) ** 2))
    return math.inf if noise == 0 else 10 * math.log10(float(np.sum(reference[:n].astype(np.float64) ** 2)) / noise)


# ---------------------------------------------------------------------------------- measuring


def timed_pass(work: Callable[[int], object], n: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of ``work(i)`` for i in range(n)."""
    wall, cpu = time.perf_counter(), time.process_time()
    for index in range(n):
        work(index)
    return time.perf_counter() - wall, time.process_time() - cpu


def decoding_costs(datasets: dict[str, SpeechDataset],
                   repeats: int) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """{(format, stage): [(wall s, CPU s) of one pass per repeat]}; see the module docstring."""
    waveforms = {name: [read(record) for record in dataset.records] for name, dataset in datasets.items()}
    stages = {
        "read+resample": lambda name: lambda i: read(datasets[name].records[i]),
        "features": lambda name: lambda i: spectrogram(waveforms[name][i]),
        "item": lambda name: datasets[name].__getitem__,
    }
    for name, dataset in datasets.items():  # warm-up
        for stage in STAGES:
            timed_pass(stages[stage](name), len(dataset))
    times: dict[tuple[str, str], list[tuple[float, float]]] = {(n, s): [] for n in datasets for s in STAGES}
    for _ in range(repeats):
        for name, dataset in datasets.items():
            for stage in STAGES:
                times[name, stage].append(timed_pass(stages[stage](name), len(dataset)))
    return times


def loader_batches(durations: list[float], label_lengths: list[int], batch_size: int, at_least: int,
                   seed: int) -> list[list[int]]:
    """Training's later epochs' minibatches (epochs 1, 2, ... joined) until they hold ``at_least`` utterances."""
    bucketing = Bucketing(durations, batch_size, batch_size * BUDGET_SECONDS_PER_UTTERANCE, label_lengths,
                          seed=seed, jitter=JITTER)
    batches, epoch = [], 1
    while sum(len(b) for b in batches) < max(at_least, 1):
        batches += bucketing.batches(epoch)
        epoch += 1
    return batches


@dataclass(frozen=True)
class LoaderPass:
    wall: float  # seconds from iter() to the last batch
    cpu: float  # CPU seconds of this process and the loader's workers meanwhile
    utterances: int
    audio_seconds: float


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as stream:
        fields = stream.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_pids(loader) -> list[int]:
    """The process ids of a loader's persistent workers, once it has started them (torch's
    private _iterator; none with num_workers=0)."""
    iterator = getattr(loader, "_iterator", None)
    return [worker.pid for worker in getattr(iterator, "_workers", [])]


def loader_pass(loader) -> LoaderPass:
    """One pass over ``loader``, timed."""
    pids = worker_pids(loader)
    cpu = time.process_time() + sum(cpu_seconds(pid) for pid in pids)
    start = time.perf_counter()
    utterances, frames = 0, 0
    for batch in loader:
        utterances += len(batch)
        frames += int(batch.feature_lengths.sum())
    wall = time.perf_counter() - start
    cpu = time.process_time() + sum(cpu_seconds(pid) for pid in pids) - cpu
    return LoaderPass(wall, cpu, utterances, audio.frames_to_seconds(frames))


def loader_speeds(datasets: dict[str, SpeechDataset], workers: list[int], batch_size: int, at_least: int,
                  repeats: int, seed: int) -> dict[tuple[str, int], list[LoaderPass]]:
    """{(format, num_workers): [one timed pass per repeat]}; see the module docstring."""
    loaders = {}
    for name, dataset in datasets.items():
        batches = loader_batches(dataset.durations, dataset.label_lengths, batch_size, at_least, seed)
        for n_workers in workers:
            loaders[name, n_workers] = make_loader(dataset, batches, n_workers, pin_memory=False,
                                                   persistent_workers=True)
            loader_pass(loaders[name, n_workers])  # warm-up: forks the workers
    passes: dict[tuple[str, int], list[LoaderPass]] = {key: [] for key in loaders}
    for repeat in range(repeats):
        for key in (list(loaders) if repeat % 2 == 0 else reversed(list(loaders))):
            passes[key].append(loader_pass(loaders[key]))
    loaders.clear()  # their workers exit
    return passes


# ---------------------------------------------------------------------------------- output


def print_table(columns: list[str], rows: list[list[str]], text_columns: set[str]) -> None:
    """A markdown table; the ``text_columns`` left-aligned, the numbers right-aligned."""
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" if column in text_columns else "---:" for column in columns) + "|")
    for cells in rows:
        print("| " + " | ".join(cells) + " |")
    print(flush=True)


def parse_list(choices) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in names if name not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"{text!r}: want names of {', '.join(choices)}")
        return names
    return parse


def parse_workers(text: str) -> list[int]:
    workers = [int(v) for v in text.split(",")]
    if not workers or min(workers) < 0:
        raise argparse.ArgumentTypeError(f"--workers {text!r}: want counts >= 0")
    return workers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", help="take the utterances from this manifest (default: synthesize them)")
    parser.add_argument("--utterances", type=int, default=48, help="how many (0 with --manifest: all)")
    parser.add_argument("--seconds", type=parse_seconds, default=(2.0, 8.0),
                        help="durations of the synthesized utterances, LOW,HIGH seconds (default 2,8)")
    parser.add_argument("--seed", type=int, default=0, help="of the synthesized corpus and of the batching")
    parser.add_argument("--formats", type=parse_list(list(FORMATS)), default=list(FORMATS),
                        help=f"decoding table's formats (default {','.join(FORMATS)}; wav16 is the reference)")
    parser.add_argument("--loader-formats", type=parse_list([*FORMATS, GIVEN]), default=["wav16", "flac16"],
                        help=f"loader table's formats, of {', '.join([*FORMATS, GIVEN])} (default wav16,flac16)")
    parser.add_argument("--workers", type=parse_workers, default=[0, 1, 2, 4], help="num_workers (default 0,1,2,4)")
    parser.add_argument("--batch-size", type=int, default=16, help="most utterances per minibatch (default 16)")
    parser.add_argument("--loader-utterances", type=int, default=192,
                        help="utterances per timed loader pass (epochs joined; default 192)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per setting (median)")
    parser.add_argument("--csv", help="also write the rows of both tables here")
    args = parser.parse_args()
    if "wav16" not in args.formats:
        args.formats.insert(0, "wav16")  # the reference of the ratios and the SNR
    if GIVEN in args.loader_formats and not args.manifest:
        parser.error(f"--loader-formats {GIVEN}: needs --manifest")
    torch.set_num_threads(1)  # one core per stage, as in a loader worker; also before any fork
    # more workers than cores is a setting the table measures on purpose (the header gives the cores)
    warnings.filterwarnings("ignore", message="This DataLoader will create")

    with tempfile.TemporaryDirectory(prefix="ds2-bench-loader-") as tmp:
        tmp = Path(tmp)
        if args.manifest:
            records = list(read_manifest(args.manifest))[: args.utterances or None]
            source = f"the first {len(records)} of {args.manifest}"
        else:
            records = synthesized_records(tmp / "synth", args.utterances, args.seconds, args.seed)
            source = f"synthesized by eSpeak (ds2.synth, seed {args.seed}, {args.seconds[0]:g}-{args.seconds[1]:g} s)"
        if not records:
            parser.error("no utterances")
        formats = list(dict.fromkeys(args.formats + [f for f in args.loader_formats if f != GIVEN]))
        written = write_formats(records, tmp / "formats", formats)
        if args.manifest:
            given = tmp / "given.json"
            write_manifest(given, records, relative_to_manifest=False)
            written[GIVEN] = (given, "ok")
        alphabet = Alphabet()
        datasets = {name: SpeechDataset(manifest, alphabet, require_labels=False)
                    for name, (manifest, status) in written.items() if status == "ok"}
        durations = datasets["wav16"].durations
        total = sum(durations)
        cores = len(os.sched_getaffinity(0))
        print(f"machine: {cores} cores available to this process (os.sched_getaffinity), load average "
              f"{os.getloadavg()[0]:.2f} at start; torch {torch.__version__} on 1 thread; libsndfile "
              f"{soundfile.__libsndfile_version__}")
        print(f"data: {len(durations)} utterances, {total:.1f} s of audio "
              f"({min(durations):.2f}-{max(durations):.2f} s), {source}")
        print(f"timing: median of {args.repeats} passes after one warm-up pass\n")

        decode_names = args.formats + ([GIVEN] if args.manifest else [])
        times = decoding_costs({name: datasets[name] for name in decode_names if name in datasets}, args.repeats)
        reference = [read(record).numpy() for record in datasets["wav16"].records]
        rows, cells = [], []
        median = {key: statistics.median(wall for wall, _ in values) for key, values in times.items()}
        for name in decode_names:
            status = written[name][1]
            if status != "ok":
                cells.append([label(name), "all", *["-"] * 7, status])
                rows.append({"table": "decode", "format": name, "status": status})
                continue
            records_of = datasets[name].records
            files = [r["audio_filepath"] for r in records_of]
            kbit = sum(os.path.getsize(f) for f in set(files)) * 8 / 1000 / total
            snr = statistics.median(snr_db(ref, read(r).numpy()) for ref, r in zip(reference, records_of))
            for stage in STAGES:
                wall = median[name, stage]
                cpu = statistics.median(c / w for w, c in times[name, stage])
                row = {"table": "decode", "format": name, "stage": stage, "utterances": len(files),
                       "audio_s": round(total, 2), "kbit_per_s": kbit, "ms_per_utt": 1000 * wall / len(files),
                       "ms_per_audio_s": 1000 * wall / total, "x_real_time": total / wall,
                       "ratio": wall / median["wav16", stage], "cpu_over_wall": cpu,
                       "snr_db": snr if stage == STAGES[0] and name != "wav16" else None, "status": status}
                rows.append(row)
                cells.append([label(name), stage, fmt(kbit), fmt(row["ms_per_utt"]), fmt(row["ms_per_audio_s"]),
                              fmt(row["x_real_time"]), fmt(row["ratio"]) + "x", fmt(cpu),
                              "inf" if row["snr_db"] == math.inf else fmt(row["snr_db"]), ""])
        columns = ["format", "stage", "kbit/s", "ms/utt", "ms/audio-s", "x real time", "vs WAV 16k", "cpu/wall",
                   "SNR dB", "note"]
        if not any(row[-1] for row in cells):  # every format could be written: no notes
            columns, cells = columns[:-1], [row[:-1] for row in cells]
        print_table(columns, cells, {"format", "stage", "note"})

        loader_names = [name for name in args.loader_formats if name in datasets]
        passes = loader_speeds({name: datasets[name] for name in loader_names}, args.workers, args.batch_size,
                               args.loader_utterances, args.repeats, args.seed)
        cells = []
        for name in loader_names:
            rate = {w: statistics.median(p.audio_seconds / p.wall for p in passes[name, w]) for w in args.workers}
            for n_workers in args.workers:
                runs = passes[name, n_workers]
                utt_rate = statistics.median(p.utterances / p.wall for p in runs)
                cpu_ms = statistics.median(1000 * p.cpu / p.audio_seconds for p in runs)
                busy = statistics.median(p.cpu / p.wall for p in runs)
                ratio = rate[n_workers] / rate[0] if 0 in rate else None
                rows.append({"table": "loader", "format": name, "stage": "loader", "workers": n_workers,
                             "utterances": runs[0].utterances, "audio_s": round(runs[0].audio_seconds, 2),
                             "utt_per_s": utt_rate, "x_real_time": rate[n_workers], "ratio": ratio,
                             "cpu_ms_per_audio_s": cpu_ms, "cpu_over_wall": busy, "status": "ok"})
                cells.append([label(name), str(n_workers), str(runs[0].utterances), fmt(utt_rate),
                              fmt(rate[n_workers]), fmt(ratio) + "x" if ratio else "-", fmt(cpu_ms), fmt(busy)])
        print(f"loader: ds2.data.make_loader, minibatches of at most {args.batch_size} utterances "
              f"({args.batch_size * BUDGET_SECONDS_PER_UTTERANCE:g} s budget), persistent workers, pin_memory off; "
              f"{cores} cores\n")
        print_table(["format", "workers", "utt/pass", "utt/s", "audio-s/s", "vs 0 workers", "CPU ms/audio-s",
                     "cores busy"], cells, {"format"})
    if args.csv:
        write_csv(args.csv, rows, CSV_FIELDS)


if __name__ == "__main__":
    main()
