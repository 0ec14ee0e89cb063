"""No file of the repository holds a merge's conflict markers.

A merge once left `<<<<<<< HEAD` ... `>>>>>>> issue36d` in docs/architecture.md, its two sides disagreeing, and
nothing noticed. Every text file git knows of (tracked, or new and not ignored) is read; `=======` alone is
markdown's setext heading underline too, so it counts only between a `<<<<<<< ` and a `>>>>>>> ` line.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OPEN, CLOSE = "<<<<<<< ", ">>>>>>> "


def repo_files() -> list[Path]:
    """The files git would commit: tracked ones and new ones it does not ignore."""
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=REPO, capture_output=True, text=True)
    if listing.returncode != 0:
        pytest.skip(f"not a git checkout ({listing.stderr.strip()}): no file list to check")
    return [REPO / name for name in listing.stdout.split("\0") if name]


def conflict_lines(text: str) -> list[int]:
    """1-based numbers of the lines that are a conflict's markers: its opening, separator and closing lines."""
    found, inside = [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith(OPEN):
            found.append(number)
            inside = True
        elif line.startswith(CLOSE):
            found.append(number)
            inside = False
        elif inside and line.rstrip() == "=======":
            found.append(number)
    return found


def test_conflict_lines_finds_markers_and_spares_setext_headings():
    merged = "Title\n=======\n\n<<<<<<< HEAD\nours\n=======\ntheirs\n>>>>>>> branch\n"
    assert conflict_lines(merged) == [4, 6, 8]
    assert conflict_lines("Title\n=======\ntext\n") == []


def test_no_file_holds_conflict_markers():
    marked = []
    for path in repo_files():
        if not path.is_file():  # listed by git but deleted in the working tree
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # an image or another binary file
            continue
        marked += [f"{path.relative_to(REPO)}:{n}" for n in conflict_lines(text)]
    assert not marked, "merge-conflict markers committed; resolve them (read the merged file): " + ", ".join(marked)
