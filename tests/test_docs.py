"""The docs stay true: the README's commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section, flags=re.DOTALL)


def test_readme_starts_with_two_commands() -> None:
    serve, test = readme_commands()
    assert serve.endswith("tvbridge serve")
    assert "pytest" in test


def test_ci_runs_the_readmes_test_command() -> None:
    _, test = readme_commands()
    ci = (REPO / ".ci" / "run").read_text()
    assert f'TEST_COMMAND="{test}"' in ci
    assert 'eval "$TEST_COMMAND"' in ci
