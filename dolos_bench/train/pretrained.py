"""Pretrained backbone weights from timm (where reachable) or a local file, and state-dict files.

``--pretrained`` must never be the reason a run cannot start on an offline machine: when timm's
download fails, the note says so and training starts from scratch. A local file (``.safetensors``,
or a torch ``.pth``/``.pt``/``.bin`` state dict, loaded with ``weights_only``) is the offline way.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

from ..errors import UserError

if TYPE_CHECKING:
    import torch

__all__ = ["WeightsFileError", "read_state_dict", "copy_matching", "load_timm_weights"]


class WeightsFileError(UserError, ValueError):
    """A weights file that cannot be read as a state dict."""


def read_state_dict(path: str | Path) -> dict[str, "torch.Tensor"]:
    """A state dict from a ``.safetensors`` file or a torch file (``weights_only``, CPU).

    A torch checkpoint that wraps its state dict (``{"state_dict": ...}``, ``{"model": ...}``,
    as training scripts often save it) is unwrapped.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f"weights {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path), device="cpu"))
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader error is one line naming the file
        raise WeightsFileError(f"weights {path}: not a readable state dict ({type(exc).__name__}: {exc})") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(hasattr(v, "shape") for v in data.values()):
        raise WeightsFileError(f"weights {path}: holds no state dict of tensors")
    return dict(data)


def copy_matching(model: "torch.nn.Module", state: Mapping[str, "torch.Tensor"],
                  rename: Callable[[str], str | None] = lambda k: k) -> tuple[int, int]:
    """Copy every tensor of ``state`` whose (renamed) key and shape the model has; (copied, model's tensors)."""
    import torch

    own = model.state_dict()
    picked = {}
    for key, value in state.items():
        target = rename(key)
        if target is not None and target in own and tuple(own[target].shape) == tuple(value.shape):
            picked[target] = value
    with torch.no_grad():
        model.load_state_dict(picked, strict=False)
    return len(picked), len(own)


def load_timm_weights(model: "torch.nn.Module", timm_name: str, source: str | None,
                      rename: Callable[[str], str | None] = lambda k: k) -> str:
    """Pretrained weights of timm model ``timm_name`` into ``model`` by key and shape; a one-line note.

    ``source`` None asks timm for its weights (a download, cached); a path reads that file. When
    the download fails, ``model`` is left as built and the note says training starts from scratch.
    """
    if source is not None:
        state = read_state_dict(source)
        where = str(source)
    else:
        import timm

        try:
            state = timm.create_model(timm_name, pretrained=True).state_dict()
        except Exception as exc:  # noqa: BLE001 - offline, proxy, hub errors: all mean "not reachable"
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return (f"note: timm's pretrained {timm_name} weights could not be reached ({reason});"
                    " training from scratch (pass --pretrained FILE to use a local copy)")
        where = f"timm {timm_name}"
    copied, total = copy_matching(model, state, rename)
    if copied == 0:
        raise WeightsFileError(f"pretrained weights {where}: no tensor matches the model's keys and shapes")
    return f"pretrained: {copied} of {total} tensors from {where}"
