"""The ``varnext`` subcommands of the model stages: train, sweep, best, report, predict, demo.

Each imports what it runs (Ray, torch, MLflow) only when it runs, so ``varnext --help`` and the
data-stage commands of :mod:`varnext_ray.cli` never load them.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from varnext_ray import demo, tracking
from varnext_ray.artifacts import bounded_requests
from varnext_ray.cli_args import (
    add_address_arg,
    add_cluster_args,
    add_resource_args,
    add_rollout_args,
    add_tracking_args,
    file_arg,
    float_arg,
    location_arg,
    path_arg,
    subcommand,
)
from varnext_ray.errors import UserError, escape
from varnext_ray.objectives import DEFAULT_OBJECTIVE
from varnext_ray.settings import MAX_NAME, TrainSettings, check_experiment_name, check_name

if TYPE_CHECKING:
    from varnext_ray.arch import ArchConfig  # imports torch: only where a command runs

DEFAULT_STEPS = 2000  # varnext train's budget: enough to learn (see docs/training.md)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = subcommand(
        sub,
        "train",
        "Train one JSON architecture with DDP on Ray Train, tracked in MLflow.",
        "varnext train --config configs/smoke_64x36.json --data runs/dataset --steps 2000 "
        "--epochs 10",
    )
    p.add_argument("--config", type=path_arg, required=True, help="architecture JSON")
    p.add_argument("--data", type=path_arg, required=True, help="frame dataset (varnext ingest)")
    p.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_STEPS,
        metavar="N",
        help=f"optimizer steps in all, in whole passes over the training split (a few "
        f"percent either way; default {DEFAULT_STEPS}; 0: one pass per epoch)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=10,
        help="evaluation rounds: validate, report, checkpoint (default 10)",
    )
    p.add_argument("--batch-size", type=int, default=32, help="per worker (default 32)")
    p.add_argument("--lr", type=float_arg, default=1e-3, help="AdamW learning rate (default 1e-3)")
    p.add_argument("--stride", type=int, default=1, help="triplet stride s (default 1)")
    p.add_argument(
        "--val-triplets",
        type=int,
        default=512,
        help="validation triplets per epoch, evenly spaced (default 512)",
    )
    p.add_argument(
        "--objective",
        default=DEFAULT_OBJECTIVE,
        help=f"metric that picks the best checkpoint (default {DEFAULT_OBJECTIVE})",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    add_rollout_args(p)
    p.add_argument(
        "--name",
        default=None,
        help="run name; the same --storage and --name resume (default <config>-<data>)",
    )
    add_resource_args(p, "--workers")
    add_tracking_args(p, "varnext")
    add_cluster_args(p)
    p.set_defaults(run=_run_train, uses_torch=True)


def _run_train(args: argparse.Namespace) -> int:
    from varnext_ray.arch import load_arch
    from varnext_ray.cluster import Resources, connect_ray
    from varnext_ray.train import (
        TrainingFailed,
        check_run_folder,
        check_same_arch,
        check_same_experiment,
        check_same_objective,
        train,
    )

    name = _run_name(args)
    check_run_folder(args.storage, name)  # before anything is read: a file, or not a run
    arch = load_arch(args.config)
    settings = TrainSettings(
        epochs=args.epochs,
        steps=args.steps or None,
        batch_size=args.batch_size,
        lr=args.lr,
        stride=args.stride,
        val_triplets=args.val_triplets,
        seed=args.seed,
        compile=args.compile,
        objective=args.objective,
        rollout_steps=args.rollout_steps,
        train_on=args.train_on,
    )
    settings.check()
    _preflight(args, settings, arch.input.shape, arch)
    check_same_arch(args.storage, name, arch)  # before Ray and before the MLflow run resumes
    check_same_objective(args.storage, name, settings.objective)
    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    check_same_experiment(args.storage, name, args.experiment, uri, settings.epochs)
    connect_ray(args.address)
    try:
        outcome = train(
            arch=arch,
            data=args.data,
            settings=settings,
            resources=Resources(args.workers, args.gpus_per_worker, args.cpus_per_worker),
            experiment=args.experiment,
            tracking_uri=args.tracking_uri,
            storage=args.storage,
            name=name,
        )
    except TrainingFailed as err:
        sys.stderr.write(f"error: {err}\n")
        return 1
    m = outcome.metrics
    print(
        f"done: epoch {m.get('epoch')}: extrap_psnr {m.get('extrap_psnr', float('nan')):.2f} dB, "
        f"copy_last_psnr {m.get('copy_last_psnr', float('nan')):.2f} dB, "
        f"extrap_skill {m.get('extrap_skill', float('nan')):+.3f}"
    )
    print(f"best checkpoint: {outcome.best_checkpoint}")
    print(
        f"MLflow run {outcome.run_id}; view with: mlflow ui --backend-store-uri "
        f"{tracking.resolve_tracking_uri(args.tracking_uri)}"
    )
    _print_ui_link(tracking.resolve_tracking_uri(args.tracking_uri), args.experiment)
    return 0


def _run_name(args: argparse.Namespace) -> str:
    """``--name``, checked to be one directory under --storage; by default ``<config>-<data>``
    with any other character than letters, digits, ``.``, ``_`` and ``-`` made ``_``."""
    if args.name is not None:
        check_name(args.name, "--name")
        return args.name
    name = re.sub(r"[^A-Za-z0-9._-]", "_", f"{args.config.stem}-{args.data.resolve().name}")
    return name[:MAX_NAME]


def _preflight(
    args: argparse.Namespace,
    settings: TrainSettings,
    input_shape: tuple[int, ...],
    arch: ArchConfig | None = None,
) -> None:
    """The checks that need no Ray, before Ray starts: bad resources, a bad dataset, frames of
    another size than the architecture's input or an unusable MLflow store is one error line
    within a second, not after a cluster start-up (and nothing is written before them).
    ``arch``: the one architecture a run trains (a sweep's vary), checked with the settings."""
    from varnext_ray.cluster import Resources
    from varnext_ray.manifest import load_manifest
    from varnext_ray.output_checks import check_not_inside
    from varnext_ray.storage_checks import check_storage_writable, local_storage
    from varnext_ray.tracking_sqlite import database_file
    from varnext_ray.train import check_dataset, check_frame_size  # imports torch

    Resources(args.workers, args.gpus_per_worker, args.cpus_per_worker).check()
    check_experiment_name(args.experiment)
    check_storage_writable(args.storage)
    check_dataset(args.data, settings, args.workers, arch)
    storage = local_storage(args.storage)  # a file:// storage is its folder for every check
    check_not_inside(storage, "--storage", args.data, "the dataset (--data)")
    check_frame_size(load_manifest(args.data).size, input_shape, args.data)
    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    if (database := database_file(uri)) is not None:  # its artifacts go beside it
        for written in (database, database.parent / tracking.ARTIFACTS_DIR):
            check_not_inside(written, "--tracking-uri", args.data, "the dataset (--data)")
    tracking.check_reachable(uri)
    tracking.check_experiment(uri, args.experiment)  # a deleted one: MLflow refuses runs in it


def _add_best(sub: argparse._SubParsersAction) -> None:
    p = subcommand(
        sub,
        "best",
        "Download the best run's checkpoint of an MLflow experiment (train and sweep trials).",
        "varnext best --experiment smoke --out runs/best --metric extrap_psnr_motion",
    )
    add_tracking_args(p, None)
    p.add_argument(
        "--out", type=path_arg, required=True, metavar="DIR", help="new or empty directory"
    )
    p.add_argument(
        "--metric",
        default=DEFAULT_OBJECTIVE,
        help=f"rank runs by best_<metric>, in its direction (default {DEFAULT_OBJECTIVE}, the "
        "default objective of train and sweep)",
    )
    _add_register_arg(p, "the best run's checkpoint")
    p.set_defaults(run=_run_best, uses_torch=True)


def _add_register_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--register",
        default=None,
        metavar="NAME",
        help=f"register {what} as a new version of MLflow model NAME, alias champion "
        "(load it with mlflow.pyfunc.load_model('models:/NAME@champion'))",
    )


