"""dev/bench_peers.py and its PyTorch peer, without a GPU: reading each peer's output, the flags of ours that
dev/bench.py must take, MFU, ratios and the table, and the whole orchestration with stand-in programs
(which also drive the device-memory polling); dev/bench_torch.py on the CPU with a small model, whose weights must
give the same loss as our NumPy GPT-2. The GPU runs themselves are dev/gpu/steps/60_peers.sh's."""
import json
import os
import re
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from data_common import write_datafile
from llmc_py import LlmcError
from llmc_py.checkpoint import write_model
from llmc_py.config import GPT2Config, config_from_descriptor
from llmc_py.rand import gpt2_random_init

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, "dev"))

import bench_peers  # noqa: E402

TINY = GPT2Config(max_seq_len=32, vocab_size=1000, padded_vocab_size=1024, num_layers=2, num_heads=4, channels=64)


def llmc_output(device, steps, ms, memory=4321, gelu_fusion=2):
    """train_gpt2cu's output as its printf formats write it: the table rows, the memory line, step lines."""
    row = lambda key, value: f"| {key:<21} | {value:<50} |"  # noqa: E731
    lines = ["+-----------------------+----------------------------------------------------+",
             row("Parameter", "Value"), row("micro batch size B", 4), row("gelu_fusion", gelu_fusion),
             row("recompute", 1), row("device", device), row("peak TFlops", f"{-1.0:.1f}"), row("precision", "BF16"),
             "allocating 237 MiB for parameter gradients", f"device memory usage: {memory} MiB / 143771 MiB",
             "val loss 10.987654"]
    for n in range(1, steps + 1):
        lines.append(f"step {n:4d}/{steps} | loss {11.0 - n / 10:7.6f} ({float('nan'):+.2f}z)| norm {1.5:6.4f} "
                     f"({float('nan'):+.2f}z)| lr {3e-4:.2e} | {ms(n):.2f} ms | {-100.0:.1f}% bf16 MFU | "
                     f"{4096 / ms(n) * 1000:.0f} tok/s")
    lines.append(f"total average iteration time: {ms(2):f} ms")
    return "\n".join(lines) + "\n"

# ----------------------------------------------------------------------------
# reading the peers


def test_parse_llmc_takes_the_timed_steps():
    text = llmc_output("NVIDIA H200", 12, lambda n: 100.0 + n)
    step_ms, device, memory, table = bench_peers.parse_llmc(text, warmup=2, steps=10)
    assert step_ms == [100.0 + n for n in range(3, 13)]
    assert device == "NVIDIA H200" and memory == 4321
    assert table["gelu_fusion"] == "2" and table["precision"] == "BF16" and table["recompute"] == "1"


def test_parse_llmc_needs_every_timed_step():
    text = llmc_output("NVIDIA H200", 8, lambda n: 50.0)
    with pytest.raises(LlmcError, match=r"llm.c printed 8 step lines; steps 9..12 are missing"):
        bench_peers.parse_llmc(text, warmup=2, steps=10)


def test_bench_takes_the_flags_of_every_variant_of_ours():
    help_text = subprocess.run([sys.executable, bench_peers.BENCH, "--help"], capture_output=True, text=True,
                               check=True).stdout
    assert {"--warmup", "--steps", "--json"} <= set(re.findall(r"--[a-z][\w-]*", help_text))
    for _, _, flags in bench_peers.OURS:
        for flag, value in flags.items():
            assert re.search(rf"{flag} \{{[^}}]*\b{value}\b", help_text), f"dev/bench.py --help lacks {flag} {value}"


