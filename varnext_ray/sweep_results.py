"""What a finished sweep leaves: one row per trial, its trials' MLflow runs closed, and the
summary table ``varnext sweep`` and ``varnext demo`` print."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from varnext_ray import tracking
from varnext_ray.arch import count_params, parse_arch
from varnext_ray.errors import UserError, failure_summary
from varnext_ray.search_space import SearchSpace, point_to_arch, short_arch


@dataclass
class SweepOutcome:
    """What a finished sweep produced."""

    parent_run_id: str
    path: str
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per trial, best first
    best: dict[str, Any] | None = None


def summarise(results: Any, space: SearchSpace, base: dict) -> list[dict[str, Any]]:
    """One row per trial (best objective first), errored trials last with their message."""
    rows = []
    key = f"best_{space.objective}"
    for result in results:
        point = dict(result.config or {})
        metrics = result.metrics or {}
        arch_dict = point_to_arch(base, point)
        try:
            params = count_params(parse_arch(arch_dict, "summary"))
        except UserError:
            params = None
        value = metrics.get(key)
        rows.append(
            {
                "trial_id": metrics.get("trial_id") or _trial_id(result),
                "arch": short_arch(arch_dict),
                "params": params,
                "objective": value
                if isinstance(value, int | float) and math.isfinite(value)
                else None,
                "extrap_skill": metrics.get("extrap_skill"),
                "epochs": metrics.get("epoch"),
                "error": failure_summary(result.error, 300) if result.error else None,
            }
        )
    sign = -1 if space.direction == "max" else 1
    return sorted(rows, key=lambda r: (r["objective"] is None, sign * (r["objective"] or 0.0)))


def _trial_id(result: Any) -> str:
    return Path(result.path).name.split("_")[-2] if result.path else "?"


def close_trial_runs(
    uri: str, experiment: str, parent: str, trial_ids: dict[str, str | None], epochs: int
) -> None:
    """Child runs still RUNNING after the sweep are closed (``trial_ids``: id -> error or None).

    A trial that errored without closing its run (its driver's node was lost) is FAILED with
    the error as ``failure_reason``. A trial the scheduler stopped early is FINISHED and tagged
    ``varnext.stopped_early``. A run whose trial the sweep no longer knows (its driver was
    killed before Tune saved the trial, so ``--resume`` sampled a new one) is tagged with the
    reason and deleted (MLflow deletes softly: it can be restored), so a resumed sweep holds
    exactly one run per trial.
    """
    c = tracking.client(uri)
    exp = c.get_experiment_by_name(experiment)
    running = f"tags.mlflow.parentRunId = '{parent}' and attributes.status = 'RUNNING'"
    runs = list(tracking.search_all_runs(c, exp.experiment_id, filter_string=running))
    for run in runs:
        run_id = run.info.run_id
        trial_id = run.data.tags.get("varnext.trial_id")
        if trial_ids.get(trial_id):
            tracking.end_run(uri, run_id, "FAILED", trial_ids[trial_id])
        elif trial_id in trial_ids:
            if run.data.metrics.get("epoch", 0) < epochs:
                c.set_tag(run_id, "varnext.stopped_early", "true")
            c.set_terminated(run_id, status="FINISHED")
        else:
            c.set_tag(
                run_id,
                "varnext.orphaned",
                "the sweep driver died before Tune saved this trial; --resume sampled a new one",
            )
            c.set_terminated(run_id, status="KILLED")
            c.delete_run(run_id)


def summary_table(outcome: SweepOutcome, objective: str) -> str:
    """The final summary: trial, architecture in short, parameters, objective, extrap_skill."""
    head = f"{'trial':<10} {'architecture':<40} {'params':>9} {objective:>12} {'skill':>8}  note"
    lines = [head, "-" * len(head)]
    for r in outcome.rows:
        value = f"{r['objective']:.3f}" if r["objective"] is not None else "-"
        skill = f"{r['extrap_skill']:+.3f}" if isinstance(r["extrap_skill"], float) else "-"
        params = f"{r['params']:,}" if r["params"] is not None else "-"
        note = r["error"] or (f"{r['epochs']} epochs" if r["epochs"] else "")
        lines.append(
            f"{r['trial_id']:<10} {r['arch']:<40.40} {params:>9} {value:>12} {skill:>8}  {note}"
        )
    return "\n".join(lines)
