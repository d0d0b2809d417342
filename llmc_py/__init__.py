"""llmc_py: the Python side of llm.c's GPT-2 trainer.

Every user-facing problem (bad file, bad flag, sizes that do not divide) raises LlmcError with one line
that names the file or flag, what was expected and what was found. Each program catches it once in main
and prints that line, so users never see a traceback for their own mistakes. Long work draws a tqdm bar on
stderr, always as a context manager: the bar is closed, its line ended, before an error reaches main, so the
`error:` line always starts a line of its own.
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


def progress_bar(iterable=None, **kwargs):
    """A tqdm progress bar on stderr; use it in a `with` block. tqdm is imported here, on the first bar, so
    the programs and runs that draw none (a training run without -h 1) do not need it installed."""
    import sys

    from tqdm import tqdm
    return tqdm(iterable, file=sys.stderr, dynamic_ncols=True, **kwargs)
