"""A small audio classifier: a log-mel front end (torchaudio) and a 2-D CNN."""

from __future__ import annotations

import torch
import torchaudio
from torch import nn


class AudioCNN(nn.Module):
    """Waveform ``(B, C, T)`` -> log-mel ``(B, 1, n_mels, frames)`` -> CNN -> logits ``(B, C)``.

    The front end (``torchaudio.transforms.MelSpectrogram``, channels averaged, log, per-clip
    standardisation) has no trainable parameters and is held outside the module's registered
    children, so :class:`~dcloop.models.FoldEnsemble` stacks only the CNN's parameters and
    ``torch.func.vmap`` runs the front end once per batch for all K replicas.

    Args:
        in_channels: channels of the waveform (averaged to mono).
        num_classes: C.
        sample_rate: Hz.
        n_mels, n_fft, hop_length: of the mel spectrogram.
        width: channels of the first conv block (doubled in the second and third).
        dropout: before the classifier.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        sample_rate: int = 8000,
        n_mels: int = 32,
        n_fft: int = 256,
        hop_length: int = 192,
        width: int = 8,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self._frontend = [
            torchaudio.transforms.MelSpectrogram(
                sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels
            )
        ]

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]

        self.features = nn.Sequential(
            *block(1, width),
            *block(width, 2 * width),
            *block(2 * width, 2 * width),
            nn.AdaptiveAvgPool2d((2, 2)),
            nn.Flatten(),
        )
        self.head = nn.Sequential(
            nn.Linear(8 * width, 64), nn.ReLU(), nn.Dropout(dropout), nn.Linear(64, num_classes)
        )

    def logmel(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T)`` waveforms -> ``(B, 1, n_mels, frames)`` standardised log-mel."""
        mel = self._frontend[0].to(x.device)(x.float().mean(1))
        logmel = torch.log(mel + 1e-6)
        mu = logmel.mean(dim=(1, 2), keepdim=True)
        sd = logmel.std(dim=(1, 2), keepdim=True)
        return ((logmel - mu) / (sd + 1e-5)).unsqueeze(1)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """The parameter-free front end (:meth:`logmel`): the same for every fold replica,
        so :class:`~dcloop.models.FoldEnsemble`'s loop over replicas computes it once per
        batch and runs each replica with ``prepared=True``."""
        return self.logmel(x)

    def forward(self, x: torch.Tensor, prepared: bool = False) -> torch.Tensor:
        """Logits of waveforms ``x``, or of ``x`` already through :meth:`prepare_input`."""
        return self.head(self.features(x if prepared else self.logmel(x)))
