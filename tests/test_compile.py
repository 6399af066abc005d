"""train.compile: the encoder's blocks compiled in place train like the eager model.

A tiny timm ViT (2 blocks, width 32, 16x16 images) for 3 SGD steps, with EW (one backward pass)
and PCGrad (T backward passes through the compiled graph, retain_graph). Inductor's fused kernels
may sum in another order than eager PyTorch: float32 rounding, so losses and parameters agree to
rtol 1e-4 (measured: below 1e-6), not bit for bit. The first compilation takes ~10 s on one core.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

from tokenmtl.balancing import create
from tokenmtl.engine.compile import maybe_compile
from tokenmtl.engine.grad_driver import GradDriver
from tokenmtl.models import DenseHead, MultiTaskModel, TimmViTAdapter


def tiny_model() -> MultiTaskModel:
    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_tiny_patch16_224", num_classes=0, img_size=16, patch_size=8, depth=2, embed_dim=32, num_heads=2
    )
    return MultiTaskModel(TimmViTAdapter(vit), {"seg": DenseHead(32, 3), "depth": DenseHead(32, 1)})


def batches() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [
        (
            torch.randn(2, 3, 16, 16, generator=gen),
            torch.randint(0, 3, (2, 16, 16), generator=gen),
            torch.rand(2, 1, 16, 16, generator=gen),
        )
        for _ in range(3)
    ]


def train(method: str, compiled: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model = maybe_compile(tiny_model(), compiled)
    driver = GradDriver(model, create(method, 2, **({"seed": 0} if method == "pcgrad" else {})))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    seen = []
    for image, seg, depth in batches():
        out = model(image)
        losses = {"seg": F.cross_entropy(out["seg"], seg), "depth": F.l1_loss(out["depth"], depth)}
        seen.append(torch.stack([v.detach() for v in losses.values()]))
        optimizer.zero_grad()
        driver.backward(losses)
        optimizer.step()
    return torch.stack(seen), {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("method", ["ew", "pcgrad"])
def test_compiled_blocks_train_to_the_eager_losses_and_parameters(method):
    eager_losses, eager_state = train(method, compiled=False)
    compiled_losses, compiled_state = train(method, compiled=True)
    torch.testing.assert_close(compiled_losses, eager_losses, rtol=1e-4, atol=1e-6)
    assert compiled_state.keys() == eager_state.keys()  # checkpoints keep their keys
    for key, value in eager_state.items():
        torch.testing.assert_close(compiled_state[key], value, rtol=1e-4, atol=1e-6, msg=key)


def test_maybe_compile_compiles_every_block_in_place_only_when_enabled():
    model = tiny_model()
    blocks = list(model.encoder.blocks)
    assert maybe_compile(model, False) is model
    assert all(getattr(b, "_compiled_call_impl", None) is None for b in model.encoder.blocks)
    maybe_compile(model, True)
    assert list(model.encoder.blocks) == blocks  # same module objects
    assert all(b._compiled_call_impl is not None for b in model.encoder.blocks)


def test_maybe_compile_needs_encoder_blocks():
    with pytest.raises(ValueError, match="train.compile needs a model with encoder.blocks"):
        maybe_compile(torch.nn.Linear(2, 2), True)
