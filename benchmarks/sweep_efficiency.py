"""Sweep efficiency: Optuna TPE + ASHA against random search + FIFO, in trial-epochs.

The question a user asks before paying for a sweep: how much compute does the smarter search
need to find an architecture as good as plain random search would? For each seed, both
methods search the same space on the same data with the same compute: random search trains
``--samples`` trials of ``--epochs`` epochs; TPE + ASHA may spend as many trial-epochs (it
stops most trials early, so it may start more trials) and ends once a trial reaches random
search's best (``--equal trials`` gives it ``--samples`` trials instead, the design of the
first runs of this benchmark). The default space, ``search_spaces/broad_64x36.json``,
is the CPU space's choices at 64x36 (depth, channels, flat or spatial latent and its size,
upsampling, calibrated or MSE reconstruction, beta, learning rate): some of its points learn
the moving shapes and some collapse to the background, so the objective has real spread
between configurations. The default budget, 24 trials of at most 9 epochs of ~110 optimizer
steps (4 clips of 550 frames, batch 16), is one where trained models learn and early stopping
has room (issue 18, item 3):

- ``tpe_asha``: varnext's default: Optuna's seeded multivariate TPE inside Tune's
  ``OptunaSearch``, trials stopped early by ASHA (grace 1 epoch, halving);
- ``random_fifo``: Optuna's seeded random sampler, every trial trained to the end.

Both get their searcher and scheduler from :func:`varnext_ray.sweep.make_searcher` and
:func:`~varnext_ray.sweep.make_scheduler`, the functions ``varnext sweep`` uses. Trials run one
at a time on a local Ray, so the order of events is the order of compute spent. Each trial
trains the space's VAE in its own Tune process with a plain in-process loop (``build_vae``,
``elbo_loss``, AdamW, and the validation metrics of :func:`varnext_ray.metrics.triplet_sums`)
rather than a Ray Train worker group: the benchmark counts trial-epochs, which do not depend on
how a trial is run, and a worker group per trial would make the 2 x seeds sweeps take an hour
on 2 cores.

Compute to target: the objective target is random search's best value in that seed, less 2 %
(for a "max" objective; plus 2 % for "min"). Each method's compute is the number of
trial-epochs it had spent when a trial first reported a value at least that good. The
headline is tpe_asha's compute over random_fifo's, per seed and as the median over all seeds,
a seed where TPE + ASHA never reached the target counting as worse than any ratio (goal from
the issue: at most 0.25). Beside it, the same ratio against random search's compute averaged
over every order of its own trials (:func:`expected_compute_to_reach`): the order of random
draws is luck, and one lucky or unlucky first draw swings a seed's ratio between 1 and ~0.1.

Usage:
    python benchmarks/sweep_efficiency.py                     # 5 seeds, 24 trials: ~30 min
    python benchmarks/sweep_efficiency.py --equal trials      # TPE + ASHA gets 24 trials too
    python benchmarks/sweep_efficiency.py --seeds 5 6 7       # a rerun on other seeds
    python benchmarks/sweep_efficiency.py --space search_spaces/smoke.json --samples 16 --epochs 4
    python benchmarks/sweep_efficiency.py --quick --out /tmp/se.json   # smoke run, no docs
    python benchmarks/sweep_efficiency.py --from-json benchmarks/results/sweep_efficiency.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script

from benchmarks.harness import (  # sets the local Ray env
    REPO,
    CpuMeter,
    begin,
    default_outputs,
    machine_info,
    publish,
    repo_relative,
    report_head,
)

# isort: split

import numpy as np
import ray
import ray.tune
import torch

from benchmarks.train_overhead import load_train_frames
from varnext_ray.arch import parse_arch
from varnext_ray.dataset import to_model_input, triplets_dataset
from varnext_ray.errors import UserError
from varnext_ray.ingest import IngestOptions, ingest
from varnext_ray.metrics import add_sums, finalize, triplet_sums
from varnext_ray.model import build_vae, elbo_loss
from varnext_ray.search_space import SearchSpace, load_space, point_to_arch
from varnext_ray.sweep import SweepOptions, make_scheduler, make_searcher
from varnext_ray.synth import write_synthetic

SECTION = "## Sweep efficiency"
GOAL_RATIO = 0.25  # the goal: TPE+ASHA needs at most 25 % of random search's compute
WITHIN = 0.02  # "within 2 % of the best objective random search found"
# random search first: its best sets the target that ends the other method's sweep early
METHODS = {"random_fifo": ("random", "fifo"), "tpe_asha": ("tpe", "asha")}

log = logging.getLogger("benchmarks.sweep_efficiency")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line flags; ``--quick`` shrinks every default for a smoke run."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__[__doc__.index("Usage:") :],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--space", type=Path, default=REPO / "search_spaces" / "broad_64x36.json")
    p.add_argument("--seeds", type=int, nargs="+", help="sampler seeds (default 0 1 2 3 4)")
    p.add_argument("--samples", type=int, help="trials per sweep (default 24)")
    p.add_argument("--epochs", type=int, help="most epochs per trial (default 9)")
    p.add_argument("--clips", type=int, default=4, help="synthetic clips (default 4)")
    p.add_argument("--frames", type=int, help="frames per synthetic clip (default 550)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument(
        "--equal",
        choices=["compute", "trials"],
        default="compute",
        help="what both methods get the same of: random search's trial-epochs (default) or "
        "its number of trials",
    )
    p.add_argument("--cpus", type=int, default=2, help="num_cpus of the Ray instance (2)")
    p.add_argument("--quick", action="store_true", help="a smoke run of about a minute")
    p.add_argument("--out", type=Path, help="JSON results (default benchmarks/results/...)")
    p.add_argument("--docs", type=Path, help="markdown page whose section is replaced")
    p.add_argument(
        "--from-json",
        type=Path,
        metavar="RESULTS",
        help="train nothing: analyse the runs a results JSON holds again (after a change to "
        "the analysis) and write it back to --out (default: the same file)",
    )
    args = p.parse_args(argv)
    quick = args.quick
    args.seeds = args.seeds or ([0] if quick else [0, 1, 2, 3, 4])
    args.samples = args.samples or (4 if quick else 24)
    args.epochs = args.epochs or (2 if quick else 9)
    args.frames = args.frames or (30 if quick else 550)
    if args.from_json is not None and args.out is None:
        args.out = args.from_json
    kept = REPO / "benchmarks" / "results" / "sweep_efficiency.json"
    # results reanalysed into another file are not the page's kept run: docs only if asked
    elsewhere = args.from_json is not None and args.out.resolve() != kept.resolve()
    docs_asked = args.docs is not None
    default_outputs(args, "sweep_efficiency")
    if elsewhere and not docs_asked:
        args.docs = None
    if min(args.samples, args.epochs, args.batch_size, args.clips) < 1:
        p.error("--samples, --epochs, --batch-size and --clips must be >= 1")
    return args


def prepare_data(workdir: Path, size: tuple[int, int], args: argparse.Namespace) -> dict:
    """Synthetic clips at the space's input size: training frames and validation triplets."""
    clips = workdir / "clips"
    write_synthetic(clips, clips=args.clips, frames=args.frames, size=size, seed=0)
    data = workdir / "dataset"
    ingest([clips], data, IngestOptions(size=size, val=0.2, test=0.0, seed=0))
    rows = triplets_dataset(data, "val", stride=1, limit=64).take_all()
    val = {k: torch.from_numpy(np.stack([r[k] for r in rows])) for k in ("x1", "x2", "x3")}
    return {"train": load_train_frames(data), "val": val}


