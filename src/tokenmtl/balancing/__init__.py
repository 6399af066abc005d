"""Loss and gradient balancing methods, created by name.

>>> from tokenmtl import balancing
>>> balancer = balancing.create("cagrad", num_tasks=3, c=0.4)
>>> balancer.kind
'gradient'

``kind == "loss"``: ``weigh(losses) -> scalar`` (one backward pass); ``kind == "gradient"``:
``aggregate(grads (T, P), losses (T,)) -> (P,)``, or ``balance(grads, losses) -> BalanceResult``
(the update with this step's task and head weights). ``engine.grad_driver.GradDriver`` feeds either
from a model's losses. ``recon`` is listed here so `--method recon` works; it lives in ``tokenmtl.recon``
(an architecture change: its scores pick layers that a model edit branches per task).

What the task-specific parameters (heads) receive, following each method's authors:

==========  =====================================================================
ew          grad L_t (weight 1)
uw, dwa     w_t grad L_t (the loss weights; one backward pass)
famo        z_t / (c D_t) grad L_t (one backward pass of the FAMO objective)
mgda        w*_t grad L_t (authors' ``sum w L`` backward; ``weight_heads=False``: LibMTL's 1)
nashmtl     a_t grad L_t (authors' ``sum a L`` backward; the max_norm clip is shared-only)
pcgrad      grad L_t (LibMTL, Nash-MTL repository)
cagrad      grad L_t (authors' code)
imtl        grad L_t, or grad (e^s_t L_t - s_t) with ``loss_scale=True`` (paper Alg. 1, LibMTL)
alignedmtl  grad L_t (LibMTL, torchjd)
graddrop    grad L_t
dbmtl       grad log(L_t + 1e-8) (LibMTL DB_MTL, paper Alg. 1)
==========  =====================================================================

Balancers are ``nn.Module``s: ``state_dict()`` carries their state; ``parameters()`` (UW,
IMTL-L) must be trained by the main optimiser.
"""

from __future__ import annotations

from typing import Any

from tokenmtl.recon.balancer import Recon  # an architecture change; registered here so --method recon works

from .alignedmtl import AlignedMTL
from .base import Balancer, BalanceResult, GradientBalancer, GramianBalancer, LossBalancer
from .cagrad import CAGrad
from .dbmtl import DBMTL
from .dwa import DWA
from .ew import EW
from .famo import FAMO
from .graddrop import GradDrop
from .imtl import IMTL
from .mgda import MGDA
from .nashmtl import NashMTL
from .pcgrad import PCGrad
from .uw import UW

METHODS: dict[str, type[Balancer]] = {
    cls.name: cls
    for cls in (EW, UW, DWA, GradDrop, MGDA, PCGrad, CAGrad, IMTL, NashMTL, AlignedMTL, FAMO, DBMTL, Recon)
}


def available() -> list[str]:
    """Names accepted by :func:`create`, in registry order."""
    return list(METHODS)


def create(name: str, num_tasks: int, **options: Any) -> Balancer:
    """A fresh balancer for ``num_tasks`` tasks; ``options`` override the method's defaults."""
    key = name.lower() if isinstance(name, str) else name
    if key not in METHODS:
        raise ValueError(f"unknown balancing method {name!r}; available: {', '.join(available())}")
    cls = METHODS[key]
    valid = cls.options()
    unknown = sorted(set(options) - set(valid))
    if unknown:
        listed = ", ".join(f"{k}={v!r}" for k, v in valid.items()) or "none"
        raise ValueError(f"unknown option(s) {unknown} for method {key!r}; its options: {listed}")
    return cls(num_tasks, **options)


def describe() -> dict[str, dict[str, Any]]:
    """``{name: {"summary": one line, "options": {option: default}, "kind": "loss"|"gradient"}}``."""
    return {name: {"summary": cls.summary, "options": cls.options(), "kind": cls.kind} for name, cls in METHODS.items()}


__all__ = [
    "METHODS",
    "AlignedMTL",
    "BalanceResult",
    "Balancer",
    "CAGrad",
    "DBMTL",
    "DWA",
    "EW",
    "FAMO",
    "GradDrop",
    "GradientBalancer",
    "GramianBalancer",
    "IMTL",
    "LossBalancer",
    "MGDA",
    "NashMTL",
    "PCGrad",
    "Recon",
    "UW",
    "available",
    "create",
    "describe",
]
