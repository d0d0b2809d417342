"""Evaluation, datasets and tools: the HellaSwag eval file (spec 5.5), EvalLoader and scoring (6.3),
dev/data/tinystories.py (5.3) and fineweb.py (5.4) on local inputs, dev/vislog.py, profile_gpt2cu.py (14)
and dev/export_hf.py.

Expected values are built independently in each test: file bytes with struct, batches from the jsonl's
own tokens, losses with a float64 log-softmax of the model's logits, safetensors read by a reader here.
No network: every script runs on small inputs the test writes, through the same code path a download takes.
"""
import contextlib
import importlib.util
import json
import math
import os
import random
import re
import signal
import struct
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from conftest import load_program
from llmc_py import LlmcError
from llmc_py.checkpoint import write_model
from llmc_py.config import GPT2Config, PARAM_NAMES
from llmc_py.dataloader import EvalLoader, read_shard
from llmc_py.gpt2 import GPT2
from llmc_py.hellaswag import evaluate, score_batch
from llmc_py.tokenizer import get_gpt2_encoding

REPO_ROOT = Path(__file__).resolve().parent.parent
EOT = 50256


def run_script(path, *args, env_tiktoken=None, timeout=120):
    """Runs a script; stdout and stderr come back as text exactly as written (a bar's \r stays a \r)."""
    env = dict(os.environ)
    if env_tiktoken is not None:
        env["LLMC_GPT2_TIKTOKEN"] = str(env_tiktoken)
    proc = subprocess.run([sys.executable, str(REPO_ROOT / path), *map(str, args)], capture_output=True,
                          timeout=timeout, env=env, cwd=REPO_ROOT)
    proc.stdout, proc.stderr = proc.stdout.decode(), proc.stderr.decode()
    return proc


def bar_states(stderr, prefix=""):
    """The states progress bars drew on stderr, in order (a \\r or \\n ends each), those starting with prefix."""
    return [part for part in re.split(r"[\r\n]", stderr) if part.strip() and part.startswith(prefix)]


def error_line(stderr):
    """The `error:` line, checked to start a line of its own (after a newline, not after a progress bar's
    carriage return or text) and to be the last thing written."""
    at = stderr.index("error: ")
    assert at == 0 or stderr[at - 1] == "\n", f"the error shares a line: {stderr[max(0, at - 80):at + 40]!r}"
    line = stderr[at:]
    assert line.endswith("\n") and "\n" not in line[:-1] and "\r" not in line
    return line[:-1]


def tiny_model(L=2, C=32, NH=2, maxT=64, V=50257, Vp=50304, std=0.3, seed=0):
    """A small GPT-2 with random weights large enough that endings get clearly different losses."""
    config = GPT2Config(max_seq_len=maxT, vocab_size=V, padded_vocab_size=Vp, num_layers=L, num_heads=NH, channels=C)
    rng = np.random.default_rng(seed)
    params = rng.normal(0.0, std, config.num_parameters).astype(np.float32)
    views = {n: params[o:o + k].reshape(s) for n, o, k, s in
             zip(PARAM_NAMES, config.param_offsets(), config.param_sizes(), config.param_shapes())}
    views["wte"][V:] = 0.0  # llm.c's padding rows
    for name in ("ln1w", "ln2w", "lnfw"):
        views[name][...] = 1.0 + 0.1 * views[name]
    return config, params


# ----------------------------------------------------------------------------
# HellaSwag: the eval file (spec 5.5)

HELLASWAG_EXAMPLES = [
    ("Roof shingle removal", "A man is sitting on a roof.", "he",
     ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.", "is holding a rubik's cube.",
      "starts pulling up roofing on a roof."], 3),
    ("Clean and jerk", "A lady walks to a barbell. She bends down and grabs the pole.", "the lady",
     ["swings and lands in her arms.", "pulls the barbell forward.", "pulls a rope attached to the barbell.",
      "stands and lifts the weight over her head."], 3),
    ("Canoeing", "Two women in a child are shown in a canoe while a man pulls the canoe while standing in the "
     "water, with other individuals visible in the background.", "the child and a different man",
     ["are then shown paddling down a river in a boat while a woman talks.",
      "are driving the canoe, they go down the river flowing side to side.",
      "sit in a canoe while the man paddles.", "walking go down the rapids, while the man in his helicopter "
      "almost falls and goes out of canoehood."], 2),
    ("Making a cake", "She adds sugar to the bowl — about two cups, she says.", "then she",
     ["mixes everything with a whisk until smooth.", "throws the bowl across the café.",
      "paints the oven blue.", "reads a newspaper upside down."], 0),
    ("Fixing a bike", "A boy flips his bicycle over on the grass.", "he",
     ["spins the wheel and oils the chain.", "eats the tire.", "flies away on it.",
      "sings to the handlebars."], 0),
]


def write_hellaswag_jsonl(path, examples=HELLASWAG_EXAMPLES, labels=None):
    """HellaSwag's real schema: ind, activity_label, ctx_a, ctx_b, ctx, endings, source_id, split, split_type, label."""
    with open(path, "w", encoding="utf-8") as f:
        for i, (activity, ctx_a, ctx_b, endings, label) in enumerate(examples):
            row = {"ind": 24 + i, "activity_label": activity, "ctx_a": ctx_a, "ctx_b": ctx_b,
                   "ctx": f"{ctx_a} {ctx_b}" if ctx_b else ctx_a, "split": "val", "split_type": "indomain",
                   "label": int(labels[i] if labels is not None else label), "endings": endings,
                   "source_id": f"activitynet~v_{i:08d}"}
            f.write(json.dumps(row) + "\n")


def rendered(enc, examples=HELLASWAG_EXAMPLES, labels=None):
    """(label, ctx tokens, 4 ending token lists) per example: context alone, endings with a leading space."""
    out = []
    for i, (_, ctx_a, ctx_b, endings, label) in enumerate(examples):
        ctx = f"{ctx_a} {ctx_b}" if ctx_b else ctx_a
        out.append((labels[i] if labels is not None else label, enc.encode(ctx), [enc.encode(" " + e) for e in endings]))
    return out


