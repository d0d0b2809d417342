"""GPT-2 tokenizer: llm.c's gpt2_tokenizer.bin (decode and safe printing) and the GPT-2 encoding for data prep.

The non-obvious decision: the GPT-2 encoding can be built offline from a local ranks file named by
LLMC_GPT2_TIKTOKEN, and that file is parsed here rather than by tiktoken.load.load_tiktoken_bpe, because
tiktoken's loader caches local files by path name in a temp folder and would keep serving the old ranks
after the file at that path changed. Prompts are encoded from gpt2_tokenizer.bin itself: GPT-2's BPE rank
of a token is its id, so the decode table is also the encoder's ranks and sampling needs no download.
tiktoken is imported only by the encoding functions: training reads gpt2_tokenizer.bin and needs no tiktoken.
"""
import base64
import binascii
import os
import sys

import numpy as np

from llmc_py import LlmcError
from llmc_py.fileio import HEADER_BYTES, atomic_write, check_size, make_header, read_header

TOKENIZER_MAGIC = 20240328
GPT2_VOCAB_SIZE = 50257
GPT2_EOT = 50256
GPT2_TIKTOKEN_ENV = "LLMC_GPT2_TIKTOKEN"
# tiktoken's own gpt2 pattern (tiktoken_ext/openai_public.py, r50k_pat_str): the original GPT-2 pattern
# rewritten with possessive quantifiers, same tokens, faster.
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
# C's isprint (0x20..0x7E) and isspace (space, \t, \n, \v, \f, \r) in the "C" locale
PRINTABLE_OR_SPACE = frozenset(range(0x20, 0x7F)) | frozenset(b" \t\n\v\f\r")


# ----------------------------------------------------------------------------
# gpt2_tokenizer.bin

def write_tokenizer(path, token_bytes, eot_token, version=2):
    """Writes gpt2_tokenizer.bin: 256 x u32 header, then per token a u8 length and its raw bytes."""
    n = len(token_bytes)
    if version not in (1, 2):
        raise LlmcError(f"{path}: tokenizer version must be 1 or 2, found {version}")
    if version == 1 and (n != GPT2_VOCAB_SIZE or eot_token != GPT2_EOT):
        # version 1 has no EOT slot: readers assume GPT-2's vocab, so nothing else may be written as v1
        raise LlmcError(f"{path}: tokenizer version 1 needs {GPT2_VOCAB_SIZE} tokens with EOT {GPT2_EOT}, "
                        f"found {n} tokens with EOT {eot_token}")
    if not 0 <= eot_token < n:
        raise LlmcError(f"{path}: EOT token must be one of the {n} tokens, found {eot_token}")
    for i, b in enumerate(token_bytes):
        if not 0 < len(b) < 256:
            raise LlmcError(f"{path}: token {i} must be 1..255 bytes to fit a u8 length, found {len(b)} bytes")
    header = make_header(TOKENIZER_MAGIC, version, dtype=np.uint32)
    header[2] = n
    if version == 2:
        header[3] = eot_token
    with atomic_write(path) as f:
        f.write(header.astype("<u4").tobytes())
        f.write(b"".join(bytes([len(b)]) + b for b in token_bytes))


