"""llmc_py: the Python side of llm.c's GPT-2 trainer.

Every user-facing problem (bad file, bad flag, sizes that do not divide) raises LlmcError with one line
that names the file or flag, what was expected and what was found. Each program catches it once in main
and prints that line, so users never see a traceback for their own mistakes.
"""


class LlmcError(Exception):
    """A problem with the user's input, reported as one line."""


def run_main(main, *args):
    """Runs a program's main and exits with its status; an LlmcError becomes one `error:` line and status 1."""
    import sys
    try:
        status = main(*args)
    except LlmcError as e:
        print(f"error: {e}", file=sys.stderr)
        status = 1
    sys.exit(status or 0)
