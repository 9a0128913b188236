"""The README's test command is exactly what CI runs."""

from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = next(line for line in ci.splitlines() if line.startswith("python3 -m venv"))
    assert "pytest" in command and "torch==2.13.0" in command
    assert command in readme.splitlines()


def test_the_training_free_python_example_runs_as_written(capsys):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The training-free pass from Python", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
    out = capsys.readouterr().out
    assert "rollouts diagnosed" in out
    assert "\nteacher " in out and "\nsolution " in out  # both teachers in the table