def test_summary_mfu_ratios_and_table():
    d12 = config_from_descriptor("d12")
    runs = [bench_peers.Run("ours", "ours", 4, step_ms=[20.0, 21.0, 25.0], peak_mib=3000, own_mib=3500),
            bench_peers.Run("pytorch", "pytorch (compile)", 4, step_ms=[40.0, 42.0, 41.0], peak_mib=6000),
            bench_peers.Run("llmc", "llm.c (cuDNN)", 4, status="failed", reason="exit status 1"),
            bench_peers.Run("pytorch", "pytorch (compile)", 64, step_ms=[100.0], peak_mib=None)]
    peak = bench_peers.summarize(runs, d12, 1024, "NVIDIA H200")
    # by hand: 6 flops per parameter and token plus attention's 6*L*C*T, against the datasheet's dense bf16 rate
    flops = (6 * 124_475_904 + 6 * 12 * 768 * 1024) * 4 * 1024
    datasheet = 528 * 512 * 2 * 1830e6
    assert peak == pytest.approx(datasheet / 1e12, rel=1e-3)
    ours, torch_run, failed, alone = runs
    assert ours.median_ms == 21.0 and ours.tok_per_s == pytest.approx(4096 / 0.021)
    assert ours.mfu == pytest.approx(flops / 0.021 / datasheet, rel=1e-3)
    assert torch_run.vs_ours == pytest.approx({"tok_per_s": 21.0 / 41.0, "peak_mib": 2.0})
    assert failed.median_ms is None and failed.vs_ours == {}
    assert alone.vs_ours == {} and alone.mfu == pytest.approx(flops * 16 / 0.1 / datasheet, rel=1e-3)
    lines = bench_peers.table(runs).splitlines()
    assert lines[2].split() == ["4", "ours", "21.00", "195,048", f"{100 * ours.mfu:.1f}%", "3,000", "3,500", "1.00",
                                "1.00"]
    assert lines[3].split()[-2:] == ["0.51", "2.00"]
    assert re.fullmatch(r"  4  llm\.c \(cuDNN\) +FAILED: exit status 1", lines[4])
    assert lines[5].split()[-4:] == ["n/a", "n/a", "n/a", "n/a"]
    unknown = [bench_peers.Run("ours", "ours", 4, step_ms=[10.0])]
    assert bench_peers.summarize(unknown, d12, 1024, "NVIDIA H100 NVL") == -1.0 and unknown[0].mfu is None

# ----------------------------------------------------------------------------
# the orchestration, with stand-in programs


STUB_BENCH = '''
import json, os, sys, time
argv = sys.argv[1:]
opt = dict(zip(argv[::2], argv[1::2]))
B, steps = int(opt["-b"]), int(opt["--steps"])
with open(os.environ["FAKE_NVML"], "w") as f:
    f.write(str(1000 + MIB * B))
time.sleep(0.4)
with open(os.environ["FAKE_NVML"], "w") as f:
    f.write("1000")
if opt.get("--attention") == "llmc":
    print("error: stand-in failure"); sys.exit(3)
ms = BASE_MS * B / 4 * (2 if opt.get("--cuda-graph") == "0" else 1)
json.dump(dict(step_ms=[ms] * steps, memory_mib=77, memory_what="own", device="NVIDIA H200",
               details=dict(argv=argv)), open(opt["--json"], "w"))
'''

STUB_LLMC = '''
import os, sys
opt = dict(zip(sys.argv[1::2], sys.argv[2::2]))
with open(os.path.join(OUTPUTS, f"llmc_{opt['-b']}_{opt['-x']}.txt")) as f:
    print(f.read())
'''


def write_stub(path, body, **constants):
    header = "".join(f"{name} = {value!r}\n" for name, value in constants.items())
    path.write_text(f"#!{sys.executable}\n{header}{textwrap.dedent(body)}")
    path.chmod(0o755)
    return str(path)


class FakeNvml:
    """Reads the MiB the stand-ins write while they run."""

    def __init__(self, path):
        self.path = path

    def used_mib(self):
        with open(self.path) as f:
            return int(f.read() or 0)

    def name(self):
        return "NVIDIA H200"


def write_tiny_inputs(folder):
    """The peers' inputs in `folder`: a bf16 model file of TINY and a token shard; returns their paths."""
    model, shard = folder / "tiny_bf16.bin", folder / "shard.bin"
    write_model(str(model), TINY, gpt2_random_init(TINY), 5)
    write_datafile(str(shard), np.arange(2000, dtype=np.int64) % 1000)
    return model, shard


