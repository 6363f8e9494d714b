"""The documents stay true to the tree: README.md, CONTRIBUTING.md and docs/*.md.

* every relative link resolves: the file or folder exists inside the repository, and a ``#anchor`` (on another
  Markdown file or in-page) names a heading of that file (GitHub's slugs) or an explicit ``<a id="...">``;
* every repository path written in backticks or in a code block (``upo_fast/...``, ``kernels/...``, ``tests/...``,
  ``benchmarks/...``) exists, and a dotted ``upo_fast.a.b`` name in backticks leads to a module that defines,
  imports or exports the name after it;
* the README stays a short entry point: at most 250 lines, with ``llada_generate`` in its first 60 lines, and it
  links every file of docs/; each file of docs/ starts with a title and a one-line purpose.

Each check runs on a known-bad text too, so that it can fail.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
DOCUMENTS = [README, ROOT / "CONTRIBUTING.md", *DOCS]
README_MAX_LINES = 250
LLADA_GENERATE_WITHIN = 60
# Paths the documents name because they must not exist (CONTRIBUTING: "Never add kernels/__init__.py").
NAMED_AS_ABSENT = {"kernels/__init__.py"}

_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)  # a span may go on across a line break
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_EXPLICIT_ID = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")
_REPO_PATH = re.compile(r"(?<![\w./<-])((?:upo_fast|kernels|tests|benchmarks)/[\w./-]*)")
_DOTTED = re.compile(r"^upo_fast(?:\.\w+)+$")


def split_code(text: str) -> tuple[list[str], list[str]]:
    """(prose lines, code-block lines): fenced code blocks hold no links or headings."""
    prose, code, inside = [], [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            inside = not inside
            continue
        (code if inside else prose).append(line)
    return prose, code


def paragraphs(prose: list[str]) -> list[str]:
    """Prose lines joined into paragraphs (blank lines between): a code span may wrap, a paragraph ends it."""
    return [block for block in "\n".join(prose).split("\n\n") if block.strip()]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lowercase, punctuation removed except '-' and '_', spaces to
    '-' (letters and digits of any script stay)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.strip().lower()
    return "".join(ch for ch in text if ch.isalnum() or ch in "-_ ").replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor a Markdown text defines: its headings' slugs (repeats get -1, -2, ... as on GitHub) and
    explicit <a id=...> / <a name=...>."""
    prose, _ = split_code(text)
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in prose:
        found.update(_EXPLICIT_ID.findall(line))
        match = _HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(text: str) -> list[str]:
    """The targets of the Markdown links and images in the prose (not in code spans or code blocks)."""
    prose, _ = split_code(text)
    found = []
    for block in paragraphs(prose):
        found += _LINK.findall(_CODE_SPAN.sub("", block))
    return found


def broken_links(document: Path, text: str | None = None) -> list[str]:
    """Each relative link of ``document`` (its ``text``, if given) that does not resolve, with the reason."""
    text = document.read_text() if text is None else text
    problems = []
    for target in links(text):
        if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        path = (document.parent / path_part).resolve() if path_part else document
        if path_part:
            if ROOT not in path.parents and path != ROOT:
                problems.append(f"{target}: outside the repository (a clean clone has no such file)")
                continue
            if not path.exists():
                problems.append(f"{target}: no such file or folder")
                continue
        if anchor:
            if path.suffix != ".md" or not path.is_file():
                problems.append(f"{target}: an anchor on something that is not a Markdown file")
            else:
                known = anchors(text if path == document else path.read_text())
                if anchor not in known:
                    problems.append(f"{target}: no heading with anchor #{anchor} in {path.name}")
    return problems


def repo_paths(text: str) -> list[str]:
    """Repository paths named in code spans and code blocks. Templates (``kernels/<op>.py``, ``{json,csv}``,
    globs) are left out: they name no single file."""
    prose, code = split_code(text)
    spans = [span for block in paragraphs(prose) for _, span in _CODE_SPAN.findall(block)]
    found = []
    for chunk in spans + code:
        for match in _REPO_PATH.finditer(chunk):
            following = chunk[match.end():match.end() + 1]
            if following in ("<", "{", "*"):
                continue
            found.append(match.group(1).rstrip("."))
    return found


