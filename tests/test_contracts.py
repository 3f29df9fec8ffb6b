"""Contract tests: every registered stage keeps the promises the rest of the toolkit builds on.

The tests are parametrised over the registries themselves (:data:`dolos_bench.registry.REGISTRIES`,
entry points included), so a new generator, masker, perturbation or localizer is tested by being
registered, as diffusers tests every pipeline with ``test_inference_batch_single_identical``:

* a generator keeps every pixel outside the mask (where its class claims ``preserves_unmasked``),
  gives the same bytes for the same seed, and the same output for a sample alone or inside a
  batch, whatever the batch order -- the build feeds batches and must not depend on their make-up;
* a masker returns a binary ``uint8`` mask (0/255) of the image's size, the same for the same
  seed, or raises :class:`SkipSample`;
* a perturbation returns a ``uint8`` RGB image, moves the mask with it when geometric (and leaves
  it alone otherwise), and gives the same bytes for the same seed;
* a localizer -- each registered one, and each adapter of :func:`load_localizer` fed a tiny model
  the test makes (TorchScript, ONNX, a predictions folder) -- returns one 2-D float map in [0, 1]
  per image, and scores in [0, 1] when it gives scores.

A stage whose optional packages are missing (its ``requires``; for a stage that declares none,
an ``ImportError`` while importing or building it) is skipped with the install hint, not failed.
Stages are built with their defaults, or with the row of :data:`PARAMS` for those that have
required parameters, or with the files a :data:`FIXTURES` row writes (weights, annotations); images are small (64 px) so that the whole file runs in seconds.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest

from dolos_bench.builder.base import Generator, MaskResult, SkipSample
from dolos_bench.eval.api import LocalizerOutput
from dolos_bench.eval.localizers import load_localizer
from dolos_bench.registry import (
    GENERATORS,
    LOCALIZERS,
    MASKERS,
    PERTURBATIONS,
    PluginLoadError,
    Registry,
    parameters_of,
)
from dolos_bench.stage import install_hint

from helpers import textured_image
import tiny_inpainters  # tiny LaMa / SD-inpainting models for the learned generators
import ldm_fixtures  # tiny VQ + UNet latent-diffusion models (repaint-ldm, ldm-inpaint)

#: Parameters for registered stages that have required ones (every other stage is built with its
#: defaults). A new stage with a required parameter adds its row here, with a small typical value.
PARAMS: dict[tuple[str, str], dict[str, Any]] = {
    ("perturbation", "jpeg"): {"quality": 75},
    ("perturbation", "webp"): {"quality": 75},
    ("perturbation", "blur"): {"sigma": 1.5},
    ("perturbation", "noise"): {"sigma": 5.0},
    ("perturbation", "resize"): {"scale": 0.5},
    ("perturbation", "median"): {"size": 5},
    ("perturbation", "motion-blur"): {"length": 7, "angle": 30.0},
    ("perturbation", "gamma"): {"gamma": 0.7},
    ("perturbation", "brightness-contrast"): {"brightness": 12.0, "contrast": 1.3},
    ("localizer", "focal"): {"arch": "tiny"},  # untrained HRNet-W32 works too, 10x slower on a CPU
    ("localizer", "mpc"): {"arch": "tiny", "dim": 16},
}

#: Stages whose parameters name files (weights, annotations, a tiny model): a function that writes
#: small ones into the folder it is given and returns the parameters. Called once per test session;
#: a new stage that needs files adds its row here (e.g. in a helper module it imports).
FIXTURES: dict[tuple[str, str], Callable[[Path], dict[str, Any]]] = {}

def _celebamask_annotations(folder: Path) -> dict[str, Any]:
    """Image 0's annotations in CelebAMask-HQ's layout: a skin oval with a nose and a mouth."""
    import cv2

    anno = folder / "CelebAMask-HQ-mask-anno" / "0"
    anno.mkdir(parents=True)
    for name, draw in {
        "skin": lambda m: cv2.ellipse(m, (32, 34), (20, 26), 0, 0, 360, 255, -1),
        "nose": lambda m: cv2.rectangle(m, (29, 30), (34, 40), 255, -1),
        "u_lip": lambda m: cv2.rectangle(m, (25, 45), (38, 48), 255, -1),
    }.items():
        mask = np.zeros((64, 64), np.uint8)
        draw(mask)
        cv2.imwrite(str(anno / f"00000_{name}.png"), mask)
    return {"root": str(folder)}


def _bisenet_weights(folder: Path) -> dict[str, Any]:
    """facexlib's BiSeNet with random weights, saved as facexlib's file name."""
    torch = pytest.importorskip("torch")
    parsing = pytest.importorskip("facexlib.parsing")
    torch.manual_seed(0)
    torch.save(parsing.BiSeNet(num_class=19).state_dict(), folder / "parsing_bisenet.pth")
    return {"weights": str(folder), "max_area": 1.0}


FIXTURES[("masker", "celebamask-hq")] = _celebamask_annotations
FIXTURES[("masker", "face-parser")] = _bisenet_weights
FIXTURES[("generator", "lama")] = tiny_inpainters.lama_params
FIXTURES[("generator", "diffusers-inpaint")] = tiny_inpainters.sd_inpaint_params
FIXTURES[("generator", "repaint-ldm")] = ldm_fixtures.repaint_ldm_params
FIXTURES[("generator", "ldm-inpaint")] = ldm_fixtures.ldm_inpaint_params


def _tiny_diffusion(row: str) -> Callable[[Path], dict[str, Any]]:
    """A row of tests/tiny_diffusion.py (imported only when used: it needs torch and diffusers)."""
    def make(folder: Path) -> dict[str, Any]:
        pytest.importorskip("diffusers")
        import tiny_diffusion

        return getattr(tiny_diffusion, row)(folder)
    return make


def _pluralistic_checkpoints(folder: Path) -> dict[str, Any]:
    """Random Pluralistic encoder and generator, saved as the authors' latest_net_{E,G}.pth."""
    torch = pytest.importorskip("torch")
    from dolos_bench.builder.generators.pluralistic_net import PluralisticEncoder, PluralisticGenerator

    torch.manual_seed(0)
    torch.save(PluralisticEncoder().state_dict(), folder / "latest_net_E.pth")
    torch.save(PluralisticGenerator().state_dict(), folder / "latest_net_G.pth")
    return {"weights": str(folder)}


