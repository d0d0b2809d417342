"""Reliability of train_gpt2cu.py on CPU: kill -9 at random moments, preemption (SIGTERM / SIGINT, one process and
two MPI ranks), NaN and infinite steps, determinism, full and unwritable disks, and token data that does not fit
the model's vocabulary (the trainer and test_gpt2cu.py).

Everything trains a tiny model (2 layers, C=64, a 256-token vocabulary, 120,576 parameters) on random tokens, so a
checkpoint every step costs milliseconds and a dozen restarts fit in a minute. Faults are real where the kernel
makes them (SIGKILL, SIGTERM, SIGINT, ENOSPC from /dev/full) and injected by a wrapper around the trainer where it
cannot (a NaN gradient, an infinite loss, EACCES for root). Every run is compared with one uninterrupted reference
run, byte for byte: checkpoints, main.log and the printed losses.
"""
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from llmc_py.checkpoint import read_model, read_state, write_model
from llmc_py.config import GPT2Config
from llmc_py.dataloader import write_shard
from llmc_py.rand import gpt2_random_init
from test_multiprocess import MPI_ENV, launch, mpirun  # noqa: F401  (mpirun is a fixture)

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAIN = str(REPO_ROOT / "train_gpt2cu.py")
CONFIG = GPT2Config(max_seq_len=32, vocab_size=256, padded_vocab_size=256, num_layers=2, num_heads=4, channels=64)
N = CONFIG.num_parameters
FLAGS = ["--device", "cpu", "-e", "tiny.bin", "-i", "train.bin", "-j", "val.bin", "-b", 2, "-t", 32, "-s", 0,
         "-v", 5, "-m", 2]
STEPS = 40  # of the reference run; the learning rate is constant (no warmup, no decay), so shorter runs match it
# children flush every line (the tests read them as they come), one BLAS thread each, Open MPI allowed as root
ENV = dict(os.environ, PYTHONUNBUFFERED="1", **MPI_ENV)
STEP_LINE = re.compile(r"^step +(\d+)/\d+ \| loss +(\S+) ")


# ----------------------------------------------------------------------------
# the tiny model, its data, and the uninterrupted reference run

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    write_model(str(folder / "tiny.bin"), CONFIG, gpt2_random_init(CONFIG), 3)
    rng = np.random.default_rng(0)
    write_shard(str(folder / "train.bin"), rng.integers(0, CONFIG.vocab_size, 20_000))
    write_shard(str(folder / "val.bin"), rng.integers(0, CONFIG.vocab_size, 5_000))
    return folder


def losses(stdout):
    """{step: loss as printed}; a step printed twice must print the same loss."""
    out = {}
    for line in stdout.splitlines():
        m = STEP_LINE.match(line)
        if m:
            assert out.setdefault(int(m.group(1)), m.group(2)) == m.group(2), f"step {m.group(1)} printed twice"
    return out


@pytest.fixture(scope="module")
def reference(tiny):
    """STEPS steps with a checkpoint after every one: (output dir, {step: loss})."""
    out = tiny / "reference"
    proc = launch(tiny, [*FLAGS, "-x", STEPS, "-n", 1, "-o", out])
    return out, losses(proc.stdout)


def same_files(run, ref, names):
    for name in names:
        assert (run / name).read_bytes() == (ref / name).read_bytes(), f"{name} differs from the reference run's"


def checkpoint_names(step, ranks=1):
    return {f"DONE_{step:08d}", f"model_{step:08d}.bin", *(f"state_{step:08d}_{r:05d}.bin" for r in range(ranks))}


class Child:
    """A training process whose stdout lines a thread collects as they come."""

    def __init__(self, cmd, cwd, env=ENV):
        self.proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(line.rstrip("\n") for line in self.proc.stdout))
        self.reader.start()

    @property
    def stdout(self):
        return "\n".join(self.lines)

    def wait_for_steps(self, n, timeout=120):
        """True once n step lines came; False if the process ended first."""
        deadline = time.monotonic() + timeout
        while sum(line.startswith("step ") for line in list(self.lines)) < n:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def finish(self, timeout=300):
        rc = self.proc.wait(timeout)
        self.reader.join(timeout)
        self.stderr = self.proc.stderr.read()
        return rc


