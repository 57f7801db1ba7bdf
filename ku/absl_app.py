"""``absl.app.run`` for the scripts in ``scripts/``, with ``--help`` exiting 0.

absl prints the help of ``--help`` / ``--helpshort`` / ``--helpfull`` / ``--helpxml`` and then
exits with status 1, so a shell, ``make`` or CI step treats asking for help as a failure.
:func:`run` keeps everything else of ``absl.app.run`` (flag parsing, ``app.UsageError`` -> status
1 with the usage text) and turns only that exit into 0.
"""
from __future__ import annotations

import sys

__all__ = ["HELP_FLAGS", "run"]

#: absl's help flags (``-?`` is absl's short form of ``--help``).
HELP_FLAGS = ("--help", "-help", "-h", "-?", "--helpshort", "-helpshort", "--helpfull",
              "-helpfull", "--helpxml", "-helpxml")


def _asks_for_help(argv) -> bool:
    args = list(argv[1:])
    if "--" in args:
        args = args[: args.index("--")]
    return any(a in HELP_FLAGS or a.split("=", 1)[0] in HELP_FLAGS for a in args)


def run(main, argv=None) -> None:
    """``absl.app.run(main, argv)``, but exit status 0 after printing a help text.

    Args:
        main: the script's ``main(argv)``.
        argv: command line (default ``sys.argv``).
    """
    from absl import app

    argv = sys.argv if argv is None else argv
    try:
        app.run(main, argv=argv)
    except SystemExit as e:
        if e.code == 1 and _asks_for_help(argv):
            raise SystemExit(0) from None
        raise
