"""Sum of squares of a flat gradient buffer, the input of llm.c's global-norm gradient clipping.

Design decision: the result accumulates (out[0] += ...) so ZeRO-1 shards, or several slices of one buffer,
add into the same slot before the cross-rank sum and the final sqrt. This NumPy oracle accumulates in
float64 (chunks of 8192 elements through BLAS ddot) and rounds to float32 once, when adding into out[0];
llm.c sums in float32 with a grid-dependent tree, so its value is the oracle's up to the float32 rounding
of its partial sums.
"""
import numpy as np

_CHUNK = 1 << 13  # a 64 KiB float64 copy at a time: cache-sized, and measured 2-5x faster than 1M-element chunks

# ----------------------------------------------------------------------------
# NumPy reference


def global_norm_squared(out, values):
    """out: 1-element float32 array; out[0] += sum(values**2), accumulated in float64, one rounding to float32."""
    flat = values.reshape(-1)
    total = np.float64(out[0])
    for start in range(0, flat.size, _CHUNK):  # chunks of the flat buffer, not a loop over B, T or C
        chunk = flat[start:start + _CHUNK].astype(np.float64)
        total += np.dot(chunk, chunk)
    out[0] = np.float32(total)
