"""Sampling: llm.c's sample_softmax, top-k and temperature, and the generation loop that the training loop's
samples and sample_gpt2.py share.

The non-obvious decisions:
- With neither top-k nor a temperature other than 1 the token is drawn exactly as llm.c draws it
  (sample_softmax below): its arithmetic, one xorshift coin per token, seed 1337. Only the new options switch
  to softmax(logits / temperature) over the k largest logits, computed in float64 after subtracting the max
  (llm.c's sum of plain exps would overflow at low temperatures).
- Generation recomputes the whole prefix with the model's own forward for every new token, over the
  activation buffers allocated once: no KV cache, so no second attention path to keep in step with the
  training forward. Each forward runs over the prefix rounded up to a multiple of `window` (llm.c: min(T, 256)),
  which gives the GPU few distinct shapes; positions past the prefix hold EOT, and causal attention keeps them
  from changing the logits the token is drawn from.
- Every prompt starts with EOT, as every document of the training data does; with no text the prompt is EOT
  alone, llm.c's.

sample_softmax reproduces llm.c's arithmetic exactly rather than a "correct" softmax: no max subtraction, exp
rounded to f32 (as expf), the normalizer summed sequentially in double, coin*norm stored back into an f32, and
the CDF walked in f32. np.cumsum is a sequential left-to-right accumulation in its dtype, so cumsum in float32
is exactly C's `cdf += e[i]` loop and cumsum in float64 the `norm += e[i]` one. exp is taken in double and
rounded once to f32: the correctly rounded value that glibc's expf returns.
"""
import math

import numpy as np

from llmc_py import LlmcError
from llmc_py.rand import random_f32

SAMPLE_RNG_SEED = 1337  # the xorshift state llm.c resets to at every sampling event


# ----------------------------------------------------------------------------
# drawing one token

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


def sample_probabilities(probs, coin):
    """The first index whose cumulative probability exceeds coin (in [0, 1)); never one of probability 0."""
    cdf = np.cumsum(probs)
    i = int(np.searchsorted(cdf, coin * cdf[-1], side="right"))
    return min(i, int(np.flatnonzero(probs)[-1]))


class Sampler:
    """Draws the next token from a row of logits with its own xorshift coin sequence (one coin per token)."""

    def __init__(self, temperature=1.0, top_k=None, seed=SAMPLE_RNG_SEED):
        if top_k is not None and top_k < 1:
            raise LlmcError(f"--top-k {top_k}: expected an integer >= 1")
        if not (math.isfinite(temperature) and temperature > 0):
            raise LlmcError(f"--temperature {temperature}: expected a number > 0")
        self.temperature, self.top_k, self.rng = float(temperature), top_k, seed
        self.plain = top_k is None and temperature == 1.0  # llm.c's sampler

    def describe(self):
        return (f"top-k {self.top_k or 'off'}, temperature {self.temperature:g}"
                + (" (llm.c's sampler)" if self.plain else ""))

    def probabilities(self, logits):
        """float64 softmax(logits / temperature), 0 outside the top k (logits tied with the k-th stay in)."""
        z = np.asarray(logits, dtype=np.float64).reshape(-1) / self.temperature
        if self.top_k is not None and self.top_k < len(z):
            kth = np.partition(z, len(z) - self.top_k)[len(z) - self.top_k]
            z = np.where(z >= kth, z, -np.inf)
        e = np.exp(z - z.max())
        return e / e.sum()

    def __call__(self, logits):
        coin, self.rng = random_f32(self.rng)
        if self.plain:
            return sample_softmax(logits, coin)
        return sample_probabilities(self.probabilities(logits), coin)


# ----------------------------------------------------------------------------
# prompts and generation

def prompt_tokens(tokenizer, text, eot):
    """EOT followed by the GPT-2 tokens of `text`; None means no text (the prompt is EOT alone)."""
    if text is None:
        return [eot]
    if text == "":
        raise LlmcError("--prompt: expected some text, found an empty prompt")
    if tokenizer is None:
        raise LlmcError("--prompt: encoding the prompt needs the tokenizer file gpt2_tokenizer.bin "
                        "(train_gpt2.py writes it)")
    return [eot] + tokenizer.encode(text)


def check_fits(prompt_len, num_tokens, context, context_name, prompt_flag, count_flag):
    """A prompt of prompt_len tokens and num_tokens more take prompt_len + num_tokens - 1 positions of the
    forward (the last token is only printed); they must fit `context`."""
    if prompt_len > context:
        raise LlmcError(f"{prompt_flag}: {prompt_len} tokens with the leading EOT, more than {context_name} "
                        f"{context}")
    if prompt_len + num_tokens - 1 > context:
        raise LlmcError(f"{count_flag}: the prompt's {prompt_len} tokens and {num_tokens} generated tokens need "
                        f"{prompt_len + num_tokens - 1} positions, more than {context_name} {context}")


def generate(model, prompt, num_tokens, sampler, window=1):
    """Yields num_tokens tokens drawn one at a time after `prompt` (ids starting with EOT): each from the
    logits of a forward over the prefix rounded up to a multiple of `window`, at most the model's allocated T.
    The model must be allocated for batch 1 or more and prompt + num_tokens - 1 positions."""
    n, limit = len(prompt), model.T
    if model.B < 1 or n + num_tokens - 1 > limit:
        raise LlmcError(f"generate: {n} prompt tokens and {num_tokens} more do not fit the allocated "
                        f"({model.B}, {limit})")
    V = model.config.vocab_size
    tokens = np.full((1, limit + 1), prompt[0], dtype=np.int32)  # EOT fills the positions past the prefix
    tokens[0, :n] = prompt
    for t in range(n, n + num_tokens):
        length = min(-(-t // window) * window, limit)
        logits = model.forward(tokens[:, :length])
        token = sampler(model.host(logits[0, t - 1, :V]))
        tokens[0, t] = token
        yield token