FIXTURES[("generator", "pluralistic")] = _pluralistic_checkpoints
FIXTURES[("generator", "repaint")] = _tiny_diffusion("repaint_params")
FIXTURES[("generator", "ddpm-full")] = _tiny_diffusion("ddpm_full_params")

SEEDS = (0, 1, 2)

_FIXTURE_ROOT: Path | None = None
_FIXTURE_PARAMS: dict[tuple[str, str], dict[str, Any]] = {}


def _fixture_params(key: tuple[str, str]) -> dict[str, Any]:
    """The parameters :data:`FIXTURES` makes for ``key``, made once, under one temporary folder."""
    global _FIXTURE_ROOT
    if key not in FIXTURES:
        return {}
    if key not in _FIXTURE_PARAMS:
        if _FIXTURE_ROOT is None:
            import atexit
            import shutil
            import tempfile

            _FIXTURE_ROOT = Path(tempfile.mkdtemp(prefix="dolos-contracts-"))
            atexit.register(shutil.rmtree, _FIXTURE_ROOT, True)
        folder = _FIXTURE_ROOT / "-".join(key)
        folder.mkdir()
        _FIXTURE_PARAMS[key] = FIXTURES[key](folder)
    return _FIXTURE_PARAMS[key]


# -- building a stage from its registry -----------------------------------------------------------


def _factory(registry: Registry, name: str) -> Any:
    """The registered class or factory, or a skip when an optional package is missing."""
    try:
        factory = registry.get(name)
    except PluginLoadError as exc:
        if isinstance(exc.__cause__, ImportError):  # its module imports a package that is absent
            pytest.skip(f"{registry.kind} {name!r}: {exc}")
        raise
    hint = install_hint(factory)
    if hint:
        pytest.skip(f"{registry.kind} {name!r} {hint}")
    return factory


def _build(registry: Registry, name: str) -> Any:
    """Build ``name`` with its defaults (or its :data:`PARAMS` row) and set it up on the CPU."""
    factory = _factory(registry, name)
    params = {**PARAMS.get((registry.kind, name), {}), **_fixture_params((registry.kind, name))}
    required = [
        p.name for p in parameters_of(factory)
        if p.default is None and not p.name.startswith("**") and p.name not in params and p.name != "device"
    ]
    if required:
        pytest.fail(
            f"{registry.kind} {name!r} has required parameters {required}: add a row"
            f" PARAMS[({registry.kind!r}, {name!r})] to {Path(__file__).name}"
        )
    try:
        stage = factory(**params)
        setup = getattr(stage, "setup", None)
        if callable(setup):
            setup("cpu")
    except ImportError as exc:  # a stage that declares no `requires` but needs a missing package
        pytest.skip(f"{registry.kind} {name!r} needs a package that is not installed: {exc}")
    return stage


