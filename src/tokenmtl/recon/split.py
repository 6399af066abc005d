"""Branching shared layers: named `nn.Linear` modules of the blocks become per-task copies.

The copies start equal to the shared layer and live in the model's forking trunk
(`trunk.split.<block>__<path>`), which forks the task streams at the first branched block; the
block keeps a proxy that calls them, so each copy sees only its task's stream.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from tokenmtl.dtme.expand import forking_trunk
from tokenmtl.dtme.modules import SplitLinearProxy, TaskSpecificLinear


def split_key(name: str) -> str:
    """Module-dict key of a branched layer ('7.mlp.fc2' -> '7__mlp__fc2')."""
    return name.replace(".", "__")


def resolve_linear(blocks: nn.Module, name: str) -> tuple[nn.Module, str, nn.Linear, int]:
    """(parent module, attribute, the Linear, block index) for a name like '7.mlp.fc2'."""
    parts = name.split(".")
    if len(parts) < 2 or not parts[0].isdigit():
        raise ValueError(f"split module names look like '<block>.<path>' (e.g. '7.mlp.fc2'); got {name!r}")
    try:
        parent = blocks.get_submodule(".".join(parts[:-1]))
        module = parent.get_submodule(parts[-1])
    except AttributeError as exc:
        raise ValueError(f"split module {name!r} does not exist under encoder.blocks ({exc})") from None
    if not isinstance(module, nn.Linear):
        raise ValueError(f"split module {name!r} must be an nn.Linear; got {type(module).__name__}")
    return parent, parts[-1], module, int(parts[0])


def split_layers(model: nn.Module, names: Sequence[str]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Make each named Linear of `model.encoder.blocks` task-specific (in place).

    Returns (added parameters: the per-task copies, removed parameters: the shared Linears'),
    so an optimizer can drop the removed ones and give the copies a parameter group.
    """
    targets = [(name, *resolve_linear(model.encoder.blocks, name)) for name in names]  # check all first
    trunk = forking_trunk(model)
    reference = next(model.encoder.parameters())
    added: list[nn.Parameter] = []
    removed: list[nn.Parameter] = []
    for name, parent, attr, linear, block in targets:
        copies = TaskSpecificLinear(linear, model.tasks).to(device=reference.device, dtype=reference.dtype)
        shared = list(linear.parameters())
        trunk.add_split(split_key(name), copies, block, sum(p.numel() for p in shared))
        del parent._modules[attr]
        object.__setattr__(parent, attr, SplitLinearProxy(copies, name))
        added += list(copies.parameters())
        removed += shared
    return added, removed


def split_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The per-task copies of every branched layer of `model` (empty when none)."""
    trunk = getattr(model, "trunk", None)
    return list(trunk.split.parameters()) if trunk is not None and hasattr(trunk, "split") else []
