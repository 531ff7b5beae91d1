"""The prepared check of a lent GPU machine (``make gpu-check``): one command, one markdown table.

    python bench/gpu_check.py [--out DIR]     # DIR defaults to $OUT, else runs/gpu-check

It uses the PyTorch already installed (a lent machine has its own, no faiss, no internet) and runs,
each step timed and none allowed to stop the others (a missing package or a failure is written
into the table as such):

1. the tests marked ``gpu`` (``tests/test_gpu.py``: CPU against CUDA for every method's loss,
   gradient and update, the exact search and pseudo labels, one training step and evaluation, a
   bf16 autocast run);
2. ``bench/train_throughput.py`` at paper sizes (training step in fp32 / bf16 / bf16 +
   channels-last against a plain ResNet-50 step, the loader, pseudo labels and extraction at
   N = 32,621, MSMT17's training set);
3. a timed 2-epoch USL run at 256 x 128 (the ``usl_market1501`` preset, ResNet-50 from scratch: no
   weights can be downloaded) on a generated target of Market-1501's size, from which the 50-epoch
   paper run is extrapolated.

On a machine without CUDA it says so and runs the same steps at tiny sizes (under three minutes on
two cores), so the script is known to work before a GPU is lent. About 8 minutes on one GPU.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

MARKET_TRAIN_IDS = 751  # Market-1501's training identities (12,936 images)


def _machine(gpu: bool) -> list[str]:
    """Who ran it: card, driver, torch, CUDA, Python, date."""
    rows = [("date (UTC)", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")),
            ("python", platform.python_version()), ("torch", torch.__version__)]
    if gpu:
        props = torch.cuda.get_device_properties(0)
        rows += [("card", f"{props.name}, {props.total_memory / 2**30:.0f} GiB"), ("CUDA (torch)", str(torch.version.cuda))]
        driver = "unknown (no nvidia-smi)"
        if shutil.which("nvidia-smi"):
            query = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                   capture_output=True, text=True, timeout=30)
            driver = query.stdout.strip().splitlines()[0] if query.returncode == 0 and query.stdout.strip() else driver
        rows.append(("driver", driver))
    else:
        rows.append(("card", f"none: no CUDA device, tiny sizes on the CPU ({os.cpu_count()} cores)"))
    return ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]


def _run(command: list[str], timeout: int, env: dict[str, str] | None = None) -> tuple[int | str, str, float]:
    """Exit status (or "timed out"), combined output and seconds of a subprocess."""
    started = time.time()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})
        return done.returncode, done.stdout + done.stderr, time.time() - started
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return "timed out", out, time.time() - started


def gpu_tests(gpu: bool) -> list[str]:
    try:
        import pytest  # noqa: F401
    except ImportError:
        return ["skipped: pytest is not installed here (`pip install pytest`)"]
    env = {} if gpu else {"SPCL_GPU_TEST_DEVICE": "cpu"}
    status, out, seconds = _run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/test_gpu.py",
                                 "-p", "no:cacheprovider"], 420, env)
    summary = next((line for line in reversed(out.splitlines()) if " in " in line and ("passed" in line or "failed" in line)),
                   f"no summary (exit {status})")
    lines = [f"`pytest -m gpu tests/test_gpu.py`{'' if gpu else ' (CPU against CPU: no CUDA)'}: {summary.strip('= ')} "
             f"({seconds:.0f} s wall)"]
    if status != 0:
        failed = [line for line in out.splitlines() if line.startswith(("FAILED", "ERROR"))]
        lines += ["", "```", *(failed or out.splitlines()[-20:]), "```"]
    return lines


def throughput(gpu: bool) -> list[str]:
    flags = [*([] if gpu else ["--tiny"]), "--arch", "resnet50", "vit_small_ics"]
    status, out, seconds = _run([sys.executable, "bench/train_throughput.py", *flags], 420)
    tables = [line for line in out.splitlines() if line.startswith(("|", "##"))]
    lines = [f"`bench/train_throughput.py {' '.join(flags)}` ({seconds:.0f} s wall, exit {status}):", ""]
    for line in tables:  # its section titles become bold lines, each table set off by blank lines
        lines += ["", f"**{line[3:]}**", ""] if line.startswith("## ") else [line]
    if status != 0:
        lines += ["", "```", *out.splitlines()[-15:], "```"]
    return lines


def usl_run(gpu: bool) -> list[str]:
    """Two epochs of the USL Market-1501 preset on a generated target of Market's size, timed by part."""
    from spcl.config import load_config
    from spcl.data.synthetic import SynthConfig, write_domain
    from spcl.training import Trainer

    if gpu:
        synth = SynthConfig(height=128, width=64, num_cameras=6, source_train_ids=2, source_test_ids=0,
                            target_train_ids=MARKET_TRAIN_IDS, target_test_ids=50, cameras_per_id=(3, 6),
                            train_images_per_camera=(2, 5), test_images_per_camera=(2, 2))
        sizes = {"data.height": 256, "data.width": 128}
    else:
        synth = SynthConfig(height=32, width=16, num_cameras=4, source_train_ids=2, source_test_ids=0, target_train_ids=24,
                            target_test_ids=6, cameras_per_id=(2, 3), train_images_per_camera=(2, 3),
                            test_images_per_camera=(2, 2))
        sizes = {"data.height": 64, "data.width": 32, "optim.iters": 4, "optim.batch_size": 16, "pseudo.k1": 6,
                 "pseudo.min_samples": 2}
    with tempfile.TemporaryDirectory() as tmp:
        started = time.time()
        write_domain(Path(tmp) / "target", "target", seed=0, config=synth)
        generated = time.time() - started
        config = load_config("usl_market1501", {
            "data.target": str(Path(tmp) / "target"), "model.pretrained": "none", "optim.epochs": 2, "eval.every": 0,
            "output": str(Path(tmp) / "run"), "device": "cuda" if gpu else "cpu", **sizes,
        })
        trainer = Trainer(config, log=lambda _: None, progress=False)
        started = time.time()
        trainer.init_memory()
        initial = time.time() - started
        started = time.time()
        history = trainer.fit()
        fitted = time.time() - started
    epochs = [entry.seconds for entry in history]
    mean = sum(epochs) / len(epochs)
    rest = fitted - sum(epochs)  # the evaluation after epoch 2 and the checkpoints
    every = 10  # the paper presets evaluate every 10 epochs
    paper = initial + 50 * mean + (50 // every) * rest
    images = len(trainer.target.train)
    return [
        f"USL, `usl_market1501` at {config.data.height}x{config.data.width}, {images:,} generated training images "
        f"({trainer.target.num_train_pids} identities), {config.iters_per_epoch} iterations x batch "
        f"{config.optim.batch_size} an epoch, AMP {trainer.amp_dtype or 'off'}:",
        "",
        "| part | seconds |", "|---|---:|",
        f"| generating the target | {generated:.1f} |",
        f"| initial memory (one extraction) | {initial:.1f} |",
        *(f"| epoch {i + 1} (pseudo labels + training) | {s:.1f} |" for i, s in enumerate(epochs)),
        f"| evaluation and checkpoints after epoch 2 | {rest:.1f} |",
        f"| **50 epochs, extrapolated** (initial + 50 epochs + 5 evaluations) | **{paper:.0f}** ({paper / 3600:.2f} h) |",
        "",
        f"Last epoch: {history[-1].num_clusters} clusters, {history[-1].num_outliers} un-clustered, loss "
        f"{history[-1].loss:.3f}; mAP {100 * history[-1].eval.get('mAP', float('nan')):.1f} (from scratch: not a result).",
    ]


STEPS = {"tests": ("Tests marked gpu", gpu_tests), "throughput": ("Throughput", throughput),
         "usl": ("A timed 2-epoch USL run", usl_run)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "runs" / "gpu-check"),
                        help="folder for gpu-check.md (default: $OUT, else runs/gpu-check)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes even with a GPU (a smoke test)")
    parser.add_argument("--only", nargs="+", choices=list(STEPS), default=list(STEPS), help="steps to run")
    args = parser.parse_args(argv)
    gpu = torch.cuda.is_available() and not args.tiny
    if not torch.cuda.is_available():
        print("no CUDA device: running the same steps at tiny sizes", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    sections = ["# spcl gpu-check", "", *_machine(gpu)]
    for name in args.only:
        title, step = STEPS[name]
        print(f"== {title} ...", flush=True)
        tic = time.time()
        try:
            body = step(gpu)
        except Exception as exc:  # one step's failure is a line in the table, not the end of the check
            body = [f"failed: {type(exc).__name__}: {exc}"]
        sections += ["", f"## {title} ({time.time() - tic:.0f} s)", "", *body]
        (out / "gpu-check.md").write_text("\n".join(sections) + "\n")  # what is done so far survives a kill
    sections += ["", f"Total {time.time() - started:.0f} s."]
    text = "\n".join(sections) + "\n"
    (out / "gpu-check.md").write_text(text)
    print(text)
    print(f"written {out / 'gpu-check.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
