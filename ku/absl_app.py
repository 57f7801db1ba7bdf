"""``absl.app.run`` for the scripts in ``scripts/``, with the exit statuses of the ``ku`` command.

absl prints the help of ``--help`` / ``--helpshort`` / ``--helpfull`` / ``--helpxml`` and then
exits with status 1, so a shell, ``make`` or CI step treats asking for help as a failure; it also
exits with 1 for a bad flag or an ``app.UsageError``, the status Python gives an unexpected crash.
:func:`run` keeps everything else of ``absl.app.run`` (flag parsing, the usage text) and uses the
statuses of ``ku`` (:mod:`ku.cli`): 0 after a help text, :data:`EXIT_USAGE` (2) for bad
arguments or unusable inputs (a bad flag, ``app.UsageError``, or a script's
``SystemExit("error: ...")`` naming a malformed label line, a missing file, ...), 1 only for
unexpected errors (a traceback).
"""
from __future__ import annotations

import sys

__all__ = ["EXIT_USAGE", "HELP_FLAGS", "check_writable", "deprecated_flag", "run"]

#: Exit status for bad arguments or unusable inputs (the same as ``ku.cli.EXIT_USAGE``).
EXIT_USAGE = 2

#: absl's help flags (``-?`` is absl's short form of ``--help``).
HELP_FLAGS = ("--help", "-help", "-h", "-?", "--helpshort", "-helpshort", "--helpfull",
              "-helpfull", "--helpxml", "-helpxml")


def _asks_for_help(argv) -> bool:
    args = list(argv[1:])
    if "--" in args:
        args = args[: args.index("--")]
    return any(a in HELP_FLAGS or a.split("=", 1)[0] in HELP_FLAGS for a in args)


def run(main, argv=None) -> None:
    """``absl.app.run(main, argv)``, but exit status 0 after printing a help text and
    :data:`EXIT_USAGE` (2) instead of absl's 1 for a bad flag or an ``app.UsageError``, and
    instead of Python's 1 for ``SystemExit("error: ...")`` (its text still goes to stderr).

    Args:
        main: the script's ``main(argv)``.
        argv: command line (default ``sys.argv``).
    """
    from absl import app

    argv = sys.argv if argv is None else argv
    try:
        app.run(main, argv=argv)
    except SystemExit as e:
        if e.code == 1:  # absl's status for help texts, flag errors and UsageError
            raise SystemExit(0 if _asks_for_help(argv) else EXIT_USAGE) from None
        if isinstance(e.code, str):  # SystemExit("error: ..."): Python would print it, exit 1
            print(e.code, file=sys.stderr, flush=True)
            raise SystemExit(EXIT_USAGE) from None
        raise


def deprecated_flag(flag_values, old: str, new: str, values: dict | None = None) -> None:
    """Map the deprecated flag ``--old`` to ``--new``: when ``--old`` is on the command line, print
    a one-line warning on stderr and set ``--new`` from it (``values`` maps old values to new
    ones). Both given: ``SystemExit("error: ...")`` (exit status 2 under :func:`run`). Call it at
    the start of the script's ``main``; the old flag is defined beside the new one with the
    default None."""
    if not flag_values[old].present:
        return
    if flag_values[new].present:
        raise SystemExit(f"error: --{old} is the deprecated name of --{new}: give only --{new}")
    value = flag_values[old].value
    print(f"warning: --{old} is deprecated, use --{new}", file=sys.stderr, flush=True)
    setattr(flag_values, new, (values or {}).get(value, value))


def check_writable(path, flag, folder=False):
    """UsageError naming ``--flag`` unless ``path`` (a file, or a folder with ``folder=True``) can
    be created or written. Run before any expensive work, so a run does not die at its end."""
    import os
    from pathlib import Path

    from absl.app import UsageError

    p = Path(path).expanduser().absolute()
    if p.exists():
        if folder and not p.is_dir():
            raise UsageError(f"--{flag}={path}: exists and is not a folder")
        if not folder and p.is_dir():
            raise UsageError(f"--{flag}={path}: is a folder, expected a file name")
        target = p if folder else p.parent
        if not os.access(target, os.W_OK):
            raise UsageError(f"--{flag}={path}: cannot write to {target} (permission denied)")
        return
    anc = p.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise UsageError(f"--{flag}={path}: cannot be created: {anc} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise UsageError(f"--{flag}={path}: cannot be created in {anc} (permission denied)")
