"""Reading a Debian package index (`Packages` file or `apt-cache dumpavail`) into package records.

The index is a sequence of RFC-822 stanzas separated by blank lines: `Field: value` lines, with
continuation lines that start with a space or a tab. Every error names the file and the line.
Only the fields the `packages` benchmark uses are interpreted (docs/packages.md).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tokenmtl.data.errors import DataError

APT_SOURCE = "apt-cache dumpavail"
"""Display name of the index read from apt when no `benchmark.source` is given."""

HOW_TO_PROVIDE = (
    "set `benchmark.source: PATH` to a Debian `Packages` file (plain, .gz, .xz or "
    ".bz2), or run `apt-get update` so that `apt-cache dumpavail` prints the index"
)

_FIELD = re.compile(r"^([^\s:#-][^\s:]*):(.*)$")
_DECOMPRESS = {".gz": gzip.decompress, ".xz": lzma.decompress, ".bz2": bz2.decompress}


@dataclass(frozen=True)
class IndexText:
    """The raw index: its text, where it came from (for errors) and the SHA-256 of its bytes."""

    text: str
    origin: str
    sha256: str


@dataclass(frozen=True)
class PackageRecord:
    """The fields of one package the benchmark uses; `line` is where its stanza starts (1-based)."""

    name: str
    description: str  # the short (first-line) description, whitespace collapsed
    section: str | None  # area prefix (contrib/, non-free/, ...) removed
    tags: frozenset[str]  # debtags, "facet::value", brace groups expanded
    installed_size: int | None  # KiB
    multi_arch: str  # "no" when the field is absent (Debian's default)
    line: int


def read_index(source: str | Path | None) -> IndexText:
    """The index text of `source` (a Packages file, maybe compressed), or of apt when None."""
    if source is None or str(source) == "":
        return _read_apt()
    path = Path(source).expanduser()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError("Debian package index not found", path=path) from None
    except OSError as exc:
        raise DataError(f"Debian package index unreadable ({type(exc).__name__}: {exc})", path=path) from None
    digest = hashlib.sha256(data).hexdigest()
    if path.suffix in (".lz4", ".zst"):
        raise DataError(
            f"package index compressed as {path.suffix} is not supported; decompress it "
            "first, or use a plain, .gz, .xz or .bz2 file",
            path=path,
        )
    decompress = _DECOMPRESS.get(path.suffix)
    if decompress is not None:
        try:
            data = decompress(data)
        except (OSError, EOFError, lzma.LZMAError, ValueError) as exc:
            raise DataError(f"cannot decompress the package index ({type(exc).__name__}: {exc})", path=path) from None
    return IndexText(data.decode("utf-8", errors="replace"), str(path), digest)


def _read_apt() -> IndexText:
    """Run `apt-cache dumpavail`; no apt or an empty output is one error saying what to do."""
    if shutil.which("apt-cache") is None:
        raise DataError(f"packages: no package index: `apt-cache` is not installed; {HOW_TO_PROVIDE}")
    try:
        result = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DataError(f"packages: `{APT_SOURCE}` failed ({type(exc).__name__}: {exc}); {HOW_TO_PROVIDE}") from None
    if result.returncode != 0 or not result.stdout.strip():
        detail = result.stderr.decode("utf-8", errors="replace").strip().splitlines()[:1]
        why = f"exited with status {result.returncode}" if result.returncode else "printed nothing"
        raise DataError(
            f"packages: no package index: `{APT_SOURCE}` {why}"
            f"{' (' + detail[0] + ')' if detail else ''}; {HOW_TO_PROVIDE}"
        )
    return IndexText(
        result.stdout.decode("utf-8", errors="replace"), APT_SOURCE, hashlib.sha256(result.stdout).hexdigest()
    )


def parse_stanzas(text: str, origin: str) -> list[tuple[int, dict[str, str]]]:
    """RFC-822 stanzas as (first line number, {field: value}); continuation lines joined by "\\n".

    Raises DataError naming `origin` and the line for a line that is neither `Field: value` nor a
    continuation, a continuation with no field before it, or a field repeated in one stanza.
    """
    stanzas: list[tuple[int, dict[str, str]]] = []
    fields: dict[str, str] = {}
    start = current = None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            if fields:
                stanzas.append((start, fields))
            fields, start, current = {}, None, None
            continue
        if line[0] in " \t":
            if current is None:
                raise DataError(
                    f"malformed package index: line {number} is a continuation line "
                    f"with no field before it: {line.strip()[:60]!r}",
                    path=origin,
                )
            fields[current] += "\n" + line.strip()
            continue
        match = _FIELD.match(line)
        if match is None:
            raise DataError(f"malformed package index: line {number} is not `Field: value`: {line[:60]!r}", path=origin)
        name, value = match.group(1), match.group(2).strip()
        if name in fields:
            raise DataError(
                f"malformed package index: field {name!r} repeated in the stanza "
                f"starting at line {start} (again at line {number})",
                path=origin,
            )
        if start is None:
            start = number
        fields[name] = value
        current = name
    if fields:
        stanzas.append((start, fields))
    return stanzas


def expand_tags(value: str) -> frozenset[str]:
    """Debtags of a `Tag` field: comma-separated `facet::value`, `facet::{a,b}` expanded."""
    tags: set[str] = set()
    for group in re.finditer(r"([^,{}\s][^,{}]*?)::\{([^}]*)\}|([^,{}\s][^,{}]*)", value):
        if group.group(1) is not None:
            tags.update(f"{group.group(1).strip()}::{v.strip()}" for v in group.group(2).split(",") if v.strip())
        elif "::" in group.group(3):
            tags.add(group.group(3).strip())
    return frozenset(tags)


def strip_area(section: str) -> str:
    """`contrib/net` -> `net`: the archive area (contrib, non-free, universe...) is not a label."""
    return section.rsplit("/", 1)[-1]


def parse_records(index: IndexText) -> list[PackageRecord]:
    """Package records in index order; a repeated package name keeps its first stanza.

    Stanzas without a Description (or with an empty first line) have no input text and are
    skipped. Errors (no stanza at all, a stanza without Package, a non-integer Installed-Size)
    name the file and the stanza's line.
    """
    stanzas = parse_stanzas(index.text, index.origin)
    if not stanzas:
        raise DataError("the package index is empty (no stanza found); " + HOW_TO_PROVIDE, path=index.origin)
    records: list[PackageRecord] = []
    seen: set[str] = set()
    for line, fields in stanzas:
        name = fields.get("Package", "").strip()
        if not name:
            raise DataError(
                f"malformed package index: the stanza starting at line {line} has no "
                f"Package field (fields: {', '.join(list(fields)[:6])})",
                path=index.origin,
            )
        if name in seen:
            continue
        seen.add(name)
        description = " ".join(fields.get("Description", "").split("\n", 1)[0].split())
        if not description:
            continue
        records.append(
            PackageRecord(
                name=name,
                description=description,
                section=strip_area(fields["Section"].strip()) if fields.get("Section", "").strip() else None,
                tags=expand_tags(fields.get("Tag", "").replace("\n", " ")),
                installed_size=_installed_size(fields.get("Installed-Size"), name, line, index.origin),
                multi_arch=fields.get("Multi-Arch", "").strip().lower() or "no",
                line=line,
            )
        )
    return records


def _installed_size(value: str | None, package: str, line: int, origin: str) -> int | None:
    """Installed-Size in KiB, None when absent; anything but a non-negative integer is an error."""
    if value is None or not value.strip():
        return None
    if not value.strip().isdigit():
        raise DataError(
            f"malformed package index: package {package!r} (stanza at line {line}) has "
            f"Installed-Size {value.strip()!r}; expected a non-negative integer (KiB)",
            path=origin,
        )
    return int(value.strip())
