"""Large Margin Cosine Loss (CosFace) classifier head, as EigenPlaces and DSFormer train with: one head per group."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LMCLHead(nn.Module):
    """Cosine classifier with normalised weights; training logits are s * (cos - m) for the true class, s * cos else."""

    def __init__(self, in_features: int, num_classes: int, s: float = 100.0, m: float = 0.4) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"an LMCL head needs at least one class, got {num_classes}")
        self.s = float(s)
        self.m = float(m)
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.xavier_uniform_(self.weight)

    @property
    def num_classes(self) -> int:
        """Number of classes (rows of the weight)."""
        return int(self.weight.shape[0])

    def forward(self, descriptors: Tensor, labels: Tensor) -> Tensor:
        """Margin logits (B, K) in float32 (computed outside autocast: s * cos needs the precision)."""
        with torch.autocast(device_type=descriptors.device.type, enabled=False):
            cosine = F.linear(F.normalize(descriptors.float(), dim=1), F.normalize(self.weight.float(), dim=1))
            margin = F.one_hot(labels, self.num_classes).to(cosine.dtype) * self.m
            return self.s * (cosine - margin)


def lmcl_loss(head: LMCLHead, descriptors: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of the margin logits: the Large Margin Cosine Loss, averaged over the batch."""
    return F.cross_entropy(head(descriptors, labels), labels)