def _print_registered(version: dict) -> None:
    model_uri = escape(version["model_uri"])
    moved = ""
    if version["alias_version"] != version["version"]:
        moved = (
            f"; its alias {version['alias']} points at version {version['alias_version']}, "
            "registered meanwhile"
        )
    print(
        f"registered {model_uri} (version {version['version']} of {escape(version['name'])}, "
        f"from run {version['run_id']}{moved}); predict with: varnext predict --model "
        f"{model_uri} --out pred.png FRAME_A FRAME_B"
    )


def _print_ui_link(uri: str, experiment: str) -> None:
    """Where the experiment's training runs are in the MLflow UI."""
    from varnext_ray.mlflow_extras import ui_url

    found = tracking.client(uri).get_experiment_by_name(experiment)
    if found is not None:
        base = uri if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
        print(f"open: {ui_url(base, found.experiment_id)}")


def _run_best(args: argparse.Namespace) -> int:
    from varnext_ray.best import RUN_FILE, download_best  # mlflow; torch when it downloads
    from varnext_ray.registry import check_model_name, register_checkpoint
    from varnext_ray.safe_io import read_json

    if args.register is not None:
        check_model_name(args.register)
        tracking.open_store(args.tracking_uri, writes=True)  # before the download
    with bounded_requests():  # reads only: a stuck server is one line, not 15 minutes
        path = download_best(args.tracking_uri, args.experiment, args.out, args.metric)
    run = read_json(path / RUN_FILE, what="run details")  # written by download_best
    print(
        f"best run: {escape(run['run_name'])} ({run['run_id']}, {run['kind']}, {run['status']}) "
        f"with {run['metric']} {run['value']:.4f}"
    )
    shown = escape(str(path))
    print(f"checkpoint: {shown} (run details in {escape(str(path / RUN_FILE))})")
    print(f"predict with: varnext predict --checkpoint {shown} --out pred.png FRAME_A FRAME_B")
    if args.register is not None:
        version = register_checkpoint(
            run["tracking_uri"], run["run_id"], path, args.register, metric=run["metric"]
        )
        _print_registered(version)
    return 0


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = subcommand(
        sub,
        "report",
        "Write a self-contained HTML page of a sweep and log it to the sweep's MLflow run.",
        "varnext report --experiment smoke --top 10 --out runs/report_smoke.html",
    )
    add_tracking_args(p, None)
    p.add_argument("--sweep", default=None, metavar="RUN_ID", help="default: the latest sweep")
    p.add_argument("--top", type=int, default=10, metavar="N", help="best trials shown (10)")
    p.add_argument(
        "--out",
        type=file_arg,
        default=None,
        metavar="PATH",
        help="default report_<experiment>.html",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out page")
    p.set_defaults(run=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from varnext_ray.report import write_report  # imports mlflow

    with bounded_requests():  # reads, and one small page logged
        path, artifact = write_report(
            args.tracking_uri,
            args.experiment,
            sweep_id=args.sweep,
            top=args.top,
            out=args.out,
            overwrite=args.overwrite,
        )
    print(f"wrote {escape(str(path))}")
    print(f"logged to the sweep's MLflow run as {escape(artifact)}")
    return 0


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = subcommand(
        sub,
        "predict",
        "Predict frame t+2s from frames t and t+s (two images, or every triplet of a video).",
        "varnext predict --checkpoint runs/best --out pred.png a.png b.png --steps 3\n"
        "  varnext predict --checkpoint runs/best --video clip.mp4 --out pred.mp4",
    )
    p.add_argument(
        "frames",
        type=path_arg,
        nargs="*",
        metavar="FRAME",
        help="FRAME_A FRAME_B: frames t and t+s",
    )
    p.add_argument(
        "--checkpoint", type=path_arg, default=None, metavar="DIR", help="from varnext best"
    )
    p.add_argument(
        "--model",
        default=None,
        metavar="URI",
        help="a registered model instead of --checkpoint: models:/NAME@champion or "
        "models:/NAME/VERSION (its checkpoint is downloaded)",
    )
    p.add_argument(
        "--tracking-uri",
        default=None,
        metavar="URI",
        help="MLflow tracking URI for --model (default $MLFLOW_TRACKING_URI or ./mlflow.db)",
    )
    p.add_argument(
        "--out",
        type=location_arg,
        required=True,
        metavar="OUT",
        help="a .png for two frames (steps K > 1: <stem>_k1.png...), a .mp4 or .gif for a video",
    )
    p.add_argument(
        "--video",
        type=path_arg,
        default=None,
        metavar="IN",
        help="predict every triplet of a video",
    )
    p.add_argument(
        "--steps", type=int, default=1, metavar="K", help="frames to roll out (default 1)"
    )
    p.add_argument(
        "--stride",
        type=int,
        metavar="S",
        help="video frames from t to t+s (default 1; with --video only)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(run=_run_predict, uses_torch=True)


def _run_predict(args: argparse.Namespace) -> int:
    if len(args.frames) != (0 if args.video else 2):
        got = f"{len(args.frames)} FRAME argument(s)" + (" and --video" if args.video else "")
        fix = "pass two image files FRAME_A FRAME_B, or --video IN (not both)"
        raise UserError(f"need two frames or a video (got {got})", "varnext predict", fix)
    if args.stride is not None and args.video is None:
        raise UserError(
            "--stride applies to --video only (two frames are t and t+s already)",
            "--stride",
            "drop --stride, or pass --video IN",
        )
    import torch

    from varnext_ray import predict
    from varnext_ray.checkpoint_load import load_checkpoint

    if (args.checkpoint is None) == (args.model is None):
        got = "neither" if args.checkpoint is None else "both"
        raise UserError(
            f"need one model (got {got})",
            "--checkpoint, --model",
            "pass --checkpoint DIR or --model URI, one of them",
        )
    stride = 1 if args.stride is None else args.stride
    predict.check_request(  # before a registered model downloads
        args.out,
        args.steps,
        [args.video] if args.video else list(args.frames),
        video=args.video is not None,
        stride=stride,
        overwrite=args.overwrite,
        checkpoint_dir=args.checkpoint,
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.model is not None:
        with bounded_requests():
            ckpt = _registered_checkpoint(args.model, args.tracking_uri, device)
    else:
        ckpt = load_checkpoint(args.checkpoint, device=device)
    if args.video is None:
        paths = predict.predict_image_files(
            ckpt, *args.frames, args.out, args.steps, overwrite=args.overwrite
        )
        for line in predict.frame_lines(paths, *args.frames):
            print(line)
        return 0
    summary = predict.predict_video(
        ckpt, args.video, args.out, args.steps, stride, overwrite=args.overwrite
    )
    for line in predict.video_lines(summary):
        print(line)
    return 0


def _registered_checkpoint(model_uri: str, tracking_uri: str | None, device: str) -> object:
    """The checkpoint of a registered model, downloaded to a temporary folder and loaded."""
    import tempfile

    from varnext_ray.checkpoint_load import load_checkpoint
    from varnext_ray.frame_decode import warnings_after_success
    from varnext_ray.registry import download_checkpoint

    retries = logging.getLogger("urllib3.connectionpool")  # said only if the download succeeds
    with tempfile.TemporaryDirectory(prefix="varnext-model-") as tmp:
        with warnings_after_success(retries):
            path = download_checkpoint(tracking_uri, model_uri, Path(tmp) / "checkpoint")
        return load_checkpoint(path, device=device)  # weights are in memory: the folder can go


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    p = subcommand(
        sub,
        "sweep",
        "Search architectures with Ray Tune + Optuna; one MLflow child run per trial.",
        "varnext sweep --space search_spaces/smoke.json --data runs/dataset --samples 4 "
        "--experiment smoke",
    )
    p.add_argument("--space", type=path_arg, required=True, help="search space JSON")
    p.add_argument("--data", type=path_arg, required=True, help="frame dataset (varnext ingest)")
    p.add_argument("--samples", type=int, default=8, help="trials (default 8)")
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="evaluation rounds (ASHA rungs) per trial (default: the space's)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=0,
        metavar="N",
        help="optimizer steps per trial, in whole passes (default 0: one pass per epoch)",
    )
    p.add_argument("--concurrency", type=int, default=1, help="trials at once (default 1)")
    p.add_argument("--scheduler", choices=("asha", "fifo"), default="asha")
    p.add_argument(
        "--search", choices=("tpe", "random"), default="tpe", help="Optuna sampler (default tpe)"
    )
    p.add_argument("--batch-size", type=int, default=32, help="unless the space varies it")
    p.add_argument("--val-triplets", type=int, default=256)
    p.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep")
    _add_register_arg(p, "the sweep's best trial")
    add_rollout_args(p)
    add_resource_args(p, "--workers-per-trial")
    add_tracking_args(p, "varnext-sweep")
    add_cluster_args(p)
    p.set_defaults(run=_run_sweep, uses_torch=True)


def _run_sweep(args: argparse.Namespace) -> int:
    from varnext_ray.arch import parse_arch
    from varnext_ray.cluster import connect_ray
    from varnext_ray.search_space import load_space
    from varnext_ray.storage_checks import check_trusted_storage
    from varnext_ray.sweep import (
        SweepOptions,
        check_batch_of_one,
        check_new_sweep,
        check_resumable,
        check_resume_matches,
        no_trial_finished,
        run_sweep,
        started_with,
        sweep_path,
    )
    from varnext_ray.sweep_results import summary_table

    space, base = load_space(args.space)
    if args.register is not None:
        from varnext_ray.registry import check_model_name

        check_model_name(args.register)
    options = SweepOptions(
        samples=args.samples,
        workers_per_trial=args.workers,
        gpus_per_worker=args.gpus_per_worker,
        cpus_per_worker=args.cpus_per_worker,
        concurrency=args.concurrency,
        scheduler=args.scheduler,
        search=args.search,
        seed=args.seed,
        train=TrainSettings(
            epochs=space.epochs if args.epochs is None else args.epochs,
            steps=args.steps or None,
            batch_size=args.batch_size,
            val_triplets=args.val_triplets,
            seed=args.seed,
            rollout_steps=args.rollout_steps,
            train_on=args.train_on,
        ),
    )
    options.check()
    options.settings(space).check()
    check_batch_of_one(space, base, options.settings(space))
    _check_sweep_dir(args.experiment, space.name)
    _preflight(args, options.settings(space), parse_arch(base, str(args.space)).input.shape)
    if args.resume:  # Tune's state is unpickled: refuse storage others can write, before Ray
        path = sweep_path(args.storage, args.experiment, space.name)
        check_trusted_storage(path)
        check_resumable(path)
        uri = tracking.resolve_tracking_uri(args.tracking_uri)
        check_resume_matches(path, started_with(space, base, options, args.data, uri))
    else:  # checked again under the sweep's lock, against one started meanwhile
        check_new_sweep(sweep_path(args.storage, args.experiment, space.name))
    connect_ray(args.address)
    outcome = run_sweep(
        space=space,
        base=base,
        data=args.data,
        options=options,
        experiment=args.experiment,
        tracking_uri=args.tracking_uri,
        storage=args.storage,
        resume=args.resume,
    )
    print()
    print(summary_table(outcome, space.objective))
    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    print(
        f"\nsweep {outcome.path}: MLflow parent run {outcome.parent_run_id} in experiment "
        f"{args.experiment!r}; view with: mlflow ui --backend-store-uri {uri}"
    )
    _print_ui_link(uri, args.experiment)
    if args.register is not None and outcome.best is not None:
        from varnext_ray.registry import register_sweep_best

        version = register_sweep_best(
            uri, args.experiment, outcome.parent_run_id, args.register, space.objective
        )
        if version is not None:
            _print_registered(version)
    if outcome.best is None:  # every trial failed: the table says why, one line sums it up
        sys.stderr.write(f"error: {escape(no_trial_finished(outcome.rows))}\n")
        return 1
    return 0


def _check_sweep_dir(experiment: str, space_name: str) -> None:
    """The sweep's directory ``sweep-<experiment>-<space name>`` is one path component under
    --storage (the space's name is checked when the space loads)."""
    bad = [ch for ch in experiment if ch in "/\\" or not (ch.isprintable() or ch == " ")]
    if bad or len(experiment) > MAX_NAME:
        raise UserError(
            f"the experiment name {experiment[:60]!r} cannot name the sweep's directory "
            f"(sweep-<experiment>-{space_name}): it holds {bad[0]!r}"
            if bad
            else f"the experiment name is longer than {MAX_NAME} characters",
            "--experiment",
            "pass an experiment name without '/' or '\\', e.g. smoke",
        )


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = subcommand(
        sub,
        "demo",
        "The whole pipeline on built-in synthetic data: synth, ingest, a 2-trial sweep, best, "
        "predict, and a verdict.",
        "varnext demo --workdir runs/demo",
    )
    p.add_argument(
        "--workdir",
        type=path_arg,
        default=Path("runs/demo"),
        help="where everything is written (default runs/demo)",
    )
    p.add_argument(
        "--samples", type=int, default=demo.SAMPLES, help=f"sweep trials (default {demo.SAMPLES})"
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=demo.EPOCHS,
        help=f"evaluation rounds per trial (default {demo.EPOCHS})",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=demo.STEPS,
        help=f"optimizer steps per trial (default {demo.STEPS})",
    )
    p.add_argument("--address", default=None, help="Ray address (default: a local Ray)")
    p.set_defaults(run=_run_demo, uses_torch=True)


def _run_demo(args: argparse.Namespace) -> int:
    from varnext_ray.demo import run_demo

    return run_demo(
        args.workdir,
        samples=args.samples,
        epochs=args.epochs,
        steps=args.steps,
        address=args.address,
    )


def _add_score(sub: argparse._SubParsersAction) -> None:
    p = subcommand(
        sub,
        "score",
        "Score a checkpoint on a dataset's held-out triplets (the test split, else validation)"
        " and say in plain words whether the model learned and the straight line helps.",
        "varnext score --checkpoint runs/best --data runs/overpass --strides 1 3",
    )
    p.add_argument("--checkpoint", type=path_arg, required=True, metavar="DIR")
    p.add_argument("--data", type=path_arg, required=True, metavar="DATASET")
    p.add_argument(
        "--strides",
        type=int,
        nargs="+",
        default=list(demo.HELD_OUT_STRIDES),
        metavar="S",
        help="triplet strides s: frames t, t+s, t+2s (default 1 3)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_address_arg(p)
    p.set_defaults(run=_run_score, uses_torch=True)


def _run_score(args: argparse.Namespace) -> int:
    from varnext_ray.checkpoint_load import load_checkpoint
    from varnext_ray.cluster import connect_ray
    from varnext_ray.manifest import load_manifest, triplet_index
    from varnext_ray.scoring import score_checkpoint
    from varnext_ray.train import check_frame_size

    if bad := [s for s in args.strides if s < 1]:
        raise UserError(f"--strides must be >= 1 (got {bad[0]})", "--strides", "pass 1 or more")
    strides = list(dict.fromkeys(args.strides))  # each once, in the order given
    manifest = load_manifest(args.data, check_keys=True)
    arch = load_checkpoint(args.checkpoint).arch  # its files checked before Ray starts
    check_frame_size(manifest.size, arch.input.shape, args.data)
    if not any(triplet_index(manifest, split, s) for s in strides for split in ("test", "val")):
        raise UserError(
            f"no triplet at stride(s) {', '.join(map(str, strides))} in the test or validation "
            "split (every clip there is shorter than 2s + 1 frames)",
            str(args.data),
            "pass smaller --strides, or ingest with larger --val / --test",
        )
    connect_ray(args.address)
    held_out = score_checkpoint(args.checkpoint, args.data, strides)
    if args.json:
        out = {s: {**_finite(m), "verdict": demo.verdict(m)} for s, m in held_out.items()}
        print(json.dumps(out, indent=2))
        return 0
    print(demo.held_out_table(held_out, "the checkpoint"))
    for stride, scored in held_out.items():
        print(f"\nverdict at s={stride} ({scored['split']} split): " + demo.verdict(scored))
    return 0


def _finite(metrics: dict[str, object]) -> dict[str, object]:
    """Metrics for JSON: a value that is not a finite number (NaN, inf) is null."""
    return {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in metrics.items()
    }


JOB_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_train,
    _add_sweep,
    _add_best,
    _add_report,
    _add_predict,
    _add_score,
    _add_demo,
]
