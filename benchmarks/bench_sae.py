"""RA-SAE speed on this machine: training tokens/s (ours vs overcomplete) and encode throughput.

    .venv/bin/python benchmarks/bench_sae.py                      # everything, printed table
    .venv/bin/python benchmarks/bench_sae.py --no-overcomplete    # ours only
    .venv/bin/python benchmarks/bench_sae.py --steps 4 --json out.json

The overcomplete side runs in its own venv (benchmarks/overcomplete_env/make_env.sh, default
/tmp/oc-venv): it pulls torchvision, which must never enter the project's environment. Both
sides start from the *same* initial weights (exported by overcomplete), see the same batches,
use AdamW(0.9, 0.999, no weight decay) at a constant LR with gradient clipping 1.0 and an MSE
loss, so their loss curves must agree up to float rounding while the time per step is compared.

The machine is shared: the load average at the start is printed; compare runs made together.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from blindspot_assets.sae import encode_features_to_codes  # noqa: E402
from blindspot_assets.sae.config import RASAEConfig, TrainConfig  # noqa: E402
from blindspot_assets.sae.encode import encode_block  # noqa: E402
from blindspot_assets.sae.model import RelaxedArchetypalSAE, flops_per_token_encode  # noqa: E402
from blindspot_assets.sae.train import Trainer  # noqa: E402
from blindspot_assets.store.layout import feature_arrays  # noqa: E402
from blindspot_assets.store.rowstore import RowStore  # noqa: E402

OC_SIDE = REPO / "benchmarks" / "overcomplete_env" / "oc_side.py"


def matmul_gflops(n: int, d: int, c: int, repeats: int = 3) -> float:
    """Best measured fp32 GFLOP/s of an (n × d)·(d × c) matmul: the ceiling of encoding."""
    a, b = torch.randn(n, d), torch.randn(d, c)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n * d * c / best / 1e9


def synthetic_tokens(n: int, d: int, n_atoms: int, seed: int) -> np.ndarray:
    """Non-negative sparse mixtures of random atoms plus noise (a loss curve that means a fit)."""
    rng = np.random.default_rng(seed)
    atoms = rng.normal(size=(n_atoms, d)).astype(np.float32)
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    out = np.empty((n, d), np.float32)
    for a in range(0, n, 4096):
        b = min(n, a + 4096)
        coef = rng.exponential(size=(b - a, n_atoms)).astype(np.float32)
        coef *= rng.random(size=coef.shape) < 16 / n_atoms
        out[a:b] = coef @ atoms + 0.05 * rng.normal(size=(b - a, d)).astype(np.float32)
    return out


def our_model_from_oc_init(init: dict[str, np.ndarray], cfg: RASAEConfig) -> RelaxedArchetypalSAE:
    t = {k: torch.from_numpy(v) for k, v in init.items()}
    model = RelaxedArchetypalSAE(cfg, t["dictionary.C"])
    state = {
        "encoder.weight": t["encoder.final_block.0.weight"],
        "encoder.bias": t["encoder.final_block.0.bias"],
        "norm.weight": t["encoder.final_block.1.weight"],
        "norm.bias": t["encoder.final_block.1.bias"],
        "C": t["dictionary.C"],
        "W": t["dictionary.W"],
        "relax": t["dictionary.Relax"],
        "log_scale": t["dictionary.multiplier"],
        "threshold": torch.tensor(float("nan")),
    }
    model.load_state_dict(state, strict=True)
    return model.train()


def _run_overcomplete(oc_python: Path, work: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [str(oc_python), str(OC_SIDE), "train", str(work)],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if proc.returncode != 0:
        return {"failed": proc.stderr[-2000:]}
    result: dict[str, Any] = json.loads((work / "oc_result.json").read_text())
    return result


def _run_ours(
    init: dict[str, np.ndarray] | None,
    cfg: RASAEConfig,
    points: np.ndarray,
    tokens: np.ndarray,
    B: int,
    aux_weight: float,
) -> dict[str, Any]:
    if init is not None:
        model = our_model_from_oc_init(init, cfg)
    else:
        torch.manual_seed(0)
        model = RelaxedArchetypalSAE(cfg, torch.from_numpy(points)).train()
    train_cfg = TrainConfig(aux_weight=aux_weight, grad_clip=1.0, dead_after_tokens=B)
    trainer = Trainer(model, train_cfg, torch.device("cpu"))
    x_all = torch.from_numpy(tokens)
    losses, step_seconds = [], []
    for i in range(tokens.shape[0] // B):
        t0 = time.perf_counter()
        losses.append(float(trainer.step(x_all[i * B : (i + 1) * B], lr=5e-4)["mse"]))
        step_seconds.append(time.perf_counter() - t0)
    return {"step_seconds": step_seconds, "loss": losses}


def _summary(runs: list[dict[str, Any]], B: int) -> dict[str, Any]:
    """Per-step times of every round, the first step of each round left out (warm-up)."""
    times = [t for r in runs if "step_seconds" in r for t in r["step_seconds"][1:]]
    if not times:
        return {**runs[0]}
    best, median = min(times), float(np.median(times))
    return {
        "best_step_s": best,
        "median_step_s": median,
        "tokens_per_s": B / best,
        "median_tokens_per_s": B / median,
        "timed_steps": len(times),
        "loss": runs[0]["loss"],
    }


def train_side_by_side(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Rounds alternate overcomplete and ours from the same initial weights; the machine is
    shared, so the best per-step time (least disturbed) is compared, with the median beside."""
    d, c, m, k, B, steps = 768, args.train_c, args.train_c, 32, args.batch, args.steps
    tokens = synthetic_tokens((steps + 1) * B, d, n_atoms=2 * c, seed=0)
    rng = np.random.default_rng(1)
    points = tokens[rng.choice(len(tokens), size=m, replace=False)]
    np.savez(work / "data.npz", tokens=tokens, points=points)
    side = {
        "d": d,
        "c": c,
        "k": k,
        "delta": 1.0,
        "lr": 5e-4,
        "batch": B,
        "seed": 0,
        "threads": torch.get_num_threads(),
    }
    (work / "config.json").write_text(json.dumps(side))
    result: dict[str, Any] = {"config": {**side, "m": m, "steps": steps, "rounds": args.rounds}}
    cfg = RASAEConfig(d=d, n_concepts=c, sparsity="topk", k=k, n_candidates=m, delta_relax=1.0)

    oc_python = Path(args.oc_python)
    use_oc = not args.no_overcomplete and oc_python.exists()
    if not use_oc:
        why = "--no-overcomplete" if args.no_overcomplete else f"{oc_python} missing (make_env.sh)"
        result["overcomplete"] = {"skipped": why}
    runs: dict[str, list[dict[str, Any]]] = {"overcomplete": [], "ours": [], "ours_with_auxk": []}
    init = None
    for _ in range(args.rounds):
        if use_oc:
            runs["overcomplete"].append(_run_overcomplete(oc_python, work))
            if init is None and "failed" not in runs["overcomplete"][-1]:
                init = dict(np.load(work / "oc_init.npz"))
        runs["ours"].append(_run_ours(init, cfg, points, tokens, B, 0.0))
        runs["ours_with_auxk"].append(_run_ours(init, cfg, points, tokens, B, 1.0 / 32))
    for key, rs in runs.items():
        if rs:
            result[key] = _summary(rs, B)
    oc = result.get("overcomplete", {})
    if "loss" in oc and init is not None:
        ours_l, oc_l = np.array(result["ours"]["loss"]), np.array(oc["loss"])
        result["loss_max_rel_diff"] = float(np.max(np.abs(ours_l - oc_l) / np.abs(oc_l)))
        result["speedup_best"] = oc["best_step_s"] / result["ours"]["best_step_s"]
        per_round = [
            float(np.median(o["step_seconds"][1:]) / np.median(u["step_seconds"][1:]))
            for o, u in zip(runs["overcomplete"], runs["ours"], strict=True)
            if "step_seconds" in o
        ]
        result["speedup_rounds"] = per_round
        result["speedup_rounds_median"] = float(np.median(per_round))
        result["speedup_median"] = oc["median_step_s"] / result["ours"]["median_step_s"]
    return result


