"""dev/kernel_peers.py without a GPU: reading ncu's CSV, finding the last whole training step in a kernel list,
naming kernels by kind, and the whole run with a stand-in ncu that writes the CSV a real one would for each
program's kernel sequence (llm.c's with its validation passes around the training steps)."""
import json
import os
import re
import sys
import textwrap

import pytest

from llmc_py import LlmcError
from test_bench_peers import write_tiny_inputs

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, "dev"))

import kernel_peers  # noqa: E402

HEADER = ('"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size",'
          '"Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"')


def csv_text(kernels, unit="nsecond"):
    rows = [f'"{i}","4242","python3","127.0.0.1","{name}","1","7","(256, 1, 1)","(96, 1, 1)","0","9.0",'
            f'"Command line profiler metrics","gpu__time_duration.sum","{unit}","{value:,}"'
            for i, (name, value) in enumerate(kernels)]
    return "==PROF== Connected to process 4242\n" + "\n".join([HEADER] + rows) + "\n==PROF== Disconnected\n"


def test_read_ncu_csv_in_launch_order_and_nanoseconds(tmp_path):
    path = tmp_path / "k.csv"
    path.write_text(csv_text([("void a(int)", 1500), ("b", 2)], unit="usecond"))
    assert kernel_peers.read_ncu_csv(str(path)) == [("void a(int)", 1.5e6), ("b", 2e3)]
    path.write_text("==PROF== nothing profiled\n")
    with pytest.raises(LlmcError, match=r"no ncu CSV header"):
        kernel_peers.read_ncu_csv(str(path))
    path.write_text(csv_text([("a", 1)], unit="cycle"))
    with pytest.raises(LlmcError, match=r"gpu__time_duration.sum in unit 'cycle'"):
        kernel_peers.read_ncu_csv(str(path))


def test_last_training_step_skips_validation_passes():
    step = lambda k: [("encoder_forward_kernel3", 1), (f"gemm{k}", 1), ("adamw_kernel3", 1)]  # noqa: E731
    val = [("encoder_forward_kernel3", 1), ("gemm_val", 1)]
    kernels = [("init_from_master_kernel", 1)] + val + step(1) + step(2) + val
    assert kernel_peers.last_training_step(kernels) == (step(2), 2)
    with pytest.raises(LlmcError, match=r"no training step among 5 kernels"):
        kernel_peers.last_training_step([("init", 1)] + val * 2)


@pytest.mark.parametrize("name, kind", [
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64_warpgroupsize2x1x1_execute_kernel__5x_cublas",
     "matmul"),
    ("void cutlass::Kernel2<cutlass_80_wmma_tensorop_bf16_s161616gemm_bf16_16x16_128x2_tn_align8>(T1::Params)",
     "matmul"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x64_4x1x1_kernel0_0", "attention"),
    ("void softmax_forward_kernel5(float *, float, const float *, int, int)", "attention"),
    ("void matmul_backward_bias_kernel9<float>(float *, const __nv_bfloat16 *, int, int, std::bool_constant<1>)",
     "matmul bias"),
    ("reduce_add_sum_kernel", "matmul bias"),
    ("void layernorm_backward_kernel10(__nv_bfloat16 *, float *)", "layernorm"),
    ("fused_residual_forward_kernel5", "residual"),
    ("gelu_backward_inplace_kernel", "gelu"),
    ("void fused_classifier_kernel5<__nv_bfloat16>(__nv_bfloat16 *)", "classifier"),
    ("wte_backward_kernel", "encoder"),
    ("global_norm_squared_kernel", "optimizer"),
    ("void copy_and_cast_kernel<float, __nv_bfloat16>(float *)", "other"),
])
def test_kernel_kinds(name, kind):
    assert kernel_peers.kind_of(name) == kind


def test_short_names_drop_return_type_and_parameters():
    assert kernel_peers.short_name("void layernorm_forward_kernel6(__nv_bfloat16 *, float *)") == \
        "layernorm_forward_kernel6"
    assert kernel_peers.short_name("void f<(bool)1, g<int>>(T1::Params)") == "f<(bool)1, g<int>>"
    assert kernel_peers.short_name("x" * 100, width=10) == "xxxxxxx..."


STAND_IN_NCU = '''
import os, sys
argv = sys.argv[1:]
log = argv[argv.index("--log-file") + 1]
program = argv[argv.index("--log-file") + 2:]
with open(os.environ["NCU_CALLS"], "a") as f:
    f.write(" ".join(argv) + "\\n")
opt = dict(zip(program[1:], program[2:]))
ours = any(arg.endswith("bench.py") for arg in program)
if not ours and os.environ.get("LLMC_FAILS"):
    print("llm.c stand-in: out of memory"); sys.exit(2)
steps = int(opt["--steps"]) if ours else int(opt["-x"])
suffix = "" if ours else "3"
def step(k):
    return [("encoder_forward_kernel" + suffix, 300),
            ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_kernel__5x_cublas", 10000 * k + (500 if ours else 0)),
            ("void layernorm_forward_kernel6(__nv_bfloat16 *, float *)", 2000),
            ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_kernel0_0", 4000),
            ("void matmul_backward_bias_kernel9<float>(float *)", 700 if ours else 900),
            ("adamw_kernel" + suffix, 1200)]
val = [("encoder_forward_kernel3", 300), ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_kernel__5x_cublas", 999999)]
kernels = [("init_from_master_kernel", 50)] + ([] if ours else val)
for k in range(1, steps + 1):
    kernels += step(k)
kernels += [] if ours else val
rows = [HEADER] + [f'"{i}","1","p","h","{name}","1","7","(1, 1, 1)","(1, 1, 1)","0","9.0","s",'
                   f'"gpu__time_duration.sum","nsecond","{value:,}"' for i, (name, value) in enumerate(kernels)]
with open(log, "w") as f:
    f.write("==PROF== Connected\\n" + "\\n".join(rows) + "\\n")
print("stand-in program output")
'''


