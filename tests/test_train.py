"""The training programs end to end on CPU: test_gpt2cu.py on the d12 fixture, and train_gpt2cu.py's
resume, gradient accumulation, recompute, checkpoints, log and flag handling on a small random-init model."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
STEP_LINE = re.compile(r"^step +(\d+)/(\d+) \| loss (\d+\.\d{6}) \(([+-](?:nan|\d+\.\d\d))z\)\| norm (\d+\.\d{4}) "
                       r"\(([+-](?:nan|\d+\.\d\d))z\)\| lr (\d\.\d\de[+-]\d\d) \| (\d+\.\d\d) ms \| MFU n/a \| (\d+) tok/s$")
# a small model keeps these runs fast: d6 (30M parameters) from its random init, short sequences
SMALL = ["--device", "cpu", "-e", "d6", "-b", "2", "-t", "32", "-s", "0", "-v", "1000", "-m", "2"]


def run(cwd, script, *args, expect=0):
    proc = subprocess.run([sys.executable, str(REPO_ROOT / script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == expect, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


def step_losses(stdout):
    """{step: loss string} from the step lines; every step line must have llm.c's exact shape."""
    losses = {}
    for line in stdout.splitlines():
        if line.startswith("step "):
            m = STEP_LINE.match(line)
            assert m, f"malformed step line: {line!r}"
            losses[int(m.group(1))] = m.group(3)
    return losses


def test_gpt2cu_cpu_overall_okay(d12_dir):
    proc = run(d12_dir, "test_gpt2cu.py", "--device", "cpu", "-e", "gpt2_d12.bin")
    out = proc.stdout
    assert out.rstrip().splitlines()[-1] == "overall okay: 1"
    assert "OK (LOGITS)" in out and "NOT OK" not in out
    assert out.count("TENSOR OK") == 16
    assert len(re.findall(r"^loss ok at step \d+", out, re.M)) == 10
    assert "random-init model" in out and "tolerance 0.001" in out
    assert "OK (reload determinism over 10 steps)" in out
    assert not any(name.endswith(".ckpt") for name in os.listdir(d12_dir))


def test_gpt2cu_cpu_detects_wrong_losses(d12_dir, tmp_path):
    """The same test fails (exit 1, overall okay: 0) when the stored reference losses are off."""
    import numpy as np
    raw = bytearray((d12_dir / "gpt2_d12_debug_state.bin").read_bytes())
    losses = np.frombuffer(bytes(raw[20:60]), dtype="<f4").copy()
    losses[3] += 0.01
    raw[20:60] = losses.tobytes()
    bad = tmp_path / "bad_debug_state.bin"
    bad.write_bytes(bytes(raw))
    proc = run(d12_dir, "test_gpt2cu.py", "--device", "cpu", "-e", "gpt2_d12.bin", "--debug-state", bad, expect=1)
    assert "LOSS MISMATCH AT STEP 4" in proc.stdout
    assert proc.stdout.rstrip().splitlines()[-1] == "overall okay: 0"


def test_resume_continues_exactly(d12_dir, tmp_path):
    straight = step_losses(run(d12_dir, "train_gpt2cu.py", *SMALL, "-x", 6, "-o", tmp_path / "a").stdout)
    first = run(d12_dir, "train_gpt2cu.py", *SMALL, "-x", 3, "-o", tmp_path / "b", "-n", 3).stdout
    assert sorted(os.listdir(tmp_path / "b")) == ["DONE_00000003", "main.log", "model_00000003.bin",
                                                  "state_00000003_00000.bin"]
    second = run(d12_dir, "train_gpt2cu.py", *SMALL, "-x", 6, "-o", tmp_path / "b", "-n", 3, "-y", 1).stdout
    assert "resumed from step 3" in second
    resumed = {**step_losses(first), **step_losses(second)}
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]
    assert resumed == straight
    log = (tmp_path / "b" / "main.log").read_text().splitlines()
    assert [line.split()[0] for line in log if "trl:" in line] == [f"s:{k}" for k in range(6)]


def test_grad_accumulation_matches_bigger_batch(d12_dir):
    common = ["--device", "cpu", "-e", "d6", "-t", "32", "-s", "0", "-v", "1000", "-m", "1", "-a", "1", "-x", 3]
    accumulated = step_losses(run(d12_dir, "train_gpt2cu.py", *common, "-b", 2, "-d", 128).stdout)
    one_batch = step_losses(run(d12_dir, "train_gpt2cu.py", *common, "-b", 4).stdout)
    assert sorted(accumulated) == [1, 2, 3]
    for step in accumulated:
        assert abs(float(accumulated[step]) - float(one_batch[step])) <= 1e-5


@pytest.mark.parametrize("flags", [("-r", 0), ("-r", 2), ("-ge", 1), ("-ge", 2)])
def test_recompute_and_gelu_fusion_change_nothing(d12_dir, flags):
    base = step_losses(run(d12_dir, "train_gpt2cu.py", *SMALL, "-x", 2).stdout)
    other = step_losses(run(d12_dir, "train_gpt2cu.py", *SMALL, "-x", 2, *flags).stdout)
    assert base == other and len(base) == 2