@pytest.fixture
def stub_peers(tmp_path, monkeypatch):
    model, shard = write_tiny_inputs(tmp_path)
    nvml = tmp_path / "nvml.txt"
    nvml.write_text("1000")
    monkeypatch.setenv("FAKE_NVML", str(nvml))
    monkeypatch.setattr(bench_peers, "BENCH", write_stub(tmp_path / "bench.py", STUB_BENCH, MIB=100, BASE_MS=20.0))
    monkeypatch.setattr(bench_peers, "BENCH_TORCH", write_stub(tmp_path / "torch.py", STUB_BENCH, MIB=300,
                                                               BASE_MS=40.0))
    llmc = tmp_path / "llm.c"
    llmc.mkdir()
    (llmc / "train_gpt2.cu").write_text("")
    for B in (4, 8):  # what train_gpt2cu would print for -x 5
        (tmp_path / f"llmc_{B}_5.txt").write_text(llmc_output("NVIDIA H200", 5, lambda n: 30.0 * B / 4, memory=999))
    write_stub(llmc / "train_gpt2cu", STUB_LLMC, OUTPUTS=str(tmp_path))
    monkeypatch.setattr(bench_peers, "open_nvml", lambda: FakeNvml(nvml))
    monkeypatch.chdir(tmp_path)
    return tmp_path, model, shard, llmc


def test_orchestration_with_stand_ins(stub_peers, capsys):
    tmp_path, model, shard, llmc = stub_peers
    status = bench_peers.main(["-e", str(model), "-i", str(shard), "-b", "4,8", "-t", "32", "--warmup", "2",
                               "--steps", "3", "--llmc", str(llmc), "--json", str(tmp_path / "peers.json")])
    out = capsys.readouterr().out
    assert status == 1  # the llm.c-attention stand-in fails
    result = json.loads((tmp_path / "peers.json").read_text())
    assert result["device"] == "NVIDIA H200" and result["T"] == 32 and result["num_parameters"] == TINY.num_parameters
    runs = {(r["peer"], r["B"]): r for r in result["runs"]}
    assert [(r["peer"], r["B"]) for r in result["runs"]] == [
        (peer, B) for B in (4, 8) for peer in ("ours", "ours-nograph", "ours-llmcattn", "pytorch", "llmc")]
    for B in (4, 8):
        ours, nograph, torch_run, llmc_run = (runs[p, B] for p in ("ours", "ours-nograph", "pytorch", "llmc"))
        assert ours["median_ms"] == 20.0 * B / 4 and nograph["median_ms"] == 40.0 * B / 4
        assert ours["details"]["argv"][-4:] == ["--attention", "cudnn", "--cuda-graph", "1"]
        assert f"-b {B} -t 32 -r 1 --warmup 2 --steps 3 --json" in " ".join(ours["details"]["argv"])
        assert ours["peak_mib"] == 100 * B and torch_run["peak_mib"] == 300 * B  # polled while they ran
        assert ours["own_mib"] == 77 and ours["tok_per_s"] == pytest.approx(B * 32 / (ours["median_ms"] / 1000))
        assert nograph["vs_ours"] == pytest.approx({"tok_per_s": 0.5, "peak_mib": 1.0})
        assert torch_run["vs_ours"] == pytest.approx({"tok_per_s": 0.5, "peak_mib": 3.0})
        assert llmc_run["status"] == "ok" and llmc_run["step_ms"] == [30.0 * B / 4] * 3
        assert llmc_run["own_mib"] == 999 and llmc_run["details"]["gelu_fusion"] == "2"
        assert llmc_run["vs_ours"]["tok_per_s"] == pytest.approx(20.0 / 30.0)
        assert llmc_run["command"][llmc_run["command"].index("-x") + 1] == "5"
        failed = runs["ours-llmcattn", B]
        assert failed["status"] == "failed" and failed["reason"] == "exit status 3"
        assert "error: stand-in failure" in open(failed["log"]).read()
    assert "      error: stand-in failure" in out
    table = out[out.index("  B  peer"):]
    assert re.search(r"^  8  ours, llm\.c attention +FAILED: exit status 3$", table, re.M)
    assert os.path.isfile(tmp_path / "peers_logs" / "B8_llmc.log")


def test_missing_llmc_is_reported(stub_peers, capsys):
    tmp_path, model, shard, llmc = stub_peers
    status = bench_peers.main(["-e", str(model), "-i", str(shard), "-b", "4", "-t", "32", "--warmup", "1",
                               "--steps", "2", "--peers", "ours,llmc", "--json", "x.json"])
    out = capsys.readouterr().out
    assert status == 0
    runs = json.loads((tmp_path / "x.json").read_text())["runs"]
    assert [(r["label"], r["status"]) for r in runs] == [("ours", "ok"), ("llm.c (cuDNN)", "skipped")]
    assert runs[1]["reason"] == "no --llmc DIR given"
    assert "--attention cudnn --cuda-graph 1" in " ".join(runs[0]["command"]) and "skipped: no --llmc DIR given" in out


