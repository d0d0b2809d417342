"""Sampling a token from logits during training (llm.c's sample_softmax), vectorized.

The non-obvious decision: it reproduces llm.c's arithmetic exactly rather than a "correct" softmax: no max
subtraction, exp rounded to f32 (as expf), the normalizer summed sequentially in double, coin*norm stored
back into an f32, and the CDF walked in f32. np.cumsum is a sequential left-to-right accumulation in its
dtype, so cumsum in float32 is exactly C's `cdf += e[i]` loop and cumsum in float64 the `norm += e[i]` one.
exp is taken in double and rounded once to f32: the correctly rounded value that glibc's expf returns.
"""
import numpy as np

SAMPLE_RNG_SEED = 1337  # the xorshift state is reset to this at every sampling event


def sample_softmax(logits, coin):
    """Index sampled from softmax(logits) with a uniform coin in [0, 1); falls back to the last index."""
    logits = np.asarray(logits, dtype=np.float32).reshape(-1)
    with np.errstate(over="ignore", invalid="ignore"):
        e = np.exp(logits.astype(np.float64)).astype(np.float32)
        norm = np.cumsum(e, dtype=np.float64)[-1]
        coin = np.float32(np.float64(np.float32(coin)) * norm)
        cdf = np.cumsum(e, dtype=np.float32)
        hits = coin < cdf
    i = int(np.argmax(hits))
    return i if hits[i] else len(logits) - 1