# ----------------------------------------------------------------------------
# kill -9

KILLS = ["early"] * 3 + ["inside a write"] * 5 + ["after a step"] * 4


def temp_files(folder):
    return [name for name in os.listdir(folder) if name.startswith(".tmp_")] if folder.exists() else []


def wait_for_a_write(folder, child, timeout=60):
    """Polls until a checkpoint writer's temporary file exists (the kill then lands inside that write)."""
    deadline = time.monotonic() + timeout
    while not temp_files(folder):
        if child.proc.poll() is not None or time.monotonic() > deadline:
            return
        time.sleep(0.0005)


def assert_nothing_torn(run, ref):
    """What a kill leaves: complete files under their real names (each equal to the reference run's), DONE_
    markers only beside a whole checkpoint, main.log a prefix of the reference's made of whole lines."""
    for name in os.listdir(run) if run.exists() else []:
        if name.startswith(("model_", "state_")):
            same_files(run, ref, [name])
        elif name.startswith("DONE_"):
            step = int(name[len("DONE_"):])
            assert (run / name).stat().st_size == 0 and checkpoint_names(step) <= set(os.listdir(run))
        elif name == "main.log":
            log, ref_log = (run / name).read_bytes(), (ref / name).read_bytes()
            assert ref_log.startswith(log) and (not log or log.endswith(b"\n")), log[-200:]
        else:
            assert name.startswith(".tmp_"), f"unexpected file {name}"


def latest_done(folder):
    steps = [int(n[len("DONE_"):]) for n in os.listdir(folder) if n.startswith("DONE_")] if folder.exists() else []
    return max(steps, default=-1)


def test_kill9_at_random_moments_resumes_exactly(tiny, reference, tmp_path):
    """12 SIGKILLs (during start-up and resume, right after step lines, and inside checkpoint writes), each followed
    by -y 1: every resume starts from a whole checkpoint, nothing on disk is ever torn, and the run ends with the
    reference's losses, checkpoints and main.log, byte for byte."""
    ref, ref_losses = reference
    run = tmp_path / "run"
    rng = random.Random(1234)
    plan = KILLS[:]
    rng.shuffle(plan)
    args = [sys.executable, TRAIN, *FLAGS, "-x", STEPS, "-n", 1, "-o", run, "-y", 1]
    printed, inside_writes = {}, 0
    for how in plan:
        resume_from = latest_done(run)
        child = Child(args, tiny)
        if how == "early":  # start-up or resume: a random moment, cut short by the first step line
            child.wait_for_steps(1, timeout=rng.uniform(0.0, 1.5))
        else:
            # two step lines: the checkpoint of the first trained step is whole, so every kill makes progress
            assert child.wait_for_steps(2), f"the run ended before its kill:\n{child.stdout[-2000:]}"
            if how == "after a step":
                time.sleep(rng.uniform(0.0, 0.15))
            else:
                wait_for_a_write(run, child)
        child.proc.kill()
        assert child.finish() == -signal.SIGKILL, f"the run ended before its kill ({how})"
        inside_writes += how == "inside a write" and bool(temp_files(run))
        resumed = re.search(r"^resumed from step (\d+) ", child.stdout, re.M)
        assert resumed is None or int(resumed.group(1)) == resume_from
        for step, loss in losses(child.stdout).items():
            printed.setdefault(step, set()).add(loss)
        assert_nothing_torn(run, ref)
    resume_from = latest_done(run)
    final = Child(args, tiny)
    assert final.finish() == 0, final.stderr
    assert f"resumed from step {resume_from} of {run}" in final.stdout
    for step, loss in losses(final.stdout).items():
        printed.setdefault(step, set()).add(loss)
    assert inside_writes >= 3, f"only {inside_writes} kills landed inside a checkpoint write"
    assert printed == {step: {loss} for step, loss in ref_losses.items()} and len(printed) == STEPS
    assert not temp_files(run)
    assert_nothing_torn(run, ref)
    same_files(run, ref, ["main.log", *sorted(checkpoint_names(STEPS))])


