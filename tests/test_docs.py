"""The README and docs/ agree with kd and with each other.

The README is the door and docs/ holds the depth; pages drift when kd grows (a config option added, a column
written to gains.csv) or when text moves between pages (a link to a heading that left). These read the pages as
a user would and compare them with what kd has: its conf/ groups, the columns kd-report writes, the files and
headings the links point at.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import CONF_DIR, REPO
from kd.report.table import csv_records

DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def text_outside_code(page: Path) -> str:
    """The page without its fenced code blocks (a `# comment` there is no heading, a `](` no link)."""
    return re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)


def anchors(page: Path) -> set[str]:
    """The ids GitHub gives the page's headings: lower case, punctuation dropped, spaces as hyphens."""
    ids: set[str] = set()
    for heading in re.findall(r"^#+ (.+)$", text_outside_code(page), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n = 0
        while (candidate := slug if n == 0 else f"{slug}-{n}") in ids:
            n += 1
        ids.add(candidate)
    return ids


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_reaches_its_file_and_heading(page):
    broken = []
    for target in LINK.findall(text_outside_code(page)):
        if re.match(r"[a-z]+:", target):  # http(s):, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target} (no file {linked.relative_to(REPO) if linked.is_relative_to(REPO) else linked})")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target} (no heading #{anchor} in {linked.relative_to(REPO)})")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def test_the_readme_maps_every_docs_page():
    readme = (REPO / "README.md").read_text()
    unmapped = [p.name for p in DOCS.glob("*.md") if f"](docs/{p.name})" not in readme]
    assert not unmapped, f"docs pages the README's map does not link: {unmapped}"


def config_rows() -> dict[str, str]:
    """docs/configuration.md's group table: group -> its row."""
    page = (DOCS / "configuration.md").read_text()
    return dict(re.findall(r"^\| `(\w+)` \|(.*)$", page, flags=re.M))


@pytest.mark.parametrize("group", sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra"))
def test_the_configuration_table_names_every_option_of_each_group(group):
    rows = config_rows()
    assert group in rows, f"docs/configuration.md's group table has no row for conf/{group}/"
    if group == "teacher":  # its row says "the same names as `model`"
        assert options("teacher") == options("model")
        return
    options_cell = rows[group].split("|")[0]
    missing = [o for o in options(group) if f"`{o}`" not in options_cell]
    assert not missing, f"docs/configuration.md's `{group}` row lacks {missing} (conf/{group}/)"


def test_the_distillers_page_gives_every_loss_a_command():
    page = (DOCS / "distillers.md").read_text()
    missing = [o for o in options("loss") if f"`loss={o} " not in page]
    assert not missing, f"docs/distillers.md has no `loss=<name> ...` command for {missing}"
    count = len(options("loss"))
    assert page.startswith(f"# Distillers: {count} losses"), "its title counts conf/loss/'s options"


def test_the_documented_gains_csv_columns_are_those_kd_report_writes():
    page = (DOCS / "report.md").read_text()
    documented = re.search(r"<!-- gains.csv columns -->\n`([^`]+)`", page).group(1).split(", ")
    one_cell = {"stage": "student", "aug": "none", "alpha": 0.5, "seed": 0, "status": "completed",
                "final_top1": 90.0, "overrides": {"alpha": "0.5", "aug": "none"}}
    columns, _ = csv_records([one_cell])
    assert documented == columns
