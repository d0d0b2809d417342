"""llm.c's token shards and its distributed train/val DataLoader.

The non-obvious decision: a "sample" is one *global* batch of P*B*T tokens (+1 for the shifted targets),
and each rank reads only its own contiguous B*T+1 slice of it, so ranks' slices are adjacent and overlap by
one token. Shuffling permutes whole samples and the shard order with a Mersenne Twister per rank (seeded
42 + rank, as llm.c), so at a given step ranks read slices of different samples, yet each rank still covers
its slice of every sample once per epoch. The shard order is permuted *in place* on every reset, so epoch
orders compose instead of restarting from the identity. Samples are read straight from a memory map of the open shard into the
loader's preallocated int32 buffers; whole shards are never loaded per batch. Given the model's vocabulary size,
the loader checks every shard's largest token id the first time it opens it (the first shard at start-up), so
data made for another tokenizer stops with one line naming the file instead of indexing past the embedding table.
"""
import glob

import numpy as np

from llmc_py import LlmcError
from llmc_py.checkpoint import LoaderState
from llmc_py.fileio import HEADER_BYTES, atomic_write, check_size, make_header, read_header
from llmc_py.rand import MT19937

# model_desc -> (magic, version, token dtype). The trainer reads only "gpt-2"; the LLaMA-3 variant exists
# so dev/data scripts can write it for interchange (llm.c's train_gpt2.cu rejects it).
SHARD_FORMATS = {
    "gpt-2": (20240520, 1, np.dtype("<u2")),
    "llama-3": (20240801, 7, np.dtype("<u4")),
}
SHARD_SEED = 42  # the shuffle RNG of rank r is MT19937(42 + r)


# ----------------------------------------------------------------------------
# token shard files

def read_shard_header(path):
    """Checks a GPT-2 shard's header and exact size (spec 5.1); returns its token count."""
    magic, version, dtype = SHARD_FORMATS["gpt-2"]
    header, size = read_header(path, magic, (version,), what="token shard")
    ntok = int(header[2])
    if ntok <= 0:
        raise LlmcError(f"{path}: empty shard: expected a token count > 0 in the header, found {ntok}")
    check_size(path, size, HEADER_BYTES + ntok * dtype.itemsize, f"a shard of {ntok} u16 tokens")
    return ntok


def read_shard(path):
    """Reads a whole GPT-2 shard with llm.c's checks; returns its tokens as uint16."""
    ntok = read_shard_header(path)
    dtype = SHARD_FORMATS["gpt-2"][2]
    return np.fromfile(path, dtype=dtype, count=ntok, offset=HEADER_BYTES).astype(np.uint16)


def write_shard(path, toks, model_desc="gpt-2", name=None):
    """Writes tokens as a shard: 256 x i32 header (magic, version, ntok), then the tokens. Refuses anything the
    reader would refuse (an empty shard, tokens that do not fit the token type, 2^31 or more tokens), naming the
    file `name` (default: path; a staged write names its final path). Returns the file's size in bytes."""
    name = name or path
    if model_desc not in SHARD_FORMATS:
        raise LlmcError(f"{name}: unknown model_desc: expected one of {', '.join(SHARD_FORMATS)}, "
                        f"found {model_desc!r}")
    magic, version, dtype = SHARD_FORMATS[model_desc]
    toks = np.asarray(toks)
    ntok = toks.size
    if not 0 < ntok < 2**31:
        raise LlmcError(f"{name}: a shard needs 1..{2**31 - 1} tokens, found {ntok}")
    if toks.dtype.kind not in "iu":
        raise LlmcError(f"{name}: tokens must be integers, found dtype {toks.dtype}")
    lo, hi = int(toks.min()), int(toks.max())
    if lo < 0 or hi > np.iinfo(dtype).max:
        raise LlmcError(f"{name}: {model_desc} tokens must be 0..{np.iinfo(dtype).max}, found {lo}..{hi}")
    header = make_header(magic, version)
    header[2] = ntok
    with atomic_write(path) as f:
        f.write(header.astype("<i4").tobytes())
        f.write(toks.astype(dtype).tobytes())
    return HEADER_BYTES + ntok * dtype.itemsize


def _permute(a, rng):
    """llm.c's random_permutation: Fisher-Yates from the top, j = randint32() % (i+1), n-1 draws, in place."""
    n = len(a)
    if n < 2:
        return
    draws = rng.randint32(n - 1).tolist()
    v = a.tolist()  # list swaps: about 10x faster than element access on the array
    for d, i in zip(draws, range(n - 1, 0, -1)):
        j = d % (i + 1)
        v[i], v[j] = v[j], v[i]
    a[:] = v


