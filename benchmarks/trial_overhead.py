"""Per-trial overhead of a sweep: wall time outside the epochs, with the dataset read once per
sweep (shared) beside the old way, every trial reading its own (per-trial), run side by side.

Each repeat runs the demo's sweep (its data, its search space, FIFO, one trial at a time, 2 DDP
workers) once per arm, arms alternating. Every finished trial logs, in its MLflow run, where
its wall time went outside its epochs (docs/training.md: ``overhead_seconds`` and its setup /
workers / loop parts); the shared arm's one-time read is the sweep run's
``data_prepare_seconds``, reported beside it and spread over the trials. Goal (issue #18): at
most 10 s per trial for the demo's trials on this machine.

The bound beside it: each repeat also times as many Ray Train runs of the same worker group
(2 workers, the trials' CPUs each) whose loop does nothing. That empty ``fit()`` is what any
trial that stays a Ray Train DDP worker group pays here before and after its first step.

Usage:
    python benchmarks/trial_overhead.py                  # 2 repeats x 2 arms x 3 trials, ~8 min
    python benchmarks/trial_overhead.py --repeats 3 --trials 4
    python benchmarks/trial_overhead.py --quick --out /tmp/o.json --docs /tmp/benchmarks.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script

from benchmarks.harness import (  # sets the local Ray env
    CpuMeter,
    begin,
    default_outputs,
    machine_info,
    publish,
    report_head,
)

# isort: split

import ray

from varnext_ray import demo, tracking
from varnext_ray.cluster import Resources, cluster_cpus, connect_ray
from varnext_ray.search_space import load_space
from varnext_ray.settings import TrainSettings
from varnext_ray.sweep import SweepOptions, run_sweep

SECTION = "## Trial overhead"
GOAL_S = 10.0
PARTS = ("overhead_setup_seconds", "overhead_workers_seconds", "overhead_loop_seconds")
ARMS = {"shared": True, "per-trial": False}  # arm -> SweepOptions.share_data


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__[__doc__.index("Usage:") :],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--repeats", type=int, default=2, help="sweeps per arm (default 2)")
    p.add_argument("--trials", type=int, default=3, help="trials per sweep (default 3)")
    p.add_argument("--steps", type=int, default=150, help="optimizer steps per trial (150)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per trial (the demo's 3)")
    p.add_argument("--quick", action="store_true", help="1 repeat, 1 trial of 10 steps")
    p.add_argument("--out", type=Path, help="results JSON (default results/trial_overhead.json)")
    p.add_argument("--docs", type=Path, help="page to write (default docs/benchmarks.md)")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.trials, args.steps, args.epochs = 1, 1, 10, 1
    if min(args.repeats, args.trials, args.steps, args.epochs) < 1:
        p.error("--repeats, --trials, --steps and --epochs must be >= 1")
    default_outputs(args, "trial_overhead", quick_to_tmp=True)
    return args


def run_arm(arm: str, repeat: int, data: Path, workdir: Path, args: argparse.Namespace) -> dict:
    """One sweep of the demo's space; its trials' overhead metrics from MLflow."""
    space, base = load_space(demo.DEMO_SPACE)
    workdir.mkdir(parents=True)
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    experiment = f"{arm}-{repeat}"
    options = SweepOptions(
        samples=args.trials,
        scheduler="fifo",  # every trial runs to its end and logs its overhead
        share_data=ARMS[arm],
        train=TrainSettings(
            epochs=args.epochs, steps=args.steps, batch_size=demo.BATCH, val_triplets=128
        ),
    )
    with CpuMeter() as meter:
        start = time.perf_counter()
        outcome = run_sweep(
            space=space,
            base=base,
            data=data,
            experiment=experiment,
            tracking_uri=uri,
            storage=workdir / "ray",
            options=options,
        )
        sweep_seconds = time.perf_counter() - start
    client = tracking.client(uri)
    parent = client.get_run(outcome.parent_run_id).data.metrics
    trials = []
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    kind = "tags.`varnext.kind` = 'trial'"
    for run in tracking.search_all_runs(client, experiment_id, filter_string=kind):
        m = run.data.metrics
        if "overhead_seconds" in m:
            trials.append({key: m[key] for key in ("overhead_seconds", *PARTS, "epochs_seconds")})
    return {
        "arm": arm,
        "repeat": repeat,
        "data_prepare_seconds": parent.get("data_prepare_seconds", 0.0),
        "sweep_seconds": sweep_seconds,
        "trials": trials,
        "cpu": meter.result(),
    }


def empty_fits(n: int, resources: Resources) -> dict[str, list[float]]:
    """Wall seconds of ``n`` Ray Train runs of ``resources``' worker group whose loop does
    nothing: controller, worker group, torch's process group and teardown, nothing else.

    Each run is split where its workers' loop starts and ends (the workers stamp both into a
    file; this is one machine, one clock): ``to_loop`` is ``fit()``'s start until the first
    worker enters the loop, ``after_loop`` the last worker leaving it until ``fit()`` returns,
    so the two never overlap (workers start their loops milliseconds apart).
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    def nothing(config: dict) -> None:  # a local function: pickled by value, not by module
        rank = ray.train.get_context().get_world_rank()
        entered = time.time()
        Path(config["stamps"], f"{rank}").write_text(f"{entered} {time.time()}")

    scaling = ray.train.ScalingConfig(
        num_workers=resources.workers,
        resources_per_worker=resources.per_worker(resources.cpus_per_worker or 1.0),
    )
    out: dict[str, list[float]] = {"seconds": [], "to_loop": [], "after_loop": []}
    with tempfile.TemporaryDirectory(prefix="empty_fit_") as storage:
        for i in range(n):
            stamps = Path(storage, f"stamps-{i}")
            stamps.mkdir()
            start = time.time()
            run = ray.train.RunConfig(name=f"empty-{i}", storage_path=storage)
            TorchTrainer(
                nothing,
                train_loop_config={"stamps": str(stamps)},
                scaling_config=scaling,
                run_config=run,
            ).fit()
            end = time.time()
            loops = [[float(t) for t in f.read_text().split()] for f in stamps.iterdir()]
            out["seconds"].append(end - start)
            out["to_loop"].append(min(entered for entered, _ in loops) - start)
            out["after_loop"].append(end - max(left for _, left in loops))
    return out


