"""The documentation's links: every relative link in README.md and docs/ names a file of the
repository and, after `#`, a heading of that file (GitHub's anchors)."""
import re
from collections import Counter

import pytest

from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def prose(page):
    """A Markdown page without its fenced code blocks."""
    return re.sub(r"```.*?```", "", page.read_text(), flags=re.S)


def anchors(page):
    """GitHub's anchor of each heading of a Markdown page: lower case, punctuation dropped,
    spaces as hyphens, a repeated heading numbered -1, -2, ... (code blocks skipped)."""
    seen, found = Counter(), set()
    for heading in re.findall(r"^#+ (.+)$", prose(page), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(f"{slug}-{seen[slug]}" if seen[slug] else slug)
        seen[slug] += 1
    return found


def links(page):
    return [target for target in LINK.findall(prose(page)) if not re.match(r"[a-z]+:", target)]


def test_the_anchor_rule_is_githubs(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Results\n## KD alone against KD + CE: ten seeds\n```\n# not a heading\n"
                    "```\n### The fp32 runs, `make all`\n## Results\n")
    assert anchors(page) == {"results", "kd-alone-against-kd--ce-ten-seeds",
                             "the-fp32-runs-make-all", "results-1"}


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_reaches_its_file_and_heading(page):
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {path}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{page.name}: " + "; ".join(broken)
