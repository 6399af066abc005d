"""The docs cite only names and files that exist, and nothing cites reference files that do not ship.

Every inline-code span of docs/internals.md, docs/method.md and README.md that starts with a dotted
`tokenmtl.` name must resolve (import the longest module prefix, then getattr the rest), and every
span that starts with a repository path (`src/`, `docs/`, `configs/`, `benchmarks/`, `tests/`) must
exist relative to the repository root (`*` and `{a,b}` patterns must match something). Relative
markdown links of those pages must point at existing files.
"""

from __future__ import annotations

import importlib
import itertools
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("docs/internals.md", "docs/method.md", "README.md")
PATH_PREFIXES = ("src/", "docs/", "configs/", "benchmarks/", "tests/")
SCANNED = ("src", "docs", "benchmarks", "tests", "examples", "README.md")
# Reference files that do not ship with the repository: nothing may cite them. Spelled in pieces so
# this file does not cite them itself.
FORBIDDEN = (
    re.compile(re.escape("METHOD" + ".md")),
    re.compile(re.escape("DESIGN" + ".md")),
    re.compile(re.escape("../" + "shared")),
    re.compile(r"\b" + "anch" + r"ors\b", re.IGNORECASE),
)

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
_SPAN = re.compile(r"`([^`\n]+)`")
_DOTTED = re.compile(r"^tokenmtl(?:\.[A-Za-z_]\w*)+")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def code_spans(text: str) -> list[str]:
    """Inline code spans of a markdown text, fenced code blocks left out."""
    return _SPAN.findall(_FENCE.sub("", text))


def cited_names(text: str) -> list[str]:
    """Dotted `tokenmtl.` names at the start of a code span (call arguments etc. cut off)."""
    names = []
    for span in code_spans(text):
        match = _DOTTED.match(span.strip())
        if match:
            names.append(match.group(0))
    return names


def cited_paths(text: str) -> list[str]:
    """Repository paths at the start of a code span (up to the first blank, without `::test`)."""
    paths = []
    for span in code_spans(text):
        span = span.strip()
        if span.startswith(PATH_PREFIXES):
            paths.append(span.split()[0].split("::")[0].rstrip(".,:;"))
    return paths


def resolve(name: str) -> Any:
    """The object a dotted name denotes: the longest importable module prefix, then getattr the rest.

    Raises ModuleNotFoundError/AttributeError when the name does not exist; an import error *inside*
    an existing module is raised as it is.
    """
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            missing = err.name or ""
            if module_name == missing or module_name.startswith(missing + "."):
                continue  # no such module: try a shorter prefix
            raise
        for index in range(cut, len(parts)):
            if not hasattr(obj, parts[index]):
                raise AttributeError(f"{'.'.join(parts[:index])!r} has no attribute {parts[index]!r}")
            obj = getattr(obj, parts[index])
        return obj
    raise ModuleNotFoundError(f"no module {parts[0]!r}")


def expand_braces(pattern: str) -> list[str]:
    """`a/{b,c}_{x,y}.py` -> the four paths (no nesting)."""
    pieces = re.split(r"\{([^{}]*)\}", pattern)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(pieces)]
    return ["".join(combo) for combo in itertools.product(*choices)]


def path_exists(path: str, root: Path = ROOT) -> bool:
    """Whether every brace alternative of `path` names (or, with `*`, matches) something under `root`."""
    for candidate in expand_braces(path):
        candidate = candidate.rstrip("/")
        if any(c in candidate for c in "*?["):
            if not list(root.glob(candidate)):
                return False
        elif not (root / candidate).exists():
            return False
    return True


def _doc_text(doc: str) -> str:
    return (ROOT / doc).read_text(encoding="utf-8")


def _cases(kind) -> list[tuple[str, str]]:
    return [(doc, item) for doc in DOCS for item in dict.fromkeys(kind(_doc_text(doc)))]