def _is_permutation(a, n):
    return len(a) == n and np.array_equal(np.sort(np.asarray(a, dtype=np.int64)), np.arange(n))


# ----------------------------------------------------------------------------
# train/val loader (llm.c's DataLoader)

class DataLoader:
    """Serves (inputs, targets) int32 (B, T) batches of this rank's slice of each global sample.

    Attributes the trainer reads: files, num_tokens, shard_num_samples (samples of the open shard),
    current_shard_idx, current_sample_idx. next_batch returns the loader's own buffers, which the next
    call overwrites (as llm.c's loader->inputs/targets): copy them to keep a batch.
    """

    def __init__(self, pattern, B, T, process_rank=0, num_processes=1, should_shuffle=False, vocab_size=None):
        self.pattern = str(pattern)
        self.B, self.T = int(B), int(T)
        self.process_rank, self.num_processes = int(process_rank), int(num_processes)
        self.should_shuffle = bool(should_shuffle)
        self.vocab_size = vocab_size
        self._vocab_checked = set()  # files whose token ids are known to fit vocab_size
        self.files = sorted(glob.glob(self.pattern))  # C glob: names sorted in byte order
        if not self.files:
            raise LlmcError(f"{self.pattern}: no files match the data shard pattern")
        self.sample_tokens = self.num_processes * self.B * self.T   # one global sample, P*B*T tokens
        self.local_offset = self.process_rank * self.B * self.T      # this rank's slice inside a sample
        self.shard_ntok = [self._check_shard(path) for path in self.files]
        self.num_tokens = sum(self.shard_ntok)
        self.inputs = np.zeros((self.B, self.T), dtype=np.int32)
        self.targets = np.zeros((self.B, self.T), dtype=np.int32)
        self._tokens = None
        self.shard_num_samples = 0
        self.current_shard_idx = 0
        self.current_sample_idx = 0
        self.shard_perm = self.sample_perm = self._rng = None
        if self.should_shuffle:
            self._rng = MT19937(SHARD_SEED + self.process_rank)
            self.shard_perm = np.arange(len(self.files), dtype=np.int32)
        self.reset()

    @property
    def num_shards(self):
        return len(self.files)

    def _check_shard(self, path):
        ntok = read_shard_header(path)
        need = self.sample_tokens + 1
        if ntok < need:
            raise LlmcError(f"{path}: shard too small: expected at least B*T*P+1 = {need} tokens "
                            f"(B={self.B}, T={self.T}, P={self.num_processes}), found {ntok}")
        return ntok

    def _shard_path(self, shard_idx):
        """The file at position shard_idx of the current (permuted, when shuffling) shard order."""
        return self.files[int(self.shard_perm[shard_idx]) if self.should_shuffle else shard_idx]

    def _samples_in(self, ntok):
        return (ntok - 1) // self.sample_tokens

    def _open_shard(self, shard_idx):
        """Maps shard `shard_idx` of the (permuted) order, re-validated, and sets shard_num_samples."""
        path = self._shard_path(shard_idx)
        ntok = self._check_shard(path)
        self._tokens = np.memmap(path, dtype=SHARD_FORMATS["gpt-2"][2], mode="r", offset=HEADER_BYTES, shape=(ntok,))
        self.shard_num_samples = self._samples_in(ntok)
        self._open_path = path
        self._check_vocab(path)

    def check_vocab(self, vocab_size):
        """From now on every token id must index a vocabulary of vocab_size: the open shard's now, each other
        shard's when first opened (for a loader opened before the model's file was read)."""
        self.vocab_size = vocab_size
        self._check_vocab(self._open_path)

    def _check_vocab(self, path):
        """Every token id of the open shard must index the model's vocabulary (once per file)."""
        if self.vocab_size is None or path in self._vocab_checked:
            return
        largest = int(self._tokens.max())
        if largest >= self.vocab_size:
            raise LlmcError(f"{path}: holds token id {largest}, outside the model's vocabulary of "
                            f"{self.vocab_size} tokens (ids 0..{self.vocab_size - 1}): the data was made "
                            f"for another tokenizer")
        self._vocab_checked.add(path)

    def _new_sample_perm(self):
        self.sample_perm = np.arange(self.shard_num_samples, dtype=np.int32)
        _permute(self.sample_perm, self._rng)

    def reset(self):
        """Back to shard 0, sample 0; when shuffling, permute the shard order further and the samples anew."""
        self.current_shard_idx = 0
        self.current_sample_idx = 0
        if self.should_shuffle:
            _permute(self.shard_perm, self._rng)
        self._open_shard(0)
        if self.should_shuffle:
            self._new_sample_perm()

    def _advance(self):
        if self.current_shard_idx == len(self.files) - 1:
            self.reset()  # new epoch
            return
        self.current_shard_idx += 1
        self.current_sample_idx = 0
        self._open_shard(self.current_shard_idx)
        if self.should_shuffle:
            self._new_sample_perm()

    def next_batch(self):
        if self.current_sample_idx >= self.shard_num_samples:
            self._advance()
        idx = self.current_sample_idx
        k = int(self.sample_perm[idx]) if self.should_shuffle else idx
        start = k * self.sample_tokens + self.local_offset
        n = self.B * self.T
        buf = self._tokens[start:start + n + 1]
        np.copyto(self.inputs.reshape(-1), buf[:n])
        np.copyto(self.targets.reshape(-1), buf[1:])
        self.current_sample_idx += 1
        return self.inputs, self.targets

    # ------------------------------------------------------------------------
    # checkpointing (spec 2.2 / 2.4)

    def state(self):
        """The shuffled loader's permutations and RNG for a state file; None when not shuffling."""
        if not self.should_shuffle:
            return None
        return LoaderState(shard_perm=self.shard_perm.copy(), sample_perm=self.sample_perm.copy(),
                           mt_state=self._rng.state_bytes())

    def resume(self, shard_idx, sample_idx, loader_state=None):
        """Jumps to (shard_idx, sample_idx) as saved in a state file. With a LoaderState the loader shuffles
        (as the state says), its permutations and RNG are restored, and the shard is opened without drawing
        a new sample permutation; without one it reads in order. Everything is checked before anything changes."""
        shard_idx, sample_idx = int(shard_idx), int(sample_idx)
        nshards = len(self.files)
        if not 0 <= shard_idx < nshards:
            raise LlmcError(f"{self.pattern}: cannot resume at shard index {shard_idx}: "
                            f"expected 0..{nshards - 1} for the {nshards} matching shards")
        shard_perm = sample_perm = rng = None
        file_idx = shard_idx
        if loader_state is not None:
            shard_perm = np.asarray(loader_state.shard_perm, dtype=np.int32).copy()
            sample_perm = np.asarray(loader_state.sample_perm, dtype=np.int32).copy()
            if len(shard_perm) != nshards:
                raise LlmcError(f"{self.pattern}: the training state was saved with {len(shard_perm)} shards, "
                                f"the pattern now matches {nshards}")
            if not _is_permutation(shard_perm, nshards):
                raise LlmcError(f"{self.pattern}: the training state's shard order is not a permutation "
                                f"of 0..{nshards - 1}")
            file_idx = int(shard_perm[shard_idx])
        path = self.files[file_idx]
        num_samples = self._samples_in(self.shard_ntok[file_idx])
        if loader_state is not None:
            if len(sample_perm) != num_samples:
                raise LlmcError(f"{path}: the training state was saved with {len(sample_perm)} samples per "
                                f"process in this shard, it now holds {num_samples} (B={self.B}, T={self.T}, "
                                f"P={self.num_processes})")
            if not _is_permutation(sample_perm, num_samples):
                raise LlmcError(f"{path}: the training state's sample order is not a permutation "
                                f"of 0..{num_samples - 1}")
            rng = MT19937.from_state_bytes(bytes(loader_state.mt_state), source=f"{self.pattern} loader state")
        if not 0 <= sample_idx <= num_samples:
            raise LlmcError(f"{path}: cannot resume at sample {sample_idx}: the shard holds {num_samples} "
                            f"samples per process")
        self.should_shuffle = loader_state is not None
        self.shard_perm, self.sample_perm, self._rng = shard_perm, sample_perm, rng
        self.current_shard_idx = shard_idx
        self.current_sample_idx = sample_idx
        self._open_shard(shard_idx)

    def close(self):
        self._tokens = None


