"""scripts/: the CPU recipe end to end, the GPT-2 124M recipe's restart loop and the Slurm example (run against a
stand-in python and launcher that record what they are asked to run), and the README's CPU-only install note.

The stand-ins check what the recipes hand to the real programs: every training command line goes through
train_gpt2cu.py's own parser and option checks.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import train_gpt2cu
from llmc_py.checkpoint import read_model, write_model
from llmc_py.config import GPT2Config
from llmc_py.rand import gpt2_random_init
from llmc_py.zero import discover

REPO_ROOT = Path(__file__).resolve().parent.parent
STEPS_124M = 18865


# ----------------------------------------------------------------------------
# scripts/run_cpu_tinyshakespeare.sh, end to end on a 2-layer model

def test_cpu_recipe_end_to_end(test_data_dir, tmp_path):
    config = GPT2Config(max_seq_len=64, vocab_size=50257, padded_vocab_size=50304, num_layers=2, num_heads=2,
                        channels=64)
    model = tmp_path / "tiny.bin"
    write_model(str(model), config, gpt2_random_init(config), 3)
    out = tmp_path / "run"
    env = dict(os.environ, OUT=str(out), MODEL=str(model), STEPS="4", VAL_EVERY="2", PYTHON=sys.executable,
               TS_INPUT=str(test_data_dir / "tinyshakespeare" / "input.txt"),
               LLMC_GPT2_TIKTOKEN=str(test_data_dir / "gpt2" / "gpt2.tiktoken"))
    proc = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "run_cpu_tinyshakespeare.sh")], env=env,
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # trained with val loss at steps 0, 2, 4 and HellaSwag on the script's 8 examples at 2 and 4
    log = (out / "log" / "main.log").read_text().splitlines()
    assert [line.split()[0] for line in log if " tel:" in line] == ["s:0", "s:2", "s:4"]
    assert [line.split()[0] for line in log if " trl:" in line] == ["s:0", "s:1", "s:2", "s:3"]
    assert [line.split()[0] for line in log if " eval:" in line] == ["s:2", "s:4"]
    assert len(re.findall(r"^HellaSwag: \d/8 = \d\.\d{6}$", proc.stdout, re.M)) == 2
    # the plot and the export of the last checkpoint
    assert (out / "vislog.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cfg = json.loads((out / "hf" / "config.json").read_text())
    assert (cfg["n_layer"], cfg["n_embd"], cfg["vocab_size"]) == (2, 64, 50257)
    from safetensors.numpy import load_file
    exported = load_file(out / "hf" / "model.safetensors")
    trained_config, trained, _ = read_model(out / "log" / "model_00000004.bin")
    wte = trained[:config.padded_vocab_size * config.channels].reshape(config.padded_vocab_size, config.channels)
    np.testing.assert_array_equal(exported["transformer.wte.weight"], wte[:config.vocab_size])
    assert not np.array_equal(wte, gpt2_random_init(config)[:wte.size].reshape(wte.shape))  # it did train


# ----------------------------------------------------------------------------
# stand-ins: a python that records its arguments and plays a training run, and pass-through launchers

FAKE_PYTHON = """#!{python}
# records its arguments; train_gpt2cu.py plays the next outcome of FAKE_TRAIN
import json, os, sys
with open(os.environ["CALLS"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1] == "train_gpt2cu.py":
    with open(os.environ["CALLS"]) as f:
        runs = sum(json.loads(line)[0] == "train_gpt2cu.py" for line in f)
    plan = os.environ["FAKE_TRAIN"].split(",")
    outcome = plan[min(runs, len(plan)) - 1]
    out_dir = sys.argv[sys.argv.index("-o") + 1]
    os.makedirs(out_dir, exist_ok=True)
    if outcome != "crash":  # "checkpoint:N" writes DONE_N and then crashes, "done:N" finishes
        step = int(outcome.split(":")[1])
        open(os.path.join(out_dir, "DONE_%08d" % step), "w").close()
    sys.exit(0 if outcome.startswith("done") else 1)
"""

LAUNCHER = """#!/bin/bash
# records how it was called, then runs the command after its own options
echo "$(basename "$0") $*" >> "$LAUNCHES"
while [ "${1#-}" != "$1" ]; do shift; [ "$1" -eq "$1" ] 2>/dev/null && shift; done
exec "$@"
"""


@pytest.fixture
def stand_ins(tmp_path):
    """(environment, calls file): PYTHON is the recording python; mpirun and srun on PATH pass through."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python = bin_dir / "python"
    python.write_text(FAKE_PYTHON.format(python=sys.executable))
    for name in ("mpirun", "srun"):
        (bin_dir / name).write_text(LAUNCHER)
    for path in bin_dir.iterdir():
        path.chmod(0o755)
    calls = tmp_path / "calls.jsonl"
    env = dict(os.environ, PYTHON=str(python), CALLS=str(calls), LAUNCHES=str(tmp_path / "launches.txt"),
               PATH=f"{bin_dir}:{os.environ['PATH']}")
    return env, calls


def recorded(calls):
    return [json.loads(line) for line in calls.read_text().splitlines()]


def check_training_flags(argv, out_dir, num_processes, **expected):
    """The command line parses with the trainer's own rules and asks for llm.c's GPT-2 124M run."""
    assert argv[0] == "train_gpt2cu.py"
    o = train_gpt2cu.parse_args(argv[1:])
    train_gpt2cu.check_options(o)
    assert o["output_log_dir"] == str(out_dir) and o["resume"] == 1 and o["load_filename"] == "d12"
    assert o["max_steps"] == STEPS_124M and o["total_batch_size"] == 524288 and o["hellaswag_eval"] == 1
    assert o["total_batch_size"] % (o["B"] * o["T"] * num_processes) == 0
    assert o["train_data_pattern"] == "dev/data/fineweb10B/fineweb_train_*.bin"
    assert o["val_data_pattern"] == "dev/data/fineweb10B/fineweb_val_*.bin"
    assert {k: o[k] for k in expected} == expected
    return o


# ----------------------------------------------------------------------------
# scripts/run_gpt2_124M.sh

def run_124M(env, out_dir, plan, **settings):
    env = dict(env, OUT=str(out_dir), FAKE_TRAIN=plan, **settings)
    return subprocess.run(["bash", str(REPO_ROOT / "scripts" / "run_gpt2_124M.sh")], env=env, capture_output=True,
                          text=True, timeout=120)


def expected_prep():
    """The prep steps the recipe runs: those whose output is not there yet."""
    steps = []
    if not (REPO_ROOT / "dev/data/fineweb10B/fineweb_val_000000.bin").is_file():
        steps.append(["dev/data/fineweb.py", "-v", "10B"])
    if not (REPO_ROOT / "dev/data/hellaswag/hellaswag_val.bin").is_file():
        steps.append(["dev/data/hellaswag.py"])
    return steps


def test_run_gpt2_124M_trains_until_done(stand_ins, tmp_path):
    """A crash, a crash after a checkpoint, two more crashes (the count restarts after progress), then the
    finished run: five mpirun launches of the same command, then the plot."""
    env, calls = stand_ins
    out_dir = tmp_path / "log_gpt2_124M"
    proc = run_124M(env, out_dir, f"crash,checkpoint:5000,crash,crash,done:{STEPS_124M}")
    assert proc.returncode == 0, proc.stderr
    runs = recorded(calls)
    prep = expected_prep()
    assert runs[:len(prep)] == prep
    train = runs[len(prep):-1]
    assert len(train) == 5 and all(argv == train[0] for argv in train)
    check_training_flags(train[0], out_dir, 8, B=64, T=1024, checkpoint_every=5000, zero_stage=1)
    assert runs[-1] == ["dev/vislog.py", f"{out_dir}/main.log", "-o", f"{out_dir}/curves.png", "--size", "124M"]
    launch = f"mpirun -np 8 {env['PYTHON']} {' '.join(train[0])}"
    assert (tmp_path / "launches.txt").read_text().splitlines() == [launch] * 5


def test_run_gpt2_124M_gives_up(stand_ins, tmp_path):
    """Runs that keep ending without a new checkpoint stop the loop after RETRIES of them, with no plot."""
    env, calls = stand_ins
    out_dir = tmp_path / "log"
    proc = run_124M(env, out_dir, "checkpoint:5000,crash", RETRIES="2", NGPU="4")
    assert proc.returncode == 1
    assert proc.stderr.endswith(f"giving up: 2 runs in a row ended without a new checkpoint in {out_dir}\n")
    train = [argv for argv in recorded(calls) if argv[0] == "train_gpt2cu.py"]
    assert len(train) == 3  # progress, then two runs without
    assert all(argv[0] != "dev/vislog.py" for argv in recorded(calls))
    assert (tmp_path / "launches.txt").read_text().startswith("mpirun -np 4 ")


# ----------------------------------------------------------------------------
# scripts/multi_node/run_gpt2_124M_fs.sbatch

def test_sbatch_example(stand_ins, tmp_path):
    env, calls = stand_ins
    script = REPO_ROOT / "scripts" / "multi_node" / "run_gpt2_124M_fs.sbatch"
    directives = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)$", script.read_text(), re.M))
    processes = int(directives["nodes"]) * int(directives["ntasks-per-node"])
    assert directives["gpus-per-node"] == directives["ntasks-per-node"]  # one process per GPU
    sync = tmp_path / "shared" / "sync"
    out_dir = tmp_path / "log"
    env = dict(env, SLURM_SUBMIT_DIR=str(REPO_ROOT), SLURM_JOB_ID="77", SYNC_DIR=str(sync), OUT=str(out_dir),
               FAKE_TRAIN=f"done:{STEPS_124M}")
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    (argv,) = recorded(calls)
    assert (tmp_path / "launches.txt").read_text().startswith("srun ")
    o = check_training_flags(argv, out_dir, processes, nccl_init_method="fs", fs_path=str(sync))
    assert o["B"] * o["T"] * processes == 524288  # llm.c's batch without accumulation on the requested nodes
    # every rank srun starts finds its place from Slurm's variables and shares the id through the folder
    info = discover(o["num_processes"], o["process_rank"], o["gpus_per_node"], o["nccl_init_method"],
                    o["server_ip"], o["fs_path"], environ={"SLURM_PROCID": "9", "SLURM_NTASKS": str(processes),
                                                           "SLURM_LOCALID": "1"})
    assert (info.process_rank, info.num_processes, info.local_rank) == (9, processes, 1)
    assert not sync.exists() and sync.parent.is_dir()  # the job's sync folder is removed after the run