def trial(config: dict[str, Any], base: dict, data: dict, settings: dict) -> None:
    """One Tune trial: the sampled architecture trained in-process, one report per epoch."""
    torch.set_num_threads(1)
    torch.manual_seed(settings["seed"])
    try:
        arch = parse_arch(point_to_arch(base, config), "trial")
    except UserError as err:  # an invalid point scores nothing, as in varnext sweep
        raise RuntimeError(str(err)) from None
    vae = build_vae(arch)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=float(config.get("lr", 1e-3)))
    frames, batch = data["train"], int(config.get("batch_size", settings["batch_size"]))
    val = {k: to_model_input(v, "cpu") for k, v in data["val"].items()}
    generator = torch.Generator().manual_seed(settings["seed"])
    for epoch in range(settings["epochs"]):
        vae.train()
        for index in torch.randperm(len(frames), generator=generator).split(batch):
            x = to_model_input(frames[index], "cpu")
            recon, mu, logvar = vae(x)
            loss = elbo_loss(recon, x, mu, logvar, arch.loss, epoch)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        vae.eval()
        sums = None
        for start in range(0, len(val["x1"]), 32):
            part = [val[k][start : start + 32] for k in ("x1", "x2", "x3")]
            sums = add_sums(sums, triplet_sums(vae, *part))
        ray.tune.report(finalize(sums) | {"epoch": epoch + 1})


