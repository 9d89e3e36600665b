"""README's two commands and .ci/run stay in step."""

from __future__ import annotations

import re

from conftest import REPO


def _commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", text)


def test_readme__opens_with_demo_and_test_commands() -> None:
    demo, tests = _commands()[:2]
    assert "pip install" in demo and demo.endswith("ctframe demo")
    assert "pip install" in tests and "pytest" in tests


def test_ci_run__runs_the_readme_test_command_exactly() -> None:
    test_command = _commands()[1]
    lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert test_command in lines
