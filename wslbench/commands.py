"""What both console scripts share: logging set-up and one-line errors for expected failures."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable

#: Failures a user can fix from the message alone: printed in one line, exit status 2.
#: ``-v`` shows the traceback instead.
USER_ERRORS = (ValueError, KeyError, ImportError, FileNotFoundError, RuntimeError)


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None,
                before: Callable[[argparse.Namespace], None] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand (its ``run`` default), after ``before``."""
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if before is not None:
            before(args)
        return args.run(args)
    except BrokenPipeError:  # e.g. `zoo-builder show ... | head`: the reader has gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except USER_ERRORS as err:
        if args.verbose:
            raise
        print(f"{parser.prog} {args.command}: error: {err}", file=sys.stderr)
        return 2
