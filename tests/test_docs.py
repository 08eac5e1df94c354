"""The README and docs/ link only to files that exist and to headings those files have (GitHub's anchor rules)."""

import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

from conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_TARGET = re.compile(r"""(?:href|src)=["']([^"']+)["']""")
HTML_ANCHOR = re.compile(r"""<a\s+(?:name|id)=["']([^"']+)["']""")
FENCE = re.compile(r"^\s*(```|~~~)")


def prose_lines(text):
    """The lines outside fenced code blocks."""
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield line


def slug(heading):
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"<[^>]+>", "", heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = text.strip().lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LNM")
    return kept.replace(" ", "-")


def anchors(path):
    """Every anchor GitHub gives the page: one per heading (repeats get -1, -2, ...), and explicit HTML anchors."""
    seen, found = {}, set()
    text = path.read_text()
    for line in prose_lines(text):
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            base = slug(heading.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    found.update(HTML_ANCHOR.findall(text))
    return found


def links(path):
    """(line number, target) for every relative link or image on the page, code blocks and inline code left out."""
    number = 0
    fenced = False
    for line in path.read_text().splitlines():
        number += 1
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        line = re.sub(r"`[^`]*`", "", line)
        for target in LINK.findall(line) + HTML_TARGET.findall(line):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target):
                yield number, target


def broken_links():
    problems = []
    for page in PAGES:
        for number, target in links(page):
            file_part, _, anchor = target.partition("#")
            goal = (page.parent / unquote(file_part)).resolve() if file_part else page
            where = f"{page.relative_to(REPO)}:{number}: {target}"
            if not goal.exists():
                problems.append(f"{where} (no such file)")
            elif anchor and goal.suffix == ".md" and unquote(anchor) not in anchors(goal):
                problems.append(f"{where} (no heading for #{anchor} in {goal.relative_to(REPO)})")
    return problems


def test_every_relative_link_resolves():
    assert broken_links() == []


def test_the_anchor_rules_are_githubs():
    assert slug("Local differential privacy (`dp='local'`)") == "local-differential-privacy-dplocal"
    assert slug("What local DP costs (grid `local-dp`, measured)") == "what-local-dp-costs-grid-local-dp-measured"
    assert slug("Interrupting, resuming, faults") == "interrupting-resuming-faults"
    assert slug("Pilot results (oracle-selected, 3 seeds)") == "pilot-results-oracle-selected-3-seeds"


def test_the_checker_sees_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [bad](#nope) [gone](missing.md)\n```\n[in code](#ignored)\n```\n")
    assert anchors(page) == {"title"}
    assert [target for _, target in links(page)] == ["#title", "#nope", "missing.md"]


def test_readme_and_docs_are_on_the_page_list():
    assert REPO / "README.md" in PAGES and len(PAGES) > 5
    assert all(isinstance(page, Path) for page in PAGES)
