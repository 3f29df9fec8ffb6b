"""Localizer loading and output checking: every adapter end to end, and every rule's message."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from dolos_bench.eval.api import Localizer, LocalizerError, LocalizerOutput  # noqa: E402
from dolos_bench.eval.localizers import (  # noqa: E402
    LocalizerLoadError,
    ONNXLocalizer,
    TorchScriptLocalizer,
    call_localizer,
    check_output,
    load_localizer,
    parse_model_args,
    resize_input,
)
from dolos_bench.registry import UnknownNameError  # noqa: E402

# torch>=2.9 deprecates TorchScript; these tests are about loading such files all the same.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _images(*shapes: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]


# -- tiny models ----------------------------------------------------------------------------------


class ConvSigmoid(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(x))


class MapAndScore(ConvSigmoid):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = torch.sigmoid(self.conv(x))
        return m, m.amax(dim=(1, 2, 3))


class DictOut(ConvSigmoid):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        m = torch.sigmoid(self.conv(x))
        return {"map": m[:, 0], "score": m.mean(dim=(1, 2, 3)).unsqueeze(1)}


class Echo(torch.nn.Module):
    """Returns channel 0 of the (normalised) input, so tests can see the preprocessing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1]


class TwoChannels(ConvSigmoid):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(x)).repeat(1, 2, 1, 1)


class Logits(ConvSigmoid):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * 10.0 + 3.0


class NaNs(ConvSigmoid):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = torch.sigmoid(self.conv(x))
        return torch.where(m > 0.5, torch.full_like(m, float("nan")), m)


class Raises(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] > 0:
            raise RuntimeError("boom inside the model")
        return x


def _script(module: torch.nn.Module, path: Path) -> Path:
    torch.jit.script(module).save(str(path))
    return path


# -- parse_model_args -----------------------------------------------------------------------------


def test_parse_model_args_types_values() -> None:
    opts = parse_model_args(
        ["batch=8", "strict_size=true", "mean=0.485,0.456,0.406", "lr=1e-3", "name=my model", "std=[1, 2, 3]", "tag="]
    )
    assert opts == {
        "batch": 8,
        "strict_size": True,
        "mean": "0.485,0.456,0.406",
        "lr": 1e-3,
        "name": "my model",
        "std": [1, 2, 3],
        "tag": "",
    }
    assert parse_model_args(["expr=a=b"]) == {"expr": "a=b"}


@pytest.mark.parametrize(
    ("args", "message"),
    [(["batch"], "has no '='"), (["=3"], "empty key"), (["a=1", "a=2"], "given twice")],
)
def test_parse_model_args_errors(args: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_model_args(args)


# -- check_output ---------------------------------------------------------------------------------


def test_check_output_normalises_and_clips() -> None:
    m = np.full((4, 5), 1.0 + 5e-7, dtype=np.float64)
    out = check_output(LocalizerOutput([m, np.zeros((2, 2), bool)], [0.5, 1.0]), ["a", "b"], [(4, 5, 3), (9, 9, 3)])
    assert out.maps[0].dtype == np.float32 and out.maps[0].max() == 1.0
    assert out.maps[1].dtype == np.float32
    assert out.scores == [0.5, 1.0]


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (LocalizerOutput([np.zeros((4, 4))]), r"ids 'a', 'b'.*returned 1 maps.*one map per image"),
        (LocalizerOutput([np.zeros((4, 4)), np.zeros((1, 4, 4))]), r"#1 \(id 'b'\).*shape \(1, 4, 4\).*2-D"),
        (LocalizerOutput([np.zeros((4, 4)), np.full((4, 4), np.nan)]), r"id 'b'.*16 NaN/inf.*finite"),
        (LocalizerOutput([np.zeros((4, 4)), np.full((4, 4), np.inf)]), r"id 'b'.*NaN/inf"),
        (LocalizerOutput([np.full((4, 4), 1.01), np.zeros((4, 4))]), r"#0 \(id 'a'\).*\[1\.01, 1\.01\].*\[0, 1\]"),
        (LocalizerOutput([np.full((4, 4), -0.5), np.zeros((4, 4))]), r"id 'a'.*-0\.5.*logits"),
        (LocalizerOutput([np.zeros((4, 4), np.uint8), np.zeros((4, 4))]), r"id 'a'.*dtype uint8.*float"),
        (LocalizerOutput([np.zeros((0, 4)), np.zeros((4, 4))]), r"id 'a'.*must not be empty"),
        (LocalizerOutput([np.zeros((4, 4))] * 2, [0.5]), r"returned 1 scores"),
        (LocalizerOutput([np.zeros((4, 4))] * 2, [0.5, float("nan")]), r"id 'b'.*score is nan.*finite"),
        (LocalizerOutput([np.zeros((4, 4))] * 2, [1.5, 0.5]), r"id 'a'.*score is 1\.5.*\[0, 1\]"),
        ([np.zeros((4, 4))] * 2, r"returned a list.*LocalizerOutput"),
    ],
)
def test_check_output_rules(output: Any, message: str) -> None:
    with pytest.raises(LocalizerError, match=message):
        check_output(output, ["a", "b"], [(4, 4, 3), (4, 4, 3)], name="m")


