"""Images/s of every learned generator, and what the build pipeline adds to a generator's own time.

    python benchmarks/generator_throughput.py [--realistic] [--skip-overhead] [--images 64]

**Throughput.** Every learned (torch) generator the registry holds is built on the tiny random
model its contract-test fixture writes (tests/test_contracts.py ``FIXTURES``: saved and loaded the
real way), set up on ``--device``, warmed up with one call, then timed on 64 x 64 images through
the build's own ``inpaint`` call (per-sample rngs, as a build makes them) at batch 1 and 8.
``--realistic`` adds random-weight models of the real sizes at 256 x 256 (an ADM-like 256² UNet
for repaint and ddpm-full at a few steps, the full-size Pluralistic networks): the cost per image
is what a build would pay per UNet call, scaled by the steps of the real recipes.

**Pipeline overhead.** A 256² build of ``--images`` sources (one fake each, strokes masks, a JPEG
chain on half the samples) through ``run_build`` with the generator in its own inpaint pool
(``inpaint_devices=["cpu"]``) and the CPU stages on 1 and 2 workers. The generator is either a
stand-in that sleeps a fixed time per image (registered here only, through the registry's public
``register``), so that its own time is known exactly, or a tiny real model whose calls are timed.
``overhead`` is the build's wall time (worker start-up included) minus the generator's own time;
the issue's target is that it adds at most 5% to the generator's time. The "serial" line is the
same build with the generator inside the CPU worker (prepare, generate and finish one after
another), and "cpu stages" a build whose stand-in costs nothing: what the pipeline must hide.

On the CPU a batch runs the network one sample at a time (bit-exactness across batch sizes, see
docs/generators.md), so batch 8 gains only the per-call overhead there; on CUDA it is one call.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

import numpy as np

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))
from helpers import make_image_folder, textured_image  # noqa: E402

from dolos_bench.builder.base import Generator  # noqa: E402
from dolos_bench.builder.pipeline import run_build  # noqa: E402
from dolos_bench.builder.recipe import validate_recipe_data  # noqa: E402
from dolos_bench.builder.stages import InpaintBatch, inpaint  # noqa: E402
from dolos_bench.registry import GENERATORS  # noqa: E402


# -- throughput of one generator ------------------------------------------------------------------


def learned_generators() -> list[str]:
    """Registered generators that run on torch (the OpenCV ones are the build benchmark's)."""
    return [name for name in GENERATORS.names()
            if "torch" in (getattr(GENERATORS.get(name), "requires", ()) or ())]


def tiny_params(name: str, folder: Path) -> dict[str, Any] | None:
    """The contract tests' fixture parameters of ``name`` (a tiny model written into ``folder``)."""
    import test_contracts

    make = test_contracts.FIXTURES.get(("generator", name))
    if make is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    return make(folder)


def _inputs(size: int, count: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Textured images with a centred box mask (a quarter of the area)."""
    images = [textured_image(i, (size, size)) for i in range(count)]
    mask = np.zeros((size, size), np.uint8)
    mask[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 255
    return images, [mask.copy() for _ in range(count)]


def images_per_second(generator: Generator, size: int, batch: int, *, min_seconds: float, max_calls: int = 50) -> float:
    """Images/s of ``inpaint_batch`` calls of ``batch`` images, repeated for at least ``min_seconds``."""
    images, masks = _inputs(size, batch)
    unit = InpaintBatch([f"s{i}" for i in range(batch)], images, masks, [["mouth"]] * batch)
    calls, start = 0, time.perf_counter()
    while True:
        inpaint(generator, 0, unit)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds or calls >= max_calls:
            return calls * batch / elapsed


def measure(name: str, params: dict[str, Any], *, size: int, batches: list[int], device: str,
            min_seconds: float, label: str | None = None) -> None:
    """Build ``name`` once, one warm-up call, then print images/s at each batch size."""
    cls = GENERATORS.get(name)
    generator = GENERATORS.create(name, **params)
    start = time.perf_counter()
    generator.setup(device)
    loaded = time.perf_counter() - start
    images, masks = _inputs(size, 1)
    inpaint(generator, 0, InpaintBatch(["warm"], images, masks, [["mouth"]]))
    most = getattr(cls, "max_batch", 1)
    rates = []
    for batch in batches:
        used = batch if most is None else min(batch, most)
        rates.append(f"batch {used}: {images_per_second(generator, size, used, min_seconds=min_seconds):8.2f} img/s")
    print(f"  {label or name:<22} {size:>4}²  setup {loaded:5.2f} s   " + "   ".join(rates), flush=True)


# -- realistic model sizes (random weights) -------------------------------------------------------


def adm_unet(folder: Path) -> Path:
    """A 256² UNet2DModel with the P2 / guided-diffusion widths (128 x 1,1,2,2,4,4, one res block,
    attention at 16², 64-channel heads, resblock up/down, scale-shift norm, learned variance)."""
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    UNet2DModel(sample_size=256, in_channels=3, out_channels=6, layers_per_block=1,
                block_out_channels=(128, 128, 256, 256, 512, 512),
                down_block_types=("ResnetDownsampleBlock2D",) * 4 + ("AttnDownBlock2D", "ResnetDownsampleBlock2D"),
                up_block_types=("ResnetUpsampleBlock2D", "AttnUpBlock2D") + ("ResnetUpsampleBlock2D",) * 4,
                downsample_type="resnet", upsample_type="resnet", resnet_time_scale_shift="scale_shift",
                attention_head_dim=64, norm_num_groups=32, flip_sin_to_cos=True, freq_shift=0,
                ).save_pretrained(str(folder))
    return folder


def pluralistic_full(folder: Path) -> Path:
    """The released Pluralistic encoder and generator trees (their default, full widths), random weights."""
    import torch

    from dolos_bench.builder.generators.pluralistic_net import PluralisticEncoder, PluralisticGenerator

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(PluralisticEncoder().state_dict(), folder / "latest_net_E.pth")
    torch.save(PluralisticGenerator().state_dict(), folder / "latest_net_G.pth")
    return folder


def realistic(root: Path, steps: int) -> list[tuple[str, str, Callable[[], dict[str, Any]]]]:
    """(generator, label, params maker) of the realistic runs; the UNet is written once, on first use."""
    unet: dict[str, Path] = {}

    def adm() -> str:
        if "path" not in unet:
            unet["path"] = adm_unet(root / "adm256")
        return str(unet["path"])

    return [
        ("repaint", f"repaint ADM-256 {steps} st", lambda: {"model": adm(), "steps": steps, "jump_length": 1,
                                                             "jump_n_sample": 1}),
        ("ddpm-full", f"ddpm-full ADM-256 {steps} st", lambda: {"model": adm(), "steps": steps, "sampler": "ddim"}),
        ("pluralistic", "pluralistic full-size", lambda: {"weights": str(pluralistic_full(root / "pluralistic"))}),
    ]


# -- the pipeline's overhead ------------------------------------------------------------------------


class SleepStandIn(Generator):
    """Costs ``cost`` seconds per image (a sleep, so it holds no core) and inverts the masked pixels."""

    name: ClassVar[str] = "bench-sleep"
    max_batch: ClassVar[int | None] = None
    default_batch: ClassVar[int | None] = 8
    spent: ClassVar[float] = 0.0  # seconds slept, in this process (the stand-in runs in the parent's pool)
    calls: ClassVar[list[tuple[float, float]]] = []  # (start, end) of every call, perf_counter seconds

    def __init__(self, cost: float = 0.05) -> None:
        self.cost = cost

    def identity(self) -> dict[str, Any]:
        return {"cost": self.cost}

    def inpaint(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = image.copy()
        out[mask > 0] = 255 - out[mask > 0]
        return out

    def inpaint_batch(self, images, masks, rngs):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        time.sleep(self.cost * len(images))
        end = time.perf_counter()
        SleepStandIn.spent += end - start
        SleepStandIn.calls.append((start, end))
        return [self.inpaint(i, m, r) for i, m, r in zip(images, masks, rngs)]


def timed(cls: type[Generator]) -> type[Generator]:
    """``cls`` whose ``inpaint_batch`` calls add up their wall time in ``spent`` (for a real model)."""

    class Timed(cls):  # type: ignore[misc, valid-type]
        spent: ClassVar[float] = 0.0
        calls: ClassVar[list[tuple[float, float]]] = []

        def inpaint_batch(self, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return super().inpaint_batch(*args, **kwargs)
            finally:
                end = time.perf_counter()
                Timed.spent += end - start
                Timed.calls.append((start, end))

    Timed.__name__ = f"Timed{cls.__name__}"
    return Timed


@contextlib.contextmanager
def registered(name: str, cls: type[Generator]) -> Iterator[None]:
    """``cls`` in the generator registry as ``name`` for the duration (public ``register``; the
    entry is dropped afterwards so that nothing else ever lists it)."""
    GENERATORS.names()  # entry points loaded first, so that the entry added here is the only change
    GENERATORS.register(name)(cls)
    try:
        yield
    finally:
        GENERATORS._entries.pop(name, None)


def build_recipe(source: Path, generator: dict[str, Any], shard_size: int) -> Any:
    return validate_recipe_data({
        "name": "bench-overhead", "seed": 0, "resolution": 256,
        "sources": [{"type": "folder", "path": str(source)}],
        "fakes": {"per_source": 1, "assignment": "each"},
        "maskers": [{"type": "strokes"}],
        "generators": [generator],
        "perturbations": {"probability": 0.5, "chains": ["jpeg(80)"]},
        "output": {"shard_size": shard_size},
    })


def timed_build(recipe: Any, out: Path, *, workers: int, own_pool: bool) -> tuple[float, float, float]:
    """Wall seconds of the build, and when it started and ended (perf_counter)."""
    start = time.perf_counter()
    run_build(recipe, out, workers=workers, inpaint_devices=["cpu"] if own_pool else None)
    end = time.perf_counter()
    return end - start, start, end


def idle_breakdown(calls: list[tuple[float, float]], start: float, end: float) -> str:
    """Where a build's time outside the generator went: before its first call (start-up, planning,
    the first shard's prepare), between calls (the generator starved) and after its last (the tail)."""
    if not calls:
        return ""
    calls = sorted(calls)
    gaps = sum(max(0.0, b[0] - a[1]) for a, b in zip(calls, calls[1:]))
    return f"   (before first call {calls[0][0] - start:.2f} s, between calls {gaps:.2f} s, after last {end - calls[-1][1]:.2f} s)"


def planning_seconds(recipe: Any) -> float:
    """The build's planning pass alone, in this process: every source decoded once (and checked)."""
    from dolos_bench.builder.plan import build_sources, make_plan

    start = time.perf_counter()
    make_plan(recipe, build_sources(recipe))
    return time.perf_counter() - start


def overhead(root: Path, images: int, shard_size: int, workers: list[int], cost: float, real: str | None,
             real_images: int, real_steps: int | None) -> None:
    """Print build seconds, generator seconds and the overhead share for the stand-in and a real model."""
    runs: list[tuple[str, type[Generator], dict[str, Any], int]] = [("bench-sleep", SleepStandIn, {"cost": cost}, images)]
    if real:
        params = tiny_params(real, root / f"tiny-{real}")
        if params is not None:
            if real_steps is not None and "steps" in params:
                params["steps"] = real_steps
            runs.append((f"bench-timed-{real}", timed(GENERATORS.get(real)), params, real_images))
    print(f"\n== pipeline overhead: N sources + N fakes at 256², shard_size {shard_size}, "
          "generator in its own inpaint pool on cpu ==")
    print(f"  {'generator':<34} {'workers':>7} {'build s':>8} {'model s':>8} {'overhead s':>10} "
          f"{'share of build':>14} {'added to model':>14}")
    n = 0
    for name, cls, params, count in runs:
        source = make_image_folder(root / f"src{count}", n=count, size=(300, 280))
        shown = {k: v for k, v in params.items() if k not in ("model", "weights")}
        print(f"  -- {name} {shown}, N = {count}: planning alone (each source"
              f" decoded once) {planning_seconds(build_recipe(source, {'type': 'telea'}, shard_size)):.2f} s")
        with registered(name, cls):
            if cls is SleepStandIn:  # what the pipeline must hide: the CPU stages alone, then serially with the model
                free = build_recipe(source, {"type": name, "cost": 0.0}, shard_size)
                for w in workers:
                    n += 1
                    print(f"  {'(cpu stages, cost 0)':<34} {w:>7} {timed_build(free, root / f'o{n}', workers=w, own_pool=True)[0]:8.2f}")
            recipe = build_recipe(source, {"type": name, **params}, shard_size)
            n += 1
            cls.spent, cls.calls = 0.0, []  # type: ignore[attr-defined]
            serial = timed_build(recipe, root / f"o{n}", workers=1, own_pool=False)[0]
            print(f"  {name + ' (serial)':<34} {1:>7} {serial:8.2f} {cls.spent:8.2f}")  # type: ignore[attr-defined]
            for w in workers:
                n += 1
                cls.spent, cls.calls = 0.0, []  # type: ignore[attr-defined]
                seconds, start, end = timed_build(recipe, root / f"o{n}", workers=w, own_pool=True)
                model = cls.spent  # type: ignore[attr-defined]
                extra = seconds - model
                print(f"  {name:<34} {w:>7} {seconds:8.2f} {model:8.2f} {extra:10.2f} "
                      f"{100 * extra / seconds:13.1f}% {100 * extra / model:13.1f}%"
                      + idle_breakdown(cls.calls, start, end), flush=True)  # type: ignore[attr-defined]


# -- main -------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="where the generators run (cpu, cuda)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--min-seconds", type=float, default=1.0, help="time each measurement at least this long")
    parser.add_argument("--only", nargs="*", help="these generators only")
    parser.add_argument("--realistic", action="store_true", help="also random-weight models of the real sizes at 256²")
    parser.add_argument("--realistic-steps", type=int, default=2, help="sampling steps of the realistic diffusion runs")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--images", type=int, default=64, help="sources of the overhead builds (one fake each)")
    parser.add_argument("--shard-size", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cost", type=float, default=0.1, help="seconds per image of the sleeping stand-in")
    parser.add_argument("--real", default="ldm-inpaint", help="tiny real generator of the overhead builds ('' for none)")
    parser.add_argument("--real-images", type=int, default=32, help="sources of the real generator's overhead builds")
    parser.add_argument("--real-steps", type=int, default=1, help="its sampling steps (0: the fixture's)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from dolos_bench.data.dataset_io import shard_schema

    shard_schema()  # `datasets` imported before anything is timed
    with tempfile.TemporaryDirectory(prefix="dolos-genbench-") as tmp:
        root = Path(tmp)
        if not args.skip_throughput:
            names = [n for n in learned_generators() if not args.only or n in args.only]
            print(f"== throughput on {args.device}, tiny models (tests/test_contracts.py FIXTURES), 64² ==")
            for name in names:
                params = tiny_params(name, root / name)
                if params is None:
                    print(f"  {name:<22} no tiny-model fixture: skipped")
                    continue
                measure(name, params, size=64, batches=args.batches, device=args.device, min_seconds=args.min_seconds)
            if args.realistic:
                print(f"== throughput on {args.device}, realistic sizes with random weights, 256² ==")
                for name, label, make in realistic(root, args.realistic_steps):
                    if args.only and name not in args.only:
                        continue
                    measure(name, make(), size=256, batches=args.batches, device=args.device,
                            min_seconds=args.min_seconds, label=label)
        if not args.skip_overhead:
            overhead(root, args.images, args.shard_size, args.workers, args.cost, args.real or None,
                     args.real_images, args.real_steps or None)


if __name__ == "__main__":
    main()
