"""YAML + command-line parsing with `TrlParser`, and one-line errors that name the offending key."""

import contextlib
import io
import re

from trl import TrlParser


def parse(dataclass_types, argv: list[str]):
    """`--config FILE` sets defaults, `--key value` overrides them (TRL's semantics); unknown keys are errors."""
    parser = TrlParser(dataclass_types)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return parser.parse_args_and_config(argv)
    except SystemExit as exit_:
        # argparse prints a usage block and exits; turn it into one line naming the key.
        message = stderr.getvalue().strip().splitlines()[-1] if stderr.getvalue().strip() else str(exit_)
        unknown = re.findall(r"--([A-Za-z0-9_]+)", message)
        if "unrecognized arguments" in message and unknown:
            raise ValueError(f"unknown config key(s): {', '.join(sorted(set(unknown)))}") from None
        raise ValueError(message.replace("error: ", "")) from None