def test_check_output_strict_size() -> None:
    with pytest.raises(LocalizerError, match=r"id 'a'.*map is 4x4 but the image is 8x8.*strict_size"):
        check_output(LocalizerOutput([np.zeros((4, 4))]), ["a"], [(8, 8, 3)], strict_size=True)
    check_output(LocalizerOutput([np.zeros((4, 4))]), ["a"], [(8, 8, 3)])  # the runner resizes


class OldSignature(Localizer):
    """A plug-in written against ``predict(images)`` without ``ids``."""

    name = "old"

    def predict(self, images):  # type: ignore[override]
        return LocalizerOutput([np.zeros(im.shape[:2], np.float32) for im in images])


class Broken(Localizer):
    name = "broken"

    def predict(self, images: Sequence[np.ndarray], ids: Sequence[str] | None = None) -> LocalizerOutput:
        raise ValueError("weights not found")


def test_call_localizer_old_signature_and_raising() -> None:
    images = _images((6, 7), (6, 7))
    out = call_localizer(OldSignature(), images, ["x", "y"])
    assert [m.shape for m in out.maps] == [(6, 7), (6, 7)]
    with pytest.raises(LocalizerError, match=r"'broken'.*ids 'x', 'y'.*ValueError: weights not found"):
        call_localizer(Broken(), images, ["x", "y"])


# -- TorchScript ----------------------------------------------------------------------------------