# ----------------------------------------------------------------------------
# preemption: SIGTERM / SIGINT finish the step, checkpoint, say where to resume, exit 0

def stop_line(stdout, cause):
    m = re.search(rf"^stopped at step (\d+) on {cause}: checkpoint (\d+) is in (\S+); run again with the same "
                  rf"flags and -y 1 to continue from it$", stdout, re.M)
    assert m and m.group(1) == m.group(2), stdout[-2000:]
    return int(m.group(1))


def reference_log(ref, steps):
    """The reference's main.log as a run of `steps` steps writes it (steps a multiple of -v 5: its last val
    loss is one the reference logged too)."""
    lines = (ref / "main.log").read_bytes().splitlines(keepends=True)
    return b"".join(line for line in lines if int(line[2:line.index(b" ")]) < steps
                    or line.startswith(f"s:{steps} tel:".encode()))


def test_sigterm_checkpoints_and_resume_continues_exactly(tiny, reference, tmp_path):
    ref, ref_losses = reference
    run = tmp_path / "run"
    args = [*FLAGS, "-x", 10, "-n", 100, "-o", run]
    child = Child([sys.executable, TRAIN, *args], tiny)
    assert child.wait_for_steps(2)
    child.proc.send_signal(signal.SIGTERM)
    assert child.finish() == 0, child.stderr
    step = stop_line(child.stdout, "SIGTERM")
    assert 2 <= step < 10 and set(os.listdir(run)) == checkpoint_names(step) | {"main.log"}
    same_files(run, ref, checkpoint_names(step))
    second = launch(tiny, [*args, "-y", 1]).stdout
    assert f"resumed from step {step} of {run}" in second
    assert {**losses(child.stdout), **losses(second)} == {s: ref_losses[s] for s in range(1, 11)}
    assert (run / "main.log").read_bytes() == reference_log(ref, 10)
    same_files(run, ref, checkpoint_names(10))


def test_sigint_checkpoints_the_finished_step(tiny, reference, tmp_path):
    """Ctrl-C: the step under way finishes, its checkpoint equals the reference's; without -o nothing is saved."""
    ref, _ = reference
    run = tmp_path / "run"
    child = Child([sys.executable, TRAIN, *FLAGS, "-x", 10, "-o", run], tiny)
    assert child.wait_for_steps(3)
    child.proc.send_signal(signal.SIGINT)
    assert child.finish() == 0, child.stderr
    step = stop_line(child.stdout, "SIGINT")
    same_files(run, ref, checkpoint_names(step))
    assert not child.stderr
    child = Child([sys.executable, TRAIN, *FLAGS, "-x", 10], tiny)
    assert child.wait_for_steps(1)
    child.proc.send_signal(signal.SIGINT)
    assert child.finish() == 0, child.stderr
    assert re.search(r"^stopped at step \d+ on SIGINT: no output dir \(-o\), so no checkpoint to resume from$",
                     child.stdout, re.M), child.stdout[-2000:]


def test_stop_request_records_the_first_signal_and_restores_handlers():
    """Inside the block the first SIGTERM is only recorded (and the handler found before comes back for a second
    one); one process needs no reduction; leaving the block restores every handler."""
    from llmc_py.preemption import StopRequest
    from llmc_py.zero import SingleProcess
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with StopRequest() as stop:
            assert stop.ranks_stopping(SingleProcess()) == 0
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.signal_name == "SIGTERM" and stop.ranks_stopping(SingleProcess()) == 1 and seen == []
            os.kill(os.getpid(), signal.SIGTERM)  # the second one reaches the handler found before
            assert seen == [signal.SIGTERM]
            assert signal.getsignal(signal.SIGINT) == stop._handle
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, previous)