class ComputeCap(ray.tune.Stopper):
    """Ends a sweep once it has spent ``cap`` trial-epochs, or once a trial reports ``target``
    or better (then the compute to reach it is known; the rest would not change it)."""

    def __init__(self, cap: int, metric: str, target: float | None, direction: str) -> None:
        self.cap, self.metric, self.target, self.direction = cap, metric, target, direction
        self.spent, self.done = 0, False

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        self.spent += 1  # every result is one trial-epoch
        value = result.get(self.metric)
        if self.target is not None and value is not None and np.isfinite(value):
            self.done |= reached(float(value), self.target, self.direction)
        self.done |= self.spent >= self.cap
        return False

    def stop_all(self) -> bool:
        return self.done


def run_method(
    method: str,
    seed: int,
    space: SearchSpace,
    base: dict,
    data: dict,
    args: argparse.Namespace,
    storage: Path,
    target: float | None = None,
) -> dict[str, Any]:
    """One sweep; returns its events (one per trial-epoch, in order) and its best value.

    With ``--equal compute`` the early-stopping method may start more trials than
    ``--samples`` but spends at most random search's trial-epochs (``samples x epochs``), and
    stops once a trial reaches ``target``.
    """
    search, scheduler = METHODS[method]
    options = SweepOptions(samples=args.samples, search=search, scheduler=scheduler, seed=seed)
    samples, stop = args.samples, None
    if scheduler == "asha" and args.equal == "compute":
        samples = args.samples * args.epochs  # each trial costs at least one epoch
        stop = ComputeCap(samples, space.objective, target, space.direction)
    settings = {"epochs": args.epochs, "batch_size": args.batch_size, "seed": seed}
    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(trial, base=base, data=data, settings=settings), {"CPU": 1}
    )
    tuner = ray.tune.Tuner(
        trainable,
        tune_config=ray.tune.TuneConfig(
            search_alg=make_searcher(space, base, options),
            scheduler=make_scheduler(options, args.epochs),
            num_samples=samples,
            max_concurrent_trials=1,
            reuse_actors=True,  # one trial process after another: no start-up per trial
            **({"metric": space.objective, "mode": space.direction} if scheduler == "asha" else {}),
        ),
        run_config=ray.tune.RunConfig(
            name=f"{method}-seed{seed}", storage_path=str(storage), verbose=0, stop=stop
        ),
    )
    with CpuMeter() as meter:
        results = tuner.fit()
    # Trials ran one at a time: order them by when they started (trial id breaks ties), then
    # every trial's epochs in order. Each event is one trial-epoch.
    trials = []
    for result in results:
        frame = result.metrics_dataframe
        if frame is None or space.objective not in frame:
            continue
        started = (float(frame["timestamp"].min()), str(frame["trial_id"].iloc[0]))
        trials.append((started, [float(v) for v in frame[space.objective]]))
    curves = [values for _, values in sorted(trials)]
    events = [value for values in curves for value in values]
    values = [v for v in events if np.isfinite(v)]
    best = (max if space.direction == "max" else min)(values) if values else None
    return {
        "method": method,
        "seed": seed,
        "trials": len(results),
        "trial_epochs": len(events),
        "best": best,
        "objective_by_trial_epoch": [round(v, 4) for v in events],
        "objective_by_trial": [[round(v, 4) for v in values] for values in curves],
        "cpu": meter.result(),
    }


def target_for(best: float, direction: str) -> float:
    """The value to reach: ``best`` less 2 % of it (``max``), or plus 2 % (``min``)."""
    return best - WITHIN * abs(best) if direction == "max" else best + WITHIN * abs(best)


