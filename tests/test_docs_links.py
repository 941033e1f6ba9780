"""Every relative link and #anchor in README.md and docs/*.md resolves.

A link is ``[text](target)``, ``![alt](target)`` or a reference definition ``[name]: target``
outside code (fenced blocks and inline code spans are skipped). ``target`` is a path relative to
the file (it must exist), optionally with ``#anchor``; an anchor in a Markdown file must be one
of its explicit anchors (``<a id="...">``) or a heading's GitHub slug. Web links are not
fetched.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
_INLINE = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFDEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.M)


def _prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code spans."""
    return _CODE.sub("", _FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: lower case, inline code and link syntax reduced to
    their text, every character but letters, digits, ``_``, ``-`` and spaces dropped, spaces to ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url) -> text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors a Markdown page defines: explicit ``<a id|name="...">`` and heading slugs
    (a repeated slug gets ``-1``, ``-2``, ... as on GitHub)."""
    found = set(re.findall(r'<a\s+(?:id|name)="([^"]+)"', text))
    seen: dict[str, int] = {}
    for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", _FENCE.sub("", text), re.M):
        s = slug(m.group(1))
        found.add(s if s not in seen else f"{s}-{seen[s]}")
        seen[s] = seen.get(s, 0) + 1
    return found


def broken_links(page: Path) -> list[str]:
    """Each link of ``page`` that does not resolve, as ``PAGE: TARGET (why)``."""
    text = page.read_text(encoding="utf-8")
    prose = _prose(text)
    targets = [m.group(1) for m in _INLINE.finditer(prose)] + _REFDEF.findall(prose)
    bad = []
    for target in targets:
        if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text(encoding="utf-8")):
            bad.append(f"{page.relative_to(ROOT)}: {target} (no anchor '{anchor}' in {dest.relative_to(ROOT)})")
    return bad


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page):
    assert broken_links(page) == []


def test_the_check_finds_a_broken_link_and_anchor(tmp_path):
    (tmp_path / "other.md").write_text('# Other\n\n<a id="kept"></a>\n## Ties: one rule (`a|b`)\n## Ties: one rule (`a|b`)\n')
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#kept) [ok](other.md#ties-one-rule-ab) [ok](other.md#ties-one-rule-ab-1) [ok](#top)\n"
                    "# Top\n[gone](missing.md) [bad](other.md#nope) `[in code](missing2.md)`\n"
                    "```\n[in a fence](missing3.md)\n```\n[ref]: other.md#also-nope\n")
    global ROOT
    root, ROOT = ROOT, tmp_path
    try:
        assert broken_links(page) == ["page.md: missing.md (no such file)",
                                      "page.md: other.md#nope (no anchor 'nope' in other.md)",
                                      "page.md: other.md#also-nope (no anchor 'also-nope' in other.md)"]
    finally:
        ROOT = root