def expected_evalfile(examples):
    """The eval file's bytes, built here with struct from (label, ctx, endings)."""
    records = []
    for i, (label, ctx, endings) in enumerate(examples):
        words = [i, label, 4, len(ctx), *ctx]
        for e in endings:
            words += [len(e), *e]
        nbytes = 2 * (2 + len(words))
        records.append(struct.pack(f"<{2 + len(words)}H", 65535, nbytes, *words))
    header = struct.pack("<4i", 20240522, 1, len(records), max(len(r) for r in records)) + bytes(1024 - 16)
    return header + b"".join(records)


@pytest.fixture
def hellaswag_bin(gpt2_tiktoken, tmp_path):
    jsonl = tmp_path / "hellaswag_val.jsonl"
    write_hellaswag_jsonl(jsonl)
    proc = run_script("dev/data/hellaswag.py", "--input", jsonl, "--out-dir", tmp_path, env_tiktoken=gpt2_tiktoken)
    assert proc.returncode == 0, proc.stderr
    return tmp_path / "hellaswag_val.bin", proc


def test_hellaswag_file_byte_for_byte(hellaswag_bin):
    path, proc = hellaswag_bin
    enc = get_gpt2_encoding()
    expected = expected_evalfile(rendered(enc))
    assert path.read_bytes() == expected
    longest = struct.unpack_from("<i", expected, 12)[0]
    assert proc.stdout == f"writing 5 examples to {path} ({len(expected):,} bytes, longest example {longest} bytes)\n"
    last_bar = bar_states(proc.stderr)[-1]
    assert last_bar.startswith("tokenizing: 100%|") and "5/5" in last_bar
    # the context is encoded alone (no EOT), each ending with its leading space
    assert enc.decode(rendered(enc)[0][1]) == "A man is sitting on a roof. he"
    assert enc.decode(rendered(enc)[0][2][3]) == " starts pulling up roofing on a roof."


def test_hellaswag_bad_input(gpt2_tiktoken, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"ctx": "x", "endings": ["a", "b", "c"], "label": 0}) + "\n")
    proc = run_script("dev/data/hellaswag.py", "--input", bad, "--out-dir", tmp_path, env_tiktoken=gpt2_tiktoken)
    assert proc.returncode == 1
    assert proc.stderr == f"error: {bad}:1: expected 'endings' to be a list of 4 strings\n"
    assert not (tmp_path / "hellaswag_val.bin").exists()


# ----------------------------------------------------------------------------
# EvalLoader (spec 6.3)

def expected_rows(example, B, T):
    """(inputs, targets, mask) rows of one example, unset positions as -1 / 0."""
    _, ctx, endings = example
    inputs = np.full((4, T), -1)
    targets = np.full((4, T), -1)
    mask = np.zeros((4, T), dtype=np.uint8)
    for c, e in enumerate(endings):
        row = ctx + e
        inputs[c, :len(row)] = row
        for j, tok in enumerate(e):
            targets[c, len(ctx) - 1 + j] = tok
            mask[c, len(ctx) - 1 + j] = 1
    return inputs, targets, mask


def test_eval_loader_batches(hellaswag_bin):
    path, _ = hellaswag_bin
    examples = rendered(get_gpt2_encoding())
    B, T = 8, 64
    loader = EvalLoader(path, B, T)
    assert (loader.num_examples, loader.can_fit, loader.num_batches) == (5, 2, 3)
    seen = []
    for batch in range(loader.num_batches):
        inputs, targets = loader.next_batch()
        assert inputs.dtype == targets.dtype == np.int32 and inputs.shape == (B, T)
        assert loader.mask.shape == (B, T)
        n = loader.num_examples_in_batch
        assert n == (2 if batch < 2 else 1)
        for slot in range(2):
            rows = slice(4 * slot, 4 * slot + 4)
            if slot >= n:
                assert not loader.mask[rows].any()  # empty slots stay masked out
                continue
            idx = 2 * batch + slot
            exp_in, exp_tg, exp_mask = expected_rows(examples[idx], B, T)
            set_in, set_tg = exp_in >= 0, exp_tg >= 0
            np.testing.assert_array_equal(inputs[rows][set_in], exp_in[set_in])
            np.testing.assert_array_equal(targets[rows][set_tg], exp_tg[set_tg])
            np.testing.assert_array_equal(loader.mask[rows], exp_mask)
            # wherever mask is 1 the target is the next input: the model predicts the ending token by token
            m = loader.mask[rows] == 1
            np.testing.assert_array_equal(targets[rows][m], np.roll(inputs[rows], -1, axis=1)[m])
            assert loader.label[slot] == examples[idx][0]
            seen.append(idx)
    assert seen == [0, 1, 2, 3, 4]
    loader.reset()
    loader.next_batch()
    assert loader.label[:2].tolist() == [examples[0][0], examples[1][0]]


def test_eval_loader_ranks(hellaswag_bin):
    path, _ = hellaswag_bin
    # P=2: per_proc = ceil(5/2) = 3; rank 0 owns 0..2, rank 1 owns 3..4; both run ceil(3/2) = 2 batches
    r0, r1 = EvalLoader(path, 8, 64, 0, 2), EvalLoader(path, 8, 64, 1, 2)
    assert (r0.start_example_index, r0.end_example_index, r0.num_batches) == (0, 3, 2)
    assert (r1.start_example_index, r1.end_example_index, r1.num_batches) == (3, 5, 2)
    counts = []
    for loader in (r0, r1):
        for _ in range(loader.num_batches):
            loader.next_batch()
            counts.append(loader.num_examples_in_batch)
    assert counts == [2, 1, 2, 0]
    assert not r1.mask.any()
    # P=3 with B=4: per_proc 2, one example per batch
    r2 = EvalLoader(path, 4, 64, 2, 3)
    assert (r2.start_example_index, r2.end_example_index, r2.num_batches, r2.can_fit) == (4, 5, 2, 1)


def test_eval_loader_errors(hellaswag_bin, tmp_path):
    path, _ = hellaswag_bin
    with pytest.raises(LlmcError, match=r"HellaSwag needs a batch size B of at least 4 .*found B=3$"):
        EvalLoader(path, 3, 64)
    with pytest.raises(LlmcError, match=r"expected at least one example per process \(6\), found 5 examples$"):
        EvalLoader(path, 8, 64, 0, 6)
    raw = bytearray(path.read_bytes())
    bad = tmp_path / "bad.bin"
    bad.write_bytes(raw[:-2])
    with pytest.raises(LlmcError, match=r"bad.bin: expected 5 examples in \d+ bytes, found \d+$"):
        EvalLoader(bad, 8, 64)
    raw[0:4] = struct.pack("<i", 20240520)
    bad.write_bytes(raw)
    with pytest.raises(LlmcError, match=r"bad magic: expected 20240522 \(HellaSwag eval file\), found 20240520$"):
        EvalLoader(bad, 8, 64)


