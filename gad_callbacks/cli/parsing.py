"""YAML + command-line parsing with `TrlParser`, and one-line errors that name the offending key."""

import argparse
import re
from pathlib import Path

from trl import TrlParser


def _unknown_keys_error(message: str, where: str = "") -> ValueError:
    keys = sorted(set(re.findall(r"--([A-Za-z0-9_.-]+)", message)))
    if not keys:  # a stray positional argument, not a key
        stray = message.split(":", 1)[-1].strip()
        stray = ", ".join(re.findall(r"'([^']*)'", stray)) or stray  # HfArgumentParser lists them as a Python list
        return ValueError(f"unexpected argument(s){where}: {stray} (keys are given as --key value)")
    return ValueError(f"unknown config key(s){where}: {', '.join(keys)}")


class _OneLineErrors:
    """Parser errors raise `ValueError` with argparse's one-line message instead of printing a usage block and
    exiting, so the command line reports them like every other error. `--help` still exits 0."""

    def error(self, message: str):
        if "unrecognized arguments" in message:
            raise _unknown_keys_error(message)
        raise ValueError(message)


class OneLineArgumentParser(_OneLineErrors, argparse.ArgumentParser):
    """An `argparse.ArgumentParser` whose errors raise `ValueError` (one line) instead of exiting."""


class _TrlParser(_OneLineErrors, TrlParser):
    pass


def parse(dataclass_types, argv: list[str], prog: str | None = None):
    """
    `--config FILE` sets defaults, `--key value` overrides them (TRL's semantics); unknown keys are errors, and so are
    abbreviations (`--num_q` is not taken for `--num_questions`). `--help` prints the keys and raises `SystemExit(0)`.
    """
    # `--config=FILE` is the same as `--config FILE` (TrlParser only looks for the spaced form).
    argv = [part for arg in argv for part in (arg.split("=", 1) if arg.startswith("--config=") else [arg])]
    if "--config" in argv:
        # TrlParser opens the file itself: check it first for an error that names the flag.
        at = argv.index("--config")
        if at + 1 == len(argv):
            raise ValueError("--config needs a YAML file.")
        if not Path(argv[at + 1]).is_file():
            raise FileNotFoundError(f"config file {argv[at + 1]!r}: no such file.")
    parser = _TrlParser(dataclass_types, prog=prog, allow_abbrev=False)
    try:
        return parser.parse_args_and_config(argv)
    except ValueError as err:
        message = str(err)
        # TrlParser / HfArgumentParser list leftovers as a Python list of strings: name the keys instead.
        if message.startswith("Unknown arguments from config file"):
            raise _unknown_keys_error(message, " in the config file") from None
        if message.startswith("Some specified arguments are not used"):
            raise _unknown_keys_error(message) from None
        raise