# ----------------------------------------------------------------------------
# README: the CPU build of PyTorch on CPU-only machines, without breaking `make train` / `make test`

def test_readme_cpu_only_torch_note(tmp_path):
    from packaging.specifiers import SpecifierSet
    pin = re.search(r"^torch==(\S+)$", (REPO_ROOT / "requirements-dev.txt").read_text(), re.M).group(1)
    readme = (REPO_ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    (note,) = [b for b in blocks if "download.pytorch.org/whl/cpu" in b]
    commands = [line.split("#")[0].strip() for line in note.splitlines() if line.split("#")[0].strip()]
    assert commands == ["python3 -m venv .venv",
                        f".venv/bin/pip install torch=={pin} --index-url https://download.pytorch.org/whl/cpu",
                        "make test"]
    # make then keeps that build: the CPU wheel's version satisfies the pin, and make's venv step (the same
    # `python3 -m venv .venv`, no --clear) leaves an existing venv's packages alone
    assert f"{pin}+cpu" in SpecifierSet(f"=={pin}")
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert re.search(r"^VENV := \.venv$", makefile, re.M) and "\t$(PYTHON) -m venv $(VENV)\n" in makefile
    venv = tmp_path / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    marker = next(venv.glob("lib/python*/site-packages")) / "torch_cpu_marker"
    marker.write_text("kept")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    assert marker.read_text() == "kept"