def _rng(seed: int) -> np.random.Generator:
    """A numpy Generator from one seed: the kind of rng the build hands a stage for one sample."""
    return np.random.default_rng(seed)


# -- inputs ---------------------------------------------------------------------------------------


def _images() -> list[np.ndarray]:
    """Three small textured images, one of them not square (to catch height/width swaps)."""
    return [
        textured_image(11, (64, 64)),
        textured_image(12, (64, 64)),
        textured_image(13, (64, 48)),  # 48 rows, 64 columns
    ]


def _mask(shape: tuple[int, ...], index: int) -> np.ndarray:
    """A 0/255 mask with a box and a disc, placed differently for each ``index``."""
    import cv2

    height, width = shape[:2]
    mask = np.zeros((height, width), np.uint8)
    x, y = 4 + 7 * index, 6 + 5 * index
    mask[y : y + height // 4, x : x + width // 5] = 255
    cv2.circle(mask, (width - 14 - 3 * index, height - 12), 7, 255, -1)
    return mask


def _portrait() -> np.ndarray | None:
    """A 96 px crop of scikit-image's astronaut: a face a landmark masker can find; None without it."""
    if importlib.util.find_spec("skimage") is None:
        return None
    import cv2
    from skimage import data

    face = data.astronaut()[0:256, 96:352]
    return cv2.resize(face, (96, 96), interpolation=cv2.INTER_AREA)


def _masker_images() -> Iterator[np.ndarray]:
    yield from _images()
    portrait = _portrait()
    if portrait is not None:
        yield portrait


# -- the registries are what is tested: make sure they hold the built-ins --------------------------


@pytest.mark.parametrize(
    "registry, builtins",
    [
        (GENERATORS, {"telea", "ns"}),
        (MASKERS, {"strokes", "boxes", "landmarks", "face-parser", "celebamask-hq"}),
        (PERTURBATIONS, {"jpeg", "webp", "blur", "noise", "resize", "median", "motion-blur", "gamma", "brightness-contrast"}),
        (LOCALIZERS, {"ela", "noise"}),
    ],
    ids=lambda value: getattr(value, "kind", None) or "",
)
def test_registries_hold_the_builtins(registry: Registry, builtins: set[str]) -> None:
    # An empty registry would turn every contract below into zero tests, silently.
    assert builtins <= set(registry.names())


# -- generators -----------------------------------------------------------------------------------


def _check_inpainted(name: str, out: Any, image: np.ndarray) -> np.ndarray:
    assert isinstance(out, np.ndarray), f"{name}: inpaint returned a {type(out).__name__}"
    assert out.dtype == np.uint8 and out.shape == image.shape, (
        f"{name}: inpaint returned {out.dtype} {out.shape} for a uint8 {image.shape} image"
    )
    return out


@pytest.mark.parametrize("name", GENERATORS.names())
def test_generator_keeps_pixels_outside_the_mask(name: str) -> None:
    generator = _build(GENERATORS, name)
    if not getattr(type(generator), "preserves_unmasked", True):
        pytest.skip(f"generator {name!r} declares preserves_unmasked = False")
    for index, image in enumerate(_images()):
        mask = _mask(image.shape, index)
        out = _check_inpainted(name, generator.inpaint(image.copy(), mask.copy(), _rng(index)), image)
        keep = mask == 0
        changed = int(np.count_nonzero(np.any(out[keep] != image[keep], axis=-1)))
        assert changed == 0, f"{name}: {changed} pixels outside the mask changed (image {index})"
        assert not np.array_equal(out, image), f"{name}: image {index} came back unchanged"


@pytest.mark.parametrize("name", GENERATORS.names())
def test_generator_is_deterministic_for_a_seed(name: str) -> None:
    first, second = _build(GENERATORS, name), _build(GENERATORS, name)  # a fresh object too
    for index, image in enumerate(_images()):
        mask = _mask(image.shape, index)
        a, b, c = (g.inpaint(image.copy(), mask.copy(), _rng(100 + index)) for g in (first, first, second))
        _check_inpainted(name, a, image)
        assert a.tobytes() == b.tobytes() == c.tobytes(), f"{name}: seed {100 + index} gave different bytes"


@pytest.mark.parametrize("name", GENERATORS.names())
def test_generator_batch_equals_single(name: str) -> None:
    """``inpaint_batch`` output b depends only on (image b, mask b, seed b), not on its batch-mates.

    Batches are cut at the class's ``max_batch``, as the build's inpaint stage cuts them; with
    ``max_batch = 1`` the shuffled order still shows that no state carries from call to call.
    """
    generator: Generator = _build(GENERATORS, name)
    images = _images()[:2] + [textured_image(14, (64, 64))]  # one size: a batch a GPU can stack
    masks = [_mask(im.shape, i) for i, im in enumerate(images)]
    seeds = [200 + i for i in range(len(images))]
    single = [generator.inpaint(im.copy(), m.copy(), _rng(s)).tobytes() for im, m, s in zip(images, masks, seeds)]
    limit = getattr(type(generator), "max_batch", None) or len(images)
    for order in ([0, 1, 2], [2, 0, 1], [1, 2, 0]):
        outs: list[np.ndarray] = []
        for start in range(0, len(order), limit):
            chunk = order[start : start + limit]
            got = generator.inpaint_batch(
                [images[i].copy() for i in chunk], [masks[i].copy() for i in chunk], [_rng(seeds[i]) for i in chunk]
            )
            assert len(got) == len(chunk), f"{name}: inpaint_batch returned {len(got)} images for {len(chunk)}"
            outs.extend(got)
        for position, i in enumerate(order):
            out = _check_inpainted(name, outs[position], images[i])
            assert out.tobytes() == single[i], f"{name}: sample {i} at batch position {position} differs from alone"


# -- maskers --------------------------------------------------------------------------------------


def _call_masker(masker: Callable[..., Any], image: np.ndarray, seed: int) -> MaskResult | None:
    # a masker that reads per-image annotations finds them by the source id ("0": see FIXTURES)
    by_source = {"source_id": "0"} if getattr(masker, "uses_source_id", False) else {}
    try:
        return masker(image.copy(), _rng(seed), **by_source)
    except SkipSample:
        return None  # allowed: no mask to choose (no face found, bounds not met)


@pytest.mark.parametrize("name", MASKERS.names())
def test_masker_returns_a_binary_mask_of_the_image_size(name: str) -> None:
    masker = _build(MASKERS, name)
    for image in _masker_images():
        for seed in SEEDS:
            result = _call_masker(masker, image, seed)
            if result is None:
                continue
            assert isinstance(result, MaskResult), f"{name}: returned a {type(result).__name__}"
            mask = result.mask
            assert isinstance(mask, np.ndarray) and mask.dtype == np.uint8, f"{name}: mask is not uint8"
            assert mask.shape == image.shape[:2], f"{name}: mask {mask.shape} for an image {image.shape[:2]}"
            assert set(np.unique(mask).tolist()) <= {0, 255}, f"{name}: mask values {np.unique(mask)}"
            assert mask.any(), f"{name}: an empty mask forges nothing (raise SkipSample instead)"
            again = _call_masker(masker, image, seed)
            assert again is not None and again.mask.tobytes() == mask.tobytes(), f"{name}: seed {seed} differs"


# -- perturbations --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PERTURBATIONS.names())
def test_perturbation_output_and_mask(name: str) -> None:
    perturbation = _build(PERTURBATIONS, name)
    geometric = bool(getattr(perturbation, "geometric", False))
    for index, image in enumerate(_images()):
        mask = _mask(image.shape, index)
        out, moved = perturbation.apply(image.copy(), mask.copy(), _rng(index))
        assert isinstance(out, np.ndarray) and out.dtype == np.uint8, f"{name}: image is not uint8"
        assert out.ndim == 3 and out.shape[2] == 3, f"{name}: image has shape {out.shape}"
        assert isinstance(moved, np.ndarray) and moved.dtype == np.uint8, f"{name}: mask is not uint8"
        if geometric:
            assert moved.shape == out.shape[:2], f"{name}: mask {moved.shape} for an image {out.shape[:2]}"
            assert set(np.unique(moved).tolist()) <= {0, 255}, f"{name}: the moved mask is not binary"
        else:
            assert out.shape == image.shape, f"{name} is not geometric but changed the size"
            assert np.array_equal(moved, mask), f"{name} is not geometric but changed the mask"
        plain, none = perturbation.apply(image.copy(), None, _rng(index))
        assert none is None, f"{name}: a mask came back for no mask"
        assert plain.tobytes() == out.tobytes(), f"{name}: the image depends on whether a mask was given"


@pytest.mark.parametrize("name", PERTURBATIONS.names())
def test_perturbation_is_deterministic_for_a_seed(name: str) -> None:
    first, second = _build(PERTURBATIONS, name), _build(PERTURBATIONS, name)
    for index, image in enumerate(_images()):
        mask = _mask(image.shape, index)
        runs = [p.apply(image.copy(), mask.copy(), _rng(300 + index)) for p in (first, first, second)]
        assert len({r[0].tobytes() for r in runs}) == 1, f"{name}: seed {300 + index} gave different images"
        assert len({r[1].tobytes() for r in runs}) == 1, f"{name}: seed {300 + index} gave different masks"


# -- localizers -----------------------------------------------------------------------------------


def _torchscript_model(folder: Path) -> Path:
    """A scripted conv + sigmoid that returns (map, score): the TorchScript adapter's input."""
    torch = pytest.importorskip("torch")

    class MapAndScore(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(3, 1, 3, padding=1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            m = torch.sigmoid(self.conv(x))
            return m, m.amax(dim=(1, 2, 3))

    path = folder / "tiny.pt"
    torch.jit.script(MapAndScore()).save(str(path))
    return path


def _onnx_model(folder: Path) -> Path:
    """A conv + sigmoid graph with a max score, written with onnx.helper (no exporter needed)."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 3, "H", "W"])
    outputs = [
        helper.make_tensor_value_info("map", TensorProto.FLOAT, ["N", 1, "H", "W"]),
        helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"]),
    ]
    weight = numpy_helper.from_array(np.random.default_rng(0).normal(0, 0.3, (1, 3, 3, 3)).astype(np.float32), "W")
    bias = numpy_helper.from_array(np.zeros(1, np.float32), "B")
    nodes = [
        helper.make_node("Conv", ["pixels", "W", "B"], ["logits"], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["logits"], ["map"]),
        helper.make_node("ReduceMax", ["map"], ["score"], axes=[1, 2, 3], keepdims=0),
    ]
    graph = helper.make_graph(nodes, "tiny", [x], outputs, initializer=[weight, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "tiny.onnx"
    onnx.save(model, str(path))
    return path


def _predictions_folder(folder: Path, ids: list[str], images: list[np.ndarray]) -> Path:
    """One map per id at half resolution (maps need not have the image's size) and a scores.csv."""
    out = folder / "preds"
    out.mkdir()
    rng = np.random.default_rng(0)
    lines = ["id,score"]
    for sample_id, image in zip(ids, images):
        np.save(out / f"{sample_id}.npy", rng.random((image.shape[0] // 2, image.shape[1] // 2)).astype(np.float32))
        lines.append(f"{sample_id},{rng.random():.6f}")
    (out / "scores.csv").write_text("\n".join(lines) + "\n")
    return out


#: How each adapter of load_localizer gets its tiny model: (folder, ids, images) -> spec.
ADAPTERS: dict[str, Callable[[Path, list[str], list[np.ndarray]], Path]] = {
    "torchscript": lambda folder, ids, images: _torchscript_model(folder),
    "onnx": lambda folder, ids, images: _onnx_model(folder),
    "predictions": _predictions_folder,
}


def _check_localizer_output(name: str, output: Any, images: list[np.ndarray]) -> None:
    assert isinstance(output, LocalizerOutput), f"{name}: predict returned a {type(output).__name__}"
    assert len(output.maps) == len(images), f"{name}: {len(output.maps)} maps for {len(images)} images"
    for i, m in enumerate(output.maps):
        assert isinstance(m, np.ndarray) and m.ndim == 2 and m.size > 0, f"{name}: map {i} has shape {np.shape(m)}"
        assert m.dtype == np.float32, f"{name}: map {i} is {m.dtype}, not float32"
        assert np.isfinite(m).all(), f"{name}: map {i} has NaN or inf"
        assert 0.0 <= float(m.min()) and float(m.max()) <= 1.0, f"{name}: map {i} leaves [0, 1]"
    if output.scores is not None:
        scores = np.asarray(list(output.scores), dtype=np.float64)
        assert scores.shape == (len(images),), f"{name}: {scores.shape} scores for {len(images)} images"
        assert np.isfinite(scores).all() and ((0 <= scores) & (scores <= 1)).all(), f"{name}: scores {scores}"


# torch >= 2.9 deprecates TorchScript (a DeprecationWarning, a FutureWarning from 2.14); the adapter still loads it.
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:`torch.jit:FutureWarning")
@pytest.mark.parametrize("spec", [*LOCALIZERS.names(), *(f"adapter:{a}" for a in ADAPTERS)])
def test_localizer_returns_valid_maps_and_scores(spec: str, tmp_path: Path) -> None:
    images = _images()  # two sizes in one batch, as a stress grid with resizing gives
    ids = [f"sample{i}" for i in range(len(images))]
    if spec.startswith("adapter:"):
        localizer = load_localizer(ADAPTERS[spec.partition(":")[2]](tmp_path, ids, images))
    else:
        _factory(LOCALIZERS, spec)  # skips when its optional packages are missing
        localizer = load_localizer(spec, options=PARAMS.get(("localizer", spec), {}))
    _check_localizer_output(spec, localizer.predict(images, ids=ids), images)
