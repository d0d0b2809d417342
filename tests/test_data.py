"""Token shards (llm.c format), all-or-nothing output, download_file, read_jsonl, and dev/data/tinyshakespeare.py
end to end."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_common import OutputFiles, download_file, read_jsonl, write_datafile
from llmc_py import LlmcError
from llmc_py.dataloader import read_shard
from llmc_py.tokenizer import get_gpt2_encoding

EOT = 50256
REPO_ROOT = Path(__file__).resolve().parent.parent


def patch_word(path, slot, value):
    with open(path, "r+b") as f:
        f.seek(4 * slot)
        f.write(int(value).to_bytes(4, "little", signed=True))


@pytest.fixture
def shard(tmp_path):
    path = tmp_path / "shard.bin"
    write_datafile(path, [EOT, 0, 1, 65535, 198])
    return path


# ----------------------------------------------------------------------------
# shard format

def test_round_trip_and_header_bytes(tmp_path, capsys):
    shard = tmp_path / "shard.bin"
    write_datafile(shard, np.array([EOT, 0, 1, 65535, 198], dtype=np.uint16))
    assert capsys.readouterr().out == f"writing 5 tokens to {shard} (gpt-2, 1,034 bytes)\n"
    raw = shard.read_bytes()
    assert len(raw) == 1024 + 2 * 5
    assert raw[:12] == (20240520).to_bytes(4, "little") + (1).to_bytes(4, "little") + (5).to_bytes(4, "little")
    assert raw[12:1024] == bytes(1012)
    assert raw[1024:] == bytes.fromhex("50c4 0000 0100 ffff c600")
    toks = read_shard(shard)
    assert toks.dtype == np.uint16
    assert toks.tolist() == [EOT, 0, 1, 65535, 198]


def test_llama3_variant(tmp_path):
    path = tmp_path / "llama.bin"
    write_datafile(path, np.array([128000, 9906, 2], dtype=np.int64), model_desc="llama-3")
    raw = path.read_bytes()
    assert np.frombuffer(raw[:16], dtype="<i4").tolist() == [20240801, 7, 3, 0]
    assert np.frombuffer(raw[1024:], dtype="<u4").tolist() == [128000, 9906, 2]
    # llm.c's trainer reads only GPT-2 shards
    with pytest.raises(LlmcError, match=rf"^{path}: bad magic: expected 20240520 \(token shard\), found 20240801$"):
        read_shard(path)


def test_writer_errors(tmp_path):
    path = tmp_path / "bad.bin"
    with pytest.raises(LlmcError, match=rf"^{path}: gpt-2 tokens must be 0\.\.65535, found 0\.\.65536$"):
        write_datafile(path, [0, 65536])
    with pytest.raises(LlmcError, match=rf"^{path}: gpt-2 tokens must be 0\.\.65535, found -1\.\.3$"):
        write_datafile(path, [3, -1])
    with pytest.raises(LlmcError, match=rf"^{path}: a shard needs 1\.\.2147483647 tokens, found 0$"):
        write_datafile(path, [])
    # 2^31 tokens without allocating them
    with pytest.raises(LlmcError, match=rf"^{path}: a shard needs 1\.\.2147483647 tokens, found 2147483648$"):
        write_datafile(path, np.broadcast_to(np.uint16(0), (2**31,)))
    with pytest.raises(LlmcError, match=rf"^{path}: tokens must be integers, found dtype float64$"):
        write_datafile(path, [1.0])
    with pytest.raises(LlmcError, match=rf"^{path}: unknown model_desc: expected one of gpt-2, llama-3, found 'gpt2'$"):
        write_datafile(path, [1], model_desc="gpt2")
    assert not any(tmp_path.iterdir())


def test_wrong_magic(shard):
    patch_word(shard, 0, 20240328)
    with pytest.raises(LlmcError, match=rf"^{shard}: bad magic: expected 20240520 \(token shard\), found 20240328$"):
        read_shard(shard)


def test_wrong_version(shard):
    patch_word(shard, 1, 7)
    with pytest.raises(LlmcError, match=rf"^{shard}: unsupported token shard version: expected 1, found 7$"):
        read_shard(shard)


def test_empty_shard(shard):
    patch_word(shard, 2, 0)
    with pytest.raises(LlmcError, match=rf"^{shard}: empty shard: expected a token count > 0 in the header, found 0$"):
        read_shard(shard)
    patch_word(shard, 2, -3)
    with pytest.raises(LlmcError, match=rf"^{shard}: empty shard: .* found -3$"):
        read_shard(shard)


def test_truncated(shard):
    with open(shard, "r+b") as f:
        f.truncate(1024 + 7)
    with pytest.raises(LlmcError, match=rf"^{shard}: expected 1034 bytes for a shard of 5 u16 tokens, found 1031$"):
        read_shard(shard)
    with open(shard, "r+b") as f:
        f.truncate(10)
    with pytest.raises(LlmcError, match=rf"^{shard}: expected a 1024-byte token shard header, found a 10-byte file$"):
        read_shard(shard)


def test_size_mismatch(shard):
    patch_word(shard, 2, 4)  # header says 4 tokens, file holds 5
    with pytest.raises(LlmcError, match=rf"^{shard}: expected 1032 bytes for a shard of 4 u16 tokens, found 1034$"):
        read_shard(shard)


def test_missing_shard(tmp_path):
    path = tmp_path / "nope.bin"
    with pytest.raises(LlmcError, match=rf"^{path}: token shard not found$"):
        read_shard(path)


# ----------------------------------------------------------------------------
# OutputFiles: a run's files appear together, or not at all

def test_output_files_appear_together(tmp_path):
    out_dir = tmp_path / "a" / "b"
    with OutputFiles(out_dir) as out:
        write_datafile(out_dir / "one.bin", [1, 2, 3], outputs=out)
        write_datafile(out_dir / "two.bin", [4], outputs=out)
        # while the run goes on only hidden, staged names exist
        assert sorted(p.name for p in out_dir.iterdir()) == [".one.bin.partial", ".two.bin.partial"]
    assert sorted(p.name for p in out_dir.iterdir()) == ["one.bin", "two.bin"]
    assert read_shard(out_dir / "one.bin").tolist() == [1, 2, 3] and read_shard(out_dir / "two.bin").tolist() == [4]


@pytest.mark.parametrize("failure", [LlmcError("bad input"), KeyboardInterrupt()])
def test_output_files_failure_leaves_nothing(tmp_path, failure):
    out_dir = tmp_path / "made" / "by" / "run"
    with pytest.raises(type(failure)):
        with OutputFiles(out_dir) as out:
            write_datafile(out_dir / "one.bin", [1, 2, 3], outputs=out)
            raise failure
    assert list(tmp_path.iterdir()) == []  # the staged file and the three folders the run made are gone
    # a folder that existed keeps what it held, and only this run's files go
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "old.bin").write_bytes(b"old")
    with pytest.raises(type(failure)):
        with OutputFiles(kept) as out:
            write_datafile(kept / "one.bin", [1], outputs=out)
            raise failure
    assert [p.name for p in kept.iterdir()] == ["old.bin"]


# ----------------------------------------------------------------------------
# read_jsonl: a bad line is named with its line and column

def test_read_jsonl_error_keeps_line_and_column(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "fine"}\n\n{"text": "trailing comma",}\n')
    docs = read_jsonl(path, "text")
    assert next(docs) == (1, {"text": "fine"})
    with pytest.raises(LlmcError) as e:
        next(docs)
    # column 27 is the "}" after the comma
    assert str(e.value) == (f"{path}:3: not a JSON object: Expecting property name enclosed in double quotes "
                            f"at column 27")


# ----------------------------------------------------------------------------
# download_file (file:// URLs go through the same urllib path as https://)

def test_download_file(tmp_path, capsys):
    src = tmp_path / "src.txt"
    src.write_bytes(b"x" * 3000)
    dst = tmp_path / "dst.txt"
    download_file(src.as_uri(), str(dst), chunk_size=1024)
    assert dst.read_bytes() == b"x" * 3000
    # a tqdm bar named after the file, in bytes, ended with a newline when the download is whole
    last = capsys.readouterr().err.split("\r")[-1]
    assert last.startswith("dst.txt: 100%|") and "2.93k/2.93k" in last and last.endswith("\n")


def test_download_file_missing(tmp_path):
    url = (tmp_path / "absent.txt").as_uri()
    with pytest.raises(LlmcError, match=rf"^{url}: download to .*dst.txt failed: .*No such file"):
        download_file(url, str(tmp_path / "dst.txt"))
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------
# dev/data/tinyshakespeare.py (spec 5.2)

def test_tinyshakespeare(tinyshakespeare_dir, gpt2_tiktoken):
    val_path = tinyshakespeare_dir / "tiny_shakespeare_val.bin"
    train_path = tinyshakespeare_dir / "tiny_shakespeare_train.bin"
    assert val_path.stat().st_size == 66560
    assert train_path.stat().st_size == 611544
    val, train = read_shard(val_path), read_shard(train_path)
    assert (len(val), len(train)) == (32768, 305260)
    assert int((val == EOT).sum()) == 809
    assert int((val == EOT).sum() + (train == EOT).sum()) == 7222
    assert val[:8].tolist() == [50256, 5962, 22307, 25, 198, 8421, 356, 5120]
    assert get_gpt2_encoding().decode(val[:4].tolist()) == "<|endoftext|>First Citizen:"
    assert (tinyshakespeare_dir / "stdout.txt").read_text().splitlines() == [
        f"writing 32,768 tokens to {val_path} (gpt-2, 66,560 bytes)",
        f"writing 305,260 tokens to {train_path} (gpt-2, 611,544 bytes)",
    ]


def run_tinyshakespeare(*args):
    script = REPO_ROOT / "dev" / "data" / "tinyshakespeare.py"
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=60)


def test_tinyshakespeare_rejects_llama3(tmp_path):
    proc = run_tinyshakespeare("-m", "llama-3", "--out-dir", str(tmp_path))
    assert proc.returncode == 1
    assert proc.stderr == "error: -m llama-3 needs the LLaMA 3 tokenizer, which llmc-py does not ship: use -m gpt-2\n"
    assert not any(tmp_path.iterdir())


def test_tinyshakespeare_missing_input(tmp_path):
    missing = tmp_path / "absent.txt"
    proc = run_tinyshakespeare("--input", str(missing), "--out-dir", str(tmp_path))
    assert proc.returncode == 1
    assert proc.stderr == f"error: {missing}: cannot read the input text: No such file or directory\n"