def missing_repo_paths(text: str) -> list[str]:
    return sorted({path for path in repo_paths(text) if path not in NAMED_AS_ABSENT and not (ROOT / path).exists()})


def _module_file(parts: list[str]) -> Path | None:
    """The file (or, for a namespace folder such as upo_fast/kernels, the folder) of a dotted module name."""
    base = ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return base if base.is_dir() and parts[-1] != "__pycache__" else None


def module_names(path: Path) -> set[str]:
    """What ``module.name`` can reach: top-level definitions, assignments and imports, ``__all__``, and the keys of
    a module-level dict of lazy exports (``upo_fast._EXPORTS``)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
            value = node.value
            if isinstance(value, ast.Dict):
                names.update(k.value for k in value.keys if isinstance(k, ast.Constant) and isinstance(k.value, str))
            elif isinstance(value, (ast.List, ast.Tuple)) and any(getattr(t, "id", "") == "__all__" for t in targets):
                names.update(e.value for e in value.elts if isinstance(e, ast.Constant))
    return names


def unresolved_dotted_names(text: str) -> list[str]:
    """Dotted names ``upo_fast.a.b.c`` in code spans: the longest prefix that is a module must exist, and the next
    part (if any) must be a name that module defines, imports or exports (a moved or renamed name fails)."""
    prose, _ = split_code(text)
    bad = []
    for block in paragraphs(prose):
        for _, span in _CODE_SPAN.findall(block):
            name = span.strip()
            if not _DOTTED.match(name):
                continue
            parts = name.split(".")
            resolved = 1
            while resolved < len(parts) and _module_file(parts[: resolved + 1]) is not None:
                resolved += 1
            module = _module_file(parts[:resolved])
            if resolved == len(parts):
                continue
            if module is None or module.is_dir():
                bad.append(f"{name}: no module {'.'.join(parts[: resolved + 1])}")
            elif parts[resolved] not in module_names(module):
                bad.append(f"{name}: {module.relative_to(ROOT)} has no {parts[resolved]}")
    return bad


def _name(document: Path) -> str:
    return str(document.relative_to(ROOT))


# --- the checks on the real documents


def test_there_are_docs():
    assert DOCS, "docs/*.md: the README links its details there"


@pytest.mark.parametrize("document", DOCUMENTS, ids=_name)
def test_relative_links_resolve(document):
    problems = broken_links(document)
    assert not problems, f"{_name(document)}: broken links:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("document", DOCUMENTS, ids=_name)
def test_named_repository_paths_exist(document):
    missing = missing_repo_paths(document.read_text())
    assert not missing, f"{_name(document)} names files that do not exist (moved?):\n  " + "\n  ".join(missing)


@pytest.mark.parametrize("document", DOCUMENTS, ids=_name)
def test_dotted_module_names_resolve(document):
    bad = unresolved_dotted_names(document.read_text())
    assert not bad, f"{_name(document)}: dotted names that lead nowhere:\n  " + "\n  ".join(bad)


def test_readme_is_short_and_starts_with_use():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, \
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move details into docs/"
    assert any("llada_generate" in line for line in lines[:LLADA_GENERATE_WITHIN]), \
        f"README.md: `llada_generate` must appear within its first {LLADA_GENERATE_WITHIN} lines"


def test_readme_links_every_doc():
    targets = {target.partition("#")[0] for target in links(README.read_text())}
    unlinked = [_name(doc) for doc in DOCS if f"docs/{doc.name}" not in targets]
    assert not unlinked, f"README.md links none of: {unlinked}"


@pytest.mark.parametrize("document", DOCS, ids=_name)
def test_each_doc_says_what_it_holds(document):
    lines = document.read_text().splitlines()
    assert len(lines) >= 3 and lines[0].startswith("# "), f"{_name(document)}: starts with a '# ' title"
    assert lines[1] == "" and lines[2].strip() and (len(lines) == 3 or not lines[3].strip()), \
        f"{_name(document)}: a one-line purpose follows the title, alone in its paragraph"


# --- each check can fail


def test_slugs_follow_github():
    assert slug("Results on 9×9 Sudoku") == "results-on-99-sudoku"
    assert slug("UPO by GRPO on 4×4 Sudoku (the paper's setting)") == "upo-by-grpo-on-44-sudoku-the-papers-setting"
    assert slug("lm-evaluation-harness and `patch`") == "lm-evaluation-harness-and-patch"
    assert slug("Where to add …") == "where-to-add-"
    assert slug("snake_case stays") == "snake_case-stays"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n<a id=\"x\"></a>") == {"a", "a-1", "x"}


def test_broken_links_are_found(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "other.md").write_text("# Other\n\n## Part two\n")
    page = tmp_path / "page.md"
    text = ("# Page\n\n## Here\n\n[ok](other.md#part-two) [ok](#here) [ok](https://example.com) `[not](a-link.md)`\n"
            "[bad file](missing.md) [bad anchor](other.md#part-three) [bad in-page](#there)\n"
            "[outside](../elsewhere.md)\n```\n[in code](nowhere.md)\n```\n")
    page.write_text(text)
    problems = broken_links(page)
    assert len(problems) == 4, problems
    assert [p.split(":")[0] for p in problems] == ["missing.md", "other.md#part-three", "#there", "../elsewhere.md"]


def test_paths_named_as_absent_are_absent():
    present = [path for path in NAMED_AS_ABSENT if (ROOT / path).exists()]
    assert not present, f"the documents say these must not exist: {present}"


def test_missing_paths_are_found():
    text = ("`upo_fast/sampler.py` and `upo_fast/sampling/loop.py`, `kernels/<op>.py`, `tests/test_*.py`, `python\n"
            "tests/wrapped_span.py`\n\n"
            "```bash\npython benchmarks/no_such_bench.py --out benchmarks/results/cpu_20261128/\n```\n"
            "prose upo_fast/viz.py is not in backticks\n")
    assert repo_paths(text) == ["upo_fast/sampler.py", "upo_fast/sampling/loop.py", "tests/wrapped_span.py",
                                "benchmarks/no_such_bench.py", "benchmarks/results/cpu_20261128/"]
    assert missing_repo_paths(text) == ["benchmarks/no_such_bench.py", "tests/wrapped_span.py", "upo_fast/sampler.py"]


def test_stale_dotted_names_are_found():
    text = ("`upo_fast.viz.record_order` `upo_fast.evaluation.order_pictures.record_order` `upo_fast.llada_generate` "
            "`upo_fast.evaluation.order_pictures.no_such_name` `upo_fast.sampling.scorers` `upo_fast.UnmaskingPolicy` "
            "`upo_fast.kernels.vocab_stats` `upo_fast.kernels.no_such_op`")
    assert unresolved_dotted_names(text) == [
        "upo_fast.viz.record_order: upo_fast/__init__.py has no viz",
        "upo_fast.evaluation.order_pictures.no_such_name: upo_fast/evaluation/order_pictures.py has no no_such_name",
        "upo_fast.UnmaskingPolicy: upo_fast/__init__.py has no UnmaskingPolicy",
        "upo_fast.kernels.no_such_op: no module upo_fast.kernels.no_such_op",
    ]


def test_readme_limits_can_fail(monkeypatch, tmp_path):
    long_readme = tmp_path / "README.md"
    long_readme.write_text("\n".join(["filler"] * 61 + ["upo_fast.llada_generate"]))
    monkeypatch.setattr(sys.modules[__name__], "README", long_readme)
    with pytest.raises(AssertionError, match="first 60 lines"):
        test_readme_is_short_and_starts_with_use()
    long_readme.write_text("llada_generate\n" + "line\n" * README_MAX_LINES)
    with pytest.raises(AssertionError, match="at most 250"):
        test_readme_is_short_and_starts_with_use()