def fit_needs(examples):
    """Per example, the smallest T it fits: context + its longest ending + 1 (the last input has no target)."""
    return [len(ctx) + max(len(e) for e in endings) + 1 for _, ctx, endings in examples]


def test_eval_loader_checks_every_example_against_T(hellaswag_bin):
    """T is checked against every example when the loader opens, not at the batch that holds the example."""
    path, _ = hellaswag_bin
    examples = rendered(get_gpt2_encoding())
    need = fit_needs(examples)
    longest = struct.unpack_from("<i", path.read_bytes(), 12)[0]
    min_T = max(max(need), longest // 10 + 1)  # llm.c's bound: the longest example under 5*T u16 values
    assert max(need) > longest // 10 + 1 and need.index(max(need)) > 0  # the first examples fit a shorter T
    loader = EvalLoader(path, 8, min_T)  # the smallest T fits every example, through every batch
    for _ in range(loader.num_batches):
        loader.next_batch()
    for T in (min_T - 1, need[0] - 1, 8):
        first = next(i for i, n in enumerate(need) if n > T)
        _, ctx, endings = examples[first]
        c = max(range(4), key=lambda k: len(endings[k]))
        with pytest.raises(LlmcError) as e:
            EvalLoader(path, 8, T)
        assert str(e.value) == (f"{path}: example {first} does not fit T={T}: its {len(ctx)}-token context and "
                                f"{len(endings[c])}-token ending {c} need T >= {need[first]}; every example fits "
                                f"with -t {min_T} or more")


def test_eval_loader_header_bound(tmp_path):
    """An example can fit T while the file breaks llm.c's bound on the longest example: the bound names the fix."""
    path = tmp_path / "tiny.bin"
    path.write_bytes(expected_evalfile([(1, [5], [[1], [2], [3], [4]])]))  # 15 u16 values: 30 bytes
    EvalLoader(path, 4, 4)
    with pytest.raises(LlmcError) as e:
        EvalLoader(path, 4, 3)  # needs T >= 3 to fit, but 30 bytes is not under 5*3*2
    assert str(e.value) == f"{path}: the longest example is 30 bytes, expected less than 30 for T=3: every example " \
                           f"fits with -t 4 or more"


def test_eval_loader_checks_records_at_open(hellaswag_bin, tmp_path):
    """A bad field in the last example stops the loader at open, before any batch."""
    path, _ = hellaswag_bin
    raw = bytearray(path.read_bytes())
    label, ctx, endings = rendered(get_gpt2_encoding())[-1]
    # the last record: delimiter, size, index, label, 4, context length, context, 4 x (length, ending)
    label_at = len(raw) - 2 * (6 + len(ctx) + sum(1 + len(e) for e in endings)) + 2 * 3
    assert struct.unpack_from("<H", raw, label_at)[0] == label
    struct.pack_into("<H", raw, label_at, 4)
    bad = tmp_path / "bad.bin"
    bad.write_bytes(raw)
    with pytest.raises(LlmcError) as e:
        EvalLoader(bad, 8, 64)
    assert str(e.value) == f"{bad}: example 4: expected a label in 0..3, found 4"


# ----------------------------------------------------------------------------
# scoring (spec 6.3: stat_losses)

def test_score_batch_known_answers():
    B, T = 12, 8
    losses = np.full((B, T), 100.0, dtype=np.float32)  # unmasked positions must never count
    mask = np.zeros((B, T), dtype=np.uint8)

    def ending(row, values, start=2):
        losses[row, start:start + len(values)] = values
        mask[row, start:start + len(values)] = 1

    # slot 0: ending 2 has the lowest *mean* (1.5) though ending 1 has the lowest *sum* (2.0): acc_norm picks 2
    ending(0, [3.0, 3.0])
    ending(1, [2.0])
    ending(2, [1.0, 2.0, 1.5, 1.5])
    ending(3, [4.0, 0.5])
    # slot 1: endings 1 and 3 tie at the lowest mean: the first one wins
    ending(4, [2.0])
    ending(5, [1.0, 1.0])
    ending(6, [5.0])
    ending(7, [0.5, 1.5])
    # slot 2 is empty (no mask bit): inactive, never correct, even though its "prediction" 0 equals its label
    labels = np.array([2, 1, 0])
    assert score_batch(losses, mask, labels, 3) == 2
    assert score_batch(losses, mask, np.array([1, 3, 0]), 3) == 0
    assert score_batch(losses, mask, np.array([2, 1, 0]), 1) == 1  # only the first slot is scored


# ----------------------------------------------------------------------------
# evaluate end to end: GPT2.validate's per-token losses vs a float64 log-softmax of the logits

def independent_predictions(model, examples, B, T):
    """For each example: the ending with the smallest mean -log p over its tokens, from forward logits
    (B/4 examples per forward pass, nothing else shared with EvalLoader or the scoring code)."""
    V = model.config.vocab_size
    per_batch = B // 4
    preds = []
    for first in range(0, len(examples), per_batch):
        group = examples[first:first + per_batch]
        batch = np.zeros((B, T), dtype=np.int32)
        for k, (_, ctx, endings) in enumerate(group):
            for c, e in enumerate(endings):
                batch[4 * k + c, :len(ctx) + len(e)] = ctx + e
        logits = model.forward(batch)[:, :, :V].astype(np.float64)
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        for k, (_, ctx, endings) in enumerate(group):
            means = [np.mean([-logp[4 * k + c, len(ctx) - 1 + j, tok] for j, tok in enumerate(e)])
                     for c, e in enumerate(endings)]
            assert sorted(means)[1] - sorted(means)[0] > 1e-3, "near-tie: the comparison would be fragile"
            preds.append(int(np.argmin(means)))
    return preds


def test_evaluate_matches_independent_forward(gpt2_tiktoken, tmp_path):
    B, T = 8, 64
    model = GPT2.from_descriptor("d6")  # llm.c's seeded random init: endings differ by 0.02..0.3 in mean loss
    model.allocate(B, T)
    enc = get_gpt2_encoding()
    preds = independent_predictions(model, rendered(enc), B, T)
    # labels: the model's own choice for even examples, a wrong one for odd examples -> 3 of 5 correct
    labels = [p if i % 2 == 0 else (p + 1) % 4 for i, p in enumerate(preds)]
    jsonl = tmp_path / "hs.jsonl"
    write_hellaswag_jsonl(jsonl, labels=labels)
    proc = run_script("dev/data/hellaswag.py", "--input", jsonl, "--out-dir", tmp_path, env_tiktoken=gpt2_tiktoken)
    assert proc.returncode == 0, proc.stderr
    path = tmp_path / "hellaswag_val.bin"
    assert evaluate(model, EvalLoader(path, B, T)) == (3, 5)
    # two ranks: each scores its share; the sum is the single-process count
    by_rank = [evaluate(model, EvalLoader(path, B, T, r, 2)) for r in range(2)]
    assert [n for _, n in by_rank] == [5, 5]
    assert sum(c for c, _ in by_rank) == 3


# ----------------------------------------------------------------------------
# dev/data/tinystories.py (spec 5.3)

def make_story_shards(folder, sizes=(3, 5, 2)):
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for s, n in enumerate(sizes):
        stories = [{"story": f"  Once upon a time, shard {s} story {k}: a cat named Tom{'!' * k}\n",
                    "instruction": {"words": ["cat"]}} for k in range(n)]
        (folder / f"data{s:02d}.json").write_text(json.dumps(stories))
        shards.append(stories)
    return shards


def expected_tinystories(enc, shards):
    out = []
    for index, stories in enumerate(shards):
        stories = list(stories)
        random.Random(1337 + index).shuffle(stories)
        toks = []
        for s in stories:
            toks += [EOT] + enc.encode_ordinary(s["story"].strip())
        out.append(toks)
    return out


def test_tinystories_local_shards(gpt2_tiktoken, tmp_path):
    shards = make_story_shards(tmp_path / "in")
    out = tmp_path / "out"
    proc = run_script("dev/data/tinystories.py", "--input", tmp_path / "in", "--out-dir", out, "--workers", 2,
                      env_tiktoken=gpt2_tiktoken)
    assert proc.returncode == 0, proc.stderr
    enc = get_gpt2_encoding()
    val = read_shard(out / "TinyStories_val.bin")
    train = read_shard(out / "TinyStories_train.bin")
    exp_val = expected_tinystories(enc, shards[:1])[0]
    exp_train = sum(expected_tinystories(enc, shards[1:]), [])  # in shard order, each shuffled by its index in the split
    assert val.tolist() == exp_val
    assert train.tolist() == exp_train
    assert int((val == EOT).sum()) == 3 and int((train == EOT).sum()) == 7
    assert val[0] == EOT and train[0] == EOT
    assert "number of shards: 3" in proc.stdout
    assert f"writing {len(exp_val):,} tokens to {out / 'TinyStories_val.bin'}" in proc.stdout
    assert "tokenizing train: 100%|" in proc.stderr and "| 2/2 [" in proc.stderr
    # the same shards packed as the download's .tar.gz go through the unpack path to the same files
    archive = tmp_path / "TinyStories_all_data.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for f in sorted((tmp_path / "in").iterdir()):
            tar.add(f, arcname=f.name)
    out2 = tmp_path / "out2"
    proc = run_script("dev/data/tinystories.py", "--input", archive, "--out-dir", out2, "--workers", 1,
                      env_tiktoken=gpt2_tiktoken)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "TinyStories_all_data" / "data01.json").is_file()
    assert not (tmp_path / "TinyStories_all_data.partial").exists()
    # unpacking shows a bar over the archive's bytes, which ends full
    unpacked = bar_states(proc.stderr, "unpacking ")
    assert unpacked[-1].startswith("unpacking TinyStories_all_data.tar.gz: 100%|")
    for name in ("TinyStories_val.bin", "TinyStories_train.bin"):
        assert (out2 / name).read_bytes() == (out / name).read_bytes()


