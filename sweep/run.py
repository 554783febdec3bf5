#!/usr/bin/env python
"""Sweep RCE + GRPO post-training of the ICD selector with Ray Tune.

    python sweep/run.py --space kl_beta               # the embedded benchmark, no data needed
    python sweep/run.py --space kl_beta --smoke-test  # the whole pipeline in about a minute
    python sweep/run.py --list-spaces
    python sweep/run.py --resume NAME                 # continue a killed or interrupted sweep

Writes results/<name>/: leaderboard.csv, comparison.csv/.md, plots/, baselines.json,
command.txt and the space as run, next to Ray Tune's own trial folders.

Exit codes: 0 done, 2 bad input (one line on stderr naming the file, field or
flag; nothing written), 130 interrupted (state saved; the --resume command is printed).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from trainer.errors import UserError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from sweep.cli import build_parser, validate

    parser = build_parser()
    # argparse's own errors: one line and exit 2, like every other bad input
    parser.error = lambda message: _fail(f"{parser.prog}: {message}")  # type: ignore[method-assign]
    args = parser.parse_args(argv)
    try:
        validate(args)
        from sweep import experiment

        if args.list_spaces:
            return experiment.list_spaces()
        if args.resume:
            return experiment.resume(args)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # for command.txt
        return experiment.run(args)
    except UserError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:  # before Tune ran (execute handles it once the folder exists)
        if args.resume:
            print(f"interrupted; continue with\n  python sweep/run.py --resume {args.resume}"
                  + (f" --output {args.output}" if args.output != "results" else ""), file=sys.stderr)
        else:
            print("interrupted before the experiment folder was created: nothing to resume", file=sys.stderr)
        return 130
    return 2


def _fail(message: str) -> None:
    # one line, whatever a wrapped exception message held
    print("error: " + " ".join(message.split()), file=sys.stderr)
    raise SystemExit(2)


if __name__ == "__main__":
    raise SystemExit(main())