def reached(value: float, target: float, direction: str) -> bool:
    return value >= target if direction == "max" else value <= target


def compute_to_reach(values: list[float], target: float, direction: str) -> int | None:
    """Trial-epochs spent when a value first reached ``target`` (None: never)."""
    for spent, value in enumerate(values, start=1):
        if reached(value, target, direction):
            return spent
    return None


def expected_compute_to_reach(
    curves: list[list[float]], target: float, direction: str
) -> float | None:
    """Random search's trial-epochs to reach ``target`` averaged over every order of its own
    trials (None: no trial reaches it). Random search's trials are independent draws, so the
    order they ran in is luck: a seed whose first draw happens to be good looks cheap, one whose
    only good draw came last looks dear. With h trials reaching the target (at epochs r_i) and
    the others costing c_j epochs each, each other trial runs before all h with probability
    1 / (h + 1) and the first to reach it is any of the h alike, so the mean is exact:
    sum(c_j) / (h + 1) + mean(r_i)."""
    reach = [compute_to_reach(curve, target, direction) for curve in curves]
    hits = [r for r in reach if r is not None]
    if not hits:
        return None
    misses = sum(len(curve) for curve, r in zip(curves, reach, strict=True) if r is None)
    return misses / (len(hits) + 1) + statistics.mean(hits)


def asha_replay(
    curves: list[list[float]],
    target: float,
    objective: str,
    direction: str,
    epochs: int,
    asha: tuple[int, int] | None = None,
) -> int | None:
    """Trial-epochs random search would have spent to reach ``target`` had ASHA stopped its
    trials: the scheduler ``varnext sweep`` uses (:func:`make_scheduler`) replayed on random
    search's own trials, in their order, each cut where ASHA stops it. Nothing is trained
    again: a trial's first epochs are the same whether or not it is stopped later. Beside the
    TPE + ASHA figure it shows how much of the saving early stopping alone gives, and how much
    TPE's choice of points adds. None: not reached with these trials.

    ``asha``: (reduction factor, grace period) of another ASHA to replay instead
    (:func:`replay_grid`)."""
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    if asha is None:
        scheduler = make_scheduler(SweepOptions(scheduler="asha"), epochs)
    else:
        factor, grace = asha
        scheduler = ASHAScheduler(max_t=epochs + 1, grace_period=grace, reduction_factor=factor)
    scheduler.set_search_properties(objective, direction)
    spent = 0
    for i, curve in enumerate(curves):
        trial = SimpleNamespace(trial_id=f"replay-{i}")  # ASHA reads only the trial's id
        scheduler.on_trial_add(None, trial)
        result: dict[str, float] = {}
        for epoch, value in enumerate(curve, start=1):
            spent += 1
            if reached(value, target, direction):
                return spent
            result = {"training_iteration": epoch, objective: value}
            if scheduler.on_trial_result(None, trial, result) == TrialScheduler.STOP:
                break
        else:
            if result:  # a trial that ran to its end is recorded as Tune records it
                scheduler.on_trial_complete(None, trial, result)
    return None


def compare(runs: list[dict], direction: str, objective: str = "", epochs: int = 0) -> list[dict]:
    """Per seed: the target from random search's best and each method's compute to reach it."""
    rows = []
    for seed in sorted({r["seed"] for r in runs}):
        by = {r["method"]: r for r in runs if r["seed"] == seed}
        best = by["random_fifo"]["best"]
        if best is None:
            continue
        target = target_for(best, direction)
        need = {
            m: compute_to_reach(by[m]["objective_by_trial_epoch"], target, direction)
            for m in METHODS
        }
        ratio = (
            need["tpe_asha"] / need["random_fifo"]
            if need["tpe_asha"] is not None and need["random_fifo"]
            else None
        )
        curves = by["random_fifo"].get("objective_by_trial")
        replay = (
            asha_replay(curves, target, objective, direction, epochs)
            if curves and objective and epochs
            else None
        )
        expected = expected_compute_to_reach(curves, target, direction) if curves else None
        rows.append(
            {
                "seed": seed,
                "target": round(target, 4),
                "random_best": best,
                "tpe_asha_best": by["tpe_asha"]["best"],
                "compute_to_target": need,
                "total_trial_epochs": {m: by[m]["trial_epochs"] for m in METHODS},
                "ratio": None if ratio is None else round(ratio, 3),
                "random_asha_replay": replay,
                "replay_ratio": round(replay / need["random_fifo"], 3)
                if replay is not None and need["random_fifo"]
                else None,
                "random_expected": None if expected is None else round(expected, 2),
                "expected_ratio": round(need["tpe_asha"] / expected, 3)
                if expected and need["tpe_asha"] is not None
                else None,
            }
        )
    return rows


