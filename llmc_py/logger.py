"""main.log, llm.c's training log: one line per event, rank 0 only, and only with an output dir (-o).

The non-obvious decision: every event opens the file in append mode, writes its line and closes it again,
so a crash loses nothing and a resumed run (-y 1) simply keeps appending; only a fresh run truncates the
file at start. Values are rounded to float32 before formatting, as llm.c passes floats to printf.
"""
import os

import numpy as np

from llmc_py import LlmcError


def _f32(x):
    return float(np.float32(x))


class Logger:
    def __init__(self, output_dir, process_rank=0, resume=False):
        self.active = output_dir is not None and int(process_rank) == 0
        self.path = os.path.join(str(output_dir), "main.log") if self.active else None
        if self.active and not resume:
            self._open("w").close()

    def _open(self, mode):
        try:
            return open(self.path, mode, encoding="ascii", newline="\n")
        except OSError as e:
            raise LlmcError(f"{self.path}: cannot open the log file: {e.strerror}") from None

    def _write(self, line):
        if self.active:
            with self._open("a") as f:
                f.write(line + "\n")

    def log_val(self, step, val_loss):
        self._write(f"s:{int(step)} tel:{_f32(val_loss):.4f}")

    def log_eval(self, step, accuracy):
        self._write(f"s:{int(step)} eval:{_f32(accuracy):.4f}")

    def log_train(self, step, train_loss, lr, grad_norm):
        self._write(f"s:{int(step)} trl:{_f32(train_loss):.4f} lr:{_f32(lr):.6f} norm:{_f32(grad_norm):.2f}")