def test_torchscript_end_to_end(tmp_path: Path) -> None:
    path = _script(ConvSigmoid(), tmp_path / "model.pt")
    loc = load_localizer(str(path))
    assert isinstance(loc, TorchScriptLocalizer)
    ident = loc.identity()
    assert ident["kind"] == "torchscript" and ident["name"] == "model"
    assert ident["path"] == str(path.resolve())
    assert ident["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    # Mixed native sizes go one by one; each map has its image's size.
    images = _images((20, 24), (16, 16), (20, 24))
    out = call_localizer(loc, images, ["a", "b", "c"])
    assert [m.shape for m in out.maps] == [(20, 24), (16, 16), (20, 24)]
    assert all(m.dtype == np.float32 and 0 <= m.min() <= m.max() <= 1 for m in out.maps)
    assert out.scores is None
    # Same answer in one batch as one by one.
    ref = ConvSigmoid()(torch.from_numpy(images[0]).permute(2, 0, 1)[None].float() / 255)[0, 0]
    np.testing.assert_allclose(out.maps[0], ref.detach().numpy(), atol=1e-5)


def test_torchscript_traced_tuple_and_input_size(tmp_path: Path) -> None:
    path = tmp_path / "traced.pth"
    torch.jit.trace(MapAndScore(), torch.rand(1, 3, 8, 8)).save(str(path))
    loc = load_localizer(path, options=parse_model_args(["input_size=32", "batch=2"]))
    assert loc.input_size == 32
    out = loc.predict(_images((40, 50), (20, 20), (32, 32)), ids=["a", "b", "c"])
    assert [m.shape for m in out.maps] == [(32, 32)] * 3
    assert out.scores is not None and len(out.scores) == 3
    assert all(0 <= s <= 1 for s in out.scores)


def test_one_input_resize_with_the_kernel_of_each_path() -> None:
    """The eval runner resizes with PIL's bilinear, a tensor adapter's own predict with OpenCV's area or
    linear: one function, the kernel named by the caller, so neither path's numbers moved."""
    import cv2
    from PIL import Image

    big, small, square = _images((40, 50), (20, 24), (32, 32))
    pil = resize_input(big, 32, "pil-bilinear")
    assert np.array_equal(pil, np.asarray(Image.fromarray(big).resize((32, 32), Image.Resampling.BILINEAR)))
    area = resize_input(big, 32, "cv2-area")
    assert np.array_equal(area, cv2.resize(big, (32, 32), interpolation=cv2.INTER_AREA))
    assert np.array_equal(resize_input(small, 32, "cv2-area"),
                          cv2.resize(small, (32, 32), interpolation=cv2.INTER_LINEAR))
    assert not np.array_equal(pil, area)  # two kernels, two answers: each path keeps its own
    assert resize_input(square, 32, "pil-bilinear") is square and resize_input(square, 32, "cv2-area") is square
    with pytest.raises(ValueError, match="unknown resize kernel 'nearest'"):
        resize_input(big, 32, "nearest")  # type: ignore[arg-type]


def test_torchscript_dict_output_and_normalisation(tmp_path: Path) -> None:
    loc = load_localizer(_script(DictOut(), tmp_path / "d.ts"))
    out = loc.predict(_images((8, 8), (8, 8)))
    assert [m.shape for m in out.maps] == [(8, 8)] * 2 and len(out.scores or []) == 2

    echo = _script(Echo(), tmp_path / "echo.pt")
    image = np.full((4, 4, 3), 255, np.uint8)
    plain = load_localizer(echo).predict([image])
    assert np.allclose(plain.maps[0], 1.0)
    # (1 - 0.5) / 0.5 = 1.0: mean/std given as comma-separated strings are applied.
    normed = load_localizer(echo, options={"mean": "0.5,0.5,0.5", "std": "0.5, 0.5, 0.5"}).predict([image // 2 + 64])
    assert np.allclose(normed.maps[0], (191 / 255 - 0.5) / 0.5, atol=1e-5)


@pytest.mark.parametrize(
    ("module", "message"),
    [
        (TwoChannels(), r"ids 'a', 'b'.*shape \(2, 2, 8, 8\).*\(B, 1, H, W\)"),
        (Logits(), r"#\d \(id '[ab]'\).*\[0, 1\].*logits"),
        (NaNs(), r"id '[ab]'.*NaN/inf.*finite"),
        (Raises(), r"(?s)ids 'a', 'b'.*raised.*boom inside the model"),
    ],
)
def test_torchscript_bad_models(tmp_path: Path, module: torch.nn.Module, message: str) -> None:
    loc = load_localizer(_script(module, tmp_path / "bad.pt"))
    with pytest.raises(LocalizerError, match=message):
        call_localizer(loc, _images((8, 8), (8, 8)), ["a", "b"])


def test_torchscript_load_errors(tmp_path: Path) -> None:
    state = tmp_path / "state.pt"
    torch.save(ConvSigmoid().state_dict(), state)
    with pytest.raises(LocalizerLoadError, match=r"cannot load .* as TorchScript.*module.path:ClassName"):
        load_localizer(state)
    model = _script(ConvSigmoid(), tmp_path / "m.pt")
    with pytest.raises(LocalizerLoadError, match=r"unknown option 'input_sise'.*Did you mean 'input_size'"):
        load_localizer(model, options={"input_sise": 3})
    with pytest.raises(LocalizerLoadError, match=r"mean=.*three"):
        load_localizer(model, options={"mean": "1,2", "std": "1,1,1"})
    if not torch.cuda.is_available():
        with pytest.raises(LocalizerLoadError, match=r"device 'cuda' asked for.*no CUDA"):
            load_localizer(model, device="cuda")
    with pytest.raises(LocalizerLoadError, match=r"no such file"):
        load_localizer(tmp_path / "missing.pt")
    weird = tmp_path / "weights.bin"
    weird.write_bytes(b"x")
    with pytest.raises(LocalizerLoadError, match=r"not a model or predictions archive"):
        load_localizer(weird)


# -- ONNX -----------------------------------------------------------------------------------------


def _onnx_model(path: Path, *, fixed: int | None = None, with_score: bool = False, scale: float = 1.0) -> Path:
    """A conv + sigmoid (+ global max score) graph written with onnx.helper: no exporter needed."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    h = w = fixed if fixed else None
    n = 1 if fixed else "N"
    x = helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [n, 3, h or "H", w or "W"])
    y = helper.make_tensor_value_info("map", TensorProto.FLOAT, [n, 1, h or "H", w or "W"])
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array((rng.normal(0, 0.3, (1, 3, 3, 3)) * scale).astype(np.float32), "W")
    bias = numpy_helper.from_array(np.zeros(1, np.float32), "B")
    nodes = [
        helper.make_node("Conv", ["pixels", "W", "B"], ["logits"], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["logits"], ["map"]),
    ]
    outputs = [y]
    if with_score:
        nodes.append(helper.make_node("ReduceMax", ["map"], ["score"], axes=[1, 2, 3], keepdims=0))
        outputs.insert(0, helper.make_tensor_value_info("score", TensorProto.FLOAT, [n]))
    graph = helper.make_graph(nodes, "tiny", [x], outputs, initializer=[weight, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_onnx_end_to_end(tmp_path: Path) -> None:
    path = _onnx_model(tmp_path / "tiny.onnx", with_score=True)
    loc = load_localizer(path, options={"threads": 1})
    assert isinstance(loc, ONNXLocalizer)
    ident = loc.identity()
    assert ident["kind"] == "onnx" and ident["provider"] == "CPUExecutionProvider"
    assert ident["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    out = call_localizer(loc, _images((12, 10), (12, 10), (7, 9)), ["a", "b", "c"])
    assert [m.shape for m in out.maps] == [(12, 10), (12, 10), (7, 9)]
    # Outputs are matched by name ("score" listed first in the graph), not by position.
    assert out.scores == pytest.approx([float(m.max()) for m in out.maps], abs=1e-6)


def test_onnx_fixed_input_size_is_read_from_the_file(tmp_path: Path) -> None:
    loc = load_localizer(_onnx_model(tmp_path / "fixed.onnx", fixed=16))
    assert loc.input_size == 16 and loc.batch == 1
    out = loc.predict(_images((30, 20), (16, 16)), ids=["a", "b"])
    assert [m.shape for m in out.maps] == [(16, 16), (16, 16)]


def test_onnx_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(LocalizerLoadError, match=r"cannot load .*bad.onnx.* as ONNX"):
        load_localizer(bad)


# -- module:Class and registry --------------------------------------------------------------------


class ConstantLocalizer(Localizer):
    """Outputs a constant map; used through 'module:Class'."""

    name = "constant"

    def __init__(self, device: str = "cpu", value: float = 0.5) -> None:
        super().__init__(device=device, value=value)
        self.value = float(value)

    def predict(self, images: Sequence[np.ndarray], ids: Sequence[str] | None = None) -> LocalizerOutput:
        return LocalizerOutput([np.full(im.shape[:2], self.value, np.float32) for im in images], [self.value] * len(images))


def make_constant(device: str = "cpu", **options: Any) -> Localizer:
    return ConstantLocalizer(device=device, **options)


class NotALocalizer:
    def __init__(self, **kwargs: Any) -> None:
        pass


def test_module_class_spec() -> None:
    loc = load_localizer(f"{__name__}:ConstantLocalizer", options=parse_model_args(["value=0.25"]))
    assert isinstance(loc, ConstantLocalizer)
    out = call_localizer(loc, _images((5, 6)), ["a"])
    assert float(out.maps[0][0, 0]) == 0.25 and out.scores == [0.25]
    ident = loc.identity()
    assert ident["kind"] == "class" and ident["path"] == f"{__name__}:ConstantLocalizer"
    assert ident["name"] == "constant" and ident["weights_sha256"] is None
    assert ident["options"] == {"value": 0.25}
    assert isinstance(load_localizer(f"{__name__}:make_constant"), ConstantLocalizer)


def test_module_class_errors() -> None:
    with pytest.raises(LocalizerLoadError, match=r"not a subclass of .*Localizer"):
        load_localizer(f"{__name__}:NotALocalizer")
    with pytest.raises(LocalizerLoadError, match=r"cannot build .*unexpected keyword argument 'colour'"):
        load_localizer(f"{__name__}:ConstantLocalizer", options={"colour": 1})
    with pytest.raises(ImportError, match=r"cannot import module 'no_such_module_xyz'"):
        load_localizer("no_such_module_xyz:Thing")


def test_registered_baselines_via_entry_points() -> None:
    from dolos_baselines.ela import ELALocalizer
    from dolos_baselines.noise import NoiseLocalizer

    ela = load_localizer("ela", options={"quality": 80})
    assert isinstance(ela, ELALocalizer) and ela.identity()["kind"] == "registry"
    assert ela.identity()["path"] == "dolos_baselines.ela:ELALocalizer"
    assert ela.identity()["options"]["quality"] == 80
    noise = load_localizer("noise")
    assert isinstance(noise, NoiseLocalizer) and noise.identity()["name"] == "noise"
    out = call_localizer(noise, _images((32, 32)), ["a"])
    assert out.maps[0].shape == (32, 32)
    with pytest.raises(UnknownNameError, match=r"unknown localizer 'elaa'.*Did you mean 'ela'"):
        load_localizer("elaa")


def test_predictions_folder_dispatch(tmp_path: Path) -> None:
    folder = tmp_path / "preds"
    folder.mkdir()
    np.save(folder / "a.npy", np.zeros((3, 3), np.float32))
    loc = load_localizer(folder)
    assert loc.identity()["kind"] == "predictions"