def test_checkpoint_pruning_keeps_recent_and_major(d12_dir, tmp_path):
    run(d12_dir, "train_gpt2cu.py", *SMALL, "-x", 6, "-o", tmp_path, "-n", 1, "-nk", 2, "-nm", 4)
    done = sorted(name for name in os.listdir(tmp_path) if name.startswith("DONE_"))
    assert done == ["DONE_00000004", "DONE_00000005", "DONE_00000006"]
    models = sorted(name for name in os.listdir(tmp_path) if name.startswith("model_"))
    assert models == ["model_00000004.bin", "model_00000005.bin", "model_00000006.bin"]


def test_log_sample_and_step_lines(d12_dir, tmp_path):
    proc = run(d12_dir, "train_gpt2cu.py", "--device", "cpu", "-e", "d6", "-b", 2, "-t", 32, "-x", 2, "-v", 1,
               "-m", 1, "-s", 2, "-g", 8, "-o", tmp_path, "-u", 2, "-l", "1e-3")
    lines = (tmp_path / "main.log").read_text().splitlines()
    assert re.fullmatch(r"s:0 tel:\d+\.\d{4}", lines[0])
    assert re.fullmatch(r"s:0 trl:\d+\.\d{4} lr:0\.000500 norm:\d+\.\d\d", lines[1])
    assert re.fullmatch(r"s:1 tel:\d+\.\d{4}", lines[2])
    assert re.fullmatch(r"s:1 trl:\d+\.\d{4} lr:0\.001000 norm:\d+\.\d\d", lines[3])
    assert re.fullmatch(r"s:2 tel:\d+\.\d{4}", lines[4]) and len(lines) == 5
    assert len(step_losses(proc.stdout)) == 2
    # the sample: 7 tokens between two --- lines, printed as text through gpt2_tokenizer.bin
    sample = proc.stdout.split("generating:\n---\n", 1)[1].split("\n---", 1)[0]
    assert sample and not re.fullmatch(r"[\d ]+", sample)
    assert "total average iteration time" in proc.stdout


@pytest.mark.parametrize("args,message", [
    (["-e", "d6", "-b", "x"], "-b x: expected an integer"),
    (["-e", "d6", "--precision", "bf16"], "--precision bf16: --device cpu runs fp32 only"),
    (["-e", "d6", "-b", 4, "-t", 32, "-s", 0, "-d", 100], "-d 100: the total batch size must be a positive multiple of B*T*processes = 128"),
    (["-e", "missing.bin"], "missing.bin: model file not found"),
    (["-e", "d7"], "-e d7: expected a .bin checkpoint or a model descriptor"),
    (["-e", "d6", "-t", 2048], "-t 2048: the sequence length must be at most the model's max_seq_len 1024"),
    (["-e", "d6", "-i", "nothing_*.bin"], "nothing_*.bin: no files match"),
    (["-e", "d6", "-k", "cosinus", "-t", 32, "-s", 0], "-k cosinus: unknown learning rate schedule"),
    (["-e", "d6", "-y", 1], "-y 1: resuming needs the output dir -o"),
])
def test_bad_flags_give_one_line(d12_dir, args, message):
    proc = run(d12_dir, "train_gpt2cu.py", "--device", "cpu", *args, expect=1)
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args,message", [
    (["-t", 32, "-g", 64, "-x", 1], "-g 64: the prompt's 1 tokens and 63 generated tokens need 63 positions, "
                                      "more than the sequence length -t 32"),
    (["-b", 32, "-t", 1024, "-x", 1], "tiny_shakespeare_val.bin: shard too small: expected at least B*T*P+1 = 32769 "
                                      "tokens (B=32, T=1024, P=1), found 32768"),
])
def test_run_that_cannot_finish_stops_at_startup(d12_dir, args, message):
    """A sample longer than T (it would fail at the first sample) and a shard smaller than one batch: one line,
    before the model is built."""
    proc = run(d12_dir, "train_gpt2cu.py", "--device", "cpu", "-e", "d6", *args, expect=1)
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "num_parameters" not in proc.stdout


@pytest.mark.parametrize("args", [["-q"], ["-nx", 4], ["-lx", 3], ["x", 3]])
def test_malformed_flags_print_usage(d12_dir, args):
    proc = run(d12_dir, "train_gpt2cu.py", "--device", "cpu", *args, expect=1)
    assert "Usage:" in proc.stdout and "Traceback" not in proc.stderr


def _gpu_usable():
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver, or CuPy built for another CUDA
        return False


@pytest.mark.skipif(_gpu_usable(), reason="a CUDA device answers here")
@pytest.mark.parametrize("script,args", [("train_gpt2cu.py", ["-e", "d6"]),
                                         ("test_gpt2cu.py", ["-e", "gpt2_d12_bf16.bin"]),
                                         ("dev/bench.py", ["--device", "cuda", "-e", "d6"])])
def test_cuda_without_gpu_is_one_line(d12_dir, script, args):
    """--device cuda (the default) on a machine with no GPU: one clear line, exit 1, no traceback."""
    proc = run(d12_dir, script, *args, expect=1)
    assert proc.stderr.startswith("error: --device cuda: no CUDA device found (cupy")
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_matmul_variants_need_cuda_fp32(d12_dir):
    proc = run(d12_dir, "train_gpt2cu.py", "--device", "cpu", "-e", "d6", "--matmul", "custom", expect=1)
    assert "--matmul custom: the matmul variants exist for --device cuda --precision fp32 only" in proc.stderr