class Tokenizer:
    """The decode side of llm.c's tokenizer: token id -> raw bytes."""

    def __init__(self, token_bytes, eot_token, path="the tokenizer"):
        self.token_bytes = token_bytes
        self.vocab_size = len(token_bytes)
        self.eot_token = eot_token
        self.path = path
        self._encoding = None

    @classmethod
    def load(cls, path):
        header, size = read_header(path, TOKENIZER_MAGIC, (1, 2), dtype=np.uint32, what="tokenizer")
        version, n = int(header[1]), int(header[2])
        if version == 1:
            if n != GPT2_VOCAB_SIZE:
                raise LlmcError(f"{path}: tokenizer version 1 must hold {GPT2_VOCAB_SIZE} tokens, found {n}")
            eot_token = GPT2_EOT
        else:
            eot_token = int(header[3])
            if eot_token >= n:
                raise LlmcError(f"{path}: EOT token must be one of the {n} tokens, found {eot_token}")
        with open(path, "rb") as f:
            f.seek(HEADER_BYTES)
            data = f.read()
        # the records carry no offsets, so the only size check is walking them to the end
        token_bytes = []
        pos = 0
        for i in range(n):
            length = data[pos] if pos < len(data) else 0
            if pos + 1 + length > len(data):
                raise LlmcError(f"{path}: truncated tokenizer: expected {n} token records, "
                                f"found {i} whole ones in {size} bytes")
            if length == 0:
                raise LlmcError(f"{path}: token {i}: expected a length of 1..255 bytes, found 0")
            token_bytes.append(data[pos + 1:pos + 1 + length])
            pos += 1 + length
        check_size(path, size, HEADER_BYTES + pos, f"{n} tokenizer records")
        return cls(token_bytes, eot_token, str(path))

    @classmethod
    def load_optional(cls, path):
        """llm.c trains without a tokenizer file (samples print as ids); a corrupt one is still an error."""
        if not os.path.exists(path):
            print("---")
            print(f"WARNING: Failed to open the tokenizer file {path}")
            print("The tokenizer is written by `python train_gpt2.py`; samples will print token ids instead of text.")
            print("---")
            return None
        return cls.load(path)

    def decode(self, token_id):
        if not 0 <= token_id < self.vocab_size:
            raise LlmcError(f"invalid token id {token_id}: the tokenizer has {self.vocab_size} tokens")
        return self.token_bytes[token_id]

    def safe_bytes(self, token_id):
        """The bytes llm.c's safe printing writes for one token.

        llm.c writes the token as a C string (so it stops at the first 0x00) and drops lone control bytes
        that would garble a terminal; multi-byte tokens are written raw, partial UTF-8 included. For an
        out-of-range id llm.c prints an "invalid token id" line instead; sampling only draws ids below
        vocab_size, so here that case simply writes nothing.
        """
        if not 0 <= token_id < self.vocab_size:
            return b""
        b = self.token_bytes[token_id]
        if len(b) == 1 and b[0] not in PRINTABLE_OR_SPACE:
            return b""
        return b.split(b"\x00", 1)[0]

    def decode_safe_text(self, ids):
        """Safe bytes of consecutive tokens joined first, so UTF-8 split across tokens decodes whole."""
        return b"".join(self.safe_bytes(int(i)) for i in ids).decode("utf-8", errors="replace")

    def encode(self, text):
        """GPT-2 token ids of `text` (an <|endoftext|> in it becomes EOT), ranked by this file's own tokens."""
        if self._encoding is None:
            if (self.vocab_size, self.eot_token) != (GPT2_VOCAB_SIZE, GPT2_EOT):
                raise LlmcError(f"{self.path}: encoding text needs GPT-2's tokenizer ({GPT2_VOCAB_SIZE} tokens, "
                                f"EOT {GPT2_EOT}), found {self.vocab_size} tokens with EOT {self.eot_token}")
            ranks = {b: i for i, b in enumerate(self.token_bytes[:GPT2_EOT])}
            # BPE starts from single bytes: each of the 256 must be a token, and no two tokens may repeat
            if len(ranks) != GPT2_EOT or any(bytes([i]) not in ranks for i in range(256)):
                raise LlmcError(f"{self.path}: expected GPT-2's {GPT2_EOT} distinct tokens covering every single "
                                f"byte, found {len(ranks)} distinct tokens")
            self._encoding = gpt2_encoding(ranks)
        return self._encoding.encode(text, allowed_special="all")


def print_token(tokenizer, token_id):
    """Prints one sampled token at once: its safe bytes, or its id and a space when there is no tokenizer."""
    if tokenizer is None:
        sys.stdout.write(f"{token_id} ")
    else:
        sys.stdout.flush()  # text printed earlier goes out before these raw bytes
        sys.stdout.buffer.write(tokenizer.safe_bytes(token_id))
    sys.stdout.flush()


# ----------------------------------------------------------------------------
# GPT-2 encoding (data prep, prompts)

def get_gpt2_encoding():
    """tiktoken's "gpt2" Encoding, from LLMC_GPT2_TIKTOKEN's ranks file if set, else tiktoken's download."""
    import tiktoken

    path = os.environ.get(GPT2_TIKTOKEN_ENV)
    if path:
        return gpt2_encoding(load_gpt2_ranks(path))
    try:
        return tiktoken.get_encoding("gpt2")
    # tiktoken surfaces network, hash and cache failures as many exception types; all mean "no encoding"
    except Exception as e:
        cause = (str(e).splitlines() or [type(e).__name__])[0]
        cause = cause if len(cause) <= 160 else cause[:160] + "..."
        raise LlmcError(f"cannot get the GPT-2 encoding from tiktoken ({cause}): give tiktoken network "
                        f"access for its download, or set {GPT2_TIKTOKEN_ENV} to a GPT-2 ranks file "
                        f"such as gpt2.tiktoken") from None


def gpt2_encoding(ranks):
    """tiktoken's "gpt2" Encoding from GPT-2's 50,256 BPE ranks {token bytes: rank}."""
    import tiktoken

    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PAT_STR, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": GPT2_EOT}, explicit_n_vocab=GPT2_VOCAB_SIZE)


def load_gpt2_ranks(path):
    """Parses a tiktoken ranks file (one "base64(token) rank" per line) and checks it is GPT-2's 50,256 ranks."""
    where = f"{GPT2_TIKTOKEN_ENV}={path}"
    try:
        with open(path, "rb") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise LlmcError(f"{where}: cannot read the GPT-2 ranks file: {e.strerror}") from None
    ranks = {}
    for lineno, line in enumerate(lines, 1):
        if not line:
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error):
            raise LlmcError(f"{where}: line {lineno}: expected 'base64-token rank', "
                            f"found {line[:60]!r}") from None
    if sorted(ranks.values()) != list(range(GPT2_EOT)):
        raise LlmcError(f"{where}: expected GPT-2's {GPT2_EOT} distinct ranks 0..{GPT2_EOT - 1}, "
                        f"found {len(ranks)} tokens with ranks {min(ranks.values(), default='none')}.."
                        f"{max(ranks.values(), default='none')}")
    return ranks


def gpt2_token_bytes(enc):
    """Raw bytes of every token id 0..n_vocab-1, as gpt2_tokenizer.bin stores them."""
    return [enc.decode_single_token_bytes(i) for i in range(enc.n_vocab)]
