"""Symmetric InfoNCE over features gathered from all ranks (open_clip's ClipLoss).

Scaling (pinned by tests/test_loss.py): with `local_loss=True` each rank returns the mean
cross-entropy of ITS rows against all gathered columns. With equal per-rank batches, the mean
of the per-rank losses equals the single-process loss on the concatenated batch. With
`gather_with_grad=True` the all_gather backward sums the gradients of every rank's loss into
the owner's features, so each rank's feature gradients are world_size x the gradients of the
global loss; data-parallel averaging of parameter gradients (DDP / DeepSpeed) divides that
world_size back out, so parameters get exactly the gradient of the global loss. The logit
scale is replicated and not gathered: its per-rank gradients average to the global one.

Works without torch.distributed initialised (world_size 1, no communication).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn
from torch.nn import functional as F


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_features(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    gather_with_grad: bool,
    rank: int,
    world_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate every rank's features in rank order (all ranks must hold the same batch size).

    gather_with_grad: autograd-aware all_gather (gradients flow back to the owning rank).
    Otherwise a plain all_gather whose local slice is replaced by the local tensor, so
    gradients flow through the local rows only.
    """
    if world_size == 1:
        return image_features, text_features
    if gather_with_grad:
        all_image = torch.cat(dist_fn.all_gather(image_features), dim=0)
        all_text = torch.cat(dist_fn.all_gather(text_features), dim=0)
        return all_image, all_text
    gathered_image = [torch.zeros_like(image_features) for _ in range(world_size)]
    gathered_text = [torch.zeros_like(text_features) for _ in range(world_size)]
    dist.all_gather(gathered_image, image_features.detach())
    dist.all_gather(gathered_text, text_features.detach())
    gathered_image[rank] = image_features
    gathered_text[rank] = text_features
    return torch.cat(gathered_image, dim=0), torch.cat(gathered_text, dim=0)


class ClipLoss(nn.Module):
    """Contrastive image-text loss; call with normalised features and exp(logit scale).

    local_loss=True (the recipe's choice): logits of the local rows vs all gathered columns,
    labels = arange(local_batch) + rank * local_batch -- O(local x global) memory instead of
    O(global^2). local_loss=False computes the full global logits on every rank.
    Use gather_with_grad=True with local_loss=True; without it the other ranks' contribution
    to the local features' gradient is lost.
    """

    def __init__(
        self,
        local_loss: bool = True,
        gather_with_grad: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        super().__init__()
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self._rank = rank
        self._world_size = world_size

    def _rank_world(self) -> tuple[int, int]:
        rank, world = _dist_info()
        return (
            rank if self._rank is None else self._rank,
            world if self._world_size is None else self._world_size,
        )

    def logits(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits_per_image, logits_per_text, labels) as this rank sees them."""
        rank, world = self._rank_world()
        all_image, all_text = gather_features(
            image_features, text_features, self.gather_with_grad, rank, world
        )
        if self.local_loss:
            logits_per_image = logit_scale * image_features @ all_text.T
            logits_per_text = logit_scale * text_features @ all_image.T
            offset = rank * image_features.shape[0]
            n = image_features.shape[0]
        else:
            logits_per_image = logit_scale * all_image @ all_text.T
            logits_per_text = logits_per_image.T
            offset, n = 0, all_image.shape[0]
        labels = torch.arange(offset, offset + n, device=image_features.device)
        return logits_per_image, logits_per_text, labels

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
    ) -> torch.Tensor:
        if image_features.shape != text_features.shape:
            raise ValueError(
                f"ClipLoss: image_features {tuple(image_features.shape)} and text_features "
                f"{tuple(text_features.shape)} must have the same shape (one caption per image)"
            )
        logits_per_image, logits_per_text, labels = self.logits(
            image_features, text_features, logit_scale
        )
        # Cross-entropy in fp32: under bf16 autocast a 75k-way softmax loses most of its digits.
        loss_image = F.cross_entropy(logits_per_image.float(), labels)
        loss_text = F.cross_entropy(logits_per_text.float(), labels)
        return (loss_image + loss_text) / 2
