"""Does augmentation slow training? Loader throughput and training speed, clean vs augmented.

    .venv/bin/python benchmarks/augment.py                    # a synthesized corpus of 192 utterances
    .venv/bin/python benchmarks/augment.py --manifest recipes/tiny/data/train.json --steps 40

Noise (generated: white, pink, brown, hum, babble) and simulated rooms are made in a
temporary folder. Each configuration is measured --repeats times, alternating clean and
augmented runs so that the machine's load drifts over both alike; the table shows medians.

Columns:
- loader utt/s: the dataset read by the DataLoader in this process (num_workers=0): the
  audio read, augmented and turned into features, utterance by utterance. The cost of one
  loader worker.
- train steps/s, audio s/s: `ds2 train` of the tiny recipe's model (2 conv, 2 x 256 GRU,
  batch 16, Adam) with one loader worker (as the recipe runs), --steps steps from a fresh
  start, timed from the end of the first optimizer step to the end of the last (start-up
  excluded, the waits for the loader included). Audio seconds count the augmented audio.
  Two orders: "sorted" is SortaGrad's first epoch (the shortest utterances first, where
  loading weighs most against the model's work), "shuffled" the batches of a later epoch
  (a sample of the whole corpus: what an epoch costs on average).
- ratio: augmented / clean of the same column. Target (issue 11): training steps/s >= 0.90.
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ds2.train as ds2_train  # noqa: E402
from ds2 import audio  # noqa: E402
from ds2.augment import AugmentOptions, Augmenter  # noqa: E402
from ds2.data import SpeechDataset, make_batches, make_loader  # noqa: E402
from ds2.model import ModelConfig  # noqa: E402
from ds2.noise import NoiseOptions, RirOptions, prepare_noise, prepare_rirs  # noqa: E402
from ds2.synth import SynthConfig, synthesize_corpus  # noqa: E402
from ds2.text import Alphabet  # noqa: E402
from ds2.train import TrainConfig, train  # noqa: E402

RECIPE_MODEL = ModelConfig(conv_layers=2, conv_channels=(32, 16), conv_kernels=((41, 11), (21, 11)),
                           conv_strides=((2, 3), (2, 1)), rnn_type="gru", rnn_layers=2, rnn_hidden=256, fc_hidden=256)


def loader_speed(manifest: str, augment: AugmentOptions | None, limit: int) -> float:
    dataset = SpeechDataset(manifest, Alphabet(), augmenter=Augmenter(augment) if augment else None)
    indices = list(range(min(limit, len(dataset))))
    batches = [indices[i: i + 16] for i in range(0, len(indices), 16)]
    start = time.perf_counter()
    n = sum(len(batch) for batch in make_loader(dataset, batches, num_workers=0, epoch=1))
    return n / (time.perf_counter() - start)


def train_speed(manifest: str, dev: str, augment: AugmentOptions, steps: int, out: Path,
                sortagrad: bool = True) -> tuple[float, float]:
    """(steps/s, audio s/s) from the end of the first step to the end of the last: the
    loader's waits are in, start-up is out."""
    marks = []  # (time at the end of a step, audio seconds of its batch)
    original = ds2_train.train_step

    def timed_step(*args, **kwargs):
        result = original(*args, **kwargs)
        batch = inspect.signature(original).bind(*args, **kwargs).arguments["batch"]
        marks.append((time.perf_counter(), audio.frames_to_seconds(float(batch.feature_lengths.sum()))))
        return result

    config = TrainConfig(train_manifest=manifest, dev_manifest=dev, out_dir=str(out), epochs=50, batch_size=16,
                         optimizer="adam", lr=2e-3, num_workers=1, progress=False, checkpoint_every=0,
                         max_steps=steps, model=RECIPE_MODEL, augment=augment, sortagrad=sortagrad)
    ds2_train.train_step = timed_step
    try:
        train(config)
    finally:
        ds2_train.train_step = original
    wall = marks[-1][0] - marks[0][0]
    return (len(marks) - 1) / wall, sum(a for _, a in marks[1:]) / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", help="Training manifest (default: synthesize one).")
    parser.add_argument("--dev", help="Dev manifest (only read at start-up; default: the synthesized one).")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--loader-utterances", type=int, default=192)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ds2-bench-augment-") as tmp:
        tmp = Path(tmp)
        if args.manifest is None:
            corpus = synthesize_corpus(tmp / "corpus", SynthConfig(n_train=192, n_dev=8, n_test=0, seed=1), progress=False)
            args.manifest, args.dev = str(corpus["train"]), str(corpus["dev"])
        noise = prepare_noise(tmp / "noise", NoiseOptions(train_clips=4, test_clips=0, clip_seconds=15), progress=False)
        rirs = prepare_rirs(tmp / "rirs", RirOptions(train_rooms=8, test_rooms=0), progress=False)
        augmented = AugmentOptions(noise=str(noise["train"]), noise_prob=0.4, rir=str(rirs["train"]), reverb_prob=0.2,
                                   speed_prob=0.3, gain_prob=0.3)
        configs = {"clean": AugmentOptions(), "augmented": augmented}
        loader = {name: [] for name in configs}
        speed = {(name, order): [] for order in ("sorted", "shuffled") for name in configs}  # [(steps/s, audio s/s)]
        for repeat in range(args.repeats):
            for name, options in configs.items():
                loader[name].append(loader_speed(args.manifest, options if options.active else None,
                                                 args.loader_utterances))
            for order in ("sorted", "shuffled"):
                for name, options in configs.items():
                    speed[name, order].append(train_speed(args.manifest, args.dev or args.manifest, options, args.steps,
                                                          tmp / f"{name}-{order}{repeat}", order == "sorted"))
    print(f"augmented: {augmented}")
    base_loader = statistics.median(loader["clean"])
    print(f"{'config':<10} {'loader utt/s':>13} {'ratio':>6}  {'order':<9} {'train steps/s':>14} {'audio s/s':>10} {'ratio':>6}")
    for order in ("sorted", "shuffled"):
        base = statistics.median(s for s, _ in speed["clean", order])
        for name in configs:
            steps = statistics.median(s for s, _ in speed[name, order])
            audio_speed = statistics.median(a for _, a in speed[name, order])
            utts = statistics.median(loader[name])
            print(f"{name:<10} {utts:>13.1f} {utts / base_loader:>6.2f}  {order:<9} {steps:>14.3f} {audio_speed:>10.1f} "
                  f"{steps / base:>6.2f}")


if __name__ == "__main__":
    main()
