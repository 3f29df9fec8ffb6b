"""FOCAL's per-image InfoNCE, as the released code computes it (MPC reuses it for all three terms).

For one image: pristine pixels are the anchors *and* the positives, forged pixels the negatives.
Each anchor's positive logit is the **mean** cosine similarity to the other sampled anchors (not
the log-mean-exp the paper's formula implies), its negative logits are its similarities to every
sampled negative, and the loss is the cross-entropy of ``[positive, negatives] / tau`` with the
positive as the class, averaged over anchors. FOCAL samples at most ``samples`` (1,000) pixels of
each class per image, without replacement (``torch.randperm``).

An image lacking either class is skipped, and so is one with a single pristine pixel (its mean
over "the other anchors" would be 0/0 = NaN, a hole FOCAL's ``size(0) == 0`` guard leaves open).
A batch in which no image qualifies gives a zero loss that still depends on the features, so the
backward pass runs and no parameter moves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["info_nce", "image_info_nce", "masks_at", "sample_rows"]


def sample_rows(x: torch.Tensor, limit: int) -> torch.Tensor:
    """At most ``limit`` rows of ``x``, a random subset without replacement (all of them if fewer)."""
    if x.shape[0] <= limit:
        return x
    return x[torch.randperm(x.shape[0], device=x.device)[:limit]]


def info_nce(anchors: torch.Tensor, negatives: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """FOCAL's InfoNCE of ``(m, C)`` anchors/positives against ``(k, C)`` negatives (both unit rows).

    ``m`` must be at least 2 and ``k`` at least 1 (callers skip otherwise).
    """
    m = anchors.shape[0]
    with torch.autocast(anchors.device.type, enabled=False):  # similarities / 0.1 need more than bf16's 3 digits
        anchors, negatives = anchors.float(), negatives.float()
        sim = anchors @ anchors.T
        positive = (sim.sum(dim=1) - sim.diagonal()) / (m - 1)  # mean over the other anchors
        logits = torch.cat([positive[:, None], anchors @ negatives.T], dim=1) / tau
        target = torch.zeros(m, dtype=torch.long, device=anchors.device)
        return F.cross_entropy(logits, target)


def image_info_nce(features: torch.Tensor, masks: torch.Tensor, tau: float = 0.1, samples: int = 1000) -> tuple[torch.Tensor, int]:
    """The mean over usable images of FOCAL's InfoNCE; ``features`` ``(B, C, h, w)``, ``masks`` ``(B, h, w)`` bool.

    Returns the loss and how many images were used.
    """
    feats = F.normalize(features.float(), dim=1).permute(0, 2, 3, 1)
    losses = []
    for b in range(feats.shape[0]):
        pristine, forged = feats[b][~masks[b]], feats[b][masks[b]]
        if pristine.shape[0] < 2 or forged.shape[0] < 1:
            continue
        losses.append(info_nce(sample_rows(pristine, samples), sample_rows(forged, samples), tau))
    if not losses:
        return features.sum() * 0.0, 0
    return torch.stack(losses).mean(), len(losses)


def masks_at(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, 1, S, S)`` {0, 1} masks at a feature grid, bool ``(B, h, w)``: bilinear then >= 0.5.

    FOCAL resizes its masks with OpenCV's bilinear ``resize`` and thresholds at 127 of 255.
    """
    small = F.interpolate(masks.float(), size=size, mode="bilinear", align_corners=False)
    return small[:, 0] >= 0.5
