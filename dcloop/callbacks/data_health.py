"""Data health in the loop: outliers, near-duplicates, leakage, weak patterns (issue 22)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch

from dcloop._checks import check_bool, check_choice, check_float, check_int
from dcloop.callbacks.confident_learning import ConfidentLearning
from dcloop.callbacks.oof import OOFCollector
from dcloop.callbacks.results import find_callback
from dcloop.health import (
    audio_leakage,
    audio_signature,
    class_imbalance,
    find_leakage,
    find_near_duplicates,
    find_outliers,
    find_rare_texts,
    find_test_only,
    knn,
    pixel_leakage,
    pixel_signature,
    replica_outputs,
    text_duplicates,
    underperforming_groups,
)
from dcloop.health._inputs import METRICS, as_features
from dcloop.health.features import NoEmbedding
from dcloop.health.knn import INDEXES
from dcloop.health.outliers import Outliers
from dcloop.health.pixels import PixelPairs
from dcloop.results import write_csv, write_json
from dcloop.timing import timed

log = logging.getLogger(__name__)

#: ``space`` of :class:`DataHealth`.
SPACES = ("mean", "held_out")

#: Files of ``data_issues/``.
FILES = (
    "outliers",
    "near_duplicates",
    "leakage",
    "underperforming_groups",
    "test_only",
    "class_imbalance",
)


#: Token ids the rare-text check holds on the host (int32), at most: 400 MB.
MAX_RARITY_IDS = 100_000_000

#: ``outlier_signal`` of :class:`DataHealth`.
OUTLIER_SIGNALS = ("auto", "embedding")

#: ``summary.json``'s count of the outliers the data's own signal flags, by signal.
OWN_COUNT = {"pixels": "pixel_outliers", "spectrogram": "spectrogram_outliers"}

#: ``pixels="auto"`` compares images by their pixels when their smaller side has at least
#: this many pixels (the pixel signal aligns 3 px moves on a central window; 8x8 digits
#: leave no room for that).
MIN_PIXEL_SIDE = 16


def _host_budget() -> int:
    """Bytes of images the pixel signal may keep on the host: an eighth of the available
    RAM (the OOF embedding buffer's rule)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 8
    except (ValueError, OSError, AttributeError):
        return 1 << 30


class HostInputs(list):
    """Input batches kept on the host for the data's own signal: images ``(B, C, H, W)``
    (``ndim=4``) or waveforms ``(B, C, T)`` (``ndim=3``), up to ``max_bytes`` in all and
    (``min_side``) of images at least that large; past either limit the list is emptied and
    :attr:`dropped` says why (the signal is then skipped)."""

    def __init__(self, max_bytes: int, min_side: int = 1, ndim: int = 4) -> None:
        super().__init__()
        self.max_bytes, self.min_side, self.ndim = int(max_bytes), int(min_side), int(ndim)
        self.bytes = 0
        self.dropped: str | None = None

    def add(self, x: torch.Tensor) -> None:
        if self.dropped is not None:
            return
        if self.ndim == 4 and min(x.shape[-2:]) < self.min_side:
            self.dropped = f"images of {tuple(x.shape[-2:])} px, below {self.min_side} px"
        elif self.bytes + x.numel() * 4 > self.max_bytes:
            what = "clips" if self.ndim == 3 else "images"
            self.dropped = f"{what} past {self.max_bytes >> 20} MB of host memory"
        if self.dropped is not None:
            self.clear()
            return
        self.append(x.float().cpu())
        self.bytes += x.numel() * 4


@torch.inference_mode()
def ensemble_features(
    model: Any, loader: Any, inputs: HostInputs | None = None, tokens: list | None = None
) -> torch.Tensor:
    """``(N, D)`` mean over the fold replicas of their penultimate embedding, in loader order:
    one map for train and test alike (a held-out replica per sample would put the samples of
    different folds in different coordinate systems). Float batches of ``inputs.ndim``
    dimensions (images ``(B, C, H, W)``, clips ``(B, C, T)``) go to ``inputs`` (kept on the
    host within its limits) when it is given, token id batches ``(B, L)`` to ``tokens``."""
    params, buffers = model._stacked()
    skeleton = model._skeleton[0]
    was = skeleton.training
    skeleton.eval()
    out = []
    try:
        for batch in loader:
            batch = model.transfer_batch_to_device(batch, model.device, 0)  # text: a tuple
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            if inputs is not None and isinstance(x, torch.Tensor) and x.ndim == inputs.ndim:
                if x.is_floating_point():
                    inputs.add(x)
            if tokens is not None and isinstance(x, torch.Tensor) and x.ndim == 2:
                if not (x.is_floating_point() or x.dtype == torch.bool):
                    tokens.append(x.to(torch.int32).cpu())  # half of int64 on the host
            feats = 0.0
            for k in range(model.num_folds):
                one = ({n: p[k] for n, p in params.items()}, {n: b[k] for n, b in buffers.items()})
                feats = feats + replica_outputs(skeleton, one[0], one[1], x)[1].float()
            out.append(feats / model.num_folds)
    finally:
        skeleton.train(was)
    return torch.cat(out)


class DataHealth(L.Callback):
    """At the end of fit: outliers, near-duplicates, underperforming groups and class imbalance
    of the training set, from the replicas' mean embedding (or, ``space="held_out"``, the
    held-out embeddings the OOF pass kept, :attr:`OOFCollector.features`). After the test:
    train/test leakage and test-only patterns from the replicas' mean embedding of both sets
    (the training set's reused from the end of fit, the test set's one pass). Writes
    ``data_issues/*.csv`` in the run folder and ``data_issues/summary.json``.

    Args:
        output_dir: the run folder (default: the trainer's ``default_root_dir``).
        k: neighbours of the kNN (outliers, near-duplicates).
        metric: ``cosine`` (Datalab's, for D > 3) or ``euclidean``.
        duplicate_threshold: near-duplicate radius as a fraction of the median
            nearest-neighbour distance (Datalab: 0.13).
        leakage_ratio: a test sample whose nearest / second-nearest training distance is
            below this is flagged as leakage too (default 0: the distance rule only; on a
            weak embedding the ratio ranked the real CIFAR-10 pairs poorly, AP 0.33).
        group_threshold: clusters below this share of the overall held-out accuracy.
        save_features: also save ``features_train.npy`` / ``features_test.npy``.
        pixels: for images, also compare the test images with the training images by their
            pixels (:func:`~dcloop.health.pixel_leakage`, kept on the host during the
            passes). ``"auto"`` (the default): for images of at least
            :data:`MIN_PIXEL_SIDE` px a side, while they take at most an eighth of the
            available RAM (else skipped, with a log line); ``True``: any size (a warning when
            memory stops it). On a default CIFAR run the embedding found none of 38 planted
            copies and 4 of 41 planted outliers among 116 flags
            (``scripts/results/bench_health_planted_run_cifar.md``). A test image whose
            best / second-best aligned distance is below ``pixel_ratio`` is flagged as
            leakage (``signal`` column: embedding, pixel, both).
            The default 0.7 sits below 0.716, the cut-off where recall peaked (0.892) with
            precision >= 0.8 on the 139 real CIFAR-10 pairs
            (``scripts/results/bench_health_leakage_shifted.md``; 0.73 before the
            shift-tolerant candidates, ``bench_health_leakage_both20.md``).
            Inside the training set the pixels find near-duplicates too: a pair whose ratio
            is below ``pixel_duplicate_ratio`` joins ``near_duplicates.csv``.
        pixel_duplicate_ratio: the pixel cut-off inside the training set (default 0.5, the
            value ``scripts/bench_health_planted.py`` used before it was measured: F1 0.957
            on planted CIFAR copies counting the subset's own duplicate photos as true, 0.813
            counting them as false; ``scripts/results/bench_health_planted.md``). Stricter
            than ``pixel_ratio``: inside one set both members of a pair are scored.
        audio: for audio (waveform batches ``(B, C, T)`` from a source with a
            ``sample_rate``), compare the clips themselves (:mod:`dcloop.health.audio`):
            outliers by Datalab's kNN rule on their log-mel spectrograms (with
            ``outlier_signal="auto"``, column ``spectrogram``), copies inside the training set
            and test clips with a copy in training by their waveforms (``signal`` column of
            ``leakage.csv``: ``waveform``). ``"auto"`` (the default) and
            ``True``: while the clips take at most an eighth of the available RAM (else
            skipped: logged at info level, a warning for ``True``). On planted spoken digits
            the embedding flagged none of 19 noise clips and none of 36 moved copies
            (``scripts/results/bench_health_planted_run_fsdd_embedding.md``).
        audio_distance: two clips whose waveform distance (``1 -`` their largest normalised
            cross-correlation over lags) is below this are copies. The default 0.05 is noise
            about 10 dB below the clip; on spoken digits planted copies were at 0.0017 or
            less, distinct recordings (one speaker saying one digit) at 0.08 or more
            (``scripts/results/bench_audio_signal.md``).
        index: the kNN search of the fit-end detectors (:func:`~dcloop.health.knn`):
            ``auto`` (exact below 50,000 training samples, k-means cells from there on:
            approximate, about 10x less work; ``scripts/results/bench_health_datalab.md``),
            ``exact``, ``cells`` or ``faiss`` (the optional extra ``fast``).
        space: the training set's embedding for the fit-end detectors: ``mean`` (the
            replicas' mean embedding, one extra pass over the training set; one map for every
            sample, and for the test set) or ``held_out`` (the OOF pass's buffer, no extra
            pass; each fold's samples in its own replica's coordinates).
        rarity: for text (token id batches), also flag texts whose words the training set
            rarely uses (:func:`~dcloop.health.find_rare_texts`: mean ``log(N / df)`` of
            their distinct ids, the tokenizer's unknown id as the rarest, Datalab's fence),
            read from the ids of the same pass; ``outliers.csv`` then says which ``signal``
            flagged each row (``embedding``, ``rarity``, ``both``). On AG News with 40
            planted off-topic texts: F1 0.800 at the fence, 1.000 at the best cut-off
            (``scripts/results/bench_health_planted.md``). Needs ``space="mean"``.
        text_jaccard: for text, two texts whose sets of known token ids have a Jaccard of at
            least this are near-duplicates (:func:`~dcloop.health.text_duplicates`, exact; read
            from the ids of the same passes), and a test text with such a training text leaks
            (``signal`` ``tokens``); 0: off. The default 0.6 scored F1 0.96 on AG News with
            planted edited copies and its own repeated stories
            (``scripts/results/bench_text_duplicates.md``); the embedding's rule alone, in
            default runs, 0.62-0.69 (``bench_health_planted_run_agnews_embedding*.md``).
        outlier_signal: which rule fills ``outliers.csv``. ``"auto"`` (the default): the
            data's own signal where the pass has one (images: Datalab's kNN rule on the
            pixel thumbnails, column ``pixels``; audio: the same rule on the log-mel
            spectrograms, column ``spectrogram``; text: token rarity, column ``rarity``),
            else the embedding's kNN rule. ``"embedding"``: the embedding's rule, and on
            text token rarity beside it (either flags a row). The embedding of a network
            trained on the labels puts hard, between-class samples far from the rest: in
            default runs its rule flagged 116 CIFAR images (4 of them planted outliers) and
            167 AG News texts (11 planted), where the data's own signals flagged
            (``scripts/results/bench_health_planted_run_*.md``).
    """

    def __init__(
        self,
        output_dir: str | Path | None = None,
        *,
        k: int = 10,
        metric: str = "cosine",
        duplicate_threshold: float = 0.13,
        leakage_ratio: float = 0.0,
        pixels: bool | str = "auto",
        pixel_ratio: float = 0.7,
        pixel_duplicate_ratio: float = 0.5,
        audio: bool | str = "auto",
        audio_distance: float = 0.05,
        group_threshold: float = 0.5,
        save_features: bool = True,
        space: str = "mean",
        index: str = "auto",
        rarity: bool = True,
        text_jaccard: float = 0.6,
        outlier_signal: str = "auto",
    ) -> None:
        check_int("health.k", k, minimum=1)
        check_choice("health.metric", metric, METRICS)
        check_float("health.duplicate_threshold", duplicate_threshold, low=0.0)
        check_float("health.leakage_ratio", leakage_ratio, low=0.0, high=1.0)
        check_float("health.group_threshold", group_threshold, low=0.0, high=1.0, low_open=True)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.k, self.metric = k, metric
        self.duplicate_threshold = duplicate_threshold
        self.leakage_ratio = leakage_ratio
        if isinstance(pixels, str):
            check_choice("health.pixels", pixels, ("auto",))
            self.pixels: bool | str = pixels
        else:
            self.pixels = check_bool("health.pixels", pixels)
        if isinstance(audio, str):
            check_choice("health.audio", audio, ("auto",))
            self.audio: bool | str = audio
        else:
            self.audio = check_bool("health.audio", audio)
        self.audio_distance = check_float(
            "health.audio_distance", audio_distance, low=0.0, high=1.0
        )
        self._rate: int | None = None  # the audio source's sample rate, at the end of fit
        check_choice("health.outlier_signal", outlier_signal, OUTLIER_SIGNALS)
        self.outlier_signal = outlier_signal
        self.pixel_ratio = check_float("health.pixel_ratio", pixel_ratio, low=0.0, high=1.0)
        self.pixel_duplicate_ratio = check_float(
            "health.pixel_duplicate_ratio", pixel_duplicate_ratio, low=0.0, high=1.0
        )
        self._images: dict[str, list] = {"train": [], "test": []}
        self.group_threshold = group_threshold
        self.save_features = check_bool("health.save_features", save_features)
        self.summary: dict[str, Any] = {}
        check_choice("health.space", space, SPACES)
        check_choice("health.index", index, INDEXES)
        self.index = index
        self.space = space
        self.rarity = check_bool("health.rarity", rarity)
        self.text_jaccard = check_float("health.text_jaccard", text_jaccard, low=0.0, high=1.0)
        self._tokens: list = []
        self._test_tokens: list = []
        self._train_pairs: pd.DataFrame | None = None
        self._train_shared: torch.Tensor | None = None  # the training set's mean embedding

    @property
    def train_embedding(self) -> torch.Tensor | None:
        """``(N, D)`` the replicas' mean embedding of the training set from the end of fit
        (``space="mean"``), else ``None``; the student's neighbour votes reuse it."""
        return self._train_shared

    @classmethod
    def when(cls, enabled: bool, **kwargs: Any) -> DataHealth | None:
        """The callback when ``enabled`` (config ``health``), else ``None`` (left out)."""
        return cls(**kwargs) if check_bool("health", enabled) else None

    def folder(self, trainer: L.Trainer) -> Path:
        root = self.output_dir if self.output_dir is not None else Path(trainer.default_root_dir)
        return root / "data_issues"

    # ------------------------------------------------------------------ hooks
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run or not trainer.is_global_zero:
            return
        samples = getattr(pl_module, "samples", None)
        cl = find_callback(trainer, ConfidentLearning)
        oof = cl.collector if cl is not None else find_callback(trainer, OOFCollector)
        if samples is None or oof is None or oof.probs is None:
            return
        with timed(trainer, "data_health"):
            feats = oof.features if self.space == "held_out" else None
            if feats is None:  # the replicas' mean embedding: one pass over the training set
                self._rate = _sample_rate(trainer)
                kept = self._keeper()
                self._tokens = []
                loader = trainer.datamodule.oof_dataloader()
                tokens = self._tokens if self.rarity or self.text_jaccard > 0 else None
                try:
                    feats = ensemble_features(pl_module, loader, kept, tokens)
                except NoEmbedding as err:  # a net with no embedding: nothing to judge on
                    log.warning("data health skipped: %s", err)
                    self._skipped = True
                    return
                self._train_shared = feats
                self._images["train"] = self._kept_inputs(kept, "training")
            self._train_issues(trainer, feats, samples.labels, oof.probs, self._sources(trainer))

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.fast_dev_run or not trainer.is_global_zero or getattr(self, "_skipped", False):
            return
        dm = trainer.datamodule
        if not hasattr(pl_module, "_stacked") or dm is None or not hasattr(dm, "oof_dataloader"):
            return
        # (not timed apart: RunResults counts on_test_start..teardown as the test phase)
        train = self._train_shared
        if train is None:
            train = ensemble_features(pl_module, dm.oof_dataloader())
        kept = self._keeper() if self._images["train"] else None
        self._test_tokens = []
        tokens = self._test_tokens if self._tokens and self.text_jaccard > 0 else None
        test = ensemble_features(pl_module, dm.test_dataloader(), kept, tokens)
        self._images["test"] = self._kept_inputs(kept, "test")
        test_sources = getattr(getattr(dm, "test_dataset", None), "sources", None)
        self._test_issues(trainer, train, test, self._sources(trainer), test_sources)

    # ---------------------------------------------------------------- private
    def _keeper(self) -> HostInputs | None:
        """Where the pass keeps the inputs for the data's own signal (``None``: off): the
        clips of an audio source (``audio``), else image batches (``pixels``)."""
        if self._rate is not None:
            return HostInputs(_host_budget(), ndim=3) if self.audio else None
        if not self.pixels:
            return None
        return HostInputs(_host_budget(), MIN_PIXEL_SIDE if self.pixels == "auto" else 1)

    def _kept_inputs(self, kept: HostInputs | None, split: str) -> list:
        if kept is None:
            return []
        if kept.dropped is not None:
            what, asked = ("audio", self.audio) if kept.ndim == 3 else ("pixel", self.pixels)
            if asked is True:
                level = logging.WARNING
            else:  # auto: small images are the expected case (the embedded digits)
                level = logging.DEBUG if kept.dropped.endswith(" px") else logging.INFO
            log.log(
                level,
                "data health: %s signal skipped for the %s set (%s)",
                what,
                split,
                kept.dropped,
            )
            return []
        return list(kept)

    def _train_images(self, num_train: int) -> torch.Tensor | None:
        """The training inputs (images or clips) the pass kept for the data's own signal, one
        per training sample (at least 3), else ``None``."""
        train = self._images["train"]
        if not train:
            return None
        tr = torch.cat(train)
        return tr if tr.shape[0] == num_train and tr.shape[0] >= 3 else None

    def _own_outliers(self, num_train: int, k: int) -> tuple[str, Outliers] | None:
        """Datalab's kNN rule on the data's own signal, when the pass kept the inputs:
        ``("pixels", ...)`` on the training images' thumbnails
        (:func:`~dcloop.health.pixel_signature`), ``("spectrogram", ...)`` on the clips'
        log-mel spectrograms (:func:`~dcloop.health.audio_signature`, euclidean: mean F1
        0.928 against 0.790 cosine on planted spoken digits, ``bench_audio_signal.md``);
        else ``None``."""
        tr = self._train_images(num_train)
        if tr is None:
            return None
        k = min(k, tr.shape[0] - 1)
        if tr.ndim == 3:
            sig = audio_signature(tr, sample_rate=self._rate)
            return "spectrogram", find_outliers(sig, k=k, metric="euclidean")
        return "pixels", find_outliers(pixel_signature(tr), k=k)

    def _own_train_pairs(self, trainer: L.Trainer | None, num_train: int) -> np.ndarray | None:
        """``(P, 2)`` pairs ``i < j`` of training inputs that are copies by the data's own
        signal (images: pixel ratio below ``pixel_duplicate_ratio``; clips: waveform distance
        below ``audio_distance``; texts: token Jaccard at least ``text_jaccard``), when the
        pass kept them, else ``None``."""
        tr = self._train_images(num_train)
        if tr is None:
            ids = self._token_ids(self._tokens, num_train, "duplicate texts")
            if ids is None or self.text_jaccard <= 0 or num_train < 2:
                return None
            pad, unk = _pad_unk(trainer)
            res = text_duplicates(ids, threshold=self.text_jaccard, pad_id=pad, unk_id=unk)
            return res.pairs.numpy().reshape(-1, 2)
        if tr.ndim == 3:
            px = audio_leakage(tr, sample_rate=self._rate)
            rows = (px.distance < self.audio_distance).nonzero().flatten()
        else:
            side = min(tr.shape[-2:])
            shift = min(3, side // 8)
            px = pixel_leakage(tr, crop=side - 2 * shift, max_shift=shift)
            rows = (px.ratio < self.pixel_duplicate_ratio).nonzero().flatten()
        ref = px.reference[rows]
        pairs = torch.stack([torch.minimum(rows, ref), torch.maximum(rows, ref)], 1)
        return torch.unique(pairs, dim=0).numpy().reshape(-1, 2)

    def _own_test_pairs(self, trainer: L.Trainer | None, num_test: int, num_train: int):
        """``(pairs, sure, signal name)``: :func:`~dcloop.health.pixel_leakage` of the test
        images against the training images, sure below ``pixel_ratio``;
        :func:`~dcloop.health.audio_leakage` of the clips, sure below ``audio_distance``;
        or each test text's most similar training text by
        :func:`~dcloop.health.text_duplicates`, sure at ``text_jaccard`` or more (the signal
        on, one size), else ``None``."""
        train, test = self._images["train"], self._images["test"]
        if not (train and test):
            return self._text_test_pairs(trainer, num_test, num_train)
        tr, te = torch.cat(train), torch.cat(test)
        if tr.shape[0] != num_train or te.shape[0] != num_test or tr.shape[1:] != te.shape[1:]:
            return None
        if tr.ndim == 3:
            px = audio_leakage(te, tr, sample_rate=self._rate)
            return px, px.distance.numpy() < self.audio_distance, "waveform"
        side = min(tr.shape[-2:])
        shift = min(3, side // 8)
        px = pixel_leakage(te, tr, crop=side - 2 * shift, max_shift=shift)
        return px, px.ratio.numpy() < self.pixel_ratio, "pixel"

    def _text_test_pairs(self, trainer: L.Trainer | None, num_test: int, num_train: int):
        """:meth:`_own_test_pairs` for text: each test text's most similar training text."""
        if self.text_jaccard <= 0:
            return None
        train = self._token_ids(self._tokens, num_train, "duplicate texts")
        test = self._token_ids(self._test_tokens, num_test, "leaked texts")
        if train is None or test is None:
            return None
        pad, unk = _pad_unk(trainer)
        res = text_duplicates(test, train, threshold=self.text_jaccard, pad_id=pad, unk_id=unk)
        best = torch.full((num_test,), -1, dtype=torch.long)
        sim = torch.zeros(num_test)
        first = np.unique(res.pairs[:, 0].numpy(), return_index=True)[1]  # most similar first
        rows = res.pairs[first]
        best[rows[:, 0]] = rows[:, 1]
        sim[rows[:, 0]] = res.jaccard[first]
        pairs = PixelPairs(best.clamp_min(0), 1 - sim, torch.full((num_test,), float("nan")))
        return pairs, (best >= 0).numpy(), "tokens"

    @staticmethod
    def _token_ids(tokens: list, rows: int, what: str) -> torch.Tensor | None:
        """``(rows, L)`` int64 token ids from the batches the pass kept, else ``None`` (none
        kept, more than :data:`MAX_RARITY_IDS`, or not one row per sample)."""
        if not tokens:
            return None
        size = sum(t.numel() for t in tokens)
        if size > MAX_RARITY_IDS:
            limit = MAX_RARITY_IDS
            log.info("data health: %s skipped (%d token ids, more than %d)", what, size, limit)
            return None
        ids = torch.cat([t.reshape(t.shape[0], -1) for t in tokens]).long()
        return ids if ids.shape[0] == rows else None

    def _rare_texts(self, trainer: L.Trainer | None, num_train: int) -> Outliers | None:
        """:func:`~dcloop.health.find_rare_texts` of the training texts' ids kept during the
        pass (``rarity=True``, token id data, one row per sample), else ``None``."""
        if not self.rarity or num_train < 2:
            return None
        ids = self._token_ids(self._tokens, num_train, "rare texts")
        if ids is None:
            return None
        pad, unk = _pad_unk(trainer)
        return find_rare_texts(ids, pad_id=pad, unk_id=unk)

    @staticmethod
    def _sources(trainer: L.Trainer) -> list[str] | None:
        dm = trainer.datamodule
        return list(dm.train_sources) if hasattr(dm, "train_sources") else None

    def _train_issues(self, trainer, feats, labels, probs, sources) -> None:
        x = as_features(feats, "held-out embeddings")
        n = x.shape[0]
        src = sources if sources is not None else [f"row {i}" for i in range(n)]
        k = min(self.k, n - 1)
        nb = knn(x, k=k, metric=self.metric, index=self.index)
        out = find_outliers(x, k=k, neighbours=nb)
        rare = self._rare_texts(trainer, n)
        own = self._own_outliers(n, k)
        if self.outlier_signal == "auto":  # the data's own signal, where there is one
            other = own if own is not None else ("rarity", rare)
            union = other[1] is None
        else:  # the embedding's rule, with token rarity beside it on text
            other, union = ("rarity", rare), True
        dup = find_near_duplicates(x, k=k, threshold=self.duplicate_threshold, neighbours=nb)
        num_classes = probs.shape[1]
        groups = underperforming_groups(x, labels, probs.float(), threshold=self.group_threshold)
        imb = class_imbalance(labels.cpu(), num_classes)
        folder = self.folder(trainer)
        folder.mkdir(parents=True, exist_ok=True)
        table = _outlier_rows(out, other, src, union=union)
        write_csv(table, folder / "outliers.csv")
        pairs = dup.pairs.cpu().numpy()
        dist = dup.distance.cpu().numpy()
        px = self._own_train_pairs(trainer, n)
        if px is not None and len(px):  # pixel pairs the embedding missed, at their distance
            known = {(int(i), int(j)) for i, j in pairs}
            px = np.array([p for p in px.tolist() if tuple(p) not in known], int).reshape(-1, 2)
            xn = _unit(x)
            px_dist = (1 - (xn[px[:, 0]] * xn[px[:, 1]]).sum(1)).clip(min=0)
            pairs = np.concatenate([pairs, px])
            dist = np.concatenate([dist, px_dist])
            order = np.argsort(dist, kind="stable")
            pairs, dist = pairs[order], dist[order]
        self._train_pairs = pd.DataFrame(
            {
                "split_a": "train",
                "source_a": [src[i] for i in pairs[:, 0]],
                "split_b": "train",
                "source_b": [src[j] for j in pairs[:, 1]],
                "distance": dist,
                "index_a": pairs[:, 0],
                "index_b": pairs[:, 1],
            }
        )
        write_csv(self._train_pairs, folder / "near_duplicates.csv")
        cluster, acc = groups.cluster.cpu().numpy(), groups.accuracy.cpu().numpy()
        weak = groups.flags.cpu().numpy().nonzero()[0]
        g = pd.DataFrame(
            {
                "index": weak,
                "source": [src[i] for i in weak],
                "group": cluster[weak],
                "score": acc[cluster[weak]],
            }
        )
        write_csv(
            g.sort_values(["score", "group", "index"], kind="stable"),
            folder / "underperforming_groups.csv",
        )
        counts = imb.counts.cpu().numpy()
        write_csv(
            pd.DataFrame(
                {
                    "class": np.arange(num_classes),
                    "count": counts,
                    "share": imb.share.cpu().numpy(),
                    "flagged": (np.arange(num_classes) == imb.rarest) & imb.imbalanced,
                }
            ),
            folder / "class_imbalance.csv",
        )
        if self.save_features:
            np.save(folder / f"features_train_{self.space}.npy", x.cpu().numpy())
        self.summary.update(
            {
                "outliers": int(len(table)),
                "outlier_signal": _signal_name(other, union),
                **({"rare_texts": int(rare.flags.sum())} if rare is not None else {}),
                **({OWN_COUNT[own[0]]: int(own[1].flags.sum())} if own is not None else {}),
                "near_duplicate_pairs": int(pairs.shape[0]),
                "underperforming_groups": int(groups.flagged.sum()),
                "underperforming_samples": int(len(weak)),
                "class_imbalance": bool(imb.imbalanced),
                "rarest_class": imb.rarest,
            }
        )
        write_json(self.summary, folder / "summary.json")

    def _test_issues(self, trainer, train, test, sources, test_sources) -> None:
        a = as_features(train, "train embeddings")
        t = as_features(test, "test embeddings", min_rows=1)
        src = sources if sources is not None else [f"row {i}" for i in range(a.shape[0])]
        tsrc = (
            test_sources
            if test_sources is not None
            else [f"test row {i}" for i in range(t.shape[0])]
        )
        leak = find_leakage(
            a,
            t,
            metric=self.metric,
            threshold=self.duplicate_threshold,
            ratio_threshold=self.leakage_ratio,
        )
        only = find_test_only(a, t, metric=self.metric)
        folder = self.folder(trainer)
        folder.mkdir(parents=True, exist_ok=True)
        flags = leak.flags.cpu().numpy()
        tr = leak.train.cpu().numpy()
        dist = leak.distance.cpu().numpy()
        signal = np.where(flags, "embedding", "")
        own = self._own_test_pairs(trainer, t.shape[0], a.shape[0])
        if own is not None:  # the data's own pair replaces the embedding's where it is sure
            px, sure, name = own
            ref = px.reference.numpy()
            same = sure & flags & (ref == tr)
            signal = np.where(same, "both", np.where(sure, name, signal))
            tr = np.where(sure, ref, tr)
            an, tn = _unit(a), _unit(t)
            dist = np.where(sure, (1 - (tn * an[tr]).sum(1)).clip(min=0), dist)
            flags = flags | sure
        hit = flags.nonzero()[0]
        lk = pd.DataFrame(
            {
                "split_a": "test",
                "source_a": [tsrc[i] for i in hit],
                "split_b": "train",
                "source_b": [src[tr[i]] for i in hit],
                "distance": dist[hit],
                "index_a": hit,
                "index_b": tr[hit],
                "ratio": leak.ratio.cpu().numpy()[hit],
                "signal": signal[hit],
            }
        ).sort_values("distance", kind="stable")
        write_csv(lk, folder / "leakage.csv")
        pair_rows = lk.drop(columns=["ratio", "signal"])
        parts = [p for p in (self._train_pairs, pair_rows) if p is not None]
        pairs = pd.concat([p for p in parts if len(p)] or parts[-1:])
        write_csv(pairs.sort_values("distance", kind="stable"), folder / "near_duplicates.csv")
        flagged = only.flags.cpu().numpy().nonzero()[0]
        score = only.score.cpu().numpy()
        write_csv(
            pd.DataFrame(
                {
                    "index": flagged,
                    "source": [tsrc[i] for i in flagged],
                    "pattern": only.pattern.cpu().numpy()[flagged],
                    "score": score[flagged],
                }
            ),
            folder / "test_only.csv",
        )
        if self.save_features:
            np.save(folder / "features_train.npy", a.cpu().numpy())
            np.save(folder / "features_test.npy", t.cpu().numpy())
        self.summary.update(
            {
                "leakage": int(len(hit)),
                "test_only": int(len(flagged)),
                "test_only_patterns": int(only.pattern.max()) + 1 if len(flagged) else 0,
            }
        )
        write_json(self.summary, folder / "summary.json")


def _pad_unk(trainer: L.Trainer | None) -> tuple[int, int | None]:
    """The padding id and the tokenizer's unknown id of the run's text source."""
    dm = getattr(trainer, "datamodule", None)
    pad = getattr(dm, "net_kwargs", {}).get("pad_id", 0) if dm is not None else 0
    tok = getattr(getattr(dm, "source_object", None), "tokenizer", None)
    return int(pad), getattr(tok, "unk_id", None)


def _sample_rate(trainer: L.Trainer) -> int | None:
    """The sample rate of the run's audio source, else ``None`` (not audio)."""
    source = getattr(trainer.datamodule, "source_object", None)
    rate = getattr(source, "sample_rate", None)
    return int(rate) if isinstance(rate, (int, float)) and rate > 0 else None


def _unit(x: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(x.float(), dim=1).cpu().numpy()


def _signal_name(other: tuple[str, Outliers | None], union: bool) -> str:
    name, res = other
    if res is None:
        return "embedding"
    return f"embedding+{name}" if union else name


def _outlier_rows(
    out: Outliers,
    other: tuple[str, Outliers | None],
    sources: list[str],
    *,
    union: bool = True,
) -> pd.DataFrame:
    """``outliers.csv``: ``index, source, score`` (the embedding's kNN distance), most
    outlying first. With the data's own signal ``other`` (text: ``("rarity", ...)``, images:
    ``("pixels", ...)``) also a column of its score and ``signal``: the rows it flags
    (``union``: or the embedding's rule flags), ordered by how far each is past its rule's
    cutoff (the larger of the two ratios), ``signal`` naming the rule(s) that flag it
    (``embedding``, the other's name, or ``both``)."""
    score = out.score.cpu().numpy()
    flags = out.flags.cpu().numpy()
    name, res = other
    if res is None:
        rows = flags.nonzero()[0]
        rows = rows[np.argsort(-score[rows], kind="stable")]
        return pd.DataFrame(
            {"index": rows, "source": [sources[i] for i in rows], "score": score[rows]}
        )
    theirs = res.score.cpu().numpy()
    by_other = res.flags.cpu().numpy()
    ratio = theirs / max(res.cutoff, 1e-12)
    past = np.maximum(score / max(out.cutoff, 1e-12), ratio) if union else ratio
    rows = ((flags | by_other) if union else by_other).nonzero()[0]
    rows = rows[np.argsort(-past[rows], kind="stable")]
    signal = np.where(flags & by_other, "both", np.where(flags, "embedding", name))
    return pd.DataFrame(
        {
            "index": rows,
            "source": [sources[i] for i in rows],
            "score": score[rows],
            name: theirs[rows],
            "signal": signal[rows],
        }
    )
