"""Pretrained ViT weights from local files or timm's hub, loaded safely into a timm ViT.

Formats: `.safetensors`; `.pth`/`.pt`/`.bin`/`.ckpt` read with `torch.load(weights_only=True)`
(a `"model"`/`"state_dict"` wrapper and a `module.` prefix are unwrapped; pickled Python objects
are refused); big_vision/timm `.npz` read by timm's own `_load_weights`. The position embedding
(and patch embedding) is resampled to the model's grid with timm's `checkpoint_filter_fn`, so
weights trained at 384 px load into a 448x576 model.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

PTH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
HOW_TO_PROVIDE = (
    "pass --weights PATH (config key model.weights) with a local .safetensors, .npz "
    "or .pth file of the backbone, or set model.pretrained=false to train from "
    "scratch; see docs/real_benchmarks.md"
)


class WeightsError(RuntimeError):
    """Pretrained weights could not be found, read or matched to the model."""


@dataclass
class LoadReport:
    """What `load_vit_weights` did: tensors loaded, keys missing/unexpected/ignored, resizes."""

    path: str
    format: str
    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the log."""
        parts = [f"loaded {self.loaded} tensors from {self.path} ({self.format})"]
        for label, keys in (
            ("resized", self.resized),
            ("ignored classifier", self.ignored),
            ("missing", self.missing),
            ("unexpected", self.unexpected),
        ):
            if keys:
                parts.append(f"{label}: {_short(keys)}")
        return "; ".join(parts)


def _short(keys: list[str], limit: int = 8) -> str:
    return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` or `.pth`-style file, unwrapped; never unpickles objects."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {str(path)!r}; {HOW_TO_PROVIDE}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except Exception as exc:
            raise WeightsError(f"unreadable safetensors file {str(path)!r}: {exc}") from None
    elif suffix in PTH_SUFFIXES:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise WeightsError(
                f"refused to load {str(path)!r}: it holds pickled Python objects, not only "
                "tensors (torch.load with weights_only=True). Save just the state dict "
                "(torch.save(model.state_dict(), ...)) or convert it to .safetensors"
            ) from None
        except Exception as exc:
            raise WeightsError(f"unreadable checkpoint {str(path)!r}: {exc}") from None
    else:
        raise WeightsError(
            f"unsupported weights file {str(path)!r}; use .safetensors, .npz or {'/'.join(PTH_SUFFIXES)}"
        )
    return _unwrap(state, path)


def _unwrap(state: object, path: Path) -> dict[str, torch.Tensor]:
    for key in ("model", "state_dict", "model_state", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise WeightsError(f"{str(path)!r} does not hold a state dict (found {type(state).__name__})")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsError(f"{str(path)!r} holds no tensors")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def _check_vit(model: nn.Module) -> None:
    if not (hasattr(model, "patch_embed") and hasattr(model, "blocks")):
        raise WeightsError(f"load_vit_weights needs a timm VisionTransformer, got {type(model).__name__}")


def load_vit_weights(model: nn.Module, path: str | Path, strict: bool = True) -> LoadReport:
    """Load local weights into a timm VisionTransformer, resampling the position embedding.

    A classifier head in the file is ignored when the model has none. With `strict`, any backbone
    key missing from the file or unknown to the model is an error; shape mismatches always are.
    """
    _check_vit(model)
    path = Path(path)
    if path.suffix.lower() == ".npz":
        return _load_npz(model, path)
    state = read_state_dict(path)
    from timm.models.vision_transformer import checkpoint_filter_fn

    own = model.state_dict()
    ignored = [k for k in state if k.startswith("head.") and k not in own]
    state = {k: v for k, v in state.items() if k not in ignored}
    before = {k: tuple(v.shape) for k, v in state.items()}
    try:
        state = checkpoint_filter_fn(state, model)
    except Exception as exc:
        raise WeightsError(f"{str(path)!r} could not be adapted to the model: {exc}") from None
    resized = [
        f"{k} {before[k]} -> {tuple(v.shape)}" for k, v in state.items() if k in before and before[k] != tuple(v.shape)
    ]
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    if mismatched:
        raise WeightsError(
            f"{str(path)!r} does not fit this architecture (a different ViT size?): {_short(mismatched, 4)}"
        )
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    loaded = len(state) - len(unexpected)
    if loaded == 0 or (strict and (missing or unexpected)):
        raise WeightsError(
            f"{str(path)!r} does not match the model: missing {_short(missing)}; unexpected {_short(unexpected)}"
        )
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return LoadReport(str(path), path.suffix.lstrip("."), loaded, missing, unexpected, ignored, resized)


def _load_npz(model: nn.Module, path: Path) -> LoadReport:
    """big_vision/timm `.npz` through timm's own loader (it resamples the position embedding)."""
    if not path.is_file():
        raise WeightsError(f"weights file not found: {str(path)!r}; {HOW_TO_PROVIDE}")
    try:
        from timm.models.vision_transformer import _load_weights
    except ImportError:
        raise WeightsError("this timm version has no .npz loader; convert the file to .safetensors") from None
    try:
        _load_weights(model, str(path))
    except Exception as exc:
        raise WeightsError(
            f"could not load {str(path)!r} as a big_vision/timm .npz ({type(exc).__name__}: {exc})"
        ) from None
    return LoadReport(str(path), "npz", len(model.state_dict()))


def _download_from_hub(name: str) -> Path:
    """The cached local file of timm's default pretrained weights for `name` (downloads once)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None:
        raise WeightsError(f"timm has no pretrained weights for {name!r}; {HOW_TO_PROVIDE}")
    if cfg.hf_hub_id:
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(cfg.hf_hub_id, "model.safetensors"))
        except Exception:
            return Path(hf_hub_download(cfg.hf_hub_id, "pytorch_model.bin"))
    if cfg.url:
        from timm.models._hub import download_cached_file

        return Path(download_cached_file(cfg.url))
    raise WeightsError(f"timm lists no download location for {name!r}; {HOW_TO_PROVIDE}")


def pretrained_path(name: str, pretrained: bool, weights: str | Path | None) -> Path | None:
    """Where the backbone weights come from: `weights` if given, else timm's hub when
    `pretrained`, else None. Offline without `weights`: a WeightsError saying how to provide them."""
    if isinstance(weights, str) and weights.startswith("pretrained:"):  # built locally, cached
        from tokenmtl.pretrain import resolve_weights

        return resolve_weights(weights)
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsError(f"model.weights file not found: {str(path)!r}; {HOW_TO_PROVIDE}")
        return path
    if not pretrained:
        return None
    try:
        return _download_from_hub(name)
    except WeightsError:
        raise
    except Exception as exc:
        raise WeightsError(
            f"could not fetch pretrained weights for {name!r} from the Hugging Face hub "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Offline? "
            f"Download them on a connected machine (e.g. model.safetensors of timm/{name}), then "
            f"{HOW_TO_PROVIDE}"
        ) from None


def resolve_pretrained(model: nn.Module, name: str, pretrained: bool, weights: str | Path | None) -> LoadReport | None:
    """Load the weights `pretrained_path` finds into `model`; None when nothing is to be loaded."""
    path = pretrained_path(name, pretrained, weights)
    return None if path is None else load_vit_weights(model, path)
