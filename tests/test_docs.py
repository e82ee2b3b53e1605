"""The README and docs/: every relative link and anchor resolves (the link checker)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.markdown import broken_links, links_of, slug

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves(page: Path) -> None:
    """Relative links point at files of the repository and at headings they hold."""
    assert broken_links(page, ROOT) == []


def test_every_doc_is_linked_from_the_readme() -> None:
    """No page under docs/ is orphaned: the README links each one."""
    linked = {target.partition("#")[0] for target in links_of(ROOT / "README.md")}
    for page in (ROOT / "docs").glob("*.md"):
        assert f"docs/{page.name}" in linked, f"README does not link docs/{page.name}"


def test_the_checker_catches_a_broken_file_and_anchor(tmp_path: Path) -> None:
    """A missing file and a missing heading are both reported; code spans are not links."""
    (tmp_path / "other.md").write_text("# Real heading\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[a](missing.md) [b](other.md#real-heading) [c](other.md#nope) "
        "`[d](ignored.md)` [e](https://example.com/x)\n"
    )
    assert broken_links(page, tmp_path) == [
        "missing.md: no such file",
        "other.md#nope: no heading #nope",
    ]


def test_slug_follows_the_forge() -> None:
    """Anchors as GitHub makes them, code spans and punctuation included."""
    assert slug("Exit codes of `run --once` and `mark`") == "exit-codes-of-run---once-and-mark"
    assert slug("Precise marking (daemon)") == "precise-marking-daemon"