def _features_store(path: Path, n_img: int, T: int, d: int) -> None:
    store = RowStore.create_or_resume(
        path, [f"i{i}" for i in range(n_img)], feature_arrays(T, d), {"fingerprint": "bench"}, 8
    )
    toks = synthetic_tokens(n_img * T, d, 256, seed=3).reshape(n_img, T, d).astype(np.float16)
    for a in range(0, n_img, 8):
        b = min(n_img, a + 8)
        store.write_block(a, {"tokens": toks[a:b]}, np.ones(b - a, bool), ["ok"] * (b - a))


def encode_throughput(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Rounds of: the matmul ceiling, ``model.encode`` (dense codes), ``encode_block`` (codes
    as entries: ξ, nfire, top-64 per token, reconstruction) and features Zarr → codes Zarr.
    Each path's fraction of the ceiling is taken within its round; medians are reported."""
    d, c, T = 768, 32000, 261
    cfg = RASAEConfig(d=d, n_concepts=c, sparsity="batchtopk", k=32, n_candidates=0)
    model = RelaxedArchetypalSAE(cfg)
    with torch.no_grad():
        torch.nn.init.normal_(model.D, std=d**-0.5)
        x = torch.from_numpy(synthetic_tokens(8 * T, d, 256, seed=2))
        model.train()
        model.sparsify(model.pre_codes(x[:512]), update_threshold=True)  # θ for ~k per token
    model.eval()
    n_img = max(8, args.encode_tokens // T)
    feats = work / "features.zarr"
    _features_store(feats, n_img, T, d)
    floor = flops_per_token_encode(d, c)
    rounds: list[dict[str, float]] = []
    for r in range(args.rounds):
        ceiling = matmul_gflops(2048, d, c) * 1e9 / floor
        with torch.no_grad():
            model.encode(x[:T])
            t0 = time.perf_counter()
            for a in range(0, x.shape[0], 2 * T):
                model.encode(x[a : a + 2 * T])
            dense = x.shape[0] / (time.perf_counter() - t0)
            t0 = time.perf_counter()
            for a in range(0, x.shape[0], 2 * T):
                encode_block(model, x[a : a + 2 * T].view(2, T, d), 64)
            entries = x.shape[0] / (time.perf_counter() - t0)
        summary = encode_features_to_codes(model, feats, work / f"codes{r}.zarr", k_max=64)
        zarr = float(summary["tokens_per_s"])
        rounds.append(
            {"ceiling": ceiling, "model_encode": dense, "encode_block": entries, "zarr": zarr}
        )
    med = {k: float(np.median([rd[k] for rd in rounds])) for k in rounds[0]}
    frac = {k: float(np.median([rd[k] / rd["ceiling"] for rd in rounds])) for k in rounds[0]}
    return {
        "rounds": rounds,
        "median_tokens_per_s": med,
        "median_of_ceiling": frac,
        "flops_per_token_floor": floor,
        "zarr_images": n_img,
        "mean_l0": summary["mean_l0"],
    }


def profile_ours(args: argparse.Namespace, steps: int = 2) -> str:
    """torch.profiler's per-op table of our training step on the benchmark config."""
    from torch.profiler import ProfilerActivity, profile

    d, c, B = 768, args.train_c, args.batch
    tokens = torch.from_numpy(synthetic_tokens(B, d, n_atoms=2 * c, seed=0))
    cfg = RASAEConfig(d=d, n_concepts=c, sparsity="topk", k=32, n_candidates=c, delta_relax=1.0)
    torch.manual_seed(0)
    model = RelaxedArchetypalSAE(cfg, tokens[:c].clone()).train()
    trainer = Trainer(model, TrainConfig(aux_weight=0.0, grad_clip=1.0), torch.device("cpu"))
    trainer.step(tokens, lr=5e-4)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            trainer.step(tokens, lr=5e-4)
    table: str = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18)
    return table


def gpu_benchmark(steps: int = 10) -> dict[str, Any]:
    """Full-size step (768→32,000, 32,000 points, BatchTopK, bf16 autocast) and encode on CUDA,
    against the measured bf16 matmul ceiling. Prepared for a lent GPU; not run on CPU machines."""
    dev = torch.device("cuda")
    d, c, m, B = 768, 32000, 32000, 4096

    def timed(fn: Any, n: int) -> float:
        fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / n

    a = torch.randn(8192, d, device=dev, dtype=torch.bfloat16)
    b = torch.randn(d, c, device=dev, dtype=torch.bfloat16)
    ceiling = 2 * 8192 * d * c / timed(lambda: a @ b, 20) / 1e12
    x = torch.from_numpy(synthetic_tokens(B * 4, d, 1024, seed=4)).to(dev)
    cfg = RASAEConfig(d=d, n_concepts=c, sparsity="batchtopk", k=32, n_candidates=m)
    model = RelaxedArchetypalSAE(cfg, x[torch.randperm(x.shape[0], device=dev)[:m]].cpu()).to(dev)
    model.project_()
    model.init_encoder_from_dictionary()
    model.train()
    trainer = Trainer(model, TrainConfig(amp_dtype="bfloat16", dead_after_tokens=B * 2), dev)
    it = iter(range(10**9))
    step_s = timed(lambda: trainer.step(x[(next(it) % 4) * B :][:B], lr=1e-4), steps)
    # encoder fwd + weight grad, dictionary W·C fwd + W grad: the dense part of a step
    step_flops = 2 * 2 * B * d * c + 2 * 2 * c * m * d
    model.eval()
    xe = x[:8192]
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        enc_s = timed(lambda: model.encode(xe), 20)
    return {
        "device": torch.cuda.get_device_name(0),
        "bf16_matmul_tflops": ceiling,
        "train_step_s": step_s,
        "train_tokens_per_s": B / step_s,
        "train_step_tflops": step_flops / step_s / 1e12,
        "encode_tokens_per_s": xe.shape[0] / enc_s,
        "encode_ceiling_tokens_per_s": ceiling * 1e12 / flops_per_token_encode(d, c),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
    }


def print_train(train: dict[str, Any]) -> None:
    cfg = train["config"]
    print(
        f"\nTraining step, d={cfg['d']} c={cfg['c']} points={cfg['m']} TopK k={cfg['k']} "
        f"batch={cfg['batch']}, CPU fp32, {cfg['rounds']} alternating rounds × "
        f"{cfg['steps']} timed steps"
    )
    print(
        f"{'implementation':<34}{'tokens/s':>10}{'best s/step':>13}{'median':>9}{'final MSE':>11}"
    )
    for key, label in (
        ("overcomplete", "overcomplete RATopKSAE+train_sae"),
        ("ours", "ours (Trainer.step)"),
        ("ours_with_auxk", "ours + AuxK 1/32"),
    ):
        r = train.get(key, {})
        if "tokens_per_s" in r:
            print(
                f"{label:<34}{r['tokens_per_s']:>10.0f}{r['best_step_s']:>13.2f}"
                f"{r['median_step_s']:>9.2f}{r['loss'][-1]:>11.5f}"
            )
        else:
            print(f"{label:<34}  {r}")
    if "speedup_best" in train:
        print(
            f"speed-up ours / overcomplete: {train['speedup_rounds_median']:.2f}× (median of the "
            f"rounds' ratios {', '.join(f'{v:.2f}' for v in train['speedup_rounds'])}), "
            f"{train['speedup_best']:.2f}× (best step), {train['speedup_median']:.2f}× (median "
            f"step); loss curves max relative difference {train['loss_max_rel_diff']:.1e}"
        )


def print_encode(enc: dict[str, Any]) -> None:
    med, frac = enc["median_tokens_per_s"], enc["median_of_ceiling"]
    print(f"\nEncode, d=768 c=32000 BatchTopK (θ), CPU fp32, median of {len(enc['rounds'])} rounds")
    print(f"{'path':<44}{'tokens/s':>12}{'of ceiling':>12}")
    for key, label in (
        ("ceiling", "matmul ceiling (2048×768)·(768×32000)"),
        ("model_encode", "model.encode (dense codes, 522-token blocks)"),
        ("encode_block", "encode_block (entries: ξ, nfire, top-64, recon)"),
        ("zarr", f"features Zarr → codes Zarr ({enc['zarr_images']} images)"),
    ):
        print(f"{label:<44}{med[key]:>12.0f}{frac[key]:>12.0%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3, help="timed training steps per round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of both sides")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--train-c", type=int, default=4096, help="concepts = candidate points")
    ap.add_argument("--encode-tokens", type=int, default=16384)
    ap.add_argument("--oc-python", default="/tmp/oc-venv/bin/python")
    ap.add_argument("--no-overcomplete", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--gpu-only", action="store_true", help="only the CUDA full-size section")
    ap.add_argument("--encode-only", action="store_true", help="skip the training comparison")
    ap.add_argument("--profile", action="store_true", help="print our step's per-op profile")
    args = ap.parse_args()
    if args.gpu_only:
        gpu = gpu_benchmark()
        print(json.dumps(gpu, indent=2))
        if args.json:
            args.json.write_text(json.dumps({"gpu": gpu}, indent=2))
        return

    load = os.getloadavg()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load average {load[0]:.1f} (CPU cores: {os.cpu_count()})"
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        train = train_side_by_side(args, work) if not args.encode_only else {}
        enc = encode_throughput(args, work)
    report: dict[str, Any] = {"load_average": load[0], "train": train, "encode": enc}
    if torch.cuda.is_available():
        report["gpu"] = gpu_benchmark()
        print(json.dumps(report["gpu"], indent=2))

    if train:
        print_train(train)
    print_encode(enc)
    if args.profile:
        report["profile"] = profile_ours(args)
        print(f"\nOur training step by op ({args.batch} tokens, 2 steps):\n{report['profile']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
