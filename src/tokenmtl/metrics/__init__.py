"""Meters (dataset-level running sums) and multi-task summaries (delta-m, delta-p)."""

from tokenmtl.metrics.classification import ClassificationMeter
from tokenmtl.metrics.delta_m import delta_m, delta_p
from tokenmtl.metrics.dense import (
    DepthMeter,
    Meter,
    NormalsMeter,
    RegressionMeter,
    SaliencyMeter,
    SemsegMeter,
)
from tokenmtl.metrics.edges import EdgeMeter
from tokenmtl.metrics.scalar_regression import ScalarRegressionMeter

__all__ = [
    "ClassificationMeter",
    "DepthMeter",
    "EdgeMeter",
    "Meter",
    "NormalsMeter",
    "RegressionMeter",
    "SaliencyMeter",
    "ScalarRegressionMeter",
    "SemsegMeter",
    "delta_m",
    "delta_p",
]