def rank_pid(tag, rank, timeout=60):
    """The pid of MPI rank `rank` of the job whose environment carries LLMC_TEST_TAG=tag."""
    want = {f"LLMC_TEST_TAG={tag}".encode(), f"OMPI_COMM_WORLD_RANK={rank}".encode()}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                environ = set(Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
            except OSError:
                continue
            if want <= environ:
                return int(pid)
        time.sleep(0.1)
    raise AssertionError(f"no process of rank {rank} found")


def test_preemption_two_ranks_agree_on_the_stop_step(tiny, mpirun, tmp_path):
    """mpirun -np 2 with ZeRO-1: SIGTERM to rank 1 alone; both ranks stop at the same step boundary, each writes
    its state file of that checkpoint (equal to an uninterrupted run's), the job exits 0, and -y 1 continues
    exactly."""
    ref, run = tmp_path / "ref", tmp_path / "run"
    args = [*FLAGS, "-z", 1, "-x", 8, "-n", 100]
    straight = launch(tiny, [*args, "-n", 1, "-o", ref], 2, mpirun).stdout
    tag = uuid.uuid4().hex
    child = Child([mpirun, "--oversubscribe", "-np", 2, sys.executable, TRAIN, *args, "-o", run], tiny,
                  env=dict(ENV, LLMC_TEST_TAG=tag))
    assert child.wait_for_steps(2)
    os.kill(rank_pid(tag, 1), signal.SIGTERM)
    assert child.finish() == 0, child.stderr
    step = stop_line(child.stdout, "a stop signal to another process")
    assert step < 8 and set(os.listdir(run)) == checkpoint_names(step, ranks=2) | {"main.log"}
    same_files(run, ref, checkpoint_names(step, ranks=2))
    second = launch(tiny, [*args, "-o", run, "-y", 1], 2, mpirun).stdout
    assert f"resumed from step {step} of {run}" in second
    assert {**losses(child.stdout), **losses(second)} == losses(straight)
    same_files(run, ref, ["main.log", *checkpoint_names(8, ranks=2)])


# ----------------------------------------------------------------------------
# faults the kernel will not make on demand: a wrapper runs train_gpt2cu.main with them injected

FAULTY_TRAINER = r'''
"""train_gpt2cu.py with faults from the environment.
LLMC_POISON="2=grad,4=loss,6+=grad": at the end of the backward of those steps (counted from this process's first;
"+" means from there on) a NaN in one gradient, which makes the norm NaN, or an infinite loss sum.
LLMC_DISK_FAULT="enospc:5" or "eacces:5": from the 5th atomic write into the -o folder on, the temporary file's
descriptor points at /dev/full (every write fails with the kernel's ENOSPC), or creating it fails with EACCES."""
import errno
import itertools
import os
import sys
import tempfile

sys.path.insert(0, REPO_ROOT)
import numpy as np

import train_gpt2cu
from llmc_py import run_main
from llmc_py.gpt2 import GPT2

poison = {}
for item in filter(None, os.environ.get("LLMC_POISON", "").split(",")):
    step, kind = item.split("=")
    poison[(int(step.rstrip("+")), step.endswith("+"))] = kind


def poison_at(step):
    for (first, onwards), kind in poison.items():
        if step == first or onwards and step > first:
            return kind


steps = itertools.count()
grad_norm = GPT2.launch_grad_norm


def poisoned_grad_norm(self):
    """The last micro step of each training step computes the norm: the grads and the loss sum are final here."""
    kind = poison_at(next(steps))
    if kind == "grad":
        self.grads[self.grads.size // 2] = np.nan
    elif kind == "loss":
        self.scalars[1] = np.inf
    grad_norm(self)


GPT2.launch_grad_norm = poisoned_grad_norm

fault = os.environ.get("LLMC_DISK_FAULT")
if fault:
    kind, first = fault.split(":")
    out_dir = os.path.realpath(sys.argv[sys.argv.index("-o") + 1])
    writes = itertools.count(1)
    mkstemp = tempfile.mkstemp

    def faulty_mkstemp(*args, dir=None, **kwargs):
        failing = os.path.realpath(dir) == out_dir and next(writes) >= int(first)
        if failing and kind == "eacces":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        fd, path = mkstemp(*args, dir=dir, **kwargs)
        if failing:
            full = os.open("/dev/full", os.O_WRONLY)
            os.dup2(full, fd)
            os.close(full)
        return fd, path

    tempfile.mkstemp = faulty_mkstemp

run_main(train_gpt2cu.main, sys.argv[1:])
'''


@pytest.fixture(scope="module")
def faulty(tiny):
    script = tiny / "faulty_trainer.py"
    script.write_text(f"REPO_ROOT = {str(REPO_ROOT)!r}\n{FAULTY_TRAINER}")
    return str(script)


def state_arrays(path):
    """m, v and master of a state file of the tiny model."""
    state = read_state(str(path), N)
    return state.m, state.v, state.master


def test_nonfinite_steps_skip_their_update(tiny, faulty, tmp_path, monkeypatch):
    """A NaN gradient at step 2 and an infinite loss at step 4: both updates are skipped (parameters, m, v and
    master as they were), the step lines and main.log say so, the others train on."""
    run = tmp_path / "run"
    monkeypatch.setenv("LLMC_POISON", "2=grad,4=loss")
    proc = launch(tiny, [faulty, *FLAGS, "-x", 6, "-n", 1, "-o", run])
    lines = [line for line in proc.stdout.splitlines() if line.startswith("step ")]
    skipped = [int(STEP_LINE.match(line).group(1)) for line in lines if line.endswith(" | update skipped: non-finite")]
    assert skipped == [3, 5] and len(lines) == 6
    assert re.match(r"step +3/6 \| loss \d+\.\d{6} \(\+nanz\)\| norm +nan \(\+nanz\)", lines[2]), lines[2]
    assert re.match(r"step +5/6 \| loss +inf \(\+nanz\)\| norm \d+\.\d{4} \(\+nanz\)", lines[4]), lines[4]
    assert proc.stdout.count("skipping update due to a non-finite loss or gradient norm") == 2
    log = (run / "main.log").read_text().splitlines()
    marked = [line.split()[0] for line in log if line.endswith(" skipped:nonfinite")]
    assert marked == ["s:2", "s:4"] and "s:4 trl:inf lr:0.000300 norm:" in "\n".join(log)
    model = {k: (run / f"model_{k:08d}.bin").read_bytes() for k in range(1, 7)}
    arrays = {k: state_arrays(run / f"state_{k:08d}_00000.bin") for k in range(1, 7)}
    for k in range(1, 6):
        unchanged = k in (2, 4)  # checkpoint k+1 follows step k's (skipped) update
        assert (model[k + 1] == model[k]) == unchanged, k
        for a, b in zip(arrays[k], arrays[k + 1]):
            assert np.array_equal(a, b) == unchanged, k
    assert all(np.isfinite(read_model(str(run / f"model_{k:08d}.bin"))[1]).all() for k in range(1, 7))


def test_nonfinite_steps_in_a_row_stop_the_run(tiny, faulty, tmp_path, monkeypatch):
    """From step 3 on every gradient is NaN: with -sn 4 the run stops after 4 skipped steps with one line naming
    the last checkpoint, whose weights are the last good ones; by default the run stops after 10."""
    run = tmp_path / "run"
    monkeypatch.setenv("LLMC_POISON", "3+=grad")
    proc = launch(tiny, [faulty, *FLAGS, "-x", 20, "-n", 1, "-o", run, "-sn", 4], expect=1)
    assert proc.stderr == (f"error: -sn 4: steps 4..7 all had a NaN or infinite loss or gradient norm and skipped "
                           f"their updates; stopping (the last checkpoint, step 6, is in {run})\n")
    assert latest_done(run) == 6
    good = (run / "model_00000003.bin").read_bytes()
    assert all((run / f"model_{k:08d}.bin").read_bytes() == good for k in range(4, 7))
    assert np.isfinite(read_model(str(run / "model_00000006.bin"))[1]).all()
    resumed = launch(tiny, [*FLAGS, "-x", 8, "-n", 1, "-o", run, "-y", 1]).stdout
    assert "resumed from step 6" in resumed and sorted(losses(resumed)) == [7, 8]
    monkeypatch.setenv("LLMC_POISON", "0+=loss")
    proc = launch(tiny, [faulty, *FLAGS, "-x", 20], expect=1)
    assert proc.stderr.startswith("error: -sn 10: steps 1..10 all had a NaN or infinite loss")
    assert len(proc.stderr.splitlines()) == 1 and len(losses(proc.stdout)) == 10


def test_update_decision_keeps_outlier_windows_clean():
    """The host-side decision: NaN/inf skips and never enters the z-score windows; llm.c's -sl/-sg still skip.
    A full window of 1, 2, 1, 2, 1, 2, 1, 2: adding 9 drops the oldest 1, and 2, 1, 2, 1, 2, 1, 2, 9 has mean 2.5
    and population std 2.5, so 9 has the z-score 2.6."""
    from train_gpt2cu import NONFINITE, update_decision
    from llmc_py.outlier_detector import OutlierDetector

    def window():
        w = OutlierDetector(8)
        for x in (1.0, 2.0) * 4:
            w.update(x)
        return w
    off = {"skip_update_lossz": 0.0, "skip_update_gradz": 0.0}
    loss_window, norm_window = window(), window()
    for bad in ((float("nan"), 1.0), (2.0, float("inf")), (float("-inf"), float("nan"))):
        skip, zloss, zgrad = update_decision(*bad, loss_window, norm_window, off)
        assert skip == NONFINITE and np.isnan(zloss) and np.isnan(zgrad)
    assert vars(loss_window) == vars(window()) and vars(norm_window) == vars(window())
    skip, zloss, _ = update_decision(9.0, 1.5, window(), window(), off)
    assert skip is None and zloss == pytest.approx(2.6, rel=1e-12)
    for loss, norm, flag, limit, reason in ((9.0, 1.5, "skip_update_lossz", 2.0, "loss z-score of 2.600000"),
                                            (1.5, 9.0, "skip_update_gradz", 2.0, "grad z-score of 2.600000"),
                                            (1.5, 9.0, "skip_update_gradz", 3.0, None)):
        assert update_decision(loss, norm, window(), window(), dict(off, **{flag: limit}))[0] == reason


# ----------------------------------------------------------------------------
# disks: a full or unwritable -o folder

@pytest.mark.parametrize("fault,first,name,reason", [
    ("enospc", 5, "model_00000002.bin", "No space left on device"),  # writes: main.log, then model, state, DONE
    ("eacces", 6, "state_00000002_00000.bin", "Permission denied"),
])
def test_full_or_unwritable_output_dir(tiny, faulty, reference, tmp_path, monkeypatch, fault, first, name, reason):
    """The failing write is one line naming its file, leaves no temporary file, and the checkpoint before it
    resumes exactly."""
    ref, ref_losses = reference
    run = tmp_path / "run"
    args = [*FLAGS, "-x", 5, "-n", 1, "-o", run]
    monkeypatch.setenv("LLMC_DISK_FAULT", f"{fault}:{first}")
    proc = launch(tiny, [faulty, *args], expect=1)
    monkeypatch.delenv("LLMC_DISK_FAULT")
    assert proc.stderr == f"error: {run / name}: cannot write: {reason}\n"
    assert not temp_files(run) and latest_done(run) == 1 and not (run / name).exists()
    assert_nothing_torn(run, ref)
    resumed = launch(tiny, [*args, "-y", 1]).stdout
    assert "resumed from step 1 of" in resumed
    assert {**losses(proc.stdout), **losses(resumed)} == {s: ref_losses[s] for s in range(1, 6)}
    assert (run / "main.log").read_bytes() == reference_log(ref, 5)
    same_files(run, ref, checkpoint_names(5))


# ----------------------------------------------------------------------------
# determinism

def test_two_runs_write_identical_files(tiny, reference, tmp_path):
    """The reference's flags again: every checkpoint (model, state, DONE) and main.log byte for byte."""
    ref, _ = reference
    launch(tiny, [*FLAGS, "-x", STEPS, "-n", 1, "-o", tmp_path])
    names = sorted(os.listdir(ref))
    assert names == sorted(os.listdir(tmp_path)) and len(names) == 3 * STEPS + 1
    same_files(tmp_path, ref, names)


# ----------------------------------------------------------------------------
# token data against the model's vocabulary

@pytest.mark.parametrize("flag", ["-i", "-j"])
def test_data_beyond_the_vocabulary_is_one_line(tiny, tmp_path, flag):
    shard = tmp_path / "gpt2_tokens.bin"
    write_shard(str(shard), np.arange(50257) % 50257)
    args = dict(zip(FLAGS[::2], FLAGS[1::2]), **{flag: shard})
    proc = launch(tiny, [x for pair in args.items() for x in pair], expect=1)
    assert proc.stderr == (f"error: {shard}: holds token id 50256, outside the model's vocabulary of 256 tokens "
                           f"(ids 0..255): the data was made for another tokenizer\n")


def test_each_shard_is_checked_when_first_opened(tmp_path):
    """The first shard at construction; a later one when the loader reaches it (and once per file)."""
    from llmc_py import LlmcError
    from llmc_py.dataloader import DataLoader
    write_shard(str(tmp_path / "shard_0.bin"), np.arange(65) % 256)
    write_shard(str(tmp_path / "shard_1.bin"), np.arange(65) + 300)
    loader = DataLoader(str(tmp_path / "shard_*.bin"), 2, 32, vocab_size=256)
    loader.next_batch()
    with pytest.raises(LlmcError) as e:
        loader.next_batch()
    assert str(e.value).startswith(f"{tmp_path / 'shard_1.bin'}: holds token id 364, outside the model's vocabulary")
    plain = DataLoader(str(tmp_path / "shard_*.bin"), 2, 32)  # no vocabulary given: no check
    plain.next_batch()
    assert plain.next_batch()[0].max() == 363


def test_gpt2cu_with_a_smaller_vocabulary(tiny, tmp_path, monkeypatch):
    """test_gpt2cu.py on a 97-token model whose debug state PyTorch wrote, with -j holding GPT-2 ids: the reload
    check moves to a shard of the debug batch's tokens and the verdict is `overall okay: 1`."""
    torch = pytest.importorskip("torch")
    import train_gpt2
    config = GPT2Config(max_seq_len=32, vocab_size=97, padded_vocab_size=97, num_layers=2, num_heads=4, channels=32)
    model = train_gpt2.GPT(config, init_rng=torch.Generator().manual_seed(42))
    tokens = torch.from_numpy(np.random.default_rng(5).integers(0, 97, (2, 17)))
    monkeypatch.chdir(tmp_path)
    train_gpt2.write_tensors(model, tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous(), "v97")
    gpt2_ids = tmp_path / "gpt2_tokens.bin"
    write_shard(str(gpt2_ids), np.arange(4096) * 12)  # ids up to 49140
    proc = launch(tmp_path, [REPO_ROOT / "test_gpt2cu.py", "--device", "cpu", "-e", "gpt2_v97.bin", "-j", gpt2_ids])
    assert proc.stdout.rstrip().splitlines()[-1] == "overall okay: 1"
    assert (f"note: {gpt2_ids} holds token ids up to 49140, beyond this model's vocabulary of 97: the reload check "
            f"trains on a shard of the debug batch's tokens instead") in proc.stdout
    assert "OK (reload determinism over 10 steps)" in proc.stdout
    assert sorted(os.listdir(tmp_path)) == ["gpt2_tokens.bin", "gpt2_v97.bin", "gpt2_v97_bf16.bin",
                                            "gpt2_v97_debug_state.bin"]