@pytest.mark.parametrize("args, message", [
    (["-b", "4,x"], r"-b 4,x: expected comma-separated batch sizes"),
    (["--peers", "ours,jax"], r"--peers: unknown jax"),
    (["-e", "absent.bin"], r"-e model file absent.bin: not found"),
    (["--llmc", "."], r"--llmc \.: not an llm.c checkout"),
])
def test_bad_arguments_are_one_line(stub_peers, args, message):
    tmp_path, model, shard, _ = stub_peers
    with pytest.raises(LlmcError, match=message):
        bench_peers.parse_args(["-e", str(model), "-i", str(shard)] + args)


def test_fp32_model_is_refused(stub_peers):
    tmp_path, _, shard, _ = stub_peers
    fp32 = tmp_path / "tiny.bin"
    write_model(str(fp32), TINY, gpt2_random_init(TINY), 3)
    with pytest.raises(LlmcError, match=r"expected a bf16 model file \(version 5\), found version 3"):
        bench_peers.main(["-e", str(fp32), "-i", str(shard)])


def test_memory_peak_polls_while_the_block_runs():
    readings = iter([500, 500, 900, 2500, 700] + [600] * 1000)
    with bench_peers.MemoryPeak(lambda: next(readings), interval=0.001) as memory:
        time.sleep(0.05)
    assert memory.peak == 2000
    with bench_peers.MemoryPeak(None) as nothing:
        pass
    assert nothing.peak is None

# ----------------------------------------------------------------------------
# the PyTorch peer


def test_torch_model_holds_the_file_weights(tmp_path):
    """dev/bench_torch.py's model: train_gpt2.py's GPT with the vocabulary padded to Vp holds the file's tensors,
    and its loss is the cross-entropy of our NumPy GPT-2's logits over all Vp columns (build-nanogpt's padded
    vocabulary takes part in the softmax; ours stops at V)."""
    torch = pytest.importorskip("torch")
    import bench_torch
    from llmc_py.gpt2 import GPT2
    path = tmp_path / "tiny.bin"
    params = gpt2_random_init(TINY)
    write_model(str(path), TINY, params, 3)
    config, model = bench_torch.build_model(str(path), "cpu")
    assert model.transformer.wte.weight.shape == (1024, 64)
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, TINY.vocab_size, (2, 17)).astype(np.int32)
    x, y = tokens[:, :-1], tokens[:, 1:]
    with torch.no_grad():
        _, loss = model(torch.from_numpy(x).long(), torch.from_numpy(y).long())
    ours = GPT2(TINY, params.copy())
    ours.allocate(2, 16)
    logits = ours.forward(x).astype(np.float64)  # (B, T, Vp), the padded columns 0
    log_z = np.log(np.exp(logits).sum(-1))
    expected = np.mean(log_z - np.take_along_axis(logits, y[..., None], -1)[..., 0])
    assert float(loss) == pytest.approx(expected, abs=1e-5)
    held = np.concatenate([t.detach().numpy().reshape(-1) for t in model.llmc_tensors()])
    np.testing.assert_array_equal(held, params)


def test_torch_bench_on_cpu(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    import bench_torch
    path = tmp_path / "tiny.bin"
    write_model(str(path), TINY, gpt2_random_init(TINY), 5)
    shard = tmp_path / "shard.bin"
    write_datafile(str(shard), np.arange(3000, dtype=np.int64) % 1000)
    out = tmp_path / "torch.json"
    monkeypatch.setattr(sys, "argv", ["bench_torch.py", "--device", "cpu", "-e", str(path), "-i", str(shard), "-b",
                                      "2", "-t", "16", "--warmup", "1", "--steps", "2", "--json", str(out)])
    bench_torch.main()
    assert "(vocab padded to 1024), B=2 T=16, device cpu" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["program"] == "pytorch" and result["B"] == 2 and result["T"] == 16 and len(result["step_ms"]) == 2
    assert result["median_ms"] == pytest.approx(float(np.median(result["step_ms"])))
    assert result["tok_per_s"] == pytest.approx(32 / (result["median_ms"] / 1000))
    assert result["details"]["compile"] is False and result["details"]["warmup"] == 1
