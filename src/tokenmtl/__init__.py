"""tokenmtl: multi-task learning on transformers.

DTME-MTL token-space conflict analysis and expansion (`tokenmtl.dtme`), DB-MTL and the standard
balancing baselines (`tokenmtl.balancing`), Recon (`tokenmtl.recon`), an embedded procedural
benchmark and loaders for NYUD-v2, PASCAL-Context and Taskonomy (`tokenmtl.data`), and a CLI.

Top level (imported on first use, so `import tokenmtl` stays cheap): `load_config`, `train`,
`evaluate` (a checkpoint -> results), `analyze` (a checkpoint -> conflict report and plan).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_config": ("tokenmtl.config", "load_config"),
    "train": ("tokenmtl.engine.trainer", "train"),
    "evaluate": ("tokenmtl.engine.commands", "evaluate_checkpoint"),
    "analyze": ("tokenmtl.engine.commands", "analyze_checkpoint"),
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tokenmtl' has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value