REPLAY_GRID = [(factor, grace) for factor in (2, 3, 4) for grace in (1, 2, 3)]


def replay_grid(runs: list[dict], direction: str, objective: str, epochs: int) -> list[dict]:
    """ASHA with other reduction factors and grace periods, each replayed on random search's
    trials of every seed (:func:`asha_replay`): whether any early-stopping setting alone would
    reach the goal, with nothing trained again. Also says, per seed, whether random search's
    first trial already reached the target (then no search that starts with a random point,
    TPE's start-up included, can spend less than it did, and the seed's ratio is 1 at best)."""
    grid = []
    for asha in REPLAY_GRID:
        ratios = []
        for seed in sorted({r["seed"] for r in runs}):
            random = next(r for r in runs if r["seed"] == seed and r["method"] == "random_fifo")
            if random["best"] is None or not random.get("objective_by_trial"):
                continue
            target = target_for(random["best"], direction)
            need = compute_to_reach(random["objective_by_trial_epoch"], target, direction)
            spent = asha_replay(
                random["objective_by_trial"], target, objective, direction, epochs, asha
            )
            ratios.append(math.inf if spent is None or not need else spent / need)
        grid.append(
            {
                "reduction_factor": asha[0],
                "grace_period": asha[1],
                "ratios": [round(r, 3) if math.isfinite(r) else None for r in ratios],
                "median_ratio": _finite(statistics.median(ratios)) if ratios else None,
            }
        )
    return grid


def _finite(value: float) -> float | None:
    return round(value, 3) if math.isfinite(value) else None


