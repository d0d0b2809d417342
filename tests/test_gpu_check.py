"""dev/gpu/check.sh, the one command a lent GPU machine runs, exercised on the CPU with stand-in steps: what it
prints has to be the whole story within a 12,000-character reply, whatever the steps print or however they fail.

The runner and dev/gpu/lib.sh are copied into a scratch repository whose dev/gpu/steps/ holds small scripts that
pass, fail the way pytest and the model test fail, time out, or need the d12 fixture (written by stand-ins for
dev/data/tinyshakespeare.py and train_gpt2.py that only record that they ran).
"""
import shutil
import subprocess
import sys
import tarfile

import pytest

from conftest import REPO_ROOT

STEPS = {
    "10_pass.sh": """# passes, with a figure that holds the table's old separator
# timeout: 20
source dev/gpu/lib.sh
figure "B=4: 10.0 ms/step | 400000 tok/s | 40.0% bf16 MFU"
""",
    "20_kernels.sh": """# fails the way pytest fails, after a long log
# timeout: 20
source dev/gpu/lib.sh
for i in $(seq 1 3000); do echo "tests/test_kernels_gpu.py::test_case[$i] PASSED"; done
echo "E   AssertionError: arrays differ"
echo "cupy_backends.cuda.api.driver.CUDADriverError: CUDA_ERROR_ILLEGAL_ADDRESS: an illegal memory access"
echo "FAILED tests/test_kernels_gpu.py::test_encoder[bf16] - AssertionError: arrays differ"
for i in $(seq 1 3000); do echo "teardown line $i"; done
figure "3000 passed, 1 failed"
exit 1
""",
    "30_model.sh": """# needs the d12 fixture, then fails the way test_gpt2cu.py fails
# timeout: 20
source dev/gpu/lib.sh
d12=$(need_d12) || { figure "d12 fixture not written"; exit 1; }
cat "$d12/model.txt"
echo "=== python test_gpt2cu.py -e gpt2_d12_bf16.bin -r 0"
echo "TENSOR NOT OK, maxdiff = 1.0"
echo "overall okay: 0"
figure "-r0:FAIL"
exit 1
""",
    "40_slow.sh": """# runs past its timeout
# timeout: 2
source dev/gpu/lib.sh
echo started
sleep 30
""",
}
FIXTURE_WRITERS = {
    "dev/data/tinyshakespeare.py": "import sys, time\ntime.sleep(2)\nprint('tokenized', file=sys.stderr)\n",
    "train_gpt2.py": "import time\ntime.sleep(1)\nopen('model.txt', 'w').write('d12 written\\n')\n",
}


@pytest.fixture
def scratch_repo(tmp_path):
    root = tmp_path / "repo"
    (root / "dev" / "gpu" / "steps").mkdir(parents=True)
    (root / "dev" / "data").mkdir()
    for name in ("check.sh", "lib.sh"):
        shutil.copy(REPO_ROOT / "dev" / "gpu" / name, root / "dev" / "gpu" / name)
    for name, text in STEPS.items():
        (root / "dev" / "gpu" / "steps" / name).write_text(text)
    for name, text in FIXTURE_WRITERS.items():
        (root / name).write_text(text)
    return root


