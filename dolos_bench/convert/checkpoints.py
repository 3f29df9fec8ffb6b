"""Reading a checkpoint file into a state dict of named tensors: what every converter starts with.

``.safetensors`` files are read with safetensors; pickled ones (``.pt``, ``.pth``, ``.ckpt``) with
``torch.load(weights_only=True)``, which builds tensors and plain containers only. A pickle that
needs more (arbitrary objects: a Lightning checkpoint's hyper-parameters, say) is refused unless the
caller passes ``trust_pickle``: a pickle can run code, so that is for files from a source the user
trusts. Wrappers (``{"state_dict": {...}}``) are opened; anything that is not then a mapping of
names to tensors is a :class:`~dolos_bench.convert.ConversionError` naming the odd entries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from . import ConversionError
from .adm_unet import listed

__all__ = ["read_state_dict"]


def read_state_dict(path: Path, *, not_found: str, unwrap: tuple[str, ...] = ("state_dict",),
                    trust_pickle: bool | None = None) -> dict[str, Any]:
    """The tensors in ``path``, by name.

    ``not_found``: the error when there is no such file (say which file is wanted and where it comes
    from). ``unwrap``: wrapper keys to open, in order, where the loaded object has them.
    ``trust_pickle``: None = not offered (weights only, no hint), False = weights only and the error
    says ``--trust-pickle``, True = a full unpickling.
    """
    import torch

    if not path.is_file():
        raise ConversionError(not_found)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded: Any = load_file(str(path))
        else:
            loaded = torch.load(str(path), map_location="cpu", weights_only=not trust_pickle)
    except Exception as exc:  # pickle, zip and safetensors errors have no common base
        reason = " ".join(str(exc).split())[:200]
        hint = "; if it holds more than tensors and you trust it, pass --trust-pickle" if trust_pickle is False else ""
        raise ConversionError(f"cannot read {path} as a checkpoint ({reason}){hint}") from None
    for key in unwrap:
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
    if not isinstance(loaded, Mapping) or not all(isinstance(k, str) for k in loaded):
        raise ConversionError(f"{path} holds no state_dict of named tensors")
    odd = sorted(k for k, v in loaded.items() if not isinstance(v, torch.Tensor))
    if odd:
        raise ConversionError(f"{path}'s state_dict holds {len(odd)} entries that are not tensors: {listed(odd)}")
    return dict(loaded)
