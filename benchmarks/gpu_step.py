"""Training-step benchmark: frames/s and achieved TFLOP/s of one VAE step per precision/layout.

One step is what the training loop does per batch: forward, the ELBO in fp32, backward and an
AdamW step, here on a fixed random batch already on the device. Variants (:data:`VARIANTS`),
each a fresh model from the architecture JSON (same seed): fp32; bf16 (the forward under
``torch.autocast(device, torch.bfloat16)``, on CPU too); channels_last (model and input);
compile (``torch.compile(model)``, its first step recorded as ``compile_seconds``); all (the
three together, in the defaults on CUDA only). After ``--warmup`` untimed steps, ``--repeats``
rounds of ``--steps`` timed steps, the variants' order alternating; steps/s is the median round
(CUDA synchronized before each clock read). FLOPs per step are counted by
``torch.utils.flop_counter`` over one eager step; achieved FLOP/s = FLOPs per step x steps/s.

Usage:
    python benchmarks/gpu_step.py                        # CPU: 160x90 and 640x360, ~2-3 min
    python benchmarks/gpu_step.py --configs configs/seed_640x360.json --batch 32 --device cuda
    python benchmarks/gpu_step.py --variants fp32 bf16 --steps 20 --repeats 5
    python benchmarks/gpu_step.py --quick --out /tmp/gpu_step.json   # smoke run, no docs
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
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

import torch
from torch.utils.flop_counter import FlopCounterMode

from varnext_ray.arch import ArchConfig, load_arch
from varnext_ray.model import build_vae, elbo_loss

SECTION = "## GPU step"
log = logging.getLogger("benchmarks.gpu_step")


@dataclass(frozen=True)
class Variant:
    """How a step runs: bf16 autocast, channels_last memory format, torch.compile."""

    bf16: bool = False
    channels_last: bool = False
    compile: bool = False


VARIANTS = {
    "fp32": Variant(),
    "bf16": Variant(bf16=True),
    "channels_last": Variant(channels_last=True),
    "compile": Variant(compile=True),
    "all": Variant(bf16=True, channels_last=True, compile=True),
}
# Per device: (config, batch, timed steps per round, warm-up steps) run by default.
DEFAULTS = {
    "cpu": [("small_160x90.json", 32, 10, 3), ("seed_640x360.json", 8, 4, 2)],
    "cuda": [("seed_640x360.json", 32, 20, 5), ("small_160x90.json", 32, 50, 5)],
}
# Dense peak TFLOP/s by device name (first match): fp32 on CUDA cores, tf32 and bf16 on tensor
# cores, the datasheets' "with sparsity" figures halved. The A10G (an AWS part) has no datasheet
# of its own: the A10's figures, an upper bound for it.
PEAK_SOURCE = "NVIDIA datasheets, dense (sparsity figures halved); approximate"
PEAKS: list[tuple[str, dict[str, float]]] = [
    (r"H100.*PCIe", {"fp32": 51.0, "tf32": 378.0, "bf16": 756.5}),
    (r"H100.*NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5}),
    (r"H100", {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5}),  # SXM5
    (r"H200.*NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5}),
    (r"H200", {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5}),  # SXM
    (r"A100", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0}),
    (r"A10G", {"fp32": 31.2, "tf32": 62.5, "bf16": 125.0}),  # the A10's figures
    (r"A10\b", {"fp32": 31.2, "tf32": 62.5, "bf16": 125.0}),
    (r"L4\b", {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0}),
]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parses the command line; ``--quick`` is a smoke run on the tiny config, without docs."""
    p = argparse.ArgumentParser(
        description="Measure frames/s and achieved TFLOP/s of one VAE training step.",
        epilog="example:\n  python benchmarks/gpu_step.py --variants fp32 bf16 --steps 20",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--configs", type=Path, nargs="+", help="architectures (default: per device)")
    p.add_argument("--batch", type=int, help="batch of every config (default: per config)")
    p.add_argument("--steps", type=int, help="timed steps per round (default: per config)")
    p.add_argument("--repeats", type=int, help="timed rounds, order alternating (default 3)")
    p.add_argument("--warmup", type=int, help="untimed steps first, >= 1 (default: per config)")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), help="default: all but 'all'")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: all cores)")
    p.add_argument("--quick", action="store_true", help="smoke run: smoke_64x36, 3 steps")
    p.add_argument("--out", type=Path, help="JSON results (default benchmarks/results/...)")
    p.add_argument("--docs", type=Path, help="markdown page whose section is replaced")
    args = p.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available; use --device cpu or auto")
    if args.quick:
        plan = [(REPO / "configs" / "smoke_64x36.json", 4, 3, 2)]
    elif args.configs is None:
        plan = [(REPO / "configs" / c, b, s, w) for c, b, s, w in DEFAULTS[args.device]]
    else:
        plan = [(c, 8, 10, 2) for c in args.configs]
    args.plan = [(c, args.batch or b, args.steps or s, args.warmup or w) for c, b, s, w in plan]
    on_cuda = args.device == "cuda" and not args.quick
    args.variants = args.variants or [v for v in VARIANTS if v != "all" or on_cuda]
    args.threads = args.threads or os.cpu_count() or 1
    args.repeats = args.repeats or (1 if args.quick else 3)
    default_outputs(args, "gpu_step", quick_to_tmp=True)
    if min(args.batch or 1, args.steps or 1, args.warmup or 1, args.threads, args.repeats) < 1:
        p.error("--batch, --steps, --warmup, --repeats and --threads must be >= 1")
    return args


