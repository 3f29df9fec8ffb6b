"""Adapters that tell the truth: prediction bundles, devices, and plug-ins found where the user stands.

Covers issue 7 items 5 (predictions: aspect ratio, every bad file, ids of another split) and 9
(``module:Class`` from the current folder, ``weights=``, ``--device`` the same for every adapter).
No GPU is needed: the accept path of CUDA/MPS is tested with torch's probes monkeypatched.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from dolos_bench.eval.api import Localizer, LocalizerOutput
from dolos_bench.eval.localizers import (
    DeviceError,
    LocalizerLoadError,
    _check_onnx_session,
    _onnx_providers,
    load_localizer,
    resolve_device,
)
from dolos_bench.eval.predictions import (
    MAX_LISTED,
    PredictionsError,
    PredictionsLocalizer,
    dataset_split_ids,
    same_aspect,
)
from dolos_bench.registry import PluginLoadError, import_target

from helpers import build_tiny

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

NO_GPU = r"device 'cuda' asked for, but no CUDA GPU is visible \(torch.cuda.is_available\(\) is False"


def _npy(folder: Path, sample_id: str, arr: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{sample_id}.npy", arr)


def _images(n: int, shape: tuple[int, int]) -> list[np.ndarray]:
    return [np.zeros((*shape, 3), np.uint8) for _ in range(n)]


@pytest.fixture()
def fake_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two visible CUDA GPUs as far as torch's probes can tell; nothing runs on them."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.fixture()
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """No visible GPU, also on a machine that has one, so the error path is always tested."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# -- aspect ratio ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("map_shape", "image_shape", "ok"),
    [
        ((19, 19), (256, 256), True),  # patch maps of a square image
        ((37, 37), (299, 299), True),
        ((6, 8), (12, 16), True),
        ((24, 32), (12, 16), True),  # finer is fine too
        ((19, 28), (256, 384), True),  # 28.5 rounded down
        ((19, 29), (256, 384), True),  # ... or up
        ((1, 1), (12, 16), True),  # a constant map
        ((6, 6), (12, 16), False),
        ((19, 19), (256, 384), False),
        ((16, 12), (12, 16), False),  # transposed
        ((1, 2), (100, 100), False),  # 1.5 cannot round to 1 and to 2 at once
    ],
)
def test_same_aspect_is_the_rounding_of_one_scale(map_shape, image_shape, ok) -> None:
    assert same_aspect(map_shape, image_shape) is ok


