"""Text classifiers that vmap over the K fold replicas (``torch.func.vmap``).

Inputs are ``(B, max_len)`` int64 token ids, padded with ``pad_id`` (0) at the end; every
text has the same ``max_len`` ids, so shapes never depend on the data. Padding is handled
with masks computed on the device (no ``.item()``, no boolean indexing): no host
synchronisation per batch.

``nn.EmbeddingBag`` has no vmap batching rule for stacked weights, so :class:`TextBoW`
is fastText's model written as ``nn.Embedding`` + a masked mean over the ids (the same
function as ``EmbeddingBag(mode="mean")`` with padding) + a linear layer.

A local pretrained encoder plugs in with :class:`PretrainedText`: any ``_target_`` that
returns an ``nn.Module`` mapping ``(B, L)`` ids to ``(B, D)`` or ``(B, L, D)`` features
(see ``docs/text.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn


def masked_mean(emb: torch.Tensor, ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Mean of ``emb`` ``(B, L, D)`` over the positions where ``ids != pad_id``: ``(B, D)``.

    An all-padding row gives zeros (the count is clamped to 1).
    """
    mask = (ids != pad_id).to(emb.dtype).unsqueeze(-1)
    return (emb * mask).sum(1) / mask.sum(1).clamp_min(1.0)


class TextBoW(nn.Module):
    """fastText-style bag of n-grams: mean of the id embeddings, then a linear classifier.

    With the tokenizer's word bigrams (``ngrams: [1, 2]``) and hash buckets this is
    fastText's supervised model (Joulin et al., 2017). ``hidden > 0`` adds one ReLU layer.

    Args:
        vocab_size: number of ids (filled in from the data: ``dm.net_kwargs``).
        num_classes: C.
        dim: embedding size.
        hidden: width of an optional hidden layer (0: none, as fastText).
        dropout: dropout on the mean embedding.
        pad_id: the padding id (ignored in the mean).
    """

    def __init__(
        self,
        vocab_size: int = 10000,
        num_classes: int = 2,
        dim: int = 64,
        hidden: int = 0,
        dropout: float = 0.0,
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        self.pad_id = int(pad_id)
        self.embedding = nn.Embedding(int(vocab_size), int(dim), padding_idx=self.pad_id)
        nn.init.uniform_(self.embedding.weight, -1.0 / dim, 1.0 / dim)
        with torch.no_grad():
            self.embedding.weight[self.pad_id].zero_()
        self.dropout = nn.Dropout(dropout)
        layers: list[nn.Module] = []
        width = int(dim)
        if hidden:
            layers += [nn.Linear(width, int(hidden)), nn.ReLU()]
            width = int(hidden)
        layers.append(nn.Linear(width, int(num_classes)))
        self.head = nn.Sequential(*layers)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` ids -> ``(B, dim)`` mean embedding."""
        return masked_mean(self.embedding(ids), ids, self.pad_id)

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` features of :meth:`embed` -> ``(B, C)`` logits (mixup mixes in between)."""
        return self.head(self.dropout(z))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.classify(self.embed(ids))


class TextCNN(nn.Module):
    """Kim (2014)'s CNN: embeddings, 1-D convolutions of several widths, max over time.

    Padded positions are excluded from the max by a mask (a large negative value), and
    texts shorter than a filter are padded, so every width sees every text.

    Args:
        vocab_size: number of ids (filled in from the data).
        num_classes: C.
        dim: embedding size.
        channels: filters per width.
        widths: filter widths (in tokens).
        dropout: dropout before the classifier.
        pad_id: the padding id.
    """

    def __init__(
        self,
        vocab_size: int = 10000,
        num_classes: int = 2,
        dim: int = 64,
        channels: int = 64,
        widths: Sequence[int] = (2, 3, 4),
        dropout: float = 0.0,
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        self.pad_id = int(pad_id)
        self.embedding = nn.Embedding(int(vocab_size), int(dim), padding_idx=self.pad_id)
        self.widths = tuple(int(w) for w in widths)
        self.convs = nn.ModuleList(
            nn.Conv1d(int(dim), int(channels), w, padding=w - 1) for w in self.widths
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(int(channels) * len(self.widths), int(num_classes))

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` ids -> ``(B, channels * len(widths))`` max-pooled features."""
        emb = self.embedding(ids).transpose(1, 2)  # (B, D, L)
        valid = (ids != self.pad_id).to(emb.dtype)  # (B, L)
        feats = []
        for w, conv in zip(self.widths, self.convs, strict=True):
            h = torch.relu(conv(emb))  # (B, C, L + w - 1): output t covers inputs t-w+1..t
            # an output position is valid when its window holds at least one real token
            win = nn.functional.max_pool1d(
                nn.functional.pad(valid, (w - 1, w - 1)).unsqueeze(1), w, stride=1
            )  # (B, 1, L + w - 1)
            h = h * win - (1.0 - win) * 1e4
            feats.append(h.amax(-1))
        return torch.cat(feats, -1).clamp_min(0.0)  # all-padding rows: zeros, not -1e4

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` features of :meth:`embed` -> ``(B, C)`` logits (mixup mixes in between)."""
        return self.head(self.dropout(z))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.classify(self.embed(ids))


class PretrainedText(nn.Module):
    """A local pretrained encoder with a linear head, for the fold replicas.

    ``encoder`` is a factory (Hydra: a ``_target_`` with ``_partial_: true``) that returns an
    ``nn.Module`` mapping ``(B, L)`` ids to ``(B, D)`` or ``(B, L, D)`` features; a
    sequence output is mean-pooled over the non-padding ids. Each of the K replicas gets its
    own copy (K times the encoder's parameters: prefer small encoders, or ``freeze``).

    Args:
        encoder: factory of the encoder module (it must load from a local path: nothing is
            downloaded; e.g. ``transformers.AutoModel.from_pretrained`` with
            ``local_files_only=True`` wrapped to return ``last_hidden_state``).
        num_classes: C.
        dim: D, the encoder's feature size.
        freeze: keep the encoder's weights fixed (only the head trains; its parameters
            then get no gradient, so AdamW leaves them as loaded).
        pad_id: the padding id.
    """

    def __init__(
        self,
        encoder: Callable[[], nn.Module],
        num_classes: int = 2,
        dim: int = 64,
        freeze: bool = False,
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        self.encoder = encoder() if not isinstance(encoder, nn.Module) else encoder
        if not isinstance(self.encoder, nn.Module):
            raise ValueError(f"encoder() must return an nn.Module; got {type(self.encoder)}")
        self.freeze = bool(freeze)
        self.pad_id = int(pad_id)
        self.head = nn.Linear(int(dim), int(num_classes))

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.encoder(ids)
        if h.ndim == 3:
            h = masked_mean(h, ids, self.pad_id)
        # detach, not requires_grad_(False): FoldEnsemble stacks the replicas' parameters
        # into fresh ones, so only a cut in the graph keeps the encoder fixed there too
        return h.detach() if self.freeze else h

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` features of :meth:`embed` -> ``(B, C)`` logits (mixup mixes in between)."""
        return self.head(z)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.classify(self.embed(ids))
