"""alpha/beta tuning for LM beam search on a dev set, over cached log-probs.

A coarse grid, then a finer grid around its best point. Writes ``tune.csv`` (every point
tried), ``tune.png`` (WER heat map of each grid) and ``decoding.json`` (the best alpha and
beta, with the LM they were tuned for) next to the model, where ``ds2 decode --lm`` finds
them: the decoding defaults follow the model.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ds2.config import check, option
from ds2.data import read_manifest
from ds2.decode import DECODING_FILE, BeamSearchOptions, decode_cache, load_log_probs
from ds2.io import atomic_write, pyplot, save_figure
from ds2.metrics import score_pairs

log = logging.getLogger("ds2.tune")

COARSE_ALPHAS = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0)
COARSE_BETAS = (-1.0, 0.0, 1.0, 2.0, 3.0)


@dataclass(frozen=True)
class TuneOptions:
    beam_width: int = option(BeamSearchOptions().beam_width, "Beam width while tuning: decoding's own, so "
                             "the weights are tuned for the search they will be used in.", min=1)
    jobs: int = option(0, "Beam search threads (0: one per core).", min=0)
    decoder: str = option("ds2", "ds2, or pyctcdecode (the reference; slower).", choices=("ds2", "pyctcdecode"))

    def __post_init__(self):
        check(self)


def dev_wer(cache: dict, references: dict[int, str], options: BeamSearchOptions) -> tuple[float, float]:
    """(WER %, CER %) of LM beam search with ``options`` on the cached dev log-probs."""
    hypotheses = decode_cache(cache, options)
    report = score_pairs((references[i], hypotheses.get(i, "")) for i in references)
    return report.wer, report.cer


def grid(cache, references, base: BeamSearchOptions, alphas, betas, rows: list[dict], stage: str) -> np.ndarray:
    """WER over an alpha x beta grid; appends one row per point to ``rows``."""
    wer = np.zeros((len(alphas), len(betas)))
    for i, alpha in enumerate(alphas):
        for j, beta in enumerate(betas):
            wer[i, j], cer = dev_wer(cache, references, replace(base, alpha=float(alpha), beta=float(beta)))
            rows.append(dict(stage=stage, alpha=round(float(alpha), 4), beta=round(float(beta), 4),
                             wer=round(wer[i, j], 2), cer=round(cer, 2)))
            log.info("%s alpha=%.3f beta=%.3f: WER %.2f%% CER %.2f%%", stage, alpha, beta, wer[i, j], cer)
    return wer


def tune(
    logprobs: str | Path,
    manifest: str | Path,
    lm: str | Path,
    out_dir: str | Path,
    options: TuneOptions = TuneOptions(),
    alphas=COARSE_ALPHAS,
    betas=COARSE_BETAS,
) -> dict:
    """Tune alpha and beta on a dev manifest; returns the contents of decoding.json."""
    beam_width = options.beam_width
    cache = load_log_probs(logprobs)
    references = {i: r["text"] for i, r in enumerate(read_manifest(manifest, resolve_paths=False))}
    if not references:
        raise ValueError(f"{manifest}: empty dev manifest: nothing to tune on")
    if len(references) != len(cache["log_probs"]) + len(cache["errors"]):
        raise ValueError(f"{logprobs}: log-probs were computed for another manifest than {manifest}")
    if not cache["log_probs"]:
        raise ValueError(f"{logprobs}: no utterance has log-probs (none of {manifest}'s audio could be read): "
                         "nothing to tune on")
    out_dir = Path(out_dir)
    base = BeamSearchOptions(lm=str(lm), beam_width=beam_width, jobs=options.jobs, decoder=options.decoder)
    rows: list[dict] = []
    coarse = grid(cache, references, base, alphas, betas, rows, "coarse")
    i, j = np.unravel_index(np.argmin(coarse), coarse.shape)
    alpha_step = _step(alphas, i)
    beta_step = _step(betas, j)
    fine_alphas = [a for a in np.linspace(alphas[i] - alpha_step / 2, alphas[i] + alpha_step / 2, 5) if a >= 0]
    fine_betas = list(np.linspace(betas[j] - beta_step / 2, betas[j] + beta_step / 2, 5))
    fine = grid(cache, references, base, fine_alphas, fine_betas, rows, "fine")
    k, m = np.unravel_index(np.argmin(fine), fine.shape)
    best = dict(lm=str(Path(lm).resolve()), alpha=round(float(fine_alphas[k]), 4), beta=round(float(fine_betas[m]), 4),
                dev_wer=round(float(fine[k, m]), 2), beam_width=beam_width, manifest=str(manifest))
    with atomic_write(out_dir / "tune.csv") as handle:
        writer = csv.DictWriter(handle, fieldnames=["stage", "alpha", "beta", "wer", "cer"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    with atomic_write(out_dir / DECODING_FILE) as handle:
        json.dump(best, handle, indent=2)
    plot_surface(out_dir / "tune.png", (alphas, betas, coarse), (fine_alphas, fine_betas, fine), best)
    return best


def _step(values, index: int) -> float:
    neighbours = [abs(values[n] - values[index]) for n in (index - 1, index + 1) if 0 <= n < len(values)]
    return min(neighbours) if neighbours else 1.0


def plot_surface(path: Path, coarse, fine, best: dict) -> None:
    """PNG: dev WER heat maps of the coarse and the fine grid, best point marked."""
    figure, axes = pyplot().subplots(1, 2, figsize=(11, 4.2))
    for axis, (alphas, betas, wer), title in zip(axes, (coarse, fine), ("coarse grid", "fine grid")):
        image = axis.imshow(wer, origin="lower", aspect="auto", cmap="viridis_r")
        axis.set_xticks(range(len(betas)), [f"{b:.2f}" for b in betas])
        axis.set_yticks(range(len(alphas)), [f"{a:.2f}" for a in alphas])
        for (r, c), value in np.ndenumerate(wer):
            axis.text(c, r, f"{value:.1f}", ha="center", va="center", fontsize=8, color="white")
        axis.set(xlabel="beta (per word)", ylabel="alpha (LM weight, natural log)", title=f"dev WER %, {title}")
        figure.colorbar(image, ax=axis)
    figure.suptitle(f"best: alpha={best['alpha']}, beta={best['beta']}, dev WER {best['dev_wer']}%")
    figure.tight_layout()
    save_figure(figure, path)