def test_wrong_aspect_ratio_is_refused_with_the_expected_shape(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    _npy(folder, "a", np.zeros((6, 6), np.float32))
    loc = PredictionsLocalizer(folder)
    with pytest.raises(PredictionsError) as info:
        loc.predict(_images(1, (12, 16)), ids=["a"])
    msg = str(info.value)
    assert "id 'a' (a.npy): map is 6x6 but the image is 12x16, another aspect ratio" in msg
    assert "expected 12x16 or 6x8" in msg


def test_coarser_and_finer_maps_with_the_aspect_ratio_pass(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    _npy(folder, "patch19", np.full((19, 19), 0.5, np.float32))
    _npy(folder, "patch37", np.full((37, 37), 0.5, np.float32))
    _npy(folder, "fine", np.full((512, 512), 0.5, np.float32))
    out = PredictionsLocalizer(folder).predict(_images(3, (256, 256)), ids=["patch19", "patch37", "fine"])
    assert [m.shape for m in out.maps] == [(19, 19), (37, 37), (512, 512)]


# -- every bad file named -------------------------------------------------------------------------


def _bad_bundle(folder: Path, bad: int, good: int = 1) -> list[str]:
    for i in range(good):
        _npy(folder, f"good{i}", np.zeros((4, 4), np.float32))
    ids = [f"bad{i:02d}" for i in range(bad)]
    for i, sample_id in enumerate(ids):
        _npy(folder, sample_id, np.full((4, 4), np.nan if i % 2 else 2.0, np.float32))
    return [f"good{i}" for i in range(good)] + ids


def test_a_batch_names_every_bad_file(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    ids = _bad_bundle(folder, bad=3)
    _npy(folder, "squashed", np.zeros((4, 2), np.float32))
    ids.append("squashed")
    with pytest.raises(PredictionsError) as info:
        PredictionsLocalizer(folder).predict(_images(len(ids), (4, 4)), ids=ids)
    msg = str(info.value)
    assert "4 bad prediction files in a batch of 5" in msg
    assert "id 'bad00'" in msg and "must lie in [0, 1]" in msg and "(file bad00.npy)" in msg
    assert "id 'bad01'" in msg and "NaN/inf" in msg and "(file bad01.npy)" in msg
    assert "id 'bad02'" in msg and "id 'squashed' (squashed.npy): map is 4x2" in msg
    assert "good0" not in msg


def test_deep_validation_names_every_bad_file_with_a_cap(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    ids = _bad_bundle(folder, bad=MAX_LISTED + 5)
    (folder / "notes.txt").write_text("stray")
    loc = PredictionsLocalizer(folder)
    with pytest.raises(PredictionsError) as info:
        loc.validate(ids, deep=True)
    msg = str(info.value)
    assert f"{MAX_LISTED + 5} bad prediction files:" in msg
    assert "id 'bad00'" in msg and f"id 'bad{MAX_LISTED - 1:02d}'" in msg
    assert f"id 'bad{MAX_LISTED:02d}'" not in msg and "... and 5 more" in msg
    assert "1 files that are not predictions" in msg  # layout and content in one error


# -- ids of another split -------------------------------------------------------------------------


SPLITS = {"train": ["t0", "t1", "t2"], "test": ["s0", "s1", "s2"]}


def test_ids_of_another_split_say_so(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    for sample_id in ("s0", "t0", "t1", "zz"):
        _npy(folder, sample_id, np.zeros((2, 2), np.float32))
    (folder / "scores.csv").write_text("id,score\ns0,0.5\nt2,0.5\n")
    with pytest.raises(PredictionsError) as info:
        PredictionsLocalizer(folder).validate(["s0"], split="test", splits=SPLITS)
    msg = str(info.value)
    assert "2 ids belong to split 'train', not 'test': 't0', 't1'" in msg
    assert "--split train" in msg and "allow_extra=true" in msg
    assert "1 extra ids not in the dataset: 'zz'" in msg
    assert "1 ids in scores.csv belong to split 'train', not 'test': 't2'" in msg


def test_ids_of_the_scored_split_left_out_by_limit_are_no_error(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    for sample_id in SPLITS["test"]:
        _npy(folder, sample_id, np.zeros((2, 2), np.float32))
    calls: list[int] = []

    def splits() -> dict[str, list[str]]:
        calls.append(1)
        return SPLITS

    loc = PredictionsLocalizer(folder)
    loc.validate(SPLITS["test"], split="test", splits=splits)
    assert calls == []  # no extra ids: the other splits are never read
    loc.validate(["s0"], split="test", splits=splits)
    assert calls == [1]


def test_a_bundle_for_another_split_is_named_end_to_end(tmp_path: Path) -> None:
    from dolos_bench.eval.config import ScoringConfig
    from dolos_bench.eval.runner import run_eval

    data = build_tiny(tmp_path, images=6)
    ids = dataset_split_ids(data)
    assert {"train", "test"} <= set(ids) and ids["train"] and ids["test"]
    folder = tmp_path / "train-preds"
    for sample_id in ids["train"]:
        _npy(folder, sample_id, np.zeros((64, 64), np.float32))
    with pytest.raises(PredictionsError) as info:
        run_eval(ScoringConfig(model=str(folder), data=str(data), split="test", bootstrap=0))
    msg = str(info.value)
    assert f"missing {len(ids['test'])} ids" in msg
    assert f"{len(ids['train'])} ids belong to split 'train', not 'test'" in msg
    # bad files in different batches are all named before scoring starts
    good = tmp_path / "test-preds"
    for sample_id in ids["test"]:
        _npy(good, sample_id, np.zeros((64, 64), np.float32))
    first, last = ids["test"][0], ids["test"][-1]
    _npy(good, first, np.full((64, 64), np.nan, np.float32))
    _npy(good, last, np.full((64, 64), 3.0, np.float32))
    with pytest.raises(PredictionsError) as info:
        run_eval(ScoringConfig(model=str(good), data=str(data), split="test", batch_size=1, bootstrap=0))
    assert "2 bad prediction files" in str(info.value)
    assert f"id {first!r}" in str(info.value) and f"id {last!r}" in str(info.value)


def test_split_ids_of_data_without_a_manifest(tmp_path: Path) -> None:
    assert dataset_split_ids(tmp_path / "nowhere") == {}


# -- devices --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("gpu", r"unknown device 'gpu': use cpu, cuda, cuda:N .* or mps"),
        ("cuda:x", r"unknown device 'cuda:x'"),
        ("cpu:1", r"unknown device 'cpu:1'.*cpu takes no index"),
        ("", r"unknown device ''"),
    ],
)
def test_unknown_devices_are_refused(device: str, message: str) -> None:
    with pytest.raises(DeviceError, match=message):
        resolve_device(device)


def test_cpu_is_canonical() -> None:
    assert resolve_device(" CPU ") == "cpu"


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_is_one_clear_error(no_gpu, device: str) -> None:
    with pytest.raises(DeviceError, match=rf"device '{device}' asked for, but no CUDA GPU is visible"):
        resolve_device(device)


def test_cuda_with_gpus_is_accepted_and_indexed(fake_gpus) -> None:
    assert resolve_device("CUDA") == "cuda"
    assert resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(DeviceError, match=r"device 'cuda:2' asked for, but only 2 CUDA GPUs are visible \(cuda:0, cuda:1\)"):
        resolve_device("cuda:2")


def test_mps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(DeviceError, match=r"no Apple MPS device is available"):
        resolve_device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("mps") == "mps"
    with pytest.raises(DeviceError, match=r"there is one mps device"):
        resolve_device("mps:1")


class Recorder(Localizer):
    """Remembers the device and weights it was built with."""

    name = "recorder"

    def __init__(self, device: str = "cpu", weights: str | None = None) -> None:
        super().__init__(device=device, weights=weights)
        self.weights = weights

    def predict(self, images, ids=None) -> LocalizerOutput:
        return LocalizerOutput(maps=[np.zeros(np.shape(im)[:2], np.float32) for im in images])


class NoWeights(Localizer):
    name = "no-weights"

    def __init__(self, device: str = "cpu", threshold: float = 0.5) -> None:
        super().__init__(device=device, threshold=threshold)

    def predict(self, images, ids=None) -> LocalizerOutput:
        return LocalizerOutput(maps=[np.zeros(np.shape(im)[:2], np.float32) for im in images])


def _adapters(tmp_path: Path) -> dict[str, str]:
    """One spec of every adapter kind: registered baselines, module:Class, TorchScript, ONNX, predictions."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch>=2.9 deprecates TorchScript
        scripted = torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(3, 1, 1), torch.nn.Sigmoid()))
        scripted.save(str(tmp_path / "m.pt"))
    specs = {
        "ela": "ela",
        "noise": "noise",
        "class": f"{__name__}:Recorder",
        "torchscript": str(tmp_path / "m.pt"),
        "predictions": str(tmp_path / "preds"),
    }
    _npy(tmp_path / "preds", "a", np.zeros((2, 2), np.float32))
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])
    y = helper.make_tensor_value_info("map", TensorProto.FLOAT, ["N", 3, "H", "W"])
    graph = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["map"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "m.onnx"))
    specs["onnx"] = str(tmp_path / "m.onnx")
    return specs


def test_cuda_without_a_gpu_is_the_same_error_for_every_adapter(tmp_path: Path, no_gpu) -> None:
    for kind, spec in _adapters(tmp_path).items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # never a raw warning instead of the error
            with pytest.raises(DeviceError, match=NO_GPU):
                load_localizer(spec, device="cuda")
        assert load_localizer(spec, device="cpu").device == "cpu", kind


def test_cuda_with_a_gpu_reaches_the_adapters_or_is_refused_by_name(tmp_path: Path, fake_gpus) -> None:
    specs = _adapters(tmp_path)
    loc = load_localizer(specs["class"], device="cuda:1")
    assert isinstance(loc, Recorder) and loc.device == "cuda:1"
    assert load_localizer(specs["predictions"], device="cuda").device == "cuda"  # nothing runs
    for name in ("ela", "noise"):  # CPU-only methods: refused, never a silent CPU run
        with pytest.raises(DeviceError, match=rf"runs on cpu only, so --device cuda would not be used; pass --device cpu"):
            load_localizer(specs[name], device="cuda")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(DeviceError, match=r"device 'cuda' asked for, but this onnxruntime has no CUDA provider"):
            load_localizer(specs["onnx"], device="cuda")


def test_onnx_never_falls_back_to_cpu_in_silence() -> None:
    assert _onnx_providers("cpu", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert _onnx_providers("cuda:1", ["CUDAExecutionProvider", "CPUExecutionProvider"])[0] == (
        "CUDAExecutionProvider", {"device_id": 1})
    with pytest.raises(DeviceError, match=r"has no CUDA provider \(it has CPUExecutionProvider\); install onnxruntime-gpu"):
        _onnx_providers("cuda", ["CPUExecutionProvider"])
    _check_onnx_session("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(DeviceError, match=r"could not start its CUDA provider and fell back to CPUExecutionProvider"):
        _check_onnx_session("cuda:0", ["CPUExecutionProvider"])


def test_onnx_refuses_mps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    with pytest.raises(DeviceError, match=r"onnx model m.onnx' runs on cpu, cuda only"):
        load_localizer(_adapters(tmp_path)["onnx"], device="mps")


# -- weights ---------------------------------------------------------------------------------------


def test_weights_reach_the_plug_in_as_a_path_string(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt.bin"
    ckpt.write_bytes(b"weights")
    loc = load_localizer(f"{__name__}:Recorder", options={"weights": str(ckpt)})
    assert isinstance(loc, Recorder) and loc.weights == str(ckpt) and isinstance(loc.weights, str)


def test_weights_for_a_plug_in_without_the_parameter(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt.bin"
    ckpt.write_bytes(b"weights")
    with pytest.raises(LocalizerLoadError, match=r"--weights was given, but .*NoWeights' takes no 'weights' argument"):
        load_localizer(f"{__name__}:NoWeights", options={"weights": str(ckpt)})
    with pytest.raises(LocalizerLoadError, match=r"takes no 'weights' argument"):
        load_localizer("ela", options={"weights": str(ckpt)})


# -- module:Class from the current folder ---------------------------------------------------------

PLUGIN = '''
import numpy as np
from dolos_bench.eval.api import Localizer, LocalizerOutput


class MyLocalizer(Localizer):
    name = "mine"

    def predict(self, images, ids=None):
        from my_pkg.helpers import level  # a sibling imported late, inside predict
        return LocalizerOutput(maps=[np.full(np.shape(im)[:2], level(), np.float32) for im in images])
'''


def _plugin_folder(root: Path) -> Path:
    pkg = root / "my_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(PLUGIN)
    (pkg / "helpers.py").write_text("def level():\n    return 0.25\n")
    return root


@pytest.fixture()
def clean_imports(monkeypatch: pytest.MonkeyPatch):
    """Restore sys.path and forget my_pkg after the test."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    for name in [m for m in sys.modules if m == "my_pkg" or m.startswith("my_pkg.")]:
        del sys.modules[name]


def test_module_class_resolves_from_the_current_folder(tmp_path: Path, monkeypatch, clean_imports) -> None:
    folder = _plugin_folder(tmp_path / "project")
    monkeypatch.chdir(folder)
    sys.path[:] = [p for p in sys.path if p not in ("", str(folder))]
    loc = load_localizer("my_pkg.models:MyLocalizer")
    out = loc.predict(_images(1, (3, 3)))  # the late sibling import still works
    assert np.allclose(out.maps[0], 0.25)
    assert sys.path[0] == str(folder)


def test_registry_entries_do_not_touch_the_import_path(clean_imports) -> None:
    before = list(sys.path)
    import_target("dolos_baselines.ela:ELALocalizer")
    assert sys.path == before


def test_a_missing_module_names_the_folder_searched(tmp_path: Path, monkeypatch, clean_imports) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PluginLoadError, match=rf"cannot import module 'nope.models' .*looked in the current folder '{tmp_path}'"):
        load_localizer("nope.models:Thing")


def test_bench_eval_finds_the_plug_in_where_the_user_stands(tmp_path: Path) -> None:
    data = build_tiny(tmp_path, images=4)
    folder = _plugin_folder(tmp_path / "project")
    bench = Path(sys.executable).with_name("bench")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    result = subprocess.run(
        [str(bench), "eval", "my_pkg.models:MyLocalizer", "--data", str(data), "--split", "train",
         "--bootstrap", "0", "--quiet"],
        cwd=folder, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_cuda_probe_warning_goes_into_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def probe() -> bool:
        warnings.warn("CUDA initialization: the NVIDIA driver is too old", UserWarning)
        return False

    monkeypatch.setattr(torch.cuda, "is_available", probe)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DeviceError, match=r"no CUDA GPU is visible.*torch said: CUDA initialization: the NVIDIA driver"):
            resolve_device("cuda")


def test_a_bad_device_is_refused_before_the_data_is_opened(tmp_path, monkeypatch) -> None:
    """The device check comes first: a Hub id would otherwise cost network retries before the refusal."""
    from dolos_bench.eval import runner, stress
    from dolos_bench.eval.config import ScoringConfig
    from dolos_bench.eval.localizers import DeviceError
    from dolos_bench.eval.runner import run_eval
    from dolos_bench.eval.stress import run_stress

    def no_data(*args, **kwargs):
        raise AssertionError("the data was opened before the device was checked")

    monkeypatch.setattr(runner, "open_scored_split", no_data)
    monkeypatch.setattr(stress, "open_scored_split", no_data)
    config = ScoringConfig(model="noise", data="hf://someone/faces", device="gpu")
    with pytest.raises(DeviceError, match="unknown device 'gpu'"):
        run_eval(config)
    with pytest.raises(DeviceError, match="unknown device 'gpu'"):
        run_stress(config, out=tmp_path / "s.json")