def around_trials(run: dict[str, Any]) -> float:
    """Seconds per trial of a sweep's wall time that no trial measures: Tune starting each
    trial's process (and its imports), the driver's callbacks, the sweep's own start and end
    (its one-time read excluded), spread over its trials."""
    inside = sum(t["overhead_seconds"] + t["epochs_seconds"] for t in run["trials"])
    return (run["sweep_seconds"] - run["data_prepare_seconds"] - inside) / len(run["trials"])


def summarize(runs: list[dict[str, Any]], trials_per_sweep: int) -> dict[str, Any]:
    """Median per-trial overhead of each arm (and its parts), with the shared read spread over
    the sweep's trials, and the ratio of the two arms."""
    out: dict[str, Any] = {}
    for arm in ARMS:
        rows = [t for r in runs if r["arm"] == arm for t in r["trials"]]
        prepare = [r["data_prepare_seconds"] / trials_per_sweep for r in runs if r["arm"] == arm]
        around = [around_trials(r) for r in runs if r["arm"] == arm and r["trials"]]
        if not rows:
            out[arm] = None
            continue
        per_trial = [t["overhead_seconds"] for t in rows]
        out[arm] = {
            "trials": len(rows),
            "overhead_s": statistics.median(per_trial),
            "overhead_min_s": min(per_trial),
            "overhead_max_s": max(per_trial),
            "prepare_per_trial_s": statistics.median(prepare) if prepare else 0.0,
            **{part: statistics.median(t[part] for t in rows) for part in PARTS},
            "epochs_s": statistics.median(t["epochs_seconds"] for t in rows),
            # what a trial costs in all: work moved out of the overhead into the epochs (run
            # aside of the first steps) shows here, not as a saving
            "trial_s": statistics.median(t["overhead_seconds"] + t["epochs_seconds"] for t in rows),
            "around_s": statistics.median(around),
        }
    fits = [r for r in runs if r["arm"] == "empty fit"]
    empty = [s for r in fits for s in r["seconds"]]
    if empty:
        out["empty_fit"] = {
            "fits": len(empty),
            "seconds": statistics.median(empty),
            "min_s": min(empty),
            "max_s": max(empty),
            **{
                f"{phase}_s": statistics.median(s for r in fits for s in r[phase])
                for phase in ("to_loop", "after_loop")
            },
        }
    shared, alone = out.get("shared"), out.get("per-trial")
    if shared and alone:
        amortised = shared["overhead_s"] + shared["prepare_per_trial_s"]
        out["shared_amortised_s"] = amortised
        out["ratio"] = amortised / alone["overhead_s"]
        out["goal_s"] = GOAL_S
        out["met"] = amortised <= GOAL_S
    return out


