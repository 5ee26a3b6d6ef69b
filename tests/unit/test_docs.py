"""The README documents every setting, in the settings' groups, and the two commands CI runs;
`cdr --help` and the chart's values.yaml list the settings in the same groups."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from cdr.cli import main
from cdr.settings import GROUPS

ROOT = Path(__file__).resolve().parents[2]
# Each group's variables in the group's order, under its title.
BY_GROUP = {group.title: [group.env(field) for field in group.model_fields] for group in GROUPS.values()}


def readme_settings() -> list[tuple[str, list[str]]]:
    """The README's Settings section: each ### heading with the variables of its table, in order."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("\n## Settings\n") :]
    section = section[: section.index("\n## ", 1)]
    tables: list[tuple[str, list[str]]] = []
    for line in section.splitlines():
        if line.startswith("### "):
            tables.append((line.removeprefix("### "), []))
        elif row := re.match(r"\| `(CDR_\w+)` \|", line):
            assert tables, f"{row[1]} is listed before the first group"
            tables[-1][1].append(row[1])
    return tables


def test_the_readme_lists_every_setting_in_its_group() -> None:
    """Same groups in the same order, each with exactly its variables (none missing, none in two)."""
    assert readme_settings() == list(BY_GROUP.items())


def test_cdr_help_lists_the_settings_by_group(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    shown = capsys.readouterr().out
    listing = shown[shown.index("settings, by group") :]
    starts = [listing.index(f"\n  {title}: ") for title in BY_GROUP]
    assert starts == sorted(starts), "the groups in the README's order"
    for (title, names), start, end in zip(BY_GROUP.items(), starts, [*starts[1:], len(listing)], strict=True):
        block = listing[start:end]
        assert re.findall(r"CDR_\w+", block) == names, title


def test_values_yaml_follows_the_groups_order() -> None:
    """The chart's values sections that carry settings come in the groups' order."""
    values = yaml.safe_load((ROOT / "deploy" / "helm" / "cdr" / "values.yaml").read_text(encoding="utf-8"))
    group_of_section = {
        "timezone": "common",
        "logLevel": "common",
        "kafka": "kafka",
        "clickhouse": "clickhouse",
        "ingest": "ingest",
        "notify": "notify",
        "api": "api",
    }
    order = list(GROUPS)
    sections = [group_of_section[key] for key in values if key in group_of_section]
    assert sections == sorted(sections, key=order.index)
    assert set(sections) == set(GROUPS)


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "make test" in readme and "make run" in readme
    assert "make test" in ci