def test_tinystories_errors(gpt2_tiktoken, tmp_path):
    make_story_shards(tmp_path / "one", sizes=(2,))
    proc = run_script("dev/data/tinystories.py", "--input", tmp_path / "one", "--out-dir", tmp_path / "o",
                      env_tiktoken=gpt2_tiktoken)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and "expected at least 2 JSON shards" in proc.stderr
    make_story_shards(tmp_path / "bad")
    (tmp_path / "bad" / "data01.json").write_text('[{"text": "no story field"}]')
    proc = run_script("dev/data/tinystories.py", "--input", tmp_path / "bad", "--out-dir", tmp_path / "o",
                      "--workers", 2, env_tiktoken=gpt2_tiktoken)
    assert proc.returncode == 1
    assert error_line(proc.stderr).endswith("data01.json: expected a JSON list of objects with a string field 'story'")


def test_tinystories_failure_leaves_nothing(gpt2_tiktoken, tmp_path):
    """A malformed train shard: the val file already tokenized is not left behind (nor the output folder), the
    error keeps the JSON error's line and column, and the rerun after the fix writes a clean run's bytes."""
    make_story_shards(tmp_path / "in")
    clean = tmp_path / "clean"
    proc = run_script("dev/data/tinystories.py", "--input", tmp_path / "in", "--out-dir", clean, "--workers", 1,
                      env_tiktoken=gpt2_tiktoken)
    assert proc.returncode == 0, proc.stderr
    good = (tmp_path / "in" / "data02.json").read_text()
    (tmp_path / "in" / "data02.json").write_text(good[:-1] + ",\n]")  # a trailing comma on line 2
    out = tmp_path / "out"
    proc = run_script("dev/data/tinystories.py", "--input", tmp_path / "in", "--out-dir", out, "--workers", 1,
                      env_tiktoken=gpt2_tiktoken)
    assert proc.returncode == 1
    assert error_line(proc.stderr) == (f"error: {tmp_path / 'in' / 'data02.json'}: cannot read the JSON shard: "
                                       f"Expecting value: line 2 column 1 (char {len(good) + 1})")
    assert "writing" in proc.stdout and "TinyStories_val.bin" in proc.stdout  # val was written, then the run failed
    assert not out.exists()
    (tmp_path / "in" / "data02.json").write_text(good)
    proc = run_script("dev/data/tinystories.py", "--input", tmp_path / "in", "--out-dir", out, "--workers", 1,
                      env_tiktoken=gpt2_tiktoken)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["TinyStories_train.bin", "TinyStories_val.bin"]
    for name in ("TinyStories_val.bin", "TinyStories_train.bin"):
        assert (out / name).read_bytes() == (clean / name).read_bytes()


