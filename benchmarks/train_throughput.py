"""Images per second of one training step of every trainable baseline (``bench train``'s inner loop).

    python benchmarks/train_throughput.py                    # 299x299, batch 8, CPU, 1 thread
    python benchmarks/train_throughput.py --threads 2 --steps 5
    python benchmarks/train_throughput.py --device cuda      # bf16 autocast, as the trainer uses it
    python benchmarks/train_throughput.py --model my_pkg.models:MyLocalizer

Finds every registered localizer that names a TrainTask (the ``dolos_bench.localizers`` entry
points, so every baseline of the project and any installed plug-in is measured), builds its task
with its default ``model:`` config for each supervision it supports, and times what the trainer
does per step on a synthetic batch (random images, one forged box per fake): forward, the task's
loss, backward, an Adam step. A model that cannot take ``--size`` (an HRNet needs a multiple of 32)
is measured at its own input size, and the line says so. The first ``--warmup`` steps are not timed (allocator, cudnn
autotune). Data loading is not included: it is the same for every model and overlaps the step
when DataLoader workers are used.
"""

from __future__ import annotations

import argparse
import os
import time
from contextlib import nullcontext
from typing import Any


def _batch(size: int, n: int, device: str, seed: int = 0) -> Any:
    import torch

    from dolos_bench.train.task import Batch

    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=gen) * 2 - 1
    labels = torch.arange(n) % 2
    masks = torch.zeros(n, 1, size, size)
    for i in range(1, n, 2):
        masks[i, :, size // 4: size // 2, size // 3: 2 * size // 3] = 1
    return Batch(images.to(device), labels.to(device), masks.to(device), [f"s{i}" for i in range(n)])


def measure(task: Any, *, size: int, batch: int, steps: int, warmup: int, device: str) -> float:
    """Images per second of ``steps`` timed training steps of ``task`` on ``device``."""
    import torch

    torch.manual_seed(0)
    model = task.build_model().to(device).train()
    optimizer = torch.optim.Adam(task.parameters(model), lr=1e-4)
    data = _batch(size, batch, device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else nullcontext()

    def step() -> None:
        with autocast:
            loss, _ = task.loss(model, data)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def checkout_entries() -> dict[str, str]:
    """``name -> module:Class`` of this checkout's pyproject localizer entry points.

    So that a checkout measures its own baselines even when the installed package metadata was
    written before some of them were added (an editable install is not re-run for every entry).
    """
    import tomllib
    from pathlib import Path

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    try:
        data = tomllib.loads(pyproject.read_text())
    except (OSError, ValueError):
        return {}
    return dict(data.get("project", {}).get("entry-points", {}).get("dolos_bench.localizers", {}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=299, help="input size (default: the paper's 299)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", action="append", default=[], metavar="NAME|module:Class",
                        help="measure only these (repeatable); default: every registered trainable baseline")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    from dolos_bench.train.localizer import trainable_names, trainable_task

    torch.set_num_threads(args.threads)
    if args.model:
        names = args.model
    else:
        from dolos_bench.registry import LOCALIZERS

        for name, target in checkout_entries().items():
            if name not in LOCALIZERS:
                LOCALIZERS.add_lazy(name, target)
        names = trainable_names()
    where = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"CPU, {args.threads} thread(s)"
    print(f"training step, {args.size}x{args.size}, batch {args.batch}, {where}, torch {torch.__version__}")
    print(f"{'baseline':<40} {'supervision':<12} {'params':>10} {'images/s':>9} {'s/step':>7}")
    if not names:
        print("(no trainable baseline is registered: install the project, `pip install -e .`)")
    for name in names:
        try:
            _, task_cls = trainable_task(name)
        except Exception as exc:  # noqa: BLE001 - one broken plug-in must not stop the others
            print(f"{name:<40} cannot be loaded: {str(exc).splitlines()[0]}")
            continue
        for supervision in task_cls.supervisions:
            note = ""
            try:
                task = task_cls(task_cls.Config(), supervision)
                params = sum(p.numel() for p in task.build_model().parameters())
                try:
                    rate = measure(task, size=args.size, batch=args.batch, steps=args.steps, warmup=args.warmup,
                                   device=args.device)
                except RuntimeError as exc:  # e.g. an HRNet whose grid needs a multiple of 32: its own size
                    own = int(task_cls.input_size)
                    if own == args.size:
                        raise
                    note = f"  (at its input size {own}: {args.size} fails: {str(exc).splitlines()[0][:60]})"
                    rate = measure(task, size=own, batch=args.batch, steps=args.steps, warmup=args.warmup,
                                   device=args.device)
            except Exception as exc:  # noqa: BLE001 - report and go on
                print(f"{name:<40} {supervision:<12} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}")
                continue
            print(f"{name:<40} {supervision:<12} {params / 1e6:>9.2f}M {rate:>9.2f} {args.batch / rate:>7.2f}{note}")


if __name__ == "__main__":
    main()
