"""The one description of the digits autoencoder, shared by the three frameworks.

Architecture (identical in PyTorch, JAX and TensorFlow):

    x [64 pixels in 0..1]
      -> Dense(hidden) -> ReLU                       encoder
      -> LFQ(dim=hidden, codebook_size=2**D)         project_in (hidden -> D), sign
                                                     codes, project_out (D -> hidden)
      -> ReLU -> Dense(64) -> sigmoid                decoder

Loss: mean squared reconstruction error + the LFQ aux loss
(entropy_weight * (H_sample - gamma * H_batch) + commitment_weight * commitment).
Adam, fixed seed. Data: scikit-learn's bundled 8x8 digits (no download), pixels
scaled to [0, 1], a fixed split of 1497 training and 300 test images.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Spec:
    """Hyperparameters; the command line of train.py overrides a few."""

    codebook_dim: int = 10
    hidden: int = 128
    steps: int = 2000
    batch_size: int = 128
    learning_rate: float = 2e-3
    entropy_weight: float = 0.1
    commitment_weight: float = 0.25
    inv_temperature: float = 10.0
    seed: int = 0
    test_size: int = 300


@dataclasses.dataclass
class Data:
    train: np.ndarray  # [n_train, 64] float32 in [0, 1]
    test: np.ndarray  # [n_test, 64]


def load_digits_data(spec: Spec) -> Data:
    """The bundled digits, shuffled with the spec's seed and split."""
    from sklearn.datasets import load_digits

    images = load_digits().data.astype(np.float32) / 16.0
    order = np.random.default_rng(spec.seed).permutation(len(images))
    images = images[order]
    return Data(train=images[spec.test_size :], test=images[: spec.test_size])


def batches(data: Data, spec: Spec):
    """An endless stream of training batches, reshuffled every epoch (seeded)."""
    rng = np.random.default_rng(spec.seed + 1)
    while True:
        order = rng.permutation(len(data.train))
        for start in range(0, len(order) - spec.batch_size + 1, spec.batch_size):
            yield data.train[order[start : start + spec.batch_size]]
