"""Layer 6: the `gad` command line.

gad diagnose [--config configs/diagnose_default.yaml] [--key value ...]
gad report RUN_DIR [--confidence LEVEL]
"""

import sys


USAGE = "usage: gad diagnose [--config FILE.yaml] [--key value ...] | gad report RUN_DIR [--confidence LEVEL]"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    try:
        if command == "diagnose":
            from ..integration.config import GradientAlignmentConfig
            from .diagnose import DiagnoseArguments, run_diagnose
            from .parsing import parse

            run_args, gad_args = parse((DiagnoseArguments, GradientAlignmentConfig), rest)
            out = run_diagnose(run_args, gad_args)
            print(f"records: {out / 'records'}  tensorboard: {out / 'tensorboard'}  report: {out / 'report.html'}")
            return 0
        if command == "report":
            from .report import write_report

            confidence = None
            if len(rest) == 3 and rest[1] == "--confidence":
                confidence = float(rest[2])
                if not 0 < confidence < 1:
                    raise ValueError(f"--confidence must be in (0, 1), got {rest[2]}.")
                rest = rest[:1]
            if len(rest) != 1:
                print(USAGE, file=sys.stderr)
                return 2
            # The level defaults to the run's own (run.json of `gad diagnose`), else 0.95.
            write_report(rest[0], confidence=confidence)
            return 0
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f"gad: error: {err}", file=sys.stderr)
        return 2
    print(f"gad: unknown command {command!r}\n{USAGE}", file=sys.stderr)
    return 2
