"""ClipLoss: single-process values by hand, and 2-rank gloo runs equal the single-process loss."""

from __future__ import annotations

import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn import functional as F

from worldclip.models.loss import ClipLoss

N, D, WORLD = 8, 16, 2


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    image = F.normalize(torch.randn(N, D, generator=g), dim=-1)
    text = F.normalize(torch.randn(N, D, generator=g), dim=-1)
    scale = torch.tensor(math.log(1 / 0.07)).exp()
    return image, text, scale


def _reference_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE written out with explicit log-softmax sums."""
    logits = scale * image @ text.T
    n = logits.shape[0]
    diag = logits.diagonal()
    loss_i = (torch.logsumexp(logits, dim=1) - diag).sum() / n
    loss_t = (torch.logsumexp(logits, dim=0) - diag).sum() / n
    return (loss_i + loss_t) / 2


def _single(local_loss: bool) -> dict[str, torch.Tensor]:
    image, text, scale = _batch()
    image.requires_grad_(True)
    text.requires_grad_(True)
    scale.requires_grad_(True)
    loss = ClipLoss(local_loss=local_loss)(image, text, scale)
    loss.backward()
    return {"loss": loss.detach(), "image": image.grad, "text": text.grad, "scale": scale.grad}


def test_single_process_matches_hand_written_infonce():
    image, text, scale = _batch()
    expected = _reference_loss(image, text, scale)
    for local_loss in (True, False):
        got = ClipLoss(local_loss=local_loss)(image, text, scale)
        torch.testing.assert_close(got, expected)


def test_perfect_alignment_has_low_loss_and_random_is_near_log_n():
    image, _, _ = _batch()
    aligned = ClipLoss()(image, image.clone(), torch.tensor(100.0))
    assert aligned.item() < 0.05
    uniform = ClipLoss()(image, image.clone(), torch.tensor(0.0))  # scale 0: all logits equal
    assert uniform.item() == pytest.approx(math.log(N), rel=1e-6)


def test_mismatched_shapes_are_rejected():
    image, text, scale = _batch()
    with pytest.raises(ValueError, match="same shape"):
        ClipLoss()(image, text[:-1], scale)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        results = {}
        for local_loss, with_grad in ((True, True), (False, True), (False, False)):
            image, text, scale = _batch()
            per = N // WORLD
            image = image[rank * per : (rank + 1) * per].clone().requires_grad_(True)
            text = text[rank * per : (rank + 1) * per].clone().requires_grad_(True)
            scale = scale.clone().requires_grad_(True)
            loss = ClipLoss(local_loss=local_loss, gather_with_grad=with_grad)(image, text, scale)
            loss.backward()
            key = f"{int(local_loss)}{int(with_grad)}"
            results[key] = {
                "loss": loss.detach(),
                "image": image.grad,
                "text": text.grad,
                "scale": scale.grad,
            }
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("loss")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def _stack(results: list[dict], key: str, field: str) -> torch.Tensor:
    return torch.cat([r[key][field] for r in results], dim=0)


def test_local_loss_with_grad_equals_global_loss(two_rank_results):
    """local_loss + gather_with_grad (the recipe's setting): mean of rank losses == global loss;
    each rank's feature gradients == WORLD x the global gradients of its rows (the all_gather
    backward sums all ranks' losses), which DP averaging turns into the exact global gradient;
    the replicated logit scale's gradients average to the global one."""
    ref = _single(local_loss=True)
    losses = torch.stack([r["11"]["loss"] for r in two_rank_results])
    torch.testing.assert_close(losses.mean(), ref["loss"])
    torch.testing.assert_close(_stack(two_rank_results, "11", "image"), WORLD * ref["image"])
    torch.testing.assert_close(_stack(two_rank_results, "11", "text"), WORLD * ref["text"])
    scale_grads = torch.stack([r["11"]["scale"] for r in two_rank_results])
    torch.testing.assert_close(scale_grads.mean(), ref["scale"])
    # Each rank's loss is its own rows' loss, not the global one (catches a wrong label offset).
    assert not torch.allclose(losses[0], losses[1])


def test_global_loss_on_every_rank(two_rank_results):
    """local_loss=False: every rank computes the full global loss. With gather_with_grad the
    gradient of the local rows is summed over ranks (WORLD x); without it only the local term
    flows back (1 x)."""
    ref = _single(local_loss=False)
    for r in two_rank_results:
        torch.testing.assert_close(r["01"]["loss"], ref["loss"])
        torch.testing.assert_close(r["00"]["loss"], ref["loss"])
    torch.testing.assert_close(_stack(two_rank_results, "01", "image"), WORLD * ref["image"])
    torch.testing.assert_close(_stack(two_rank_results, "00", "image"), ref["image"])
    torch.testing.assert_close(_stack(two_rank_results, "00", "text"), ref["text"])
