"""Dense multi-task transforms as ATRC/InvPT/TaskPrompter apply them, on torch tensors.

A raw sample is a dict of float32 tensors: `"image"` (3, H, W) in 0..255 and one (C, H, W) target
per task (labels as float, 255 = ignore). Training (NYUD, PASCAL): random scaling in [0.5, 2.0],
random crop (cat_max_ratio 0.75 on semseg), horizontal flip (negating normals' x), photometric
distortion, normalisation, centred padding with each target's ignore value. Evaluation:
normalisation and padding only. All randomness comes from torch's global RNG, so DataLoader worker
seeding makes a run reproducible. `finalize` turns labels into int64 (H, W).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LABEL_TASKS = frozenset({"semseg", "human_parts"})  # class ids -> int64 (H, W)
NORMAL_TASKS = frozenset({"normals", "normal"})  # x component flips sign on h-flip
ZERO_FILL_TASKS = frozenset({"image", "depth", "normals"})  # padded with 0 (invalid); others 255

Sample = dict[str, Tensor]


def fill_value(key: str) -> float:
    """Padding value of a sample entry: 0 for the (normalised) image, depth and normals, else 255."""
    return 0.0 if key in ZERO_FILL_TASKS else 255.0


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(()))


def _randint(low: int, high: int) -> int:
    """Uniform integer in [low, high] (both included), from torch's RNG."""
    return int(torch.randint(low, high + 1, ()))


def coin(p: float = 0.5) -> bool:
    """True with probability p, from torch's RNG."""
    return float(torch.rand(())) < p


def _resize(t: Tensor, size: tuple[int, int], mode: str, antialias: bool = False) -> Tensor:
    if mode == "nearest":
        return F.interpolate(t[None], size=size, mode="nearest")[0]
    return F.interpolate(t[None], size=size, mode=mode, align_corners=False, antialias=antialias)[0]


def random_scale(sample: Sample, low: float = 0.5, high: float = 2.0) -> Sample:
    """Rescale by s ~ U(low, high): image bilinear, targets nearest, depth divided by s (ATRC)."""
    s = _uniform(low, high)
    h, w = sample["image"].shape[-2:]
    size = (max(1, int(h * s)), max(1, int(w * s)))
    out = {}
    for key, val in sample.items():
        out[key] = _resize(val, size, "bilinear" if key == "image" else "nearest")
        if key == "depth":
            out[key] = out[key] / s
    return out


def _crop(sample: Sample, top: int, left: int, size: tuple[int, int]) -> Sample:
    return {k: v[..., top : top + size[0], left : left + size[1]] for k, v in sample.items()}


def random_crop(sample: Sample, size: Sequence[int], cat_max_ratio: float = 0.75) -> Sample:
    """Random crop to `size` where the image is larger (smaller sides are padded later).

    As ATRC: up to 10 tries for a crop in which no single semseg class covers more than
    `cat_max_ratio` of the labelled pixels (only when a semseg target is present).
    """
    h, w = sample["image"].shape[-2:]
    ch, cw = int(size[0]), int(size[1])

    def location() -> tuple[int, int]:
        return _randint(0, max(h - ch, 0)), _randint(0, max(w - cw, 0))

    top, left = location()
    if cat_max_ratio < 1.0 and "semseg" in sample:
        for _ in range(10):
            seg = sample["semseg"][..., top : top + ch, left : left + cw]
            _, counts = torch.unique(seg[seg != 255], return_counts=True)
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            top, left = location()
    return _crop(sample, top, left, (ch, cw))


def hflip(sample: Sample) -> Sample:
    """Mirror every entry left-right; the x component of surface normals changes sign."""
    out = {k: v.flip(-1) for k, v in sample.items()}
    for key in NORMAL_TASKS & out.keys():
        out[key] = out[key].clone()
        out[key][0] = -out[key][0]
    return out


def rgb_to_hsv(img: Tensor) -> Tensor:
    """(3, H, W) RGB in 0..255 -> hue in degrees [0, 360), saturation in [0, 1], value 0..255."""
    r, g, b = img
    maxc, minc = img.max(0).values, img.min(0).values
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = (
        torch.where(maxc == r, ((g - b) / safe) % 6, torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4))
        * 60.0
    )
    hue = torch.where(delta > 0, hue, torch.zeros_like(hue))
    sat = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    return torch.stack([hue, sat, maxc])


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    """Inverse of `rgb_to_hsv`."""
    hue, sat, val = hsv
    c = val * sat
    hp = (hue % 360.0) / 60.0
    x = c * (1 - ((hp % 2) - 1).abs())
    zero = torch.zeros_like(c)
    sector = hp.floor().long().clamp(0, 5)
    table = torch.stack(
        [
            torch.stack([c, x, zero]),
            torch.stack([x, c, zero]),
            torch.stack([zero, c, x]),
            torch.stack([zero, x, c]),
            torch.stack([x, zero, c]),
            torch.stack([c, zero, x]),
        ]
    )  # (6, 3, H, W)
    rgb = table.gather(0, sector[None, None].expand(1, 3, *sector.shape))[0]
    return rgb + (val - c)


