"""The README's test command is exactly what CI runs."""

from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = next(line for line in ci.splitlines() if line.startswith("python3 -m venv"))
    assert "pytest" in command and "torch==2.13.0" in command
    assert command in readme.splitlines()
