"""Layer 6: the `gad` command line.

gad [--debug] diagnose [--config configs/diagnose_default.yaml] [--key value ...]
gad [--debug] report RUN_DIR [--run ID] [--confidence LEVEL]
gad [--debug] compare RUN_DIR [--run ID] [--confidence LEVEL]

An expected failure (a bad key, a missing file, an unusable device or output directory) is one line on stderr,
`gad: error: ...`, and exit status 2; `--debug` (anywhere on the command line) shows the traceback instead.
"""

import sys


USAGE = """\
usage: gad [--debug] COMMAND [ARGS ...]

commands:
  diagnose [--config FILE.yaml] [--key value ...]   training-free diagnostic of teachers on a student and a dataset
  report RUN_DIR [--run ID] [--confidence LEVEL]    summary and report.html of one run, from its saved records
  compare RUN_DIR [--run ID] [--confidence LEVEL]   which teacher aligns best, and which differences are resolved

options:
  -h, --help   show this message (`gad COMMAND --help` for a command's options)
  --debug      show tracebacks instead of one-line errors"""

# Raised for a user's mistake or an unusable environment rather than a bug in gad: shown without the type's name.
_EXPECTED = (ValueError, OSError, KeyError)


def _one_line(err: BaseException) -> str:
    message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    message = " ".join(str(message).split()) or type(err).__name__
    if isinstance(err, _EXPECTED):
        return message
    return f"{type(err).__name__}: {message} (rerun with --debug for the traceback)"


def _diagnose(rest: list[str]) -> int:
    from ..integration.config import GradientAlignmentConfig
    from .diagnose import DiagnoseArguments, run_diagnose
    from .parsing import parse

    run_args, gad_args = parse((DiagnoseArguments, GradientAlignmentConfig), rest, prog="gad diagnose")
    out = run_diagnose(run_args, gad_args)
    print(f"records: {out / 'records'}  tensorboard: {out / 'tensorboard'}  report: {out / 'report.html'}")
    return 0


def _report(rest: list[str]) -> int:
    from .report import report_command

    return report_command(rest)


def _compare(rest: list[str]) -> int:
    from .compare import compare_command

    return compare_command(rest)


COMMANDS = {"diagnose": _diagnose, "report": _report, "compare": _compare}


def main(argv: list[str] | None = None) -> int:
    """Run `gad` on `argv` (the process's arguments when omitted); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv:
        print(USAGE, file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(
            f"gad: error: unknown command {command!r}; commands: {', '.join(COMMANDS)} (gad --help)", file=sys.stderr
        )
        return 2
    try:
        return COMMANDS[command](rest)
    except SystemExit as exit_:
        # argparse's `--help` exits 0 after printing; nothing else of ours exits.
        return exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 2
    except KeyboardInterrupt:
        if debug:
            raise
        print("gad: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if debug:
            raise
        print(f"gad: error: {_one_line(err)}", file=sys.stderr)
        return 2
