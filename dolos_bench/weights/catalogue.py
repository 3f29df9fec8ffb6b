"""The weights catalogue: every model file or Hub repository a built-in stage can use, and where it comes from.

Each entry names one thing a user downloads once: a single file fetched from a URL (``kind="file"``)
or a Hugging Face Hub repository (``kind="hub"``). Checksums are the ones the publishers (or the
tools that load the file) state; an entry whose publisher states none says so with
``sha256=None``, and ``bench weights ls`` shows it as unverifiable rather than inventing a hash.
Hub repositories need no checksum here: ``huggingface_hub`` checks every file against the
repository's own sha256 (LFS) while downloading.

Users add their own entries with a YAML list in the file named by ``$DOLOS_BENCH_CATALOGUE``
(same fields as :class:`Entry`); a user entry with a built-in's name replaces it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from ..errors import UserError
from ..utils.text import did_you_mean

__all__ = ["CATALOGUE_ENV", "CatalogueError", "Entry", "catalogue", "find_entry", "require_entry"]

CATALOGUE_ENV = "DOLOS_BENCH_CATALOGUE"


class CatalogueError(UserError, ValueError):
    """A user catalogue file that cannot be read, or a name no entry answers to."""


@dataclass(frozen=True)
class Entry:
    """One downloadable model: a file at a URL, a Hub repository, or a folder of named files."""

    name: str
    kind: Literal["file", "hub", "folder"]
    source: str  # the URL of the file (or of the folder's page), or the Hub repository id
    licence: str
    used_by: tuple[str, ...]  # "generator:lama", "masker:face-parser", ...
    filename: str | None = None  # the file name the loaders expect (file entries)
    sha256: str | None = None  # None: the publisher states none
    md5: str | None = None  # a publisher's md5 where no sha256 is published (big-lama.pt)
    size: int | None = None  # bytes, where the publisher states it
    revision: str | None = None  # Hub revision (branch, tag or commit); None: the default branch
    allow_patterns: tuple[str, ...] = ()  # Hub files to fetch (empty: the whole repository)
    manual: bool = False  # no direct download link (Google Drive): fetched with --from FILE
    page: str | None = None  # where a person downloads it by hand
    also_at: tuple[str, ...] = ()  # other places the file is often already (env vars expanded)
    gated: bool = False  # the Hub repository asks for a licence acceptance and a token
    note: str = ""
    convert: str | None = None  # the `bench convert` command that makes the folder its generators load
    files: tuple[str, ...] = ()  # folder entries: the files the folder must hold (fetched by hand, --from DIR)

    @property
    def convert_hint(self) -> str | None:
        """What to run before a generator can use this file (None: it loads the file as it is)."""
        return f"convert it first: bench convert {self.convert} <ckpt> <out>" if self.convert else None

    def __post_init__(self) -> None:
        if self.kind == "file" and not self.filename:
            raise ValueError(f"weights entry {self.name!r}: a file entry needs a filename")
        if self.kind == "folder" and (not self.files or not self.manual):
            raise ValueError(f"weights entry {self.name!r}: a folder entry lists its files and is fetched by hand"
                             " (files: [...], manual: true)")

    @property
    def checksum(self) -> str | None:
        """The hash ``pooch`` checks, in its ``"alg:hex"`` form; None when none is published."""
        if self.sha256:
            return f"sha256:{self.sha256}"
        if self.md5:
            return f"md5:{self.md5}"
        return None

    def locations(self) -> list[Path]:
        """The ``also_at`` places with their environment variables filled in (unset ones dropped)."""
        found = []
        for template in self.also_at:
            text = os.path.expanduser(os.path.expandvars(template))
            if "$" not in text:
                found.append(Path(text))
        return found


_TORCH_HUB = ("$TORCH_HOME/hub/checkpoints", "~/.cache/torch/hub/checkpoints")
_P2_PAGE = "https://github.com/jychoi118/P2-weighting#pre-trained-models"
_PLURALISTIC_PAGE = "https://github.com/lyndonzheng/Pluralistic-Inpainting#pretrained-models"
_P2_NOTE = ("OpenAI guided-diffusion (ADM) format, 256x256, learned variance; repaint and ddpm-full load the "
            "converted folder, not this file: `bench convert guided-diffusion FILE OUT`, then `model: OUT`")

BUILTIN: tuple[Entry, ...] = (
    # -- the Dolos-era models ---------------------------------------------------------------------
    Entry("p2-celebahq", "file",
          "https://drive.google.com/file/d/1ag8JnvKGKo6L6avO_dTFEBNWJo2jZIDF/view?usp=sharing",
          licence="not stated with the checkpoint (code: the P2-weighting repository, from openai/guided-diffusion)",
          used_by=("generator:repaint", "generator:ddpm-full"), filename="celebahq_p2.pt",
          manual=True, page=_P2_PAGE, note=_P2_NOTE, convert="guided-diffusion"),
    Entry("p2-ffhq", "file",
          "https://drive.google.com/file/d/1nlCPBqOqSeqAQ8F4noThbnmr4okriwTc/view?usp=sharing",
          licence="not stated with the checkpoint (code: the P2-weighting repository, from openai/guided-diffusion)",
          used_by=("generator:repaint", "generator:ddpm-full"), filename="ffhq_p2.pt",
          manual=True, page=_P2_PAGE, note=_P2_NOTE, convert="guided-diffusion"),
    Entry("ddpm-celebahq", "hub", "google/ddpm-ema-celebahq-256", licence="apache-2.0",
          used_by=("generator:repaint", "generator:ddpm-full"),
          note="pixel-space DDPM (UNet2DModel + DDPMScheduler), the RePaint example model of diffusers"),
    Entry("ldm-celebahq", "hub", "CompVis/ldm-celebahq-256", licence="apache-2.0",
          used_by=("generator:repaint-ldm", "generator:ddpm-full"),
          note="unconditional LDM: VQModel + UNet2DModel + DDIMScheduler"),
    Entry("ldm-inpainting", "file", "https://heibox.uni-heidelberg.de/f/4d9ac7ea40c64582b7c9/?dl=1",
          licence="MIT (CompVis/latent-diffusion)", used_by=("generator:ldm-inpaint",),
          filename="last.ckpt", page="https://github.com/CompVis/latent-diffusion#inpainting",
          note="CompVis checkpoint (PyTorch Lightning pickle); ldm-inpaint loads the converted folder, not this "
               "file: `bench convert compvis-ldm FILE OUT`, then `model: OUT`", convert="compvis-ldm"),
    Entry("big-lama", "file", "https://github.com/Sanster/models/releases/download/add_big_lama/big-lama.pt",
          licence="apache-2.0 (advimman/lama)", used_by=("generator:lama",), filename="big-lama.pt",
          md5="e3aa4aaa15225a33ec84f9f4bc47e500", also_at=tuple(f"{d}/big-lama.pt" for d in _TORCH_HUB),
          note="Big-LaMa as TorchScript, the file lama-cleaner and IOPaint load (they publish its md5 only)"),
    Entry("parsing-bisenet", "file",
          "https://github.com/xinntao/facexlib/releases/download/v0.2.0/parsing_bisenet.pth",
          licence="MIT (xinntao/facexlib)", used_by=("masker:face-parser",), filename="parsing_bisenet.pth",
          note="facexlib's BiSeNet face parser (19 CelebAMask-HQ classes); facexlib publishes no checksum"),
    Entry("parsing-parsenet", "file",
          "https://github.com/xinntao/facexlib/releases/download/v0.2.2/parsing_parsenet.pth",
          licence="MIT (xinntao/facexlib)", used_by=("masker:face-parser",), filename="parsing_parsenet.pth",
          note="facexlib's ParseNet face parser (19 classes); facexlib publishes no checksum"),
    Entry("pluralistic-celebahq-random", "folder", "https://drive.google.com/open?id=1nLq-W7eAZErqsvB1Q8h1yQT_l7_kZBXT",
          licence="CC BY-NC 4.0 (lyndonzheng/Pluralistic-Inpainting)", used_by=("generator:pluralistic",),
          files=("latest_net_E.pth", "latest_net_G.pth"), manual=True, page=_PLURALISTIC_PAGE,
          note="Pluralistic's CelebA-HQ model trained with random regular and irregular holes (a Google Drive folder;"
               " the authors publish no checksums)"),
    Entry("pluralistic-celebahq-center", "folder", "https://drive.google.com/open?id=1zQnFkRAtjGCorOd0Mj9tfdApcAPbs6Kw",
          licence="CC BY-NC 4.0 (lyndonzheng/Pluralistic-Inpainting)", used_by=("generator:pluralistic",),
          files=("latest_net_E.pth", "latest_net_G.pth"), manual=True, page=_PLURALISTIC_PAGE,
          note="Pluralistic's CelebA-HQ model trained with 128x128 centre holes (a Google Drive folder; no checksums)"),
    # -- modern inpainting pipelines (diffusers-inpaint) -----------------------------------------
    Entry("sd2-inpainting", "hub", "stabilityai/stable-diffusion-2-inpainting",
          licence="openrail++ (CreativeML Open RAIL++-M)", used_by=("generator:diffusers-inpaint",),
          allow_patterns=("*.json", "*.txt", "*/*.safetensors"),
          note="the diffusers folders only (the repository also holds the original .ckpt)"),
    Entry("sdxl-inpainting", "hub", "diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
          licence="openrail++ (CreativeML Open RAIL++-M)", used_by=("generator:diffusers-inpaint",),
          allow_patterns=("*.json", "*.txt", "*/*.safetensors"),
          note="the diffusers folders only (the repository also holds single-file checkpoints)"),
    Entry("flux-fill", "hub", "black-forest-labs/FLUX.1-Fill-dev",
          licence="FLUX.1 [dev] Non-Commercial License", used_by=("generator:diffusers-inpaint",),
          allow_patterns=("*.json", "*.txt", "*.model", "*/*.safetensors", "*/*.json"), gated=True,
          note="gated: accept the licence on the Hub and log in (HF_TOKEN) first; the single-file "
               "flux1-fill-dev.safetensors (sha256 03e289f530df51d014f48e675a9ffa2141bc003259bf5f25d75b957e920a41ca, "
               "stated by black-forest-labs) is not needed by diffusers"),
)


def _user_entries(path: Path) -> list[Entry]:
    """Entries from a user's YAML catalogue: a list of mappings with :class:`Entry`'s fields."""
    try:
        data = yaml.safe_load(path.read_text()) or []
    except (OSError, yaml.YAMLError) as exc:
        raise CatalogueError(f"cannot read the weights catalogue {path} (${CATALOGUE_ENV}): {exc}") from exc
    if not isinstance(data, list):
        raise CatalogueError(f"{path} (${CATALOGUE_ENV}) must hold a YAML list of weights entries")
    known = {f.name for f in fields(Entry)}
    entries = []
    for index, item in enumerate(data):
        if not isinstance(item, dict) or not {"name", "kind", "source"} <= set(item):
            raise CatalogueError(f"{path} entry {index}: needs at least name, kind and source")
        unknown = set(item) - known
        if unknown:
            raise CatalogueError(f"{path} entry {item['name']!r}: unknown field(s) {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {"licence": "not stated", "used_by": (), **item}
        for key in ("used_by", "allow_patterns", "also_at", "files"):
            values[key] = tuple(values.get(key) or ())
        try:
            entries.append(Entry(**values))
        except (TypeError, ValueError) as exc:
            raise CatalogueError(f"{path} entry {item['name']!r}: {exc}") from exc
    return entries


def catalogue() -> dict[str, Entry]:
    """The built-in entries, overlaid with the user's (``$DOLOS_BENCH_CATALOGUE``), by name."""
    entries = {e.name: e for e in BUILTIN}
    extra = os.environ.get(CATALOGUE_ENV)
    if extra:
        entries.update({e.name: e for e in _user_entries(Path(extra).expanduser())})
    return entries


def find_entry(name: str) -> Entry | None:
    """The entry called ``name``, or the one whose Hub id is ``name``; None when there is none."""
    entries = catalogue()
    if name in entries:
        return entries[name]
    return next((e for e in entries.values() if e.kind == "hub" and e.source == name), None)


def require_entry(name: str) -> Entry:
    """:func:`find_entry`, or a :class:`CatalogueError` that suggests close names."""
    entry = find_entry(name)
    if entry is None:
        names = sorted(catalogue())
        raise CatalogueError(f"no weights entry {name!r}.{did_you_mean(name, names)} Known: {', '.join(names)}.")
    return entry