def check(root, *args, budget=120):
    env = {"PATH": "/usr/bin:/bin", "PY": sys.executable, "WORK": str(root.parent / "work"),
           "OUT": str(root.parent / "out"), "LLMC_TEST_DATA": str(root.parent), "CHECK_BUDGET_S": str(budget)}
    proc = subprocess.run(["bash", "dev/gpu/check.sh", *args], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def table(stdout):
    """{step: (result, seconds, figure)} from the summary table printed last."""
    rows = stdout.split("step             result seconds  key figure\n", 1)[1].splitlines()
    return {row[:16].strip(): (row[17:22].strip(), int(row[23:30]), row[32:]) for row in rows}


def test_check_reports_every_failure_within_one_reply(scratch_repo):
    status, out, err = check(scratch_repo)
    assert status == 1, err
    rows = table(out)
    assert rows["pass"] == ("PASS", rows["pass"][1], "B=4: 10.0 ms/step | 400000 tok/s | 40.0% bf16 MFU")
    assert rows["kernels"][0] == "FAIL" and rows["kernels"][2] == "exit 1; 3000 passed, 1 failed"
    assert rows["model"][0] == "FAIL" and rows["model"][2] == "exit 1; -r0:FAIL"
    assert rows["slow"][0] == "FAIL" and rows["slow"][2] == "timed out after 2 s"
    # the lines that say what went wrong survive thousands of lines before and after them
    failures = out.split("GPU check: ", 1)[0]
    for line in ("FAILED tests/test_kernels_gpu.py::test_encoder[bf16] - AssertionError: arrays differ",
                 "CUDA_ERROR_ILLEGAL_ADDRESS", "=== python test_gpt2cu.py -e gpt2_d12_bf16.bin -r 0",
                 "TENSOR NOT OK, maxdiff = 1.0", "=== timed out after 2 s", "teardown line 3000"):
        assert line in failures, line
    assert len(out) < 12_000
    work = scratch_repo.parent / "work"
    # the fixture was written once, in the background, and the model step waited for it
    assert "d12 written" in (work / "logs" / "30_model.log").read_text()
    assert "writing the d12 fixture" in (work / "logs" / "d12_fixture.log").read_text()
    assert "writing the d12 fixture" not in (work / "logs" / "30_model.log").read_text()
    with tarfile.open(scratch_repo.parent / "out" / "logs.tar.gz") as logs:
        names = sorted(logs.getnames())
    assert names == ["logs", "logs/10_pass.log", "logs/20_kernels.log", "logs/30_model.log", "logs/40_slow.log",
                     "logs/d12_fixture.log"]
    assert (scratch_repo.parent / "out" / "summary.txt").read_text().strip() == out.split("\n\n")[-1].strip()


def test_check_subsets_reruns_and_budget(scratch_repo):
    status, out, _ = check(scratch_repo, "pass")
    assert status == 0 and list(table(out)) == ["pass"]
    check(scratch_repo, "model")
    status, out, _ = check(scratch_repo, "model")  # a rerun on the same machine keeps the fixture
    log = (scratch_repo.parent / "work" / "logs")
    assert "writing the d12 fixture" not in (log / "30_model.log").read_text() + (log / "d12_fixture.log").read_text()
    status, _, err = check(scratch_repo, "kernals")
    assert status == 2 and "no step of dev/gpu/steps/ matches: kernals" in err
    status, out, _ = check(scratch_repo, "pass", budget=30)  # too little left to start a step: not a pass
    assert status == 1 and table(out)["pass"][:2] == ("SKIP", 0)


STAND_IN_BENCH = """import sys
opt = dict(zip(sys.argv[1::2], sys.argv[2::2]))
B = int(opt["-b"])
print("model m.bin: argv", " ".join(sys.argv[1:]))
if B > 64:
    print("cupy.cuda.memory.OutOfMemoryError: Out of memory allocating 1,234,567,890 bytes"); sys.exit(1)
if B == 8:
    sys.exit(0)
print(f"median of {opt['--steps']} steps: {B / 4:.1f} ms/step | 409600 tok/s | 40.1% bf16 MFU | {1000 * B} MiB "
      f"device memory used")
"""


def test_bench_fit_takes_the_largest_batch_that_runs(scratch_repo):
    (scratch_repo / "dev" / "bench.py").write_text(STAND_IN_BENCH)
    work = scratch_repo.parent / "work"
    work.mkdir()

    def bench_fit(*args):
        proc = subprocess.run(["bash", "-c", 'source dev/gpu/lib.sh && bench_fit "$@"', "bench_fit", *args],
                              cwd=scratch_repo, capture_output=True, text=True, timeout=60,
                              env={"PATH": "/usr/bin:/bin", "PY": sys.executable, "WORK": str(work)})
        return proc.returncode, proc.stdout, proc.stderr

    status, out, log = bench_fit("m.bin", "2", "--attention cudnn", "256", "128", "64", "32")
    assert (status, out) == (0, "B=64: 16.0 ms/step, 409600 tok/s, 40.1% bf16 MFU, 64000 MiB\n")
    # every try is in the log, with its flags; the smaller B is never run
    assert log.count("OutOfMemoryError") == 2 and "-b 32" not in log
    assert "-b 64 -t 1024 --steps 2 --attention cudnn" in log
    status, out, log = bench_fit("m.bin", "2", "", "512", "128")  # none fits: nothing to report, both tries logged
    assert (status, out) == (1, "") and log.count("OutOfMemoryError") == 2
    status, out, _ = bench_fit("m.bin", "10", "", "8", "4")
    assert (status, out) == (1, "B=8: dev/bench.py printed no median line\n")


LLMC_STAND_IN = """#!/usr/bin/env bash
# llm.c's test_gpt2cu as far as dev/gpu/llmc_model_test.sh sees it: the files it opens, then its step lines
for f in gpt2_124M_bf16.bin gpt2_124M_debug_state.bin dev/data/tinyshakespeare/tiny_shakespeare_val.bin; do
  [ -f "$f" ] || { echo "missing $f"; exit 3; }
done
echo "flags: $*"
i=0
for loss in $LOSSES; do i=$((i + 1)); echo "step $i: loss $loss (took 1.0 ms)"; done
echo "overall okay: 0"
exit 1
"""


@pytest.mark.parametrize("shift,count", [(0.01, 10), (0.0, 9)])
def test_llmc_model_test_compares_llmc_losses_with_the_reference(d12_dir, tmp_path, shift, count):
    """dev/gpu/llmc_model_test.sh on the d12 fixture with a stand-in for llm.c's test_gpt2cu: its step losses
    against the debug state's reference losses, the largest difference named; too few losses is one error line."""
    from llmc_py.checkpoint import read_debug_state, read_model_header
    config, _ = read_model_header(str(d12_dir / "gpt2_d12.bin"))
    reference = read_debug_state(str(d12_dir / "gpt2_d12_debug_state.bin"), config).losses
    work = tmp_path / "work"
    shutil.copytree(d12_dir, work / "d12")
    (work / "d12" / ".complete").touch()
    llmc = tmp_path / "llm.c"
    llmc.mkdir()
    (llmc / "test_gpt2cu").write_text(LLMC_STAND_IN)
    (llmc / "test_gpt2cu").chmod(0o755)
    losses = [loss + shift * (step == 3) for step, loss in enumerate(reference)][:count]
    env = {"PATH": "/usr/bin:/bin", "PY": sys.executable, "WORK": str(work),
           "LOSSES": " ".join(f"{loss:f}" for loss in losses)}
    proc = subprocess.run(["bash", str(REPO_ROOT / "dev" / "gpu" / "llmc_model_test.sh"), str(llmc), "-r", "1"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert "flags: -r 1" in proc.stdout and "test_gpt2cu exited 1" in proc.stdout, proc.stdout + proc.stderr
    if count < len(reference):
        assert proc.returncode == 1
        assert proc.stderr.strip().splitlines()[-1] == f"error: expected {len(reference)} step losses from " \
            f"test_gpt2cu, found {count}"
        return
    assert proc.returncode == 0, proc.stderr
    assert f"step  4: llm.c {losses[3]:f} reference {reference[3]:f} diff +0.010000" in proc.stdout
    assert proc.stdout.rstrip().splitlines()[-1] == "largest difference: 0.010000 at step 4"


STAND_IN_BUILD = """#!/usr/bin/env bash
# dev/gpu/build_llmc.sh as need_llmc sees it: each build is recorded, and makes train_gpt2cu unless told to fail
echo "build $*" >> "$BUILDS"
[ -n "${FAIL_BUILD:-}" ] && { echo "nvcc: error"; exit 1; }
touch "$1/train_gpt2cu" && chmod +x "$1/train_gpt2cu"
"""


def test_need_llmc_builds_the_carried_checkout_once(scratch_repo):
    work, builds = scratch_repo.parent / "work", scratch_repo.parent / "builds.txt"
    (scratch_repo / "dev" / "gpu" / "build_llmc.sh").write_text(STAND_IN_BUILD)

    def need_llmc(**env):
        proc = subprocess.run(["bash", "-c", "source dev/gpu/lib.sh && need_llmc"], cwd=scratch_repo,
                              capture_output=True, text=True, timeout=60,
                              env={"PATH": "/usr/bin:/bin", "WORK": str(work), "BUILDS": str(builds), **env})
        return proc.returncode, proc.stdout, proc.stderr

    assert need_llmc() == (1, "", "") and not builds.exists()  # no llm.c carried: nothing to build
    carried = scratch_repo / ".peers" / "llm.c"
    carried.mkdir(parents=True)
    (carried / "train_gpt2.cu").write_text("")
    status, out, err = need_llmc(FAIL_BUILD="1")
    assert (status, out) == (1, "") and "llm.c build failed" in err and "nvcc: error" in err
    status, out, err = need_llmc()
    assert (status, out) == (0, f"{work}/llm.c\n") and "building llm.c's train_gpt2cu and test_gpt2cu" in err
    assert need_llmc() == (0, f"{work}/llm.c\n", "")  # built before: not again
    assert builds.read_text().splitlines() == [f"build {work}/llm.c train_gpt2cu test_gpt2cu"] * 2
    assert (work / "llm.c" / "train_gpt2.cu").is_file()  # built in a copy, outside the carried folder


STAND_IN_PEER_PROGRAM = """import os, sys
argv = sys.argv[1:]
opt = dict(zip(argv[::2], argv[1::2]))
os.makedirs(opt["--logs"], exist_ok=True)
with open(os.path.join(opt["--logs"], "run.log"), "w") as f:
    f.write(os.getcwd() + " " + " ".join(argv))
open(opt["--json"], "w").write("{}")
sys.exit(int(opt.get("--exit", 0)))
"""


@pytest.mark.parametrize("built", [False, True])
def test_peer_program_runs_in_the_fixture_and_sends_its_logs_back(scratch_repo, built):
    """lib.sh's peer_program (dev/gpu/bench_peers.sh, kernel_peers.sh): the program runs in the d12 fixture folder
    with --llmc only when llm.c is built, its JSON goes to $OUT, and its logs (with llm.c's build log) come back as
    $OUT/NAME_logs.tar.gz; its exit status is the helper's."""
    work, out = scratch_repo.parent / "work", scratch_repo.parent / "out"
    (work / "d12").mkdir(parents=True)
    (work / "d12" / ".complete").touch()
    if built:
        (work / "llm.c").mkdir()
        (work / "llm.c" / ".built").touch()
        (work / "llm.c" / "build.log").write_text("built\n")
    (scratch_repo / "dev" / "kernel_peers.py").write_text(STAND_IN_PEER_PROGRAM)
    proc = subprocess.run(["bash", "-c", 'source dev/gpu/lib.sh && peer_program kernel_peers.py kernels "$@"',
                           "peer_program", "-b", "4", "--exit", "3"], cwd=scratch_repo, capture_output=True,
                          text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PY": sys.executable, "WORK": str(work), "OUT": str(out)})
    assert proc.returncode == 3, proc.stderr
    assert (out / "kernel_peers.json").read_text() == "{}"
    with tarfile.open(out / "kernels_logs.tar.gz") as tar:
        names = sorted(tar.getnames())
        run = tar.extractfile("kernels/run.log").read().decode()
    assert names == sorted(["kernels", "kernels/run.log"] + (["kernels/llmc_build.log"] if built else []))
    llmc = f"--llmc {work}/llm.c " if built else ""
    assert run == f"{work}/d12 {llmc}--json {out}/kernel_peers.json --logs {work}/logs/kernels -b 4 --exit 3"