def markdown(report: dict[str, Any]) -> str:
    """The ``## Sweep efficiency`` section of docs/benchmarks.md."""
    s, summary = report["settings"], report["summary"]
    lines = [
        SECTION,
        "",
        f"Optuna TPE + ASHA against random search + FIFO on `{s['space']}` "
        f"({s['samples']} trials of at most {s['epochs']} epochs, one at a time), "
        f"{len(s['seeds'])} seeds; objective `{s['objective']}` ({s['direction']}). Compute = "
        "trial-epochs spent until a trial first reported a value within 2 % of the best that "
        "random search found in that seed. Measured "
        f"{report['timestamp']} on {report['machine']['cores']} cores "
        f"({report['machine']['cpu_model']}), `{report['command']}`.",
        "",
        "| seed | random best | TPE+ASHA best | target | random: trial-epochs to target "
        "(of total) | TPE+ASHA: trial-epochs to target (of total) | ratio (goal <= 0.25) | "
        "ASHA alone, replayed on random's trials: trial-epochs (ratio) | random: mean over "
        "its trials' orders (ratio) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["comparison"]:
        need, total = r["compute_to_target"], r["total_trial_epochs"]
        lines.append(
            f"| {r['seed']} | {r['random_best']:.3f} | {_num(r['tpe_asha_best'])} | "
            f"{r['target']:.3f} | {need['random_fifo']} ({total['random_fifo']}) | "
            f"{need['tpe_asha'] if need['tpe_asha'] is not None else 'never'} "
            f"({total['tpe_asha']}) | {_num(r['ratio'])} | "
            + (
                f"{r['random_asha_replay']} ({_num(r['replay_ratio'])}) |"
                if r.get("random_asha_replay") is not None
                else "— |"
            )
            + (
                f" {r['random_expected']:.1f} ({_num(r['expected_ratio'])}) |"
                if r.get("random_expected") is not None
                else " — |"
            )
        )
    median = summary["median_ratio"]
    verdict = "met" if median is not None and median <= GOAL_RATIO else "not met"
    lines += [
        "",
        f"Median ratio over all {len(report['comparison'])} seeds: **"
        f"{'never reached' if summary.get('median_is_never') else _num(median)}** "
        f"({_spread(summary['ratios'])}; goal <= {GOAL_RATIO}: **{verdict}**). "
        f"Whole sweeps: TPE+ASHA spent {summary['tpe_asha_trial_epochs']} trial-epochs "
        f"against random search's {summary['random_fifo_trial_epochs']} "
        f"({_num(summary['total_ratio'])}x), reaching the target in "
        f"{summary['tpe_asha_reached']} of {len(report['comparison'])} seeds."
        + (
            " ASHA alone (the same scheduler replayed on random search's own trials, nothing "
            f"trained again): median ratio **{_num(summary['replay_median_ratio'])}**, the part "
            "of the saving that early stopping gives without TPE."
            if summary.get("replay_median_ratio") is not None
            else ""
        )
        + (
            " Against random search's compute averaged over every order of its own trials (the "
            "order is luck: the last column, exact, see `expected_compute_to_reach`), "
            f"TPE+ASHA's median ratio is **{_num(summary['expected_median_ratio'])}**; "
            "TPE+ASHA's own figure stays one run per seed, its luck included."
            if summary.get("expected_median_ratio") is not None
            else ""
        ),
        "",
        f"Equal {s.get('equal', 'trials')}: "
        + (
            "TPE+ASHA may spend as many trial-epochs as random search (more, shorter trials) "
            "and stops at the target."
            if s.get("equal") == "compute"
            else "both methods run the same number of trials."
        )
        + " Trials train in-process inside Tune (no Ray Train worker group per trial, see the "
        "script's docstring); trial-epochs do not depend on that. Small spaces and budgets make "
        "the ratio noisy: a lucky early random trial sets a target that is reached early.",
    ]
    return "\n".join(lines + _grid_lines(report)) + "\n"


def _grid_lines(report: dict[str, Any]) -> list[str]:
    """The replay grid's table (absent from results written before it existed)."""
    grid = report.get("replay_grid")
    if not grid:
        return []
    epochs = report["settings"]["epochs"]
    first = [
        r["seed"]
        for r in report["comparison"]
        if r["compute_to_target"]["random_fifo"] is not None
        and r["compute_to_target"]["random_fifo"] <= epochs
    ]
    lines = [
        "",
        "Other ASHA settings, each replayed on random search's trials of every seed (nothing "
        "trained again; `varnext sweep` uses reduction factor 2, grace 1). "
        + (
            f"Random search's first trial reached the target in seed(s) "
            f"{', '.join(map(str, first))}: in those seeds no search that starts with a random "
            "point (TPE's start-up trials are random, seeded like random search's) can spend "
            "less, so the ratio is 1 at best."
            if first
            else "Random search's first trial reached the target in no seed."
        ),
        "",
        "| reduction factor | grace period (epochs) | ratio per seed | median |",
        "|---|---|---|---|",
    ]
    for g in grid:
        per_seed = ", ".join("never" if r is None else f"{r:.3f}" for r in g["ratios"])
        lines.append(
            f"| {g['reduction_factor']} | {g['grace_period']} | {per_seed} | "
            f"{_num(g['median_ratio'])} |"
        )
    return lines


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _spread(ratios: list[float]) -> str:
    """The seeds' ratios as a range, for the summary line."""
    if not ratios:
        return "no seed reached the target"
    return f"{min(ratios):.3f}-{max(ratios):.3f} over {len(ratios)} seeds"


def summarise(rows: list[dict], runs: list[dict]) -> dict[str, Any]:
    """The median over every seed (never reaching the target counts as an infinite ratio)."""
    ratios = [r["ratio"] for r in rows if r["ratio"] is not None]
    every = [math.inf if r["ratio"] is None else r["ratio"] for r in rows]
    median = statistics.median(every) if every else None
    totals = {m: sum(r["trial_epochs"] for r in runs if r["method"] == m) for m in METHODS}
    replays = [math.inf if r.get("replay_ratio") is None else r["replay_ratio"] for r in rows]
    replay_median = statistics.median(replays) if replays else None
    averaged = [math.inf if r.get("expected_ratio") is None else r["expected_ratio"] for r in rows]
    return {
        "expected_median_ratio": _finite(statistics.median(averaged))
        if averaged and any(r.get("random_expected") for r in rows)
        else None,
        "replay_median_ratio": round(replay_median, 3)
        if replay_median is not None and math.isfinite(replay_median)
        else None,
        "median_ratio": round(median, 3) if median is not None and math.isfinite(median) else None,
        "median_is_never": median is not None and not math.isfinite(median),
        "ratios": ratios,
        "goal": GOAL_RATIO,
        "tpe_asha_reached": sum(r["compute_to_target"]["tpe_asha"] is not None for r in rows),
        "tpe_asha_trial_epochs": totals["tpe_asha"],
        "random_fifo_trial_epochs": totals["random_fifo"],
        "total_ratio": round(totals["tpe_asha"] / totals["random_fifo"], 3)
        if totals["random_fifo"]
        else None,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs both methods for every seed, prints the section, writes the JSON (and docs)."""
    argv, started, clock = begin(argv)
    args = parse_args(argv)
    if args.from_json is not None:
        return reanalyse(args.from_json, args, started, argv)
    machine = machine_info()
    space, base = load_space(args.space)
    size = (base["input"]["width"], base["input"]["height"])
    workdir = Path(tempfile.mkdtemp(prefix="varnext-sweep-bench-"))
    ray.init(
        address="local",
        num_cpus=args.cpus,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        data = prepare_data(workdir, size, args)
        runs = []
        for seed in args.seeds:
            target = None
            for method in METHODS:
                log.info("seed %d: %s", seed, method)
                run = run_method(method, seed, space, base, data, args, workdir / "ray", target)
                runs.append(run)
                if run["best"] is not None:
                    target = target_for(run["best"], space.direction)
    finally:
        ray.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
    rows = compare(runs, space.direction, space.objective, args.epochs)
    report = {
        **report_head("sweep_efficiency", started, argv),
        "machine": machine,
        "settings": {
            "quick": args.quick,
            "space": repo_relative(args.space),
            "objective": space.objective,
            "direction": space.direction,
            "seeds": args.seeds,
            "samples": args.samples,
            "epochs": args.epochs,
            "clips": args.clips,
            "frames_per_clip": args.frames,
            "batch_size": args.batch_size,
            "within": WITHIN,
            "equal": args.equal,
        },
        "summary": summarise(rows, runs),
        "comparison": rows,
        "replay_grid": replay_grid(runs, space.direction, space.objective, args.epochs),
        "runs": runs,
        "wall_seconds": round(time.perf_counter() - clock, 1),
    }
    section = markdown(report)
    publish(report, section, SECTION, args.out, args.docs)
    return report


def split_fifo_curves(run: dict, epochs: int) -> None:
    """Adds ``objective_by_trial`` to a random search run written before the JSON held it,
    where that is exact: FIFO stops no trial, so when the run spent trials x epochs every trial
    ran all its epochs and the trial-epoch series splits into equal curves. Other runs are left
    as they are (their seeds then have no ASHA replay or order average)."""
    values = run["objective_by_trial_epoch"]
    if (
        "objective_by_trial" in run
        or run["method"] != "random_fifo"
        or not isinstance(run.get("trials"), int)
        or len(values) != run["trials"] * epochs
    ):
        return
    run["objective_by_trial"] = [values[i : i + epochs] for i in range(0, len(values), epochs)]


def reanalyse(path: Path, args: argparse.Namespace, started: str, argv: list[str]) -> dict:
    """A results JSON's runs analysed again (its measurement, timestamp and command kept)."""
    report = json.loads(path.read_text())
    s, runs = report["settings"], report["runs"]
    for run in runs:
        split_fifo_curves(run, s["epochs"])
    rows = compare(runs, s["direction"], s["objective"], s["epochs"])
    report |= {
        "summary": summarise(rows, runs),
        "comparison": rows,
        "replay_grid": replay_grid(runs, s["direction"], s["objective"], s["epochs"]),
        "reanalysed": report_head("sweep_efficiency", started, argv),
    }
    publish(report, markdown(report), SECTION, args.out, args.docs)
    return report


if __name__ == "__main__":
    main()