# ----------------------------------------------------------------------------
# dev/data/fineweb.py (spec 5.4)

def llmc_shards(docs, shard_size):
    """llm.c's sharding loop for documents shorter than a shard: append while `count + len < shard_size`,
    else complete the shard with the document's head and start the next with its tail."""
    shards, buf = [], []
    for toks in docs:
        if len(buf) + len(toks) < shard_size:
            buf += toks
        else:
            remainder = shard_size - len(buf)
            shards.append(buf + toks[:remainder])
            buf = toks[remainder:]
    if buf:
        shards.append(buf)
    return shards


def test_shard_writer_matches_llmc(tmp_path):
    fineweb = load_program("fineweb_under_test", "dev/data/fineweb.py")
    rng = np.random.default_rng(1)
    # documents of 1..10 tokens with shard size 10: splits, exact fills (a shard that ends on a document
    # boundary, so the next starts with EOT) and a final partial shard all occur
    docs = [[EOT] + rng.integers(0, 50000, rng.integers(0, 10)).tolist() for _ in range(40)]
    docs += [[EOT] + [7] * 9]  # fills a shard exactly when it lands on a fresh one
    writer = fineweb.ShardWriter(str(tmp_path), "fineweb", 10, "gpt-2")
    for d in docs:
        writer.add(np.array(d, dtype=np.uint16))
    files = writer.finish()
    expected = llmc_shards(docs, 10)
    assert any(s[0] == EOT for s in expected[1:]) and any(s[0] != EOT for s in expected[1:])
    assert [Path(f).name for f in files] == [f"fineweb_{'val' if i == 0 else 'train'}_{i:06d}.bin"
                                             for i in range(len(expected))]
    assert [read_shard(f).tolist() for f in files] == expected
    # a document longer than a whole shard spans several (llm.c's loop would overflow its buffer here)
    writer = fineweb.ShardWriter(str(tmp_path / "long"), "edu_fineweb", 4, "gpt-2")
    (tmp_path / "long").mkdir()
    for d in ([EOT, 1], [EOT] + list(range(2, 12)), [EOT, 99]):
        writer.add(np.array(d, dtype=np.uint16))
    got = [read_shard(f).tolist() for f in writer.finish()]
    assert got == [[EOT, 1, EOT, 2], [3, 4, 5, 6], [7, 8, 9, 10], [11, EOT, 99]]


def test_fineweb_local_jsonl(gpt2_tiktoken, tmp_path):
    texts = [f"Document {i}: " + " ".join(f"word{j}" for j in range(i * 7 % 23 + 1)) for i in range(30)]
    texts[5] = "Ünïcödé text — with “quotes” and\nnewlines.\n\n"
    (tmp_path / "in").mkdir()
    with open(tmp_path / "in" / "part_000.jsonl", "w", encoding="utf-8") as f:
        for t in texts[:20]:
            f.write(json.dumps({"text": t, "id": "x", "dump": "CC-MAIN"}) + "\n")
    with open(tmp_path / "in" / "part_001.jsonl", "w", encoding="utf-8") as f:
        for t in texts[20:]:
            f.write(json.dumps({"text": t}) + "\n")
    out = tmp_path / "out"
    shard_size = 64
    proc = run_script("dev/data/fineweb.py", "--input", tmp_path / "in", "--out-dir", out, "-s", shard_size,
                      "--workers", 2, env_tiktoken=gpt2_tiktoken)
    assert proc.returncode == 0, proc.stderr
    enc = get_gpt2_encoding()
    docs = [[EOT] + enc.encode_ordinary(t) for t in texts]
    assert max(map(len, docs)) < shard_size
    expected = llmc_shards(docs, shard_size)
    names = sorted((p.name for p in out.iterdir()), key=lambda n: n[-10:])  # by shard index
    assert names == ["fineweb_val_000000.bin"] + [f"fineweb_train_{i:06d}.bin" for i in range(1, len(expected))]
    got = [read_shard(out / n).tolist() for n in names]
    assert got == expected
    assert all(len(s) == shard_size for s in got[:-1]) and 0 < len(got[-1]) <= shard_size
    assert sum(s.count(EOT) for s in got) == len(texts)
    assert any(s[0] != EOT for s in got[1:]), "expected a document split across a shard boundary"
    assert f"wrote {len(expected)} shards to {out}" in proc.stdout
    # a bar per shard, in tokens, each full when its shard is written
    bars = bar_states(proc.stderr, "shard ")
    assert any(re.match(rf"shard 0: 100%\|.*\| {shard_size}\.0/{shard_size}\.0 \[", b) for b in bars)


def test_fineweb_edu_names_and_errors(gpt2_tiktoken, tmp_path):
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"text": "hello world"}\n{"text": "second"}\n')
    proc = run_script("dev/data/fineweb.py", "-t", "edu", "--input", docs, "--out-dir", tmp_path / "o", "-s", 3,
                      "--workers", 1, env_tiktoken=gpt2_tiktoken)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "edu_fineweb_train_000001.bin", "edu_fineweb_val_000000.bin"]
    docs.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    proc = run_script("dev/data/fineweb.py", "--input", docs, "--out-dir", tmp_path / "o2", "--workers", 1,
                      env_tiktoken=gpt2_tiktoken)
    assert proc.returncode == 1
    assert proc.stderr.strip().endswith(f"{docs}:2: expected an object with a string field 'text'")
    if importlib.util.find_spec("datasets") is None:
        proc = run_script("dev/data/fineweb.py", "--out-dir", tmp_path / "o3", env_tiktoken=gpt2_tiktoken)
        assert proc.returncode == 1
        assert proc.stderr.startswith("error: downloading FineWeb needs the Hugging Face `datasets` package")


