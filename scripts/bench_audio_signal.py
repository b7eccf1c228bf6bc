"""Audio's own signal for data health: which log-mel signature finds planted outliers, and
whether a waveform comparison finds planted copies (issue 22).

The data: :func:`bench_health_planted_run.write_fsdd` per seed (the spoken digits' training
recordings 10-49 with 25 white-noise clips, 25 tones and 50 copies moved by 20-60 ms at a gain
of 0.7-1.3 with noise 30 dB down), every training clip read as the run reads it (8 kHz,
1 s). No training: these are the signals :class:`dcloop.callbacks.DataHealth` computes on an
audio run's clips (``scripts/bench_health_planted_run.py --data fsdd`` scores the run).

* Outliers: Datalab's kNN rule (:func:`dcloop.health.find_outliers`, k = 10) on log-mel
  spectrograms (32 bands, 32 ms windows every 24 ms), each standardised per clip, under
  different floors of the log; F1 against the 50 plants at the rule's fence, and the best F1
  over cut-offs.
* Copies: :func:`dcloop.health.audio_leakage` inside the set: is each copy's original among
  its 10 candidates, is it the best match, and how far apart are copies and the closest
  distinct clips by :func:`dcloop.health.waveform_distance`.

Usage: ``OMP_NUM_THREADS=1 python scripts/bench_audio_signal.py --out
scripts/results/bench_audio_signal`` (one thread, as every benchmark here).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_health_planted as bhp  # noqa: E402
from bench_health_planted_run import data_root, write_fsdd  # noqa: E402

from dcloop.data.audio import read_audio  # noqa: E402
from dcloop.health import audio_leakage, find_outliers, knn  # noqa: E402
from dcloop.health.audio import _standardise, mel_power  # noqa: E402

SR = 8000


def load(seed: int, workdir: Path):
    truth = write_fsdd(seed, workdir / f"fsdd_seed{seed}")
    root = data_root("fsdd", workdir / f"fsdd_seed{seed}") / "train"
    clips = torch.stack([read_audio(str(root / f), SR, SR) for f in truth["file"]])
    orig = truth["original"].to_numpy()
    partner = {}
    for i, o in enumerate(orig):
        if o >= 0:
            partner[i], partner[int(o)] = int(o), i
    return clips, truth["outlier"].to_numpy(), partner


def variants(power: torch.Tensor, power64: torch.Tensor) -> list[tuple[str, str, torch.Tensor]]:
    """(signature, metric, features) to compare."""
    mean = float(power.double().mean())
    clip_max = power.amax((1, 2), keepdim=True)

    def logmel(p: torch.Tensor, floor) -> torch.Tensor:
        return _standardise(torch.log(p + floor).flatten(1))

    front = "log(power + 1e-6) (the audio_cnn front end)"
    out = [
        (front, "euclidean", logmel(power, 1e-6)),
        (front, "cosine", logmel(power, 1e-6)),
        (front + ", 64 bands", "euclidean", logmel(power64, 1e-6)),
        ("floor 40 dB below each clip's peak", "euclidean", logmel(power, clip_max * 1e-4)),
    ]
    for db in (30, 40, 50):
        floor = mean * 10 ** (-db / 10)
        out.append((f"floor {db} dB below the set's mean power", "euclidean", logmel(power, floor)))
    out.append(("floor 40 dB below the set's mean power", "cosine", logmel(power, mean * 1e-4)))
    floor64 = float(power64.double().mean()) * 1e-4
    out.append(
        ("floor 40 dB below the set's mean power, 64 bands", "euclidean", logmel(power64, floor64))
    )
    return out


def duplicates(clips: torch.Tensor, partner: dict[int, int]) -> dict:
    t0 = time.perf_counter()
    px = audio_leakage(clips, sample_rate=SR)
    seconds = time.perf_counter() - t0
    power = mel_power(clips, sample_rate=SR)
    floor = float(power.mean(-1).double().mean()) * 1e-4
    spectrum = _standardise(torch.log(power.mean(-1) + floor))
    full = _standardise(torch.log(power + floor).flatten(1))
    recall = {}
    for name, sig in (("mean spectrum", spectrum), ("whole log-mel", full)):
        idx = knn(sig, k=11, metric="euclidean").index.numpy()
        recall[name] = sum(partner[a] in idx[a][idx[a] != a][:10] for a in partner)
    best = px.reference.numpy()
    dist = px.distance.numpy()
    true = np.array([partner.get(i, -1) == best[i] for i in range(len(best))])
    flags = dist < 0.05
    found = np.zeros(len(best), bool)
    for i in np.flatnonzero(flags):
        found[i] = found[best[i]] = True
    is_copy = np.zeros(len(best), bool)
    is_copy[list(partner)] = True
    return {
        "copies": len(partner),
        "original_among_10_candidates": recall,
        "best_match_is_the_partner": int(true.sum()),
        "largest_distance_of_a_copy": round(float(dist[true].max()), 5),
        "smallest_distance_of_other_best_matches": round(float(dist[~true].min()), 4),
        "at_0.05": bhp.prf(found, is_copy),
        "seconds": round(seconds, 2),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--workdir", default="/tmp/bench_health_planted_run")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    table: dict[str, dict] = {}
    dups = []
    for seed in args.seeds:
        clips, out_t, partner = load(seed, Path(args.workdir))
        power = mel_power(clips, sample_rate=SR)
        power64 = mel_power(clips, sample_rate=SR, n_mels=64)
        for name, metric, sig in variants(power, power64):
            res = find_outliers(sig, metric=metric)
            row = bhp.prf(res.flags.numpy(), out_t)
            row["best_f1"] = bhp.best_f1(res.score.numpy(), out_t)
            key = f"{name}, {metric}"
            table.setdefault(key, {"signature": name, "metric": metric, "seeds": []})
            table[key]["seeds"].append(row)
        dups.append({"seed": seed, **duplicates(clips, partner)})
        n = len(clips)
    meta = bhp.page_meta(argv, t0)
    command, seeds = meta["command"], args.seeds
    md = [
        "# Audio's own signal: log-mel outliers and waveform copies (planted spoken digits)",
        "",
        "```",
        command,
        "```",
        "",
        f"- Date: {meta['date']}; {meta['machine']}; wall {meta['wall_s']} s.",
        f"- {n} training clips per seed: 50 planted outliers (25 white noise, 25 tones) and 50 "
        "planted copies (see the script's docstring). No training.",
        "",
        "## Outliers: Datalab's rule (k = 10) on log-mel spectrograms, per-clip standardised",
        "",
        "| signature | metric | "
        + " | ".join(f"seed {s}: flagged / F1 / best F1" for s in seeds)
        + " | mean F1 |",
        "|---|---|" + "---:|" * (len(seeds) + 1),
    ]
    for entry in table.values():
        name, metric, rows = entry["signature"], entry["metric"], entry["seeds"]
        cells = [f"{r['flagged']} / {r['f1']:.3f} / {r['best_f1']:.3f}" for r in rows]
        mean = np.mean([r["f1"] for r in rows])
        md.append(f"| {name} | {metric} | " + " | ".join(cells) + f" | {mean:.3f} |")
    md += [
        "",
        "## Copies: audio_leakage inside the set (10 candidates by the mean spectrum, then the "
        "waveform distance)",
        "",
        "| seed | copies | original among 10 candidates: mean spectrum / whole log-mel | best "
        "match is the partner | largest distance of a copy | smallest distance of another best "
        "match | at distance < 0.05: flagged / P / R / F1 | seconds |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for d in dups:
        r = d["original_among_10_candidates"]
        a = d["at_0.05"]
        md.append(
            f"| {d['seed']} | {d['copies']} | {r['mean spectrum']} / {r['whole log-mel']} | "
            f"{d['best_match_is_the_partner']} | {d['largest_distance_of_a_copy']} | "
            f"{d['smallest_distance_of_other_best_matches']} | {a['flagged']} / "
            f"{a['precision']:.3f} / {a['recall']:.3f} / {a['f1']:.3f} | {d['seconds']} |"
        )
    bhp.write_page(args.out, "\n".join(md) + "\n", {**meta, "outliers": table, "copies": dups})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
