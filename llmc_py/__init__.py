"""llmc_py: the Python side of llm.c's GPT-2 trainer.

Every user-facing problem (bad file, bad flag, sizes that do not divide) raises LlmcError with one line
that names the file or flag, what was expected and what was found. Each program catches it once in main
and prints that line, so users never see a traceback for their own mistakes.
"""


class LlmcError(Exception):
    """A problem with the user's input, reported as one line."""
