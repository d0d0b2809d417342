"""gpt2_tokenizer.bin round trips and sizes, llm.c's safe printing, and the offline GPT-2 encoding."""
import os

import numpy as np
import pytest

from llmc_py import LlmcError
from llmc_py.tokenizer import (GPT2_PAT_STR, Tokenizer, get_gpt2_encoding, gpt2_token_bytes,
                               write_tokenizer)

# 50,257 distinct tokens of 1..3 bytes, EOT last as in GPT-2: enough for v1 without the ranks file
GPT2_SHAPED = [bytes([i % 256]) * (1 + i % 3) + i.to_bytes(2, "little")[:i % 2] for i in range(50256)]
GPT2_SHAPED.append(b"<|endoftext|>")


def small_tokenizer(tmp_path, tokens, eot=0, version=2):
    path = tmp_path / "tok.bin"
    write_tokenizer(path, tokens, eot, version)
    return path


def header_words(path):
    return np.fromfile(path, dtype="<u4", count=256)


def patch_word(path, slot, value):
    with open(path, "r+b") as f:
        f.seek(4 * slot)
        f.write(int(value).to_bytes(4, "little"))


# ----------------------------------------------------------------------------
# file format

def test_round_trip_v2(tmp_path):
    tokens = [b"a", b"\xe2\x82", b"<|endoftext|>", bytes(range(1, 256))]
    path = small_tokenizer(tmp_path, tokens, eot=2)
    words = header_words(path)
    assert list(words[:4]) == [20240328, 2, 4, 2] and not words[4:].any()
    assert os.path.getsize(path) == 1024 + (1 + 1) + (1 + 2) + (1 + 13) + (1 + 255)
    tok = Tokenizer.load(path)
    assert (tok.vocab_size, tok.eot_token, tok.token_bytes) == (4, 2, tokens)
    assert tok.decode(1) == b"\xe2\x82"


def test_round_trip_v1(tmp_path):
    path = small_tokenizer(tmp_path, GPT2_SHAPED, eot=50256, version=1)
    words = header_words(path)
    assert list(words[:4]) == [20240328, 1, 50257, 0]
    tok = Tokenizer.load(path)
    assert (tok.vocab_size, tok.eot_token) == (50257, 50256)
    assert tok.token_bytes == GPT2_SHAPED


def test_gpt2_tokenizer_file(tmp_path, gpt2_tiktoken):
    enc = get_gpt2_encoding()
    path = tmp_path / "gpt2_tokenizer.bin"
    write_tokenizer(path, gpt2_token_bytes(enc), enc.eot_token)
    assert os.path.getsize(path) == 372108
    tok = Tokenizer.load(path)
    assert (tok.vocab_size, tok.eot_token) == (50257, 50256)
    assert tok.decode(188) == b"\x00"
    assert tok.decode(50256) == b"<|endoftext|>"
    assert tok.decode(15496) == b"Hello"
    assert max(len(b) for b in tok.token_bytes) == 128


def test_writer_rejects_bad_tokens(tmp_path):
    with pytest.raises(LlmcError, match=r"token 1 must be 1\.\.255 bytes .*found 0 bytes"):
        write_tokenizer(tmp_path / "t.bin", [b"a", b""], 0)
    with pytest.raises(LlmcError, match=r"token 0 must be 1\.\.255 bytes .*found 256 bytes"):
        write_tokenizer(tmp_path / "t.bin", [b"x" * 256], 0)
    with pytest.raises(LlmcError, match="version 1 needs 50257 tokens with EOT 50256, found 2 tokens"):
        write_tokenizer(tmp_path / "t.bin", [b"a", b"b"], 1, version=1)
    assert not any(tmp_path.iterdir())  # nothing half-written


# ----------------------------------------------------------------------------
# safe printing

def test_safe_bytes(tmp_path):
    tokens = [b"\x01", b"\x7f", b"A", b" ", b"\t", b"\n", b"\x0b", b"\x0c", b"\r",
              b"ab\x00cd", b"\xe2\x82", b"\xac", b"\x00", b"\xff", b"\xf0\x9f", b"\x98\x80"]
    tok = Tokenizer.load(small_tokenizer(tmp_path, tokens))
    assert tok.safe_bytes(0) == b""            # lone control byte
    assert tok.safe_bytes(1) == b""            # DEL is not printable
    assert tok.safe_bytes(2) == b"A"
    assert [tok.safe_bytes(i) for i in range(3, 9)] == [b" ", b"\t", b"\n", b"\x0b", b"\x0c", b"\r"]
    assert tok.safe_bytes(9) == b"ab"          # written as a C string: stops at 0x00
    assert tok.safe_bytes(10) == b"\xe2\x82"   # partial UTF-8 written raw
    assert tok.safe_bytes(12) == b""
    assert tok.safe_bytes(13) == b""           # a lone high byte is not printable either
    assert tok.safe_bytes(11) == b""           # so is a lone UTF-8 continuation byte
    assert tok.safe_bytes(16) == b"" and tok.safe_bytes(-1) == b""
    # U+1F600 split over two 2-byte tokens decodes whole; the euro sign loses its lone last byte
    assert tok.decode_safe_text([2, 14, 15, 0, 9]) == "A\U0001F600ab"
    assert tok.decode_safe_text([10, 11, 2]) == "\ufffdA"
    with pytest.raises(LlmcError, match="invalid token id 16: the tokenizer has 16 tokens"):
        tok.decode(16)