# ----------------------------------------------------------------------------- the checkers work
def test_extraction_finds_names_and_paths_outside_code_blocks_only():
    text = (
        "Use `tokenmtl.engine.run.build_run(cfg)` and `tokenmtl compare`, see `src/tokenmtl/cli.py` and\n"
        "`tests/test_docs.py::test_x`, not `balancing/dbmtl.py`.\n"
        "```python\nx = `tokenmtl.not.checked`\n```\n"
    )
    assert cited_names(text) == ["tokenmtl.engine.run.build_run"]
    assert cited_paths(text) == ["src/tokenmtl/cli.py", "tests/test_docs.py"]


@pytest.mark.parametrize(
    "name",
    [
        "tokenmtl.engine.edits.ModelEdit",
        "tokenmtl.engine.run.build_run",
        "tokenmtl.metrics.delta_m",
        "tokenmtl.train",
        "tokenmtl.dtme.plan.Plan.to_dict",
    ],
)
def test_resolve_accepts_real_names(name):
    assert resolve(name) is not None


@pytest.mark.parametrize(
    "name",
    [
        "tokenmtl.engine.no_such_module",
        "tokenmtl.engine.edits.NoSuchEdit",
        "tokenmtl.engine.run.build_run.nothing",
        "tokenmtl.no_such_export",
    ],
)
def test_resolve_rejects_wrong_names(name):
    with pytest.raises((AttributeError, ModuleNotFoundError)):
        resolve(name)


def test_path_check_rejects_wrong_paths():
    assert path_exists("src/tokenmtl/engine/edits.py")
    assert path_exists("configs/{nyud,pascal}_vit_{t,s,b}.yaml")
    assert path_exists("configs/nyud_*.yaml")
    assert path_exists("benchmarks/results/")
    assert not path_exists("src/tokenmtl/engine/no_such_file.py")
    assert not path_exists("src/tokenmtl/{tasks,no_such}.py")
    assert not path_exists("configs/no_such_*.yaml")


def test_forbidden_patterns_match_what_they_should():
    def hits(text: str) -> bool:
        return any(p.search(text) for p in FORBIDDEN)

    assert hits("see " + "METHOD" + ".md 1.4") and hits("(" + "Anch" + "ors 4.3)")
    assert hits("../" + "shared/" + "DESIGN" + ".md")
    assert not hits("docs/method.md") and not hits("anchored")


# ---------------------------------------------------------------------------------- the docs
@pytest.mark.parametrize("doc,name", _cases(cited_names))
def test_cited_names_exist(doc, name):
    try:
        resolve(name)
    except (AttributeError, ModuleNotFoundError) as err:
        pytest.fail(f"{doc} cites `{name}`, which does not exist: {err}")


@pytest.mark.parametrize("doc,path", _cases(cited_paths))
def test_cited_paths_exist(doc, path):
    assert path_exists(path), f"{doc} cites `{path}`, which is not in the repository"


@pytest.mark.parametrize("doc", DOCS)
def test_relative_links_exist(doc):
    text = _FENCE.sub("", _doc_text(doc))
    base = (ROOT / doc).parent
    for target in _LINK.findall(text):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        assert (base / target.split("#")[0]).exists(), f"{doc} links to {target!r}, which does not exist"


def test_every_doc_cites_something():
    assert cited_names(_doc_text("docs/internals.md")) and cited_paths(_doc_text("docs/internals.md"))


def _scanned_files():
    for entry in SCANNED:
        path = ROOT / entry
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            if "__pycache__" in file.parts:
                continue
            data = file.read_bytes()
            if b"\0" in data[:8192]:  # binary (images, caches)
                continue
            yield file, data.decode("utf-8", errors="replace")


def test_nothing_cites_reference_files_that_do_not_ship():
    offenders = []
    for file, text in _scanned_files():
        for number, line in enumerate(text.splitlines(), start=1):
            if any(p.search(line) for p in FORBIDDEN):
                offenders.append(f"{file.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not offenders, "references to files that do not ship:\n" + "\n".join(offenders)