def write_docs(folder, texts, bad_line=None):
    """texts as two jsonl files of {"text": ...} documents; bad_line (1-based, in the second file) is malformed."""
    folder.mkdir(exist_ok=True)
    half = len(texts) // 2
    for name, part in (("part_000.jsonl", texts[:half]), ("part_001.jsonl", texts[half:])):
        lines = [json.dumps({"text": t}) for t in part]
        if name == "part_001.jsonl" and bad_line is not None:
            lines[bad_line - 1] = lines[bad_line - 1][:-1] + ', "id": }'
        (folder / name).write_text("\n".join(lines) + "\n")


def test_fineweb_failure_leaves_nothing(gpt2_tiktoken, tmp_path):
    """A malformed line after several shards were filled: no shard is left, the error starts its own line and
    names the line and column, and the rerun after the fix writes what a clean run writes."""
    texts = [f"Document {i}: " + " ".join(f"word{j}" for j in range(i % 17 + 3)) for i in range(40)]
    write_docs(tmp_path / "clean_in", texts)
    args = ["-s", 40, "--workers", 1]
    proc = run_script("dev/data/fineweb.py", "--input", tmp_path / "clean_in", "--out-dir", tmp_path / "clean",
                      *args, env_tiktoken=gpt2_tiktoken)
    assert proc.returncode == 0, proc.stderr
    clean = {p.name: p.read_bytes() for p in (tmp_path / "clean").iterdir()}
    assert len(clean) > 5
    write_docs(tmp_path / "in", texts, bad_line=15)
    bad = tmp_path / "in" / "part_001.jsonl"
    column = len(bad.read_text().splitlines()[14])
    out = tmp_path / "out"
    proc = run_script("dev/data/fineweb.py", "--input", tmp_path / "in", "--out-dir", out, *args,
                      env_tiktoken=gpt2_tiktoken)
    assert proc.returncode == 1
    assert proc.stdout.count("writing ") > 3  # shards were filled before the bad line was read
    assert error_line(proc.stderr) == f"error: {bad}:15: not a JSON object: Expecting value at column {column}"
    assert not out.exists()
    write_docs(tmp_path / "in", texts)
    proc = run_script("dev/data/fineweb.py", "--input", tmp_path / "in", "--out-dir", out, *args,
                      env_tiktoken=gpt2_tiktoken)
    assert proc.returncode == 0, proc.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == clean