def test_print_token_keeps_order_on_a_pipe(tmp_path):
    """Raw token bytes and text printed before them come out in order even when stdout is a pipe (buffered)."""
    import subprocess
    import sys
    path = small_tokenizer(tmp_path, [b"A", b"\xe2\x82\xac", b"\x01"])
    code = (f"from llmc_py.tokenizer import Tokenizer, print_token\n"
            f"tok = Tokenizer.load({str(path)!r})\n"
            f"print('generating:')\n"
            f"for t in (0, 1, 2, 0):\n    print_token(tok, t)\n"
            f"print('|')\n"
            f"for t in (2, 0):\n    print_token(None, t)\n"
            f"print('end')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, timeout=60).stdout
    assert out == "generating:\nA\u20acA|\n2 0 end\n".encode()  # the lone control byte 0x01 is not printed


def test_load_optional(tmp_path, capsys):
    path = tmp_path / "gpt2_tokenizer.bin"
    assert Tokenizer.load_optional(path) is None
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "---" and out[-1] == "---"
    assert out[1] == f"WARNING: Failed to open the tokenizer file {path}"
    write_tokenizer(path, [b"a", b"b"], 1)
    assert Tokenizer.load_optional(path).token_bytes == [b"a", b"b"]
    patch_word(path, 0, 1234)
    with pytest.raises(LlmcError, match="bad magic"):
        Tokenizer.load_optional(path)


# ----------------------------------------------------------------------------
# reader errors: one line naming the file, what was expected and what was found

def test_truncated(tmp_path):
    path = small_tokenizer(tmp_path, [b"ab", b"cde", b"f"])
    with open(path, "r+b") as f:
        f.truncate(1024 + 3 + 2)
    with pytest.raises(LlmcError, match=rf"^{path}: truncated tokenizer: expected 3 token records, "
                                        rf"found 1 whole ones in 1029 bytes$"):
        Tokenizer.load(path)
    with open(path, "r+b") as f:
        f.truncate(100)
    with pytest.raises(LlmcError, match=rf"^{path}: expected a 1024-byte tokenizer header, found a 100-byte file$"):
        Tokenizer.load(path)


def test_trailing_garbage(tmp_path):
    path = small_tokenizer(tmp_path, [b"ab", b"cde", b"f"])
    with open(path, "ab") as f:
        f.write(b"\x00junk")
    with pytest.raises(LlmcError, match=rf"^{path}: expected 1033 bytes for 3 tokenizer records, found 1038$"):
        Tokenizer.load(path)


def test_wrong_magic(tmp_path):
    path = small_tokenizer(tmp_path, [b"a"])
    patch_word(path, 0, 20240520)
    with pytest.raises(LlmcError, match=rf"^{path}: bad magic: expected 20240328 \(tokenizer\), found 20240520$"):
        Tokenizer.load(path)


def test_wrong_version(tmp_path):
    path = small_tokenizer(tmp_path, [b"a"])
    patch_word(path, 1, 3)
    with pytest.raises(LlmcError, match=rf"^{path}: unsupported tokenizer version: expected 1 or 2, found 3$"):
        Tokenizer.load(path)


def test_v1_wrong_vocab_size(tmp_path):
    path = small_tokenizer(tmp_path, [b"a", b"b"], eot=1)
    patch_word(path, 1, 1)
    with pytest.raises(LlmcError, match=rf"^{path}: tokenizer version 1 must hold 50257 tokens, found 2$"):
        Tokenizer.load(path)


def test_eot_out_of_range(tmp_path):
    path = small_tokenizer(tmp_path, [b"a", b"b"], eot=1)
    patch_word(path, 3, 2)
    with pytest.raises(LlmcError, match=rf"^{path}: EOT token must be one of the 2 tokens, found 2$"):
        Tokenizer.load(path)


def test_zero_length_record(tmp_path):
    path = small_tokenizer(tmp_path, [b"a", b"b"])
    with open(path, "r+b") as f:
        f.seek(1024 + 2)
        f.write(b"\x00")
    with pytest.raises(LlmcError, match=rf"^{path}: token 1: expected a length of 1\.\.255 bytes, found 0$"):
        Tokenizer.load(path)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.bin"
    with pytest.raises(LlmcError, match=rf"^{path}: tokenizer not found$"):
        Tokenizer.load(path)


# ----------------------------------------------------------------------------
# GPT-2 encoding

def test_gpt2_encoding_from_ranks_file(gpt2_tiktoken):
    import tiktoken_ext.openai_public

    enc = get_gpt2_encoding()
    # the same definition as tiktoken's own "gpt2"
    assert GPT2_PAT_STR == tiktoken_ext.openai_public.r50k_pat_str
    assert (enc.name, enc.n_vocab, enc.eot_token) == ("gpt2", 50257, 50256)
    assert enc.encode_ordinary("Hello world<|endoftext|>") == [15496, 995, 27, 91, 437, 1659, 5239, 91, 29]
    assert enc.encode("Hello world<|endoftext|>", allowed_special={"<|endoftext|>"}) == [15496, 995, 50256]
    assert enc.encode_ordinary("First Citizen:\n") == [5962, 22307, 25, 198]


def test_gpt2_encoding_missing_ranks_file(tmp_path, monkeypatch):
    path = tmp_path / "gpt2.tiktoken"
    monkeypatch.setenv("LLMC_GPT2_TIKTOKEN", str(path))
    with pytest.raises(LlmcError, match=rf"^LLMC_GPT2_TIKTOKEN={path}: cannot read the GPT-2 ranks file: "
                                        r"No such file or directory$"):
        get_gpt2_encoding()


def test_gpt2_encoding_garbled_ranks_file(tmp_path, monkeypatch, test_data_dir):
    path = tmp_path / "gpt2.tiktoken"
    monkeypatch.setenv("LLMC_GPT2_TIKTOKEN", str(path))
    path.write_bytes(b"IQ== 0\nnot-base64!! 1\n")
    with pytest.raises(LlmcError, match=rf"^LLMC_GPT2_TIKTOKEN={path}: line 2: expected 'base64-token rank', "
                                        r"found b'not-base64!! 1'$"):
        get_gpt2_encoding()
    # well-formed lines, but not all of GPT-2's ranks
    lines = (test_data_dir / "gpt2" / "gpt2.tiktoken").read_bytes().splitlines()
    path.write_bytes(b"\n".join(lines[:-1]))
    with pytest.raises(LlmcError, match=rf"^LLMC_GPT2_TIKTOKEN={path}: expected GPT-2's 50256 distinct ranks "
                                        r"0\.\.50255, found 50255 tokens with ranks 0\.\.50254$"):
        get_gpt2_encoding()


def test_gpt2_encoding_offline_without_ranks_file(monkeypatch):
    import tiktoken

    def no_network(name):
        raise ConnectionError("Failed to resolve 'openaipublic.blob.core.windows.net'")

    monkeypatch.delenv("LLMC_GPT2_TIKTOKEN", raising=False)
    monkeypatch.setattr(tiktoken, "get_encoding", no_network)
    with pytest.raises(LlmcError) as e:
        get_gpt2_encoding()
    msg = str(e.value)
    assert "\n" not in msg
    assert "Failed to resolve 'openaipublic.blob.core.windows.net'" in msg
    assert "give tiktoken network access for its download" in msg
    assert "set LLMC_GPT2_TIKTOKEN to a GPT-2 ranks file such as gpt2.tiktoken" in msg


def test_encode_with_the_tokenizer_file(tmp_path, gpt2_tiktoken, test_data_dir, monkeypatch):
    """gpt2_tokenizer.bin's tokens taken as BPE ranks (GPT-2's rank of a token is its id) encode exactly as
    tiktoken's GPT-2, with neither LLMC_GPT2_TIKTOKEN nor tiktoken's download."""
    import tiktoken
    enc = get_gpt2_encoding()
    path = tmp_path / "gpt2_tokenizer.bin"
    write_tokenizer(path, gpt2_token_bytes(enc), enc.eot_token)
    text = ((test_data_dir / "tinyshakespeare" / "input.txt").read_text()[:50000]
            + " naïve café 日本語 \U0001F600 <|endoftext|>x\n\n  ")
    monkeypatch.delenv("LLMC_GPT2_TIKTOKEN")
    monkeypatch.setattr(tiktoken, "get_encoding", None)
    tok = Tokenizer.load(path)
    assert tok.encode(text) == enc.encode(text, allowed_special="all")
    assert tok.encode("Hello world<|endoftext|>") == [15496, 995, 50256]


def test_encode_needs_gpt2s_tokenizer(tmp_path):
    with pytest.raises(LlmcError, match=r"tok\.bin: encoding text needs GPT-2's tokenizer \(50257 tokens, EOT 50256\), "
                                        r"found 3 tokens with EOT 2$"):
        Tokenizer.load(small_tokenizer(tmp_path, [b"a", b"b", b"<|endoftext|>"], eot=2)).encode("ab")
    # GPT-2's shape, but the odd single bytes are missing: BPE could not start from every byte
    with pytest.raises(LlmcError, match=r"tok\.bin: expected GPT-2's 50256 distinct tokens covering every single "
                                        r"byte, found 768 distinct tokens$"):
        Tokenizer.load(small_tokenizer(tmp_path, GPT2_SHAPED, eot=50256)).encode("ab")
