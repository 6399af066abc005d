"""Multi-task performance relative to single-task references, in percent (README, "Δm").

- ``delta_m`` (Maninis et al., as the DTME paper and the ATRC code compute it): one primary
  metric per task, ``100/T * sum_t (-1)^{l_t} (M_t - M_ST,t) / M_ST,t`` with l_t = 1 when lower
  is better. Positive means the multi-task model is better.
- ``delta_p`` (LibMTL ``count_improvement`` / DB-MTL): average a task's relative changes over
  its metrics first, then over tasks. Positive is better.
The Nash-MTL/FAMO form (mean over all metrics with the sign flipped) is deliberately not offered.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["delta_m", "delta_p"]

Results = Mapping[str, Mapping[str, float]]


def _metric(results: Results, which: str, task: str, metric: str) -> float:
    """Look up ``results[task][metric]`` with an error naming what is missing."""
    if task not in results:
        raise KeyError(f"{which} results have no task {task!r}; tasks present: {sorted(results)}")
    if metric not in results[task]:
        raise KeyError(
            f"{which} results for task {task!r} have no metric {metric!r}; metrics present: {sorted(results[task])}"
        )
    return float(results[task][metric])


def _relative_change(value: float, reference: float, lower_is_better: bool, name: str) -> float:
    """``(-1)^l (value - reference) / reference``: positive when ``value`` is better."""
    if reference == 0:
        raise ZeroDivisionError(f"single-task reference of {name} is 0: delta-m divides by it; use a non-zero metric")
    change = (value - reference) / reference
    return -change if lower_is_better else change


def delta_m(
    results: Results,
    single_task: Results,
    primary: Mapping[str, tuple[str, bool]],
) -> float:
    """Maninis/DTME delta-m in percent: ``100/T sum_t (-1)^{l_t} (M_t - M_ST,t) / M_ST,t``.

    ``primary`` maps each task to ``(metric, lower_is_better)``; T = len(primary).
    """
    if not primary:
        raise ValueError("delta_m: primary is empty; give at least one task -> (metric, lower)")
    total = 0.0
    for task, (metric, lower_is_better) in primary.items():
        value = _metric(results, "multi-task", task, metric)
        reference = _metric(single_task, "single-task", task, metric)
        total += _relative_change(value, reference, lower_is_better, f"{task}/{metric}")
    return 100.0 * total / len(primary)


def delta_p(
    results: Results,
    single_task: Results,
    lower_is_better: Mapping[str, Mapping[str, bool]],
) -> float:
    """LibMTL delta-p in percent: ``100/T sum_t 1/M_t sum_m (-1)^{s_tm} (M_tm - B_tm) / B_tm``.

    ``lower_is_better[task][metric]`` lists the metrics used per task (M_t of them) and their
    direction; s_tm = 1 when lower is better.
    """
    if not lower_is_better:
        raise ValueError("delta_p: lower_is_better is empty; give task -> {metric: lower}")
    total = 0.0
    for task, metrics in lower_is_better.items():
        if not metrics:
            raise ValueError(f"delta_p: task {task!r} lists no metrics")
        task_sum = 0.0
        for metric, lower in metrics.items():
            value = _metric(results, "multi-task", task, metric)
            reference = _metric(single_task, "single-task", task, metric)
            task_sum += _relative_change(value, reference, lower, f"{task}/{metric}")
        total += task_sum / len(metrics)
    return 100.0 * total / len(lower_is_better)