@pytest.fixture
def stand_ins(tmp_path, monkeypatch):
    model, shard = write_tiny_inputs(tmp_path)
    ncu = tmp_path / "ncu"
    ncu.write_text(f"#!{sys.executable}\nHEADER = {HEADER!r}\n{textwrap.dedent(STAND_IN_NCU)}")
    ncu.chmod(0o755)
    llmc = tmp_path / "llm.c"
    llmc.mkdir()
    (llmc / "train_gpt2cu").write_text("#!/bin/sh\n")
    (llmc / "train_gpt2cu").chmod(0o755)
    monkeypatch.setenv("NCU_CALLS", str(tmp_path / "ncu_calls.txt"))
    monkeypatch.chdir(tmp_path)
    return tmp_path, model, shard, ncu, llmc


def test_side_by_side_with_a_stand_in_ncu(stand_ins, capsys):
    tmp_path, model, shard, ncu, llmc = stand_ins
    status = kernel_peers.main(["-e", str(model), "-i", str(shard), "-b", "8", "-t", "32", "--steps", "3",
                                "--llmc", str(llmc), "--ncu", str(ncu), "--json", "k.json"])
    out = capsys.readouterr().out
    assert status == 0, out
    calls = (tmp_path / "ncu_calls.txt").read_text().splitlines()
    assert len(calls) == 2 and all(call.startswith("--clock-control none --metrics gpu__time_duration.sum --csv")
                                   for call in calls)
    assert "--attention cudnn --cuda-graph 0" in calls[0] and "--warmup 0 --steps 3" in calls[0]
    assert "-b 8 -t 32 -x 3 -r 1" in calls[1]
    result = json.loads((tmp_path / "k.json").read_text())
    ours, llmc_run = result["programs"]["ours"], result["programs"]["llmc"]
    assert (ours["status"], ours["steps_found"], ours["kernels"]) == ("ok", 3, 6)
    assert (llmc_run["status"], llmc_run["steps_found"], llmc_run["kernels"]) == ("ok", 3, 6)
    # the third step's kernels only: its matmul took 30,000 ns (+500 in ours), no validation pass counted
    assert ours["kinds"]["matmul"] == [pytest.approx(0.0305), 1] and llmc_run["kinds"]["matmul"] == [0.03, 1]
    assert ours["kinds"]["matmul bias"] == [pytest.approx(0.0007), 1]
    assert ours["kernel_ms"] == pytest.approx((300 + 30500 + 2000 + 4000 + 700 + 1200) / 1e6)
    assert ours["top"][0] == [pytest.approx(0.0305), 1, "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_kernel__5x_cublas"]
    assert [row[2] for row in ours["top"]].count("layernorm_forward_kernel6") == 1
    table = out[out.index("\nkind ") + 1:]
    assert "ours ms" in table and "llm.c ms" in table and "ours - llm.c" in table
    rows = [re.split(r"  +", line.strip()) for line in table.splitlines()[:11] if line[:1].isalpha()]
    assert rows == [["kind", "ours ms kernels", "llm.c ms kernels ours - llm.c"],
                    ["attention", "0.004", "1", "0.004", "1", "+0.000"],
                    ["matmul bias", "0.001", "1", "0.001", "1", "-0.000"],
                    ["matmul", "0.030", "1", "0.030", "1", "+0.001"],
                    ["layernorm", "0.002", "1", "0.002", "1", "+0.000"],
                    ["encoder", "0.000", "1", "0.000", "1", "+0.000"],
                    ["optimizer", "0.001", "1", "0.001", "1", "+0.000"],
                    ["total", "0.039", "6", "0.038", "6", "+0.000"]], table
    assert "llm.c: the 15 heaviest kernels of the step" in out
    assert os.path.isfile(tmp_path / "k_logs" / "llmc_ncu.csv")


def test_a_failing_program_is_reported_and_the_other_kept(stand_ins, capsys, monkeypatch):
    tmp_path, model, shard, ncu, llmc = stand_ins
    monkeypatch.setenv("LLMC_FAILS", "1")
    status = kernel_peers.main(["-e", str(model), "-i", str(shard), "-b", "8", "-t", "32", "--llmc", str(llmc),
                                "--ncu", str(ncu), "--json", "k.json"])
    out = capsys.readouterr().out
    assert status == 1
    programs = json.loads((tmp_path / "k.json").read_text())["programs"]
    assert programs["ours"]["status"] == "ok"
    assert programs["llmc"]["status"] == "failed" and programs["llmc"]["reason"] == "exit status 2"
    assert "      llm.c stand-in: out of memory" in out
    assert "ours - llm.c" not in out and "ours: the 15 heaviest" in out


@pytest.mark.parametrize("args, message", [
    (["--steps", "1"], r"at least 2 steps"),
    (["--llmc", "."], r"--llmc \.: no train_gpt2cu built there"),
    (["-i", "absent.bin"], r"-i data shard absent.bin: not found"),
])
def test_bad_arguments_are_one_line(stand_ins, args, message):
    tmp_path, model, shard, ncu, _ = stand_ins
    with pytest.raises(LlmcError, match=message):
        kernel_peers.parse_args(["-e", str(model), "-i", str(shard), "--ncu", str(ncu)] + args)
