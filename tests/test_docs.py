"""The documentation's relative links resolve, and README.md stays a front door.

Pages: README.md, docs/*.md and benchmarks/README.md. Every relative link (`[text](path)`,
`![alt](path)`, `[name]: path`) must name an existing file or folder, relative to the page, and a
`#anchor` into a Markdown page must name one of its headings under GitHub's anchor rules
(lowercase; drop every character but letters, marks, digits, `_`, `-` and spaces; spaces become
`-`; a repeated heading gets `-1`, `-2`, …). http(s) and mailto links are not checked. Code
(fenced blocks and backtick spans) is not Markdown, so links inside it are ignored.

Plain text only: this file imports neither TensorFlow nor tfsd (tests/conftest.py still sets
TensorFlow up once per session).
"""

from __future__ import annotations

import os
import pathlib
import re
import unicodedata
import urllib.parse

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README_MAX_LINES = 220  # the front door: ~200 lines, reference text lives in docs/

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(`+).+?(?<!`)\1(?!`)", re.DOTALL)
_INLINE_LINK = re.compile(r"\]\(\s*<?([^)\s>]*)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
_REFERENCE_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?([^\s>]+)>?", re.MULTILINE)
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$", re.MULTILINE)
_SKIPPED_SCHEMES = ("http://", "https://", "mailto:")


def doc_pages() -> list[pathlib.Path]:
    """The pages whose links are checked."""
    return [
        ROOT / "README.md",
        *sorted((ROOT / "docs").glob("*.md")),
        ROOT / "benchmarks" / "README.md",
    ]


def without_fences(text: str) -> str:
    """`text` with its fenced code blocks blanked; line numbers are kept."""
    lines, fence = [], None
    for line in text.split("\n"):
        match = _FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)
            lines.append("")
        elif fence is not None:
            # A fence closes with the same character, at least as long as the opening one.
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
                fence = None
            lines.append("")
        else:
            lines.append(line)
    return "\n".join(lines)


def markdown_prose(text: str) -> str:
    """`text` with fenced code blocks and code spans blanked; line numbers are kept."""
    return _CODE_SPAN.sub(lambda m: "\n" * m.group(0).count("\n"), without_fences(text))


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: `TFLite (`x.py`)` → `tflite-xpy`."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link counts as its text
    kept = (
        ch for ch in text.strip().lower() if ch in " -_" or unicodedata.category(ch)[0] in "LMN"
    )
    return "".join(kept).replace(" ", "-")


def heading_anchors(path: pathlib.Path) -> set[str]:
    """Every anchor of a Markdown file's headings, repeated ones numbered as GitHub does."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    # A heading's code spans count as their text: GitHub drops only the backticks.
    for match in _HEADING.finditer(without_fences(path.read_text(encoding="utf-8"))):
        anchor = github_anchor(match.group(2))
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        anchors.add(anchor if count == 0 else f"{anchor}-{count}")
    return anchors


def broken_links(page: pathlib.Path, root: pathlib.Path = ROOT) -> list[str]:
    """`page:line: target (why)` for each relative link of `page` that does not resolve.

    Pages are named relative to `root`.
    """
    prose = markdown_prose(page.read_text(encoding="utf-8"))
    matches = [*_INLINE_LINK.finditer(prose), *_REFERENCE_LINK.finditer(prose)]
    problems = []
    for match in sorted(matches, key=lambda m: m.start()):
        target = match.group(1)
        if not target or target.lower().startswith(_SKIPPED_SCHEMES):
            continue
        line = prose.count("\n", 0, match.start()) + 1
        where = f"{page.relative_to(root)}:{line}: {target}"
        path_part, _, anchor = target.partition("#")
        linked = (page.parent / urllib.parse.unquote(path_part)).resolve() if path_part else page
        if not linked.exists():
            problems.append(f"{where} (no such file)")
        elif anchor and linked.suffix == ".md" and linked.is_file():
            if urllib.parse.unquote(anchor).lower() not in heading_anchors(linked):
                problems.append(
                    f"{where} (no heading with this anchor in {os.path.relpath(linked, root)})"
                )
    return problems


@pytest.mark.parametrize("page", doc_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    assert page.is_file(), f"{page} is missing"
    problems = broken_links(page)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines (at most {README_MAX_LINES}): move reference text to docs/"
    )


def test_github_anchor_rules():
    assert github_anchor("TFLite (`benchmarks/tflite.py`)") == "tflite-benchmarkstflitepy"
    assert github_anchor("EfficientNet (B0–B7, Lite0–4)") == "efficientnet-b0b7-lite04"
    assert github_anchor("Serving (`python -m tfsd.export`, TF Serving)") == (
        "serving-python--m-tfsdexport-tf-serving"
    )
    assert github_anchor("Folding for export") == "folding-for-export"
    assert github_anchor("see [Data](data.md)") == "see-data"


def test_checker_reports_broken_links(tmp_path):
    """The checker can fail: missing files and anchors are reported, good links and code not."""
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"")
    (tmp_path / "other.md").write_text("# Other page\n\n## Twice\n\n## Twice\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "[ok](other.md#other-page) [ok](other.md#twice-1) ![ok](images/a.png) [ok](#page)\n"
        "[web](https://example.com/x) `[code](missing_in_code.md)`\n"
        "```\n[fenced](missing_in_fence.md)\n# Not a heading\n```\n"
        "[gone](missing.md) ![gone](images/b.png)\n"
        "[bad anchor](other.md#nope) [bad local](#not-a-heading)\n"
        "[ref]: missing_ref.md\n",
        encoding="utf-8",
    )
    problems = broken_links(page, root=tmp_path)
    assert [p.split(": ", 1)[1] for p in problems] == [
        "missing.md (no such file)",
        "images/b.png (no such file)",
        "other.md#nope (no heading with this anchor in other.md)",
        "#not-a-heading (no heading with this anchor in page.md)",
        "missing_ref.md (no such file)",
    ]
    assert problems[0].startswith("page.md:9: ")


def test_torch_load_advice_says_weights_only():
    """Every ``torch.load(`` the docs or tfsd's messages advise passes ``weights_only=True``:
    without it a .pth is unpickled, which can run arbitrary code. Since tfsd reads ``.pth``
    itself (tfsd.models.read_torch_file, no torch, no pickle execution), the docs advise no
    conversion at all; the check stays for any advice that comes back."""
    root = pathlib.Path(__file__).resolve().parents[1]
    files = [*root.glob("*.md"), *root.glob("docs/*.md"), *root.glob("tfsd/**/*.py")]

    def unsafe(text):
        calls = re.findall(r"torch\.load\([^)]*\)", text)
        return [c for c in calls if "weights_only=True" not in c]

    # The check finds an unsafe call and passes a safe one (so it can fail).
    assert unsafe("x = torch.load(path)") == ["torch.load(path)"]
    assert unsafe("torch.load(path, weights_only=True)") == []
    assert [(f.name, c) for f in files for c in unsafe(f.read_text())] == []
    models_doc = (root / "docs" / "models.md").read_text()
    assert "read_torch_file" in models_doc and "no torch" in models_doc
