"""Z-score of a value against a sliding window of the previous ones (llm.c's outlier_detector.h).

The non-obvious decision: the window holds running sums in double precision and its statistics include the
value just added, with the population variance sum(x^2)/n - mean^2. That formula can round to a tiny negative
number for an almost constant window: then, as C's sqrt, the z-score is NaN (and the trainer's skip test,
which requires a finite z, never fires on it). The first `window` updates return NaN while the window fills.
"""
import math


class OutlierDetector:
    def __init__(self, window=128):
        self.window = int(window)
        self.buffer = [0.0] * self.window
        self.count = 0   # values seen, up to window
        self.index = 0   # slot of the oldest value once the window is full
        self.sum = 0.0
        self.sum_sq = 0.0

    def update(self, x):
        """Adds x; returns its z-score against the window (NaN while the window is filling)."""
        x = float(x)
        if self.count < self.window:
            self.buffer[self.count] = x
            self.sum += x
            self.sum_sq += x * x
            self.count += 1
            return math.nan
        old = self.buffer[self.index]
        self.sum -= old
        self.sum_sq -= old * old
        self.buffer[self.index] = x
        self.sum += x
        self.sum_sq += x * x
        self.index = (self.index + 1) % self.window
        mean = self.sum / self.window
        variance = self.sum_sq / self.window - mean * mean
        std = math.sqrt(variance) if variance >= 0.0 else math.nan
        if std == 0.0:
            return 0.0
        return (x - mean) / std
