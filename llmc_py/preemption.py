"""Preemption: SIGTERM (Slurm, Kubernetes, `kill`) and SIGINT (Ctrl-C) ask a training run to stop cleanly.

The non-obvious decision: the handler only records that a signal came; the training loop asks at each step
boundary, and with several processes that question is one all-reduce of the flag, so every rank gets the same
answer at the same step even when the signal reached only some of them (Slurm signals every task, a user's
`kill` or a node's shutdown may hit one). No rank then writes a state file the others lack, and no rank
waits in a collective for one that has left. The first signal also restores the previous handler, so a
second Ctrl-C (or a second SIGTERM) still stops the process at once.
"""
import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Catches the stop signals while installed (a `with` block); `signal_name` is the first one caught."""

    def __init__(self):
        self.signal_name = None
        self._previous = {}

    def __enter__(self):
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum in list(self._previous):
            self._restore(signum)

    def _restore(self, signum):
        """Puts back the handler that was there before (the default where none was set from Python)."""
        previous = self._previous.pop(signum)
        signal.signal(signum, signal.SIG_DFL if previous is None else previous)

    def _handle(self, signum, frame):
        # nothing printed here: the signal may interrupt a print of the main thread
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name
        if signum in self._previous:
            self._restore(signum)

    def ranks_stopping(self, comm):
        """How many processes caught a stop signal: the same number on every rank, at the same step."""
        caught = 0.0 if self.signal_name is None else 1.0
        return int(caught if comm.num_processes == 1 else comm.all_reduce_sum(caught))