def photometric_distortion(
    image: Tensor,
    brightness_delta: float = 32.0,
    contrast_range: tuple[float, float] = (0.5, 1.5),
    saturation_range: tuple[float, float] = (0.5, 1.5),
    hue_delta: int = 18,
) -> Tensor:
    """mmseg/ATRC PhotoMetricDistortion on a 0..255 image, each step with probability 0.5:
    brightness, contrast (first or last, at random), saturation, hue; uint8 clipping in between."""

    def convert(img: Tensor, alpha: float = 1.0, beta: float = 0.0) -> Tensor:
        return (img * alpha + beta).clamp(0, 255).floor()

    img = image.clamp(0, 255).floor()
    if coin():
        img = convert(img, beta=_uniform(-brightness_delta, brightness_delta))
    contrast_first = coin()
    if contrast_first and coin():
        img = convert(img, alpha=_uniform(*contrast_range))
    if coin():
        hsv = rgb_to_hsv(img)
        hsv[1] = (hsv[1] * _uniform(*saturation_range)).clamp(0, 1)
        img = hsv_to_rgb(hsv).round().clamp(0, 255)
    if coin():
        hsv = rgb_to_hsv(img)
        hsv[0] = (hsv[0] + 2.0 * _randint(-hue_delta, hue_delta - 1)) % 360.0  # OpenCV hue units
        img = hsv_to_rgb(hsv).round().clamp(0, 255)
    if not contrast_first and coin():
        img = convert(img, alpha=_uniform(*contrast_range))
    return img


def normalize(image: Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> Tensor:
    """(image / 255 - mean) / std, per channel."""
    m = torch.tensor(mean, dtype=image.dtype).view(3, 1, 1)
    s = torch.tensor(std, dtype=image.dtype).view(3, 1, 1)
    return (image / 255.0 - m) / s


def pad_to(sample: Sample, size: Sequence[int]) -> Sample:
    """Centre each entry on a canvas of at least `size`, filled with its ignore value (ATRC)."""
    h, w = sample["image"].shape[-2:]
    dh, dw = max(int(size[0]) - h, 0), max(int(size[1]) - w, 0)
    if dh == 0 and dw == 0:
        return sample
    pad = (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2)  # left, right, top, bottom
    return {k: F.pad(v, pad, value=fill_value(k)) for k, v in sample.items()}


def center_crop_to(sample: Sample, size: Sequence[int]) -> Sample:
    """Centre crop entries larger than `size` (eval only; the standard data never needs it)."""
    h, w = sample["image"].shape[-2:]
    ch, cw = min(int(size[0]), h), min(int(size[1]), w)
    if (ch, cw) == (h, w):
        return sample
    return _crop(sample, (h - ch) // 2, (w - cw) // 2, (ch, cw))


def resize_to(sample: Sample, size: Sequence[int]) -> Sample:
    """Bilinear (antialiased) resize of every entry, as Taskonomy loaders do with PIL."""
    size = (int(size[0]), int(size[1]))
    if tuple(sample["image"].shape[-2:]) == size:
        return sample
    return {k: _resize(v, size, "bilinear", antialias=True) for k, v in sample.items()}


def finalize(sample: Sample) -> Sample:
    """Labels (semseg, human_parts) become int64 (H, W); everything else stays float32 (C, H, W)."""
    out = {}
    for key, val in sample.items():
        out[key] = val[0].round().long() if key in LABEL_TASKS else val.float().contiguous()
    return out


class TrainTransform:
    """ATRC training pipeline: scale, crop, flip, photometric, normalise, pad, finalize."""

    def __init__(
        self,
        size: Sequence[int],
        scale: tuple[float, float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        self.size = (int(size[0]), int(size[1]))
        self.scale, self.cat_max_ratio, self.mean, self.std = scale, cat_max_ratio, mean, std

    def __call__(self, sample: Sample) -> Sample:
        sample = random_scale(sample, *self.scale)
        sample = random_crop(sample, self.size, self.cat_max_ratio)
        if coin():
            sample = hflip(sample)
        sample = dict(sample, image=photometric_distortion(sample["image"]))
        sample["image"] = normalize(sample["image"], self.mean, self.std)
        return finalize(pad_to(sample, self.size))


class EvalTransform:
    """Evaluation pipeline (no randomness): normalise, then pad (or centre crop) to `size`."""

    def __init__(self, size: Sequence[int], mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.size = (int(size[0]), int(size[1]))
        self.mean, self.std = mean, std

    def __call__(self, sample: Sample) -> Sample:
        sample = dict(sample, image=normalize(sample["image"], self.mean, self.std))
        return finalize(center_crop_to(pad_to(sample, self.size), self.size))