def markdown(report: dict[str, Any]) -> str:
    s, cfg = report["summary"], report["settings"]
    lines = [
        SECTION,
        "",
        f"`{report['command']}` ({report['timestamp']}): the demo's sweep (its data and search "
        f"space, FIFO, 1 trial at a time, 2 DDP workers), {cfg['trials']} trials of "
        f"{cfg['steps']} steps in {cfg['epochs']} epochs, {cfg['repeats']} sweep(s) per arm, "
        "arms alternating. Per trial, the median over all trials of an arm (min-max in "
        "brackets); seconds of wall time outside the epochs, from each trial's MLflow run.",
        "",
        "| arm | trials | overhead s/trial | setup | workers | loop | one-time read / trial | "
        "epochs s | whole trial s | around trials s/trial |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in ARMS:
        a = s.get(arm)
        if not a:
            lines.append(f"| {arm} | 0 | — | | | | | | | |")
            continue
        lines.append(
            f"| {arm} | {a['trials']} | **{a['overhead_s']:.1f}** ({a['overhead_min_s']:.1f}-"
            f"{a['overhead_max_s']:.1f}) | {a['overhead_setup_seconds']:.1f} | "
            f"{a['overhead_workers_seconds']:.1f} | {a['overhead_loop_seconds']:.1f} | "
            f"{a['prepare_per_trial_s']:.1f} | {a['epochs_s']:.1f} | {a['trial_s']:.1f} | "
            f"{a['around_s']:.1f} |"
        )
    if "ratio" in s:
        lines += [
            "",
            "Shared, with its one-time read spread over the trials: "
            f"**{s['shared_amortised_s']:.1f} s per trial**, {s['ratio']:.2f}x the per-trial "
            f"arm; goal <= {s['goal_s']:g} s: "
            f"**{'met' if s['met'] else 'not met'}**.",
        ]
    if "empty_fit" in s:
        e = s["empty_fit"]
        lines += [
            "",
            f"Bound: a Ray Train run of the same worker group whose loop does nothing took "
            f"**{e['seconds']:.1f} s** ({e['min_s']:.1f}-{e['max_s']:.1f}, {e['fits']} runs): "
            "the controller, the workers' processes and torch import, the process group and "
            "teardown, which every trial that is a Ray Train worker group pays: "
            f"{e['to_loop_s']:.1f} s from `fit()` until its workers' loop starts, "
            f"{e['after_loop_s']:.1f} s from the loop's end until `fit()` returns."
            + (
                f" The shared arm spends {s['shared']['overhead_s'] - e['seconds']:.1f} s per "
                "trial above it."
                if s.get("shared")
                else ""
            ),
        ]
    busy = [r["cpu"].get("others_share") for r in report["runs"] if "cpu" in r]
    busy = [b for b in busy if b is not None]
    lines += [
        "",
        "*setup*: the trial's driver before `fit()` (the datasets: the whole read and decode in"
        " the per-trial arm; its MLflow run is opened by the sweep's driver); *workers*: "
        "`fit()` minus the worker loop (Train's controller, the worker group's processes and "
        "their torch import, the process group, teardown); *loop*: the worker loop minus its "
        "epochs (model build, checkpoints, reports); *whole trial*: overhead plus epochs, which"
        " also counts what runs beside the first steps (rank 0's system-metrics start); *around"
        " trials*: the sweep's wall time that no trial measures (Tune starting each trial's "
        "process and its imports, the driver's callbacks that open and close the trials' MLflow"
        " runs, the sweep's own start and end, its one-time read excluded), spread over its "
        "trials."
        + (f" Other processes used at most {max(busy):.0%} of the CPUs meanwhile." if busy else ""),
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    argv, started, clock = begin(argv)
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="trial_overhead_") as tmp:
        root = Path(tmp)
        data = demo.prepare_data(root / "data")
        connect_ray()
        runs = []
        try:
            for repeat in range(args.repeats):
                for arm in ARMS:
                    runs.append(run_arm(arm, repeat, data, root / f"{arm}-{repeat}", args))
                resources = SweepOptions().resources(cluster_cpus())  # the trials' workers
                runs.append(
                    {"arm": "empty fit", "repeat": repeat, **empty_fits(args.trials, resources)}
                )
        finally:
            ray.shutdown()
    report = {
        **report_head("trial_overhead", started, argv),
        "machine": machine_info(),
        "settings": {k: getattr(args, k) for k in ("repeats", "trials", "steps", "epochs")},
        "runs": runs,
        "summary": summarize(runs, args.trials),
        "wall_seconds": round(time.perf_counter() - clock, 1),
    }
    publish(report, markdown(report), SECTION, args.out, args.docs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
