"""Recon (Shi et al., ICLR 2023): find the shared layers where task gradients conflict most and
turn them into task-specific copies.

`Recon` (also `tokenmtl.balancing.create("recon", ...)` and `--method recon`) scores layers while
its base method updates the model; `ReconEdit` branches the top-k layers at the end of the
window (`split_layers`). Both combine with DTME.
"""

import tokenmtl.balancing  # noqa: F401  (first: it registers Recon, importing this package's balancer)
from tokenmtl.recon.balancer import Recon
from tokenmtl.recon.scores import ConflictScorer, group_spans, layer_conflict_counts
from tokenmtl.recon.split import resolve_linear, split_layers, split_parameters

__all__ = [
    "ConflictScorer",
    "Recon",
    "group_spans",
    "layer_conflict_counts",
    "resolve_linear",
    "split_layers",
    "split_parameters",
]
