#!/usr/bin/env python
"""Sweep RCE + GRPO post-training of the ICD selector with Ray Tune.

    python sweep/run.py --space kl_beta               # the embedded benchmark, no data needed
    python sweep/run.py --space kl_beta --smoke-test  # the whole pipeline in about a minute
    python sweep/run.py --list-spaces
    python sweep/run.py --resume NAME                 # continue a killed or interrupted sweep

Writes results/<name>/: leaderboard.csv, comparison.csv/.md, plots/, baselines.json,
command.txt and the space as run, next to Ray Tune's own trial folders.
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
        return experiment.run(args)
    except UserError as exc:
        _fail(str(exc))
    return 2


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


if __name__ == "__main__":
    raise SystemExit(main())
