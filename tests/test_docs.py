"""The documentation says what the code does, and every link in it works in a clone.

Reserved header names: every list of them in README.md and docs/*.md is marked with
`<!-- reserved-headers -->` and runs to the end of that line (backticked names, prefixes
written `Name-*`); a line that speaks of reserved names and lists `Nats-*` without the
marker is a stale copy. The marked lists, the comment on `Event.headers` in event.proto and
the refusal message of `wire.header_problem` all name exactly `wire.RESERVED_HEADER_PREFIXES`
and `wire.RESERVED_HEADER_NAMES`.

Links: every relative link of README.md and docs/*.md points to a file of the repository
(nothing outside it, which a clone would not have), and a `#fragment` into a Markdown file
names one of its headings (GitHub's heading ids).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from jetgate import wire

ROOT = Path(__file__).resolve().parent.parent
MARKER = "<!-- reserved-headers -->"
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])

_FENCE = re.compile(r"^```.*?^```", re.M | re.S)
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_CODE = re.compile(r"`([^`]+)`")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*$", re.M)


def expected_reserved() -> set[str]:
    """The code's reserved headers, written as the docs write them: `nats-*`, `status`."""
    return {f"{p}*" for p in wire.RESERVED_HEADER_PREFIXES} | set(wire.RESERVED_HEADER_NAMES)


def prose(path: Path) -> str:
    """The Markdown of `path` without its fenced code blocks."""
    return _FENCE.sub("", path.read_text(encoding="utf-8"))


def marked_lists(path: Path) -> list[tuple[int, set[str]]]:
    """(line number, lower-cased names) of each marked reserved-header list in `path`."""
    found = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if MARKER in line:
            rest = line.split(MARKER, 1)[1]
            found.append((number, {name.lower() for name in _CODE.findall(rest)}))
    return found


def test_docs_list_the_reserved_headers_the_server_enforces() -> None:
    lists = {path.relative_to(ROOT).as_posix(): marked_lists(path) for path in DOCS}
    # The client-facing reference and the design doc must carry the list.
    assert lists["docs/api.md"], "docs/api.md has no marked reserved-header list"
    assert lists["docs/design.md"], "docs/design.md has no marked reserved-header list"
    want = expected_reserved()
    wrong = {
        f"{name}:{line}": (sorted(got - want), sorted(want - got))
        for name, found in lists.items()
        for line, got in found
        if got != want
    }
    assert not wrong, f"reserved headers differ from jetgate/wire.py (extra, missing): {wrong}"


def test_no_unmarked_list_of_reserved_headers() -> None:
    stale = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in DOCS
        for number, line in enumerate(prose(path).splitlines(), 1)
        if "reserved" in line.lower() and "`Nats-*`" in line and MARKER not in line
    ]
    assert not stale, f"lists of reserved headers without {MARKER!r}: {stale}"


def test_event_proto_lists_the_reserved_headers() -> None:
    proto = (ROOT / "proto/jetgate/v1/event.proto").read_text(encoding="utf-8")
    comment = re.search(r"((?:[ \t]*//[^\n]*\n)+)[ \t]*map<string, string> headers", proto)
    assert comment is not None, "no comment above Event.headers in event.proto"
    text = " ".join(line.strip().lstrip("/").strip() for line in comment.group(1).splitlines())
    listed = re.search(r"Reserved names are refused[^:]*:(.*)", text)
    assert listed is not None, f"Event.headers comment names no reserved headers: {text!r}"
    names = {n.strip().rstrip(".").lower() for n in listed.group(1).split(",")}
    assert names == expected_reserved()


def test_refusal_message_lists_the_reserved_headers() -> None:
    message = wire.header_problem("Status", "x")
    assert message is not None
    listed = re.search(r"is reserved \((.*)\)$", message)
    assert listed is not None, message
    assert {n.strip().lower() for n in listed.group(1).split(",")} == expected_reserved()


def heading_ids(path: Path) -> set[str]:
    """GitHub's ids of the headings of `path`: lower case, punctuation dropped, '-' for ' '."""
    seen: Counter[str] = Counter()
    ids = set()
    for title in _HEADING.findall(prose(path)):
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        ids.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return ids


def link_problems(path: Path, markdown: str | None = None) -> list[str]:
    """Why each relative link of `path` (or of `markdown` placed there) would be broken in a
    fresh clone."""
    text = prose(path) if markdown is None else _FENCE.sub("", markdown)
    problems = []
    for target in _LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
            continue  # https:, mailto:: not a file of the repository
        file_part, _, fragment = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(ROOT)}: {target}"
        if file_part.startswith("/") or not resolved.is_relative_to(ROOT):
            problems.append(f"{where} points outside the repository")
        elif not resolved.exists():
            problems.append(f"{where} points to a missing file")
        elif fragment and resolved.suffix == ".md" and fragment not in heading_ids(resolved):
            problems.append(f"{where}: no heading #{fragment} in {resolved.name}")
    return problems


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_point_to_files_of_the_repository(path: Path) -> None:
    assert not link_problems(path)


def test_link_check_finds_broken_links() -> None:
    """The checker itself: a link out of the repository, a missing file, a bad anchor."""
    text = (
        "[out](../../shared/DESIGN.md) [gone](nothing-here.md) [anchor](api.md#no-such-heading)\n"
        "[ok](api.md#errors) [ok too](../README.md) [web](https://example.org/x.md)\n"
        "```\n[in code](not-checked.md)\n```\n"
    )
    problems = link_problems(ROOT / "docs" / "design.md", text)
    assert len(problems) == 3, problems
    assert "outside the repository" in problems[0]
    assert "missing file" in problems[1]
    assert "no heading" in problems[2]