def peak_tflops(name: str) -> dict[str, float] | None:
    """Dense peak TFLOP/s (fp32, tf32, bf16) of a CUDA device by name, or None if unknown."""
    return next((dict(peak) for pattern, peak in PEAKS if re.search(pattern, name)), None)


def device_info(device: str, cpu_model: str) -> dict[str, Any]:
    """The device's name and its peak TFLOP/s (None on CPU and for unknown GPUs)."""
    if device == "cpu":
        return {"type": "cpu", "name": cpu_model, "peak_tflops": None, "peak_note": "CPU: none"}
    name = torch.cuda.get_device_name(0)
    peak = peak_tflops(name)
    return {
        "type": "cuda",
        "name": name,
        "capability": list(torch.cuda.get_device_capability(0)),
        "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
        "cuda": torch.version.cuda,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "peak_tflops": peak,
        "peak_note": PEAK_SOURCE if peak else f"unknown device {name!r}: no peak recorded",
    }


def make_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    arch: ArchConfig,
    *,
    bf16: bool,
) -> Callable[[], torch.Tensor]:
    """One training step as in the training loop: forward (autocast), fp32 ELBO, AdamW."""
    autocast = torch.autocast(x.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()

    def step() -> torch.Tensor:
        with autocast:
            recon, mu, logvar = model(x)  # (B, C, H, W), (B, D), (B, D)
        loss = elbo_loss(recon.float(), x, mu.float(), logvar.float(), arch.loss, 0)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def count_flops(step: Callable[[], object]) -> int:
    """FLOPs that ``torch.utils.flop_counter`` counts in one call of ``step`` (forward+backward)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prepare(
    arch: ArchConfig, variant: Variant, *, batch: int, warmup: int, dev: torch.device
) -> tuple[Callable[[], torch.Tensor], dict[str, Any]]:
    """A fresh model's step, after its FLOP count (eager), first step (compile) and warm-up."""
    torch.manual_seed(0)
    model = build_vae(arch).to(dev)
    x = torch.rand(batch, *arch.input.shape, device=dev)  # (B, C, H, W) in [0, 1]
    if variant.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    flops = count_flops(make_step(model, optimizer, x, arch, bf16=variant.bf16))
    step = make_step(
        torch.compile(model) if variant.compile else model, optimizer, x, arch, bf16=variant.bf16
    )
    _sync(dev)
    started = time.perf_counter()
    step()
    _sync(dev)
    first = time.perf_counter() - started
    for _ in range(warmup - 1):
        step()
    _sync(dev)
    return step, {
        "flops_per_step": flops,
        "first_step_seconds": round(first, 3),
        "compile_seconds": round(first, 2) if variant.compile else None,
    }


def time_block(step: Callable[[], torch.Tensor], dev: torch.device, steps: int) -> dict:
    """``steps`` steps timed (CUDA synchronized), with the CPU that others used meanwhile."""
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    with CpuMeter() as meter:
        started = time.perf_counter()
        for _ in range(steps):
            loss = step()
        _sync(dev)
        seconds = time.perf_counter() - started
    memory = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
    return {
        "seconds": round(seconds, 4),
        "steps_per_s": round(steps / seconds, 4),
        "last_loss": round(float(loss), 3),
        "peak_memory_gib": None if memory is None else round(memory, 3),
        "cpu": meter.result(),
    }


def run_config(
    path: Path, batch: int, steps: int, warmup: int, args: argparse.Namespace, info: dict
) -> list[dict[str, Any]]:
    """Every variant of one config, timed in ``args.repeats`` rounds of alternating order."""
    arch, dev, name = load_arch(path), torch.device(args.device), repo_relative(path)
    torch._dynamo.reset()
    rows: dict[str, dict[str, Any]] = {}
    steps_of: dict[str, Callable[[], torch.Tensor]] = {}
    for vname in args.variants:
        variant = VARIANTS[vname]
        row = {"config": name, "size": [arch.input.width, arch.input.height]}
        row |= {"device": info["name"], "variant": vname, "batch": batch} | asdict(variant)
        rows[vname] = row | {"steps": steps, "warmup": warmup, "blocks": []}
        with _recorded(rows[vname]):
            steps_of[vname], extra = prepare(arch, variant, batch=batch, warmup=warmup, dev=dev)
            rows[vname] |= extra
    for r in range(args.repeats):
        for vname in list(steps_of) if r % 2 == 0 else list(reversed(steps_of)):
            if "error" not in rows[vname]:
                with _recorded(rows[vname]):
                    rows[vname]["blocks"].append(time_block(steps_of[vname], dev, steps))
    del steps_of
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    for row in rows.values():
        if "error" not in row:
            _summarise(row, info)
    base = rows.get("fp32", {}).get("steps_per_s")
    for row in rows.values():
        if "error" not in row:
            row["ratio_vs_fp32"] = round(row["steps_per_s"] / base, 3) if base else None
    return list(rows.values())


@contextmanager
def _recorded(row: dict[str, Any]) -> Iterator[None]:
    """Records an exception as the row's error (no compiler, out of memory): a result too."""
    try:
        yield
    except Exception as exc:
        log.exception("%s %s failed", row["config"], row["variant"])
        row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"


def _summarise(row: dict[str, Any], info: dict[str, Any]) -> None:
    """The median round's rates, and the share of the device's peak."""
    rate = statistics.median(b["steps_per_s"] for b in row["blocks"])
    row["steps_per_s"] = round(rate, 4)
    row["frames_per_s"] = round(row["batch"] * rate, 2)
    row["achieved_tflops"] = round(row["flops_per_step"] * rate / 1e12, 5)
    shares = [b["cpu"]["others_share"] for b in row["blocks"]]
    row["others_share"] = None if None in shares else round(statistics.median(shares), 3)
    peaks = info["peak_tflops"]
    kind = "bf16" if row["bf16"] else "tf32" if info.get("cudnn_allow_tf32") else "fp32"
    row["peak_kind"] = kind if peaks else None
    row["peak_tflops"] = peaks[kind] if peaks else None
    row["pct_of_peak"] = round(100 * row["achieved_tflops"] / peaks[kind], 2) if peaks else None
    log.info(
        "%s %s b%d: %.2f steps/s, %.1f frames/s, %.4f TFLOP/s; others' CPU share %s",
        *(row["config"], row["variant"], row["batch"], rate, row["frames_per_s"]),
        *(row["achieved_tflops"], row["others_share"]),
    )


def markdown(report: dict[str, Any]) -> str:
    """The section for docs/benchmarks.md: the table, what the numbers mean, the command."""
    lines = [
        SECTION,
        "",
        "| config | device | variant | batch | frames/s | steps/s | GFLOP/step | achieved TFLOP/s "
        "| vs fp32 | % of peak | compile s | others' CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        head = f"| {r['config']} | {r['device']} | {r['variant']} | {r['batch']} |"
        if "error" in r:
            lines.append(f"{head} error: {r['error'].replace('|', '/')} |" + " |" * 7)
            continue
        pct = "n/a (CPU: no peak recorded)" if report["device"]["type"] == "cpu" else "n/a"
        if r["pct_of_peak"] is not None:
            pct = f"{r['pct_of_peak']:.1f}% of {r['peak_tflops']:g} ({r['peak_kind']})"
        ratio = "-" if r["ratio_vs_fp32"] is None else f"{r['ratio_vs_fp32']:.2f}x"
        compiled = "-" if r["compile_seconds"] is None else f"{r['compile_seconds']:.1f}"
        share = "-" if r["others_share"] is None else f"{100 * r['others_share']:.0f}%"
        lines.append(
            f"{head} {r['frames_per_s']:,.1f} | {r['steps_per_s']:.2f} | "
            f"{r['flops_per_step'] / 1e9:.4g} | {r['achieved_tflops']:.3g} | {ratio} | {pct} | "
            f"{compiled} | {share} |"
        )
    return "\n".join([*lines, "", *_notes(report)]) + "\n"


def _notes(report: dict[str, Any]) -> list[str]:
    m, dev, s = report["machine"], report["device"], report["settings"]
    where = (
        "**No CUDA device was available when these were measured**: every row is the CPU "
        f"({m['cores']} cores, {dev['name']}, {s['threads']} torch threads), bf16 is "
        "`torch.autocast('cpu', dtype=torch.bfloat16)`, and no CPU peak FLOP/s is recorded."
        if dev["type"] == "cpu"
        else f"Device: {dev['name']} (CUDA {dev['cuda']}); peak: {dev['peak_note']}; fp32 rows "
        f"are compared with the TF32 peak when cuDNN may use TF32 (allow_tf32="
        f"{dev['cudnn_allow_tf32']}, PyTorch's default for convolutions)."
    )
    best: dict[str, tuple[str, float]] = {}
    for r in report["results"]:
        if r.get("ratio_vs_fp32") and r["ratio_vs_fp32"] > best.get(r["config"], ("", 0))[1]:
            best[r["config"]] = (r["variant"], r["ratio_vs_fp32"])
    fastest = "; ".join(f"`{c}`: {v} ({x:.2f}x fp32)" for c, (v, x) in best.items())
    busy = max((r.get("others_share") or 0.0 for r in report["results"]), default=0.0)
    caveat = [
        f"**Caveat: a busy machine.** Other processes used up to {100 * busy:.0f}% of its CPU "
        "during a row's timed steps (median round): those rows and their ratios are low and "
        "noisy; rerun on a quiet machine before drawing conclusions from them.",
        "",
    ]
    return [
        f"Measured {report['timestamp']}, torch {m['versions']['torch']}, python {m['python']}. "
        + where,
        "",
        *(caveat if busy > 0.1 else []),
        "One step = forward (under autocast for bf16) + ELBO in fp32 + backward + AdamW step on "
        "a fixed random batch already on the device: no data loading and no per-step `.item()`, "
        "so an upper bound for the training loop. steps/s = the median of "
        f"{s['repeats']} rounds of timed steps after the warm-up ones, variants alternating "
        "order between rounds (CUDA synchronized before each clock read); frames/s = batch x "
        "steps/s; 'vs fp32' = steps/s over fp32's for the same config in this run. Fastest per "
        f"config: {fastest or 'n/a'}.",
        "",
        "FLOPs are what `torch.utils.flop_counter.FlopCounterMode` counts in one eager step: "
        "convolutions and matmuls, forward and backward (norms, activations, the loss and AdamW "
        "are not counted), so achieved TFLOP/s is a floor of the work done; compile rows are "
        "counted on the eager model, the same math. 'compile s' = the first step's wall time "
        "(compiling forward and backward, then the step; inductor's on-disk cache may hold "
        "kernels of earlier runs), never in the rates. 'others' CPU' = CPU used by other "
        "processes during the timed steps (median round), as a share of all cores: above a few "
        "percent the machine was busy, and with one torch thread per core a busy core stalls "
        "every parallel region.",
        "",
        f"Command: `{report['command']}`.",
    ]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark, prints the section, writes the JSON (and the docs section)."""
    argv, started, clock = begin(argv)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    machine = machine_info()  # before the run: its load average is the one at the start
    info = device_info(args.device, machine["cpu_model"])
    results = [row for plan in args.plan for row in run_config(*plan, args, info)]
    keys = ("config", "batch", "steps", "warmup")
    plan = [dict(zip(keys, (repo_relative(c), *rest), strict=True)) for c, *rest in args.plan]
    report = {
        **report_head("gpu_step", started, argv),
        "machine": machine | {"torch_threads": torch.get_num_threads(), "device": info["name"]},
        "device": info,
        "settings": {
            "quick": args.quick,
            "device": args.device,
            "variants": args.variants,
            "plan": plan,
            "repeats": args.repeats,
            "threads": args.threads,
            "optimizer": "AdamW(lr=1e-3)",
            "docs": None if args.docs is None else str(args.docs),
        },
        "results": results,
        "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "wall_seconds": round(time.perf_counter() - clock, 1),
    }
    section = markdown(report)
    publish(report, section, SECTION, args.out, args.docs)
    return report


if __name__ == "__main__":
    main()