def test_fineweb_interrupted_leaves_nothing(gpt2_tiktoken, tmp_path):
    """Ctrl-C (SIGINT) while shards are being written: no shard, staged file or output folder is left. The
    documents come through a named pipe, so the run is reliably mid-way when the signal arrives."""
    (tmp_path / "in").mkdir()
    pipe = tmp_path / "in" / "docs.jsonl"
    os.mkfifo(pipe)
    out = tmp_path / "out"
    env = dict(os.environ, LLMC_GPT2_TIKTOKEN=str(gpt2_tiktoken))
    proc = subprocess.Popen([sys.executable, str(REPO_ROOT / "dev" / "data" / "fineweb.py"), "--input",
                             str(tmp_path / "in"), "--out-dir", str(out), "-s", "50", "--workers", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO_ROOT)
    deadline = time.monotonic() + 120
    try:
        fd = None
        while fd is None:  # the script opens the pipe once it reads its documents
            try:
                fd = os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "fineweb.py never opened its input"
                time.sleep(0.05)
        os.set_blocking(fd, True)
        interrupted = False
        with os.fdopen(fd, "w") as writer:
            i = 0
            # keep documents coming until the process is gone: the pool's feeder never sees the end of input
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    writer.write(json.dumps({"text": f"document {i}: " + "a few words " * 5}) + "\n")
                    writer.flush()
                except BrokenPipeError:
                    break
                i += 1
                if not interrupted and out.is_dir() and any(out.iterdir()):  # a shard is being written
                    proc.send_signal(signal.SIGINT)
                    interrupted = True
                time.sleep(0.005)
            with contextlib.suppress(BrokenPipeError):
                writer.close()
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert interrupted, "no shard was staged before the deadline"
    assert proc.returncode != 0
    assert not out.exists()


# ----------------------------------------------------------------------------
# dev/vislog.py

def test_vislog_png(tmp_path):
    pytest.importorskip("matplotlib")
    vislog = load_program("vislog_under_test", "dev/vislog.py")
    run = tmp_path / "run1"
    run.mkdir()
    lines = []
    for s in range(0, 300):
        if s % 50 == 0:
            lines.append(f"s:{s} tel:{3.3 + 7 * math.exp(-s / 60):.4f}")
            if s:
                lines.append(f"s:{s} eval:{0.25 + s / 6000:.4f}")
        lines.append(f"s:{s} trl:{3.35 + 7 * math.exp(-s / 60):.4f} lr:0.000600 norm:1.00")
    lines.append("s:100 tel:9.9999")  # a resumed run logs step 100 again: the later value wins
    (run / "main.log").write_text("\n".join(lines) + "\n")
    streams = vislog.parse_log(run / "main.log")
    assert streams["tel"][100] == 9.9999 and streams["eval"][250] == pytest.approx(0.25 + 250 / 6000, abs=1e-4)
    assert len(streams["trl"]) == 300 and 0 not in streams["eval"]
    out = tmp_path / "plot.png"
    proc = run_script("dev/vislog.py", run / "main.log", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and "run1: min train loss" in proc.stdout
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    import matplotlib.image
    pixels = matplotlib.image.imread(str(out))
    assert pixels.shape[:2] == (600, 1600) and float(pixels[..., :3].std()) > 0.01  # not a blank canvas
    bad = tmp_path / "bad.log"
    bad.write_text("s:0 tel:1.0\ngarbage\n")
    proc = run_script("dev/vislog.py", bad, "-o", tmp_path / "x.png")
    assert proc.returncode == 1
    assert proc.stderr == f"error: {bad}:2: expected 's:<step> <stream>:<value> ...', found 'garbage'\n"


def test_vislog_empty_panel_says_so(tmp_path):
    """A panel with nothing to draw carries a message in the picture instead of an empty axis."""
    pytest.importorskip("matplotlib")
    vislog = load_program("vislog_under_test", "dev/vislog.py")

    def panel_texts(parsed, size):
        fig = vislog.draw(parsed, [f"run{i}" for i in range(len(parsed))], size)
        try:
            return [[t.get_text() for t in ax.texts] for ax in fig.axes]
        finally:
            vislog.pyplot().close(fig)

    losses = {"trl": {0: 5.0, 1: 4.0}, "tel": {0: 5.1}}
    assert panel_texts([losses], "124M") == [[], ["no HellaSwag evaluations in this log"]]
    assert panel_texts([losses, {"trl": {0: 3.0}}], "none") == [[], ["no HellaSwag evaluations in these logs"]]
    assert panel_texts([{"eval": {10: 0.25}}], "none") == [["no train or val loss in this log"], []]
    assert panel_texts([losses, {"eval": {10: 0.25}}], "124M") == [[], []]
    log = tmp_path / "run" / "main.log"
    log.parent.mkdir()
    log.write_text("s:0 tel:5.1000\ns:0 trl:5.0000 lr:0.000600 norm:1.00\n")
    proc = run_script("dev/vislog.py", log, "-o", tmp_path / "plot.png")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------
# profile_gpt2cu.py (spec 14)

def test_profile_cpu_groups_add_up():
    proc = run_script("profile_gpt2cu.py", "--device", "cpu", "-e", "d6", "-b", 2, "-t", 32, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    total = float(re.search(r"a training step takes ([\d.]+) ms in its ops", out).group(1))
    groups = dict(re.findall(r"^  (encoder|forward|classifier|backward|optimizer) +([\d.]+) ms", out, re.M))
    assert list(groups) == ["encoder", "forward", "classifier", "backward", "optimizer"]
    assert all(float(v) > 0 for v in groups.values())
    assert abs(sum(float(v) for v in groups.values()) - total) <= 0.003  # 3-decimal rounding of 6 numbers
    table_total = re.search(r"^total +(\d+) +([\d.]+) +100.00%$", out, re.M)
    assert float(table_total.group(2)) == total
    rows = re.findall(r"^(\w+) +(encoder|forward|classifier|backward|optimizer) +(\d+) +([\d.]+) ", out, re.M)
    assert sum(int(n) for *_, n, _ in rows) == int(table_total.group(1))
    by = {(op, g): int(n) for op, g, n, _ in rows}
    # d6: 6 layers; classifier = lnf fused residual, LM-head matmul, fused classifier, dlnf matmul, lnf backward
    assert by["fused_classifier", "classifier"] == 1 and by["matmul_forward", "classifier"] == 1
    assert by["attention_forward", "forward"] == 6 and by["attention_backward", "backward"] == 6
    assert by["encoder_forward", "encoder"] == by["encoder_backward", "encoder"] == 1
    assert by["adamw_update", "optimizer"] == 16  # one call per tensor, a layered tensor's layers as its slices


def test_profile_cuda_without_gpu_is_one_line():
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() > 0:
            pytest.skip("a CUDA device answers here")
    except Exception:  # no CuPy or no driver: the case under test
        pass
    proc = run_script("profile_gpt2cu.py", "--device", "cuda", "-e", "d6")
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: --device cuda: no CUDA device found (cupy")
    assert len(proc.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------
# dev/export_hf.py

def read_safetensors(path):
    """A small safetensors reader: {name: (dtype str, shape, raw bytes)} and the metadata, with format checks."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack_from("<Q", raw, 0)
    assert (8 + n) % 8 == 0, "tensor data should start 8-byte aligned"
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    data = raw[8 + n:]
    metadata = header.pop("__metadata__", None)
    spans = sorted(tuple(v["data_offsets"]) for v in header.values())
    assert spans[0][0] == 0 and spans[-1][1] == len(data)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:])), "tensors must be back to back"
    out = {}
    for name, v in header.items():
        begin, end = v["data_offsets"]
        size = {"F32": 4, "BF16": 2}[v["dtype"]]
        assert end - begin == size * math.prod(v["shape"])
        out[name] = (v["dtype"], tuple(v["shape"]), data[begin:end])
    return out, metadata


def as_array(entry):
    dtype, shape, raw = entry
    return np.frombuffer(raw, dtype={"F32": "<f4", "BF16": ml_dtypes.bfloat16}[dtype]).reshape(shape)


def expected_export(config, params):
    """{Hugging Face name: array} from the flat llm.c params (already in the exported dtype)."""
    L, V = config.num_layers, config.vocab_size
    p = {n: params[o:o + k].reshape(s) for n, o, k, s in
         zip(PARAM_NAMES, config.param_offsets(), config.param_sizes(), config.param_shapes())}
    expected = {"transformer.wte.weight": p["wte"][:V], "transformer.wpe.weight": p["wpe"],
                "transformer.ln_f.weight": p["lnfw"], "transformer.ln_f.bias": p["lnfb"]}
    hf = {"ln1w": "ln_1.weight", "ln1b": "ln_1.bias", "qkvw": "attn.c_attn.weight", "qkvb": "attn.c_attn.bias",
          "attprojw": "attn.c_proj.weight", "attprojb": "attn.c_proj.bias", "ln2w": "ln_2.weight",
          "ln2b": "ln_2.bias", "fcw": "mlp.c_fc.weight", "fcb": "mlp.c_fc.bias", "fcprojw": "mlp.c_proj.weight",
          "fcprojb": "mlp.c_proj.bias"}
    for i in range(L):
        for name, hf_name in hf.items():
            t = p[name][i]
            expected[f"transformer.h.{i}.{hf_name}"] = t.T if t.ndim == 2 else t  # Conv1D: (in, out)
    return expected


def check_export(tensors, expected):
    """Every tensor read from the exported file against the expected arrays."""
    assert set(tensors) == set(expected)  # tied LM head: no lm_head.weight, as save_pretrained writes it
    for name, t in expected.items():
        got = as_array(tensors[name])
        assert got.shape == t.shape, name
        assert got.tobytes() == np.ascontiguousarray(t).tobytes(), name


@pytest.mark.parametrize("version, dtype, st_dtype", [(3, "auto", "F32"), (5, "auto", "BF16"),
                                                      (5, "float32", "F32"), (3, "bfloat16", "BF16")])
def test_export_hf_tensors(tmp_path, version, dtype, st_dtype):
    config, params = tiny_model(L=2, C=16, NH=2, maxT=32, V=300, Vp=384)
    path = tmp_path / "model.bin"
    write_model(str(path), config, params, version)
    proc = run_script("dev/export_hf.py", "-i", path, "-o", tmp_path / "hf", "--dtype", dtype)
    assert proc.returncode == 0, proc.stderr
    tensors, metadata = read_safetensors(tmp_path / "hf" / "model.safetensors")
    assert metadata == {"format": "pt"}
    assert {t[0] for t in tensors.values()} == {st_dtype}
    stored = params if version == 3 else params.astype(ml_dtypes.bfloat16)  # what the .bin holds
    expected = expected_export(config, stored.astype(np.float32 if st_dtype == "F32" else ml_dtypes.bfloat16))
    check_export(tensors, expected)
    # byte for byte what the safetensors package writes for these tensors, and read back by it
    from safetensors.numpy import load_file, save
    contiguous = {name: np.ascontiguousarray(t) for name, t in expected.items()}
    assert (tmp_path / "hf" / "model.safetensors").read_bytes() == save(contiguous, metadata={"format": "pt"})
    if st_dtype == "F32":  # the package's numpy loader has no bfloat16
        loaded = load_file(tmp_path / "hf" / "model.safetensors")
        assert set(loaded) == set(expected)
        assert all(np.array_equal(loaded[name], t) for name, t in expected.items())
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert {k: cfg[k] for k in ("model_type", "vocab_size", "n_positions", "n_embd", "n_layer", "n_head",
                                "activation_function", "tie_word_embeddings", "torch_dtype")} == {
        "model_type": "gpt2", "vocab_size": 300, "n_positions": 32, "n_embd": 16, "n_layer": 2, "n_head": 2,
        "activation_function": "gelu_new", "tie_word_embeddings": True,
        "torch_dtype": "float32" if st_dtype == "F32" else "bfloat16"}
    assert cfg["architectures"] == ["GPT2LMHeadModel"]


def test_export_hf_rejects_non_model(tmp_path):
    bad = tmp_path / "x.bin"
    bad.write_bytes(struct.pack("<i", 20240520) + bytes(1020))
    proc = run_script("dev/export_hf.py", "-i", bad, "-o", tmp_path / "hf")
    assert proc.returncode == 1
    assert proc.stderr == f"error: {bad}: bad magic: expected 20240326 (model file), found 20240520\n"


def test_export_hf_loads_in_transformers(tmp_path):
    pytest.importorskip("transformers")
    import torch
    from transformers import GPT2LMHeadModel
    config, params = tiny_model(L=2, C=32, NH=2, maxT=64, V=500, Vp=512, std=0.05)
    path = tmp_path / "model.bin"
    write_model(str(path), config, params, 3)
    proc = run_script("dev/export_hf.py", "-i", path, "-o", tmp_path / "hf")
    assert proc.returncode == 0, proc.stderr
    hf = GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf")).eval()
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # tied
    tokens = np.random.default_rng(0).integers(0, 500, (2, 20)).astype(np.int32)
    model = GPT2(config, params)
    model.allocate(2, 20)
    ours = model.forward(tokens)[:, :, :500].copy()
    with torch.no_grad():
        theirs = hf(torch.from_numpy(tokens.astype(np.int64))).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)


def train_with_hellaswag(hellaswag_bin, d12_dir, tmp_path, *args):
    """Runs train_gpt2cu.py -h 1 in a run folder holding the tinyshakespeare shards, the tokenizer and the
    eval file at the path the trainer reads (dev/data/hellaswag/hellaswag_val.bin)."""
    run_dir = tmp_path / "run"
    (run_dir / "dev" / "data" / "hellaswag").mkdir(parents=True)
    (run_dir / "dev" / "data" / "tinyshakespeare").symlink_to(d12_dir / "dev" / "data" / "tinyshakespeare")
    (run_dir / "gpt2_tokenizer.bin").symlink_to(d12_dir / "gpt2_tokenizer.bin")
    (run_dir / "dev" / "data" / "hellaswag" / "hellaswag_val.bin").write_bytes(hellaswag_bin[0].read_bytes())
    return subprocess.run([sys.executable, str(REPO_ROOT / "train_gpt2cu.py"), "--device", "cpu", "-e", "d6",
                           "-b", "4", "-m", "1", "-s", "0", "-h", "1", "-o", str(run_dir / "log"), *map(str, args)],
                          cwd=run_dir, capture_output=True, text=True, timeout=300)


def test_hellaswag_fit_checked_at_startup(hellaswag_bin, d12_dir, tmp_path):
    """-h 1 with a T too short for an example stops before the first step, naming the file, the first example
    that does not fit and the smallest T that fits them all."""
    examples = rendered(get_gpt2_encoding())
    need = fit_needs(examples)
    T = 32
    first = next(i for i, n in enumerate(need) if n > T)
    proc = train_with_hellaswag(hellaswag_bin, d12_dir, tmp_path, "-t", T, "-x", 2, "-v", 1)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"error: dev/data/hellaswag/hellaswag_val.bin: example {first} does not fit "
                                  f"T={T}: ")
    assert proc.stderr.endswith(f"; every example fits with -t {max(need)} or more\n")
    assert len(proc.stderr.splitlines()) == 1
    assert "val loss" not in proc.stdout and "step " not in proc.stdout  # nothing ran


def test_hellaswag_in_training_loop(hellaswag_bin, d12_dir, tmp_path):
    """-h 1: evaluated at every -v step except step 0 and at the last step, printed and logged as llm.c."""
    run_dir = tmp_path / "run"
    proc = train_with_hellaswag(hellaswag_bin, d12_dir, tmp_path, "-t", 64, "-x", 2, "-v", 1)
    assert proc.returncode == 0, proc.stderr
    # progress is a bar on stderr; stdout keeps the result lines only
    assert "evaluating HellaSwag" in proc.stderr and "evaluating HellaSwag" not in proc.stdout
    n = len(HELLASWAG_EXAMPLES)
    results = re.findall(rf"^HellaSwag: (\d+)/{n} = (\d\.\d{{6}})$", proc.stdout, re.M)
    assert len(results) == 2  # steps 1 and 2, never step 0
    for correct, accuracy in results:
        assert abs(int(correct) / n - float(accuracy)) < 1e-6
    log = (run_dir / "log" / "main.log").read_text().splitlines()
    evals = [line for line in log if " eval:" in line]
    assert [line.split()[0] for line in evals] == ["s:1", "s:2"]
    assert evals[0] == f"s:1 eval:{int(results[0][0]) / n:.4f}"