# ----------------------------------------------------------------------------
# HellaSwag eval loader (llm.c's EvalLoader, spec 5.5 / 6.3)
#
# Each example becomes 4 rows of the (B, T) batch, one per ending: the shared context, then that ending.
# targets[t] = inputs[t+1] only where mask is 1 (the ending tokens, predicted from the position before
# each); everything else in inputs/targets is left as the previous batch wrote it, as in llm.c: the
# model is causal, so what follows an ending never changes its losses, and scoring reads masked positions only.
# Every record is checked when the loader opens, and T against all of them, so a file that does not fit the
# run stops it at start-up (naming the first example that does not fit and the smallest T that does), not
# at the first eval hours later.

EVAL_MAGIC, EVAL_VERSION = 20240522, 1
EVAL_DELIMITER = 65535
NUM_COMPLETIONS = 4  # llm.c's ASSUMED_NUM_COMPLETIONS


class EvalLoader:
    """Serves batches of HellaSwag examples for this rank's share of the file.

    Rank r owns examples [r*per_proc, min((r+1)*per_proc, N)) with per_proc = ceil(N/P); every rank runs
    num_batches = ceil(per_proc / (B/4)) batches, so ranks stay in step even when the last one has fewer
    examples (its extra batches are empty). After next_batch: inputs, targets (int32 B,T), mask (uint8 B,T),
    label (int32 [B/4], valid for the first num_examples_in_batch slots).
    """

    def __init__(self, path, B, T, process_rank=0, num_processes=1):
        self.path = str(path)
        self.B, self.T = int(B), int(T)
        self.process_rank, self.num_processes = int(process_rank), int(num_processes)
        if self.B < NUM_COMPLETIONS:
            raise LlmcError(f"{self.path}: HellaSwag needs a batch size B of at least {NUM_COMPLETIONS} "
                            f"(one row per ending), found B={self.B}")
        header, size = read_header(self.path, EVAL_MAGIC, (EVAL_VERSION,), what="HellaSwag eval file")
        self.num_examples = int(header[2])
        longest = int(header[3])
        # every example takes at least 8 bytes: check the count against the file before sizing anything by it
        if self.num_examples > (size - HEADER_BYTES) // 8:
            raise LlmcError(f"{self.path}: the header claims {self.num_examples} examples, a {size}-byte file "
                            f"holds at most {max(size - HEADER_BYTES, 0) // 8}")
        if self.num_examples < self.num_processes:
            raise LlmcError(f"{self.path}: expected at least one example per process ({self.num_processes}), "
                            f"found {self.num_examples} examples")
        if longest <= 0:
            raise LlmcError(f"{self.path}: expected the longest example's size in bytes (> 0) in the header, "
                            f"found {longest}")
        if (size - HEADER_BYTES) % 2 != 0:
            raise LlmcError(f"{self.path}: expected a whole number of u16 values after the header, "
                            f"found {size - HEADER_BYTES} bytes")
        self._data = np.fromfile(self.path, dtype="<u2", offset=HEADER_BYTES).astype(np.int64)
        self._offsets = self._walk(longest)
        self._check_records(longest)
        self.can_fit = self.B // NUM_COMPLETIONS
        self.examples_per_process = -(-self.num_examples // self.num_processes)
        self.num_batches = -(-self.examples_per_process // self.can_fit)
        self.start_example_index = self.examples_per_process * self.process_rank
        self.end_example_index = min(self.examples_per_process * (self.process_rank + 1), self.num_examples)
        self.inputs = np.zeros((self.B, self.T), dtype=np.int32)
        self.targets = np.zeros((self.B, self.T), dtype=np.int32)
        self.mask = np.zeros((self.B, self.T), dtype=np.uint8)
        self.label = np.zeros(self.can_fit, dtype=np.int32)
        self.num_examples_in_batch = 0
        self.reset()

    def _walk(self, longest):
        """Skips through the file example by example using each record's byte size, checking the
        delimiter, the running index and the bounds; returns each example's start (in u16 units)."""
        offsets = np.zeros(self.num_examples, dtype=np.int64)
        data, pos = self._data, 0
        for i in range(self.num_examples):
            if pos + 3 > len(data):
                raise LlmcError(f"{self.path}: truncated: the header says {self.num_examples} examples, "
                                f"the file ends after {i}")
            delim, nbytes, index = (int(v) for v in data[pos:pos + 3])
            if delim != EVAL_DELIMITER or index != i:
                raise LlmcError(f"{self.path}: example {i}: expected delimiter {EVAL_DELIMITER} and index {i}, "
                                f"found {delim} and {index}")
            if nbytes % 2 != 0 or not 6 < nbytes <= longest:
                raise LlmcError(f"{self.path}: example {i}: expected an even size of 8..{longest} bytes "
                                f"(the header's longest), found {nbytes}")
            offsets[i] = pos
            pos += nbytes // 2
        if pos != len(data):
            raise LlmcError(f"{self.path}: expected {self.num_examples} examples in {HEADER_BYTES + 2 * pos} "
                            f"bytes, found {HEADER_BYTES + 2 * len(data)}")
        return offsets

    def _record(self, i):
        """Example i's (label, context tokens, [4 x ending tokens]), its fields checked."""
        pos = int(self._offsets[i])
        nwords = int(self._data[pos + 1]) // 2
        rec = self._data[pos + 3:pos + nwords]  # label, num_completions, ctx_len, ctx..., 4 x (len, tokens...)
        where = f"{self.path}: example {i}"
        if len(rec) < 3:
            raise LlmcError(f"{where}: record too short ({nwords} u16 values)")
        label, num_completions, ctx_len = (int(v) for v in rec[:3])
        if not 0 <= label < NUM_COMPLETIONS:
            raise LlmcError(f"{where}: expected a label in 0..{NUM_COMPLETIONS - 1}, found {label}")
        if num_completions != NUM_COMPLETIONS:
            raise LlmcError(f"{where}: expected {NUM_COMPLETIONS} endings, found {num_completions}")
        if ctx_len <= 0:
            raise LlmcError(f"{where}: expected a context of at least 1 token, found {ctx_len}")
        ctx = rec[3:3 + ctx_len]
        p = 3 + ctx_len
        endings = []
        for c in range(NUM_COMPLETIONS):
            if p >= len(rec):
                raise LlmcError(f"{where}: record ends inside ending {c}")
            n = int(rec[p])
            ending = rec[p + 1:p + 1 + n]
            if n <= 0:
                raise LlmcError(f"{where}: ending {c} is empty")
            if len(ending) != n:
                raise LlmcError(f"{where}: the record ends after {len(ending)} of ending {c}'s {n} tokens")
            endings.append(ending)
            p += 1 + n
        if p != len(rec):
            raise LlmcError(f"{where}: {len(rec) - p} u16 values left over after the 4 endings")
        return label, ctx, endings

    def _check_records(self, longest):
        """Every record's fields, and every example against T: its context plus its longest ending must be
        shorter than T (the last position has no target), and llm.c's bound on the header's longest example
        (under 5*T u16 values) must hold. The error names the first example that does not fit and the
        smallest T that fits them all."""
        bytes_per_T = (1 + NUM_COMPLETIONS) * 2
        need = [len(ctx) + max(len(e) for e in endings) + 1
                for ctx, endings in (self._record(i)[1:] for i in range(self.num_examples))]
        min_T = max(max(need), longest // bytes_per_T + 1)
        if self.T >= min_T:
            return
        fix = f"every example fits with -t {min_T} or more"
        first = next((i for i, n in enumerate(need) if n > self.T), None)
        if first is None:
            raise LlmcError(f"{self.path}: the longest example is {longest} bytes, expected less than "
                            f"{bytes_per_T * self.T} for T={self.T}: {fix}")
        _, ctx, endings = self._record(first)
        c = max(range(NUM_COMPLETIONS), key=lambda k: len(endings[k]))
        raise LlmcError(f"{self.path}: example {first} does not fit T={self.T}: its {len(ctx)}-token context "
                        f"and {len(endings[c])}-token ending {c} need T >= {need[first]}; {fix}")

    def reset(self):
        """Back to this rank's first example."""
        self.current_example_index = self.start_example_index

    def _load_example(self, slot):
        """Writes example current_example_index into rows 4*slot .. 4*slot+3 (checked to fit at open)."""
        label, ctx, endings = self._record(self.current_example_index)
        ctx_len = len(ctx)
        for c, ending in enumerate(endings):
            row, n = slot * NUM_COMPLETIONS + c, len(ending)
            self.inputs[row, :ctx_len] = ctx
            self.inputs[row, ctx_len:ctx_len + n] = ending
            # the last context token predicts the first ending token, and so on
            self.targets[row, ctx_len - 1:ctx_len - 1 + n] = ending
            self.mask[row, ctx_len - 1:ctx_len - 1 + n] = 1
        self.label[slot] = label
        self.current_example_index += 1

    def next_batch(self):
        """Fills up to B/4 examples of this rank; the mask is cleared first, inputs/targets are not."""
        self.mask.fill(0)
        self.num_examples_in_batch = 0
        for slot in range(self.can_fit):
            if self.current_example_index >= self.end_example_index:
                break  # this rank's share is done: the rest of the batch stays masked out
            self._load_example(slot)
            self.num_examples_in_batch += 1
        return self.inputs, self.targets
