"""The digits autoencoder in PyTorch, with `lfq.backends.torch_backend.LFQ`."""

from __future__ import annotations

import numpy as np
import torch
from lfq.backends.torch_backend import LFQ
from spec import Data, Spec, batches
from torch import nn


class Autoencoder(nn.Module):
    def __init__(self, spec: Spec):
        super().__init__()
        self.encoder = nn.Linear(64, spec.hidden)
        self.quantizer = LFQ(
            dim=spec.hidden,
            codebook_size=2**spec.codebook_dim,
            entropy_loss_weight=spec.entropy_weight,
            commitment_loss_weight=spec.commitment_weight,
            inv_temperature=spec.inv_temperature,
        )
        self.decoder = nn.Linear(spec.hidden, 64)

    def forward(self, x):
        quantized, indices, aux_loss = self.quantizer(torch.relu(self.encoder(x)))
        return torch.sigmoid(self.decoder(torch.relu(quantized))), indices, aux_loss


def train(spec: Spec, data: Data, progress) -> dict:
    """Train; returns test reconstructions, indices of all images, and the loss history."""
    torch.manual_seed(spec.seed)
    model = Autoencoder(spec)
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.learning_rate)
    stream = batches(data, spec)
    for _ in range(spec.steps):
        x = torch.from_numpy(next(stream))
        recon, _, aux_loss = model(x)
        mse = torch.mean((recon - x) ** 2)
        optimizer.zero_grad()
        (mse + aux_loss).backward()
        optimizer.step()
        progress(mse.item(), aux_loss.item())
    model.eval()
    with torch.no_grad():
        recon, _, _ = model(torch.from_numpy(data.test))
        _, indices, _ = model(torch.from_numpy(np.concatenate([data.train, data.test])))
    return {"recon": recon.numpy(), "indices": indices.numpy()}
