"""tokenmtl: multi-task learning on transformers.

DTME-MTL token-space conflict analysis and expansion (`tokenmtl.dtme`), DB-MTL and the standard
balancing baselines (`tokenmtl.balancing`), an embedded procedural benchmark and loaders for
NYUD-v2, PASCAL-Context and Taskonomy (`tokenmtl.data`), and a CLI (`tokenmtl`).
"""

__version__ = "0.1.0"
