"""DTME-MTL: token-space conflict analysis, Token Modulation and Token Expansion (docs/method.md).

Typical use: `report = analyze(model, loader, loss_fn)`, `plan = make_plan(report)`,
`expand(model, plan)`, then rebuild the optimizer (the added parameters are `added_parameters(model)`).
"""

from tokenmtl.dtme.analysis import ConflictReport, LayerReport, analyze
from tokenmtl.dtme.conflicts import ConflictCounts, conflict_counts, conflict_rates
from tokenmtl.dtme.expand import ExpandedTrunk, added_parameters, count_added_parameters, expand, plan_of
from tokenmtl.dtme.modules import TaskSpecificLinear, TokenExpansion, TokenModulation
from tokenmtl.dtme.plan import MODES, MODULATORS, STRATEGIES, Plan, make_plan
from tokenmtl.dtme.token_space import TokenCovariance, TokenSpace, range_rank, split_token_space

__all__ = [
    "TokenCovariance",
    "TokenSpace",
    "split_token_space",
    "range_rank",
    "ConflictCounts",
    "conflict_counts",
    "conflict_rates",
    "ConflictReport",
    "LayerReport",
    "analyze",
    "Plan",
    "make_plan",
    "STRATEGIES",
    "MODES",
    "MODULATORS",
    "ExpandedTrunk",
    "expand",
    "plan_of",
    "added_parameters",
    "count_added_parameters",
    "TokenModulation",
    "TokenExpansion",
    "TaskSpecificLinear",
]
