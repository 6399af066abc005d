"""Optional ``torch.compile`` of the encoder's transformer blocks (``train.compile``, off by default).

Each block is compiled in place (``nn.Module.compile``): the module objects, their parameters and
``state_dict`` keys stay the same, so checkpoints, ``shared_parameters()``, DTME's expansion
(which runs the same blocks through ``encoder.run_block``) and Recon's layer names are unaffected.
The heads and the rest of the model stay eager.

Gradient methods take T backward passes through the same graph (``retain_graph=True``), which
AOTAutograd's donated buffers forbid (its error message names the switch); compiling therefore
turns ``torch._functorch.config.donated_buffer`` off, for the whole process.
The first steps pay the compilation (on a CPU,
Inductor builds C++ kernels with the system compiler); ``tests/test_compile.py`` checks that a
compiled model trains to the same losses as the eager one.
"""

from __future__ import annotations

from typing import Any

from torch import nn


def maybe_compile(model: nn.Module, enabled: bool, **options: Any) -> nn.Module:
    """Compile every block of ``model.encoder.blocks`` in place when ``enabled``; returns ``model``.

    ``options`` go to ``torch.compile`` (e.g. ``mode="reduce-overhead"``, ``dynamic=False``).
    """
    if not enabled:
        return model
    encoder = getattr(model, "encoder", None)
    blocks = getattr(encoder, "blocks", None)
    if blocks is None or len(blocks) == 0:
        raise ValueError(
            f"train.compile needs a model with encoder.blocks (a MultiTaskModel); "
            f"got {type(model).__name__} without them"
        )
    import torch._functorch.config as functorch_config

    if hasattr(functorch_config, "donated_buffer"):
        functorch_config.donated_buffer = False  # T backward passes retain the graph
    for block in blocks:
        block.compile(**options)
    return model
