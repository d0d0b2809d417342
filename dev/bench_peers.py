"""Side-by-side training-step benchmark: ours against PyTorch and llm.c on the same model, data, B, T and precision.

    cd <folder with gpt2_d12_bf16.bin and dev/data/tinyshakespeare/>     # e.g. the d12 fixture folder
    python <repo>/dev/bench_peers.py                                      # ours (3 ways) and PyTorch, B=4 and 64
    python <repo>/dev/bench_peers.py --llmc <repo>/.peers/llm.c           # llm.c's train_gpt2cu too

Every run is its own process, one at a time, on one bf16 model file and one data shard, at each B of -b and T of
-t, and every figure is the median of the steps after --warmup (default: steps 10-30, the first 9 warm up):
- ours: dev/bench.py with cuDNN attention and the CUDA-graph step, and with each of them off;
- pytorch: dev/bench_torch.py, train_gpt2.py's GPT-2 trained as build-nanogpt trains it (torch.compile);
- llm.c: <DIR>/train_gpt2cu (cuDNN build; dev/gpu/build_llmc.sh builds it there first when it is missing),
  whose printed step times are read back.
The design decision is that nothing is taken from a program's own account where a common one exists: ms/step
comes from each program's CUDA-event step timer (all three time the step the same way), while tok/s and MFU
(llm.c's formula, llmc_py.mfu, against this GPU's dense bf16 peak) are computed here from that median for all,
and peak device memory is read by this process from the driver (NVML) while the run lasts, minus what was in use
before it started, which counts every allocator, workspace and the CUDA context alike. Each program's own
memory figure is kept beside it. Ratios are to `ours` at the same B. The table is printed and written as JSON
(--json), each run's output to --logs.
"""
import argparse
import ctypes
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "dev"))

from bench import write_json  # noqa: E402
from llmc_py import LlmcError, run_main  # noqa: E402
from llmc_py.checkpoint import read_model_header  # noqa: E402
from llmc_py.mfu import estimate_mfu, flops_per_token, get_flops_promised  # noqa: E402

BENCH = os.path.join(ROOT, "dev", "bench.py")
BENCH_TORCH = os.path.join(ROOT, "dev", "bench_torch.py")
BUILD_LLMC = os.path.join(ROOT, "dev", "gpu", "build_llmc.sh")
# ours: (peer key, label, the flags of dev/bench.py that make it)
OURS = (("ours", "ours", {"--attention": "cudnn", "--cuda-graph": "1"}),
        ("ours-nograph", "ours, no CUDA graph", {"--attention": "cudnn", "--cuda-graph": "0"}),
        ("ours-llmcattn", "ours, llm.c attention", {"--attention": "llmc", "--cuda-graph": "1"}))
PEERS = tuple(key for key, _, _ in OURS) + ("pytorch", "llmc")
LABELS = {**{key: label for key, label, _ in OURS}, "pytorch": "pytorch (compile)", "llmc": "llm.c (cuDNN)"}

# ----------------------------------------------------------------------------
# device memory, polled through NVML


class Nvml:
    """One GPU through the driver's NVML library (ctypes, no package): its name and the device memory in use."""

    class _Memory(ctypes.Structure):
        _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]

    def __init__(self, index):
        self.lib = ctypes.CDLL("libnvidia-ml.so.1")
        self._check(self.lib.nvmlInit_v2(), "nvmlInit")
        self.handle = ctypes.c_void_p()
        self._check(self.lib.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(self.handle)), "device handle")

    @staticmethod
    def _check(status, what):
        if status != 0:
            raise OSError(f"NVML {what}: error {status}")

    def name(self):
        buf = ctypes.create_string_buffer(96)
        self._check(self.lib.nvmlDeviceGetName(self.handle, buf, 96), "device name")
        return buf.value.decode()

    def used_mib(self):
        memory = self._Memory()
        self._check(self.lib.nvmlDeviceGetMemoryInfo(self.handle, ctypes.byref(memory)), "memory info")
        return memory.used >> 20


def open_nvml():
    """The Nvml of the GPU the runs use (the first of CUDA_VISIBLE_DEVICES when it names indices), or None."""
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
    try:
        return Nvml(int(first) if first.isdigit() else 0)
    except (OSError, AttributeError):
        return None


class MemoryPeak:
    """While the block runs, polls `read` (MiB in use on the device) every `interval` s; `peak` is then the
    highest reading minus the one taken before the block, or None when there is nothing to read."""

    def __init__(self, read, interval=0.05):
        self.read, self.interval = read, interval
        self.peak = None

    def __enter__(self):
        self.stop = threading.Event()
        if self.read is not None:
            self.baseline = self.highest = self.read()
            self.thread = threading.Thread(target=self._poll, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        try:
            self.highest = max(self.highest, self.read())
            return True
        except OSError:  # the driver stopped answering: keep what was read
            return False

    def _poll(self):
        while not self.stop.wait(self.interval) and self._sample():
            pass

    def __exit__(self, *exc):
        self.stop.set()
        if self.read is not None:
            self.thread.join()
            self._sample()
            self.peak = self.highest - self.baseline
        return False

# ----------------------------------------------------------------------------
# one run


@dataclass
class Run:
    peer: str
    label: str
    B: int
    status: str = "ok"            # ok, failed, skipped
    reason: str = ""
    command: list = field(default_factory=list)
    step_ms: list = field(default_factory=list)
    median_ms: float = None
    tok_per_s: float = None
    mfu: float = None
    peak_mib: int = None          # NVML, minus the baseline
    own_mib: int = None           # the program's own figure
    own_what: str = ""
    device: str = None
    details: dict = field(default_factory=dict)
    wall_s: float = 0.0
    log: str = ""
    vs_ours: dict = field(default_factory=dict)


def run_logged(cmd, log_path, timeout, read_memory, cwd=None, env=None):
    """Runs cmd with its output in log_path, under a timeout (its whole process group is killed then), polling
    device memory; returns (exit status or None on timeout, peak MiB or None, seconds)."""
    t0 = time.perf_counter()
    with open(log_path, "w") as log, MemoryPeak(read_memory) as memory:
        log.write("$ " + shlex.join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True)
        try:
            status = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            status = None
    return status, memory.peak, time.perf_counter() - t0


def log_tail(path, lines=6):
    with open(path, errors="replace") as f:
        text = [line.rstrip() for line in f if line.strip()]
    return text[-lines:]


def exit_reason(status, timeout):
    """Why a run_logged run failed, from its status (None: it ran past `timeout` seconds)."""
    return f"timed out after {timeout} s" if status is None else f"exit status {status}"


def print_failure(reason, seconds, log):
    """The lines that report a failed run: why, after how long, and the last lines of its log."""
    print(f"    FAILED ({reason}) after {seconds:.1f} s; last lines of {log}:", flush=True)
    for line in log_tail(log):
        print(f"      {line[:200]}", flush=True)

# ----------------------------------------------------------------------------
# the peers' command lines and outputs


def window_args(args):
    return ["--warmup", str(args.warmup), "--steps", str(args.steps)]


def ours_command(args, B, flags, json_path):
    cmd = [sys.executable, BENCH, "--device", "cuda", "-e", args.e, "-i", args.i, "-b", str(B), "-t", str(args.t),
           "-r", str(args.r)] + window_args(args) + ["--json", json_path]
    if args.ge >= 0:
        cmd += ["-ge", str(args.ge)]
    for flag, value in flags.items():
        cmd += [flag, value]
    return cmd


def torch_command(args, B, json_path):
    return [sys.executable, BENCH_TORCH, "--device", "cuda", "-e", args.e, "-i", args.i, "-b", str(B),
            "-t", str(args.t)] + window_args(args) + ["--json", json_path]


def llmc_command(args, B):
    """train_gpt2cu on the same file and shard (also as the val shard: tinyshakespeare's val split holds fewer
    than 64*1024+1 tokens), no sampling, one val batch, warmup+steps steps."""
    cmd = [os.path.join(args.llmc, "train_gpt2cu"), "-e", args.e, "-i", args.i, "-j", args.i, "-b", str(B),
           "-t", str(args.t), "-x", str(args.warmup + args.steps), "-r", str(args.r), "-v", "1000000", "-m", "1",
           "-s", "0", "-h", "0", "-y", "0"]
    if args.ge >= 0:
        cmd += ["-ge", str(args.ge)]
    return cmd


LLMC_STEP = re.compile(r"^step +(\d+)/(\d+) \| loss \S+ .*\| (\d+\.\d+) ms \| -?\d+\.\d% bf16 MFU \| \d+ tok/s$", re.M)
LLMC_TABLE = re.compile(r"^\| ([a-zA-Z_ ]+?) +\| (.*?) +\|$", re.M)
LLMC_MEMORY = re.compile(r"^device memory usage: (\d+) MiB / (\d+) MiB$", re.M)


def parse_llmc(text, warmup, steps):
    """(step ms of steps warmup+1 .. warmup+steps, device name, its device-memory line's MiB, its table rows)
    from train_gpt2cu's output; LlmcError when steps are missing."""
    ms = {int(n): float(t) for n, _, t in LLMC_STEP.findall(text)}
    wanted = range(warmup + 1, warmup + steps + 1)
    missing = [n for n in wanted if n not in ms]
    if missing:
        raise LlmcError(f"llm.c printed {len(ms)} step lines; steps {missing[0]}..{missing[-1]} are missing")
    table = dict(LLMC_TABLE.findall(text))
    memory = LLMC_MEMORY.search(text)
    return [ms[n] for n in wanted], table.get("device"), int(memory.group(1)) if memory else None, table


# ----------------------------------------------------------------------------
# the benchmark


def run_peer(run, cmd, args, read_memory, parse):
    """Runs one peer and fills `run` from `parse(log text)` -> dict of Run fields, or marks it failed."""
    run.command = cmd
    run.log = os.path.join(args.logs, f"B{run.B}_{run.peer}.log")
    print(f"B={run.B} {run.label}: {shlex.join(cmd)}", flush=True)
    status, peak, run.wall_s = run_logged(cmd, run.log, args.timeout, read_memory, cwd=os.getcwd())
    run.peak_mib = peak
    if status != 0:
        run.status, run.reason = "failed", exit_reason(status, args.timeout)
    else:
        try:
            with open(run.log, errors="replace") as f:
                for key, value in parse(f.read()).items():
                    setattr(run, key, value)
        except (LlmcError, OSError, ValueError, KeyError) as e:
            run.status, run.reason = "failed", str(e)
    if run.status == "ok":
        print(f"    {run.wall_s:.1f} s: median {float(np.median(run.step_ms)):.2f} ms/step" +
              (f", peak {run.peak_mib} MiB" if run.peak_mib is not None else ""), flush=True)
    else:
        print_failure(run.reason, run.wall_s, run.log)


def from_json(json_path):
    def parse(_):
        with open(json_path) as f:
            result = json.load(f)
        return dict(step_ms=result["step_ms"], own_mib=result["memory_mib"], own_what=result["memory_what"],
                    device=result["device"], details=result["details"])
    return parse


def from_llmc(args):
    def parse(text):
        step_ms, device, memory, table = parse_llmc(text, args.warmup, args.steps)
        return dict(step_ms=step_ms, device=device, own_mib=memory,
                    own_what="device memory in use after its allocations (cudaMemGetInfo)",
                    details={k: table[k] for k in ("gelu_fusion", "recompute", "precision") if k in table})
    return parse


def build_llmc(args):
    """Builds <llmc>/train_gpt2cu when missing; returns "" or why it is not there."""
    binary = os.path.join(args.llmc, "train_gpt2cu")
    if os.access(binary, os.X_OK):
        return ""
    log = os.path.join(args.logs, "llmc_build.log")
    print(f"building llm.c's train_gpt2cu in {args.llmc} (cuDNN: a few minutes); log in {log}", flush=True)
    status, _, seconds = run_logged(["bash", BUILD_LLMC, args.llmc], log, args.build_timeout, None)
    if status == 0 and os.access(binary, os.X_OK):
        print(f"    built in {seconds:.0f} s", flush=True)
        return ""
    for line in log_tail(log):
        print(f"      {line[:200]}", flush=True)
    return f"the build failed ({'timed out' if status is None else f'exit status {status}'}; see {log})"


def benchmark(args, read_memory):
    """Every wanted run, in order B, then peer; returns the list of Run."""
    wanted = set(args.peers)
    llmc_problem = ""
    if "llmc" in wanted:
        llmc_problem = "no --llmc DIR given" if not args.llmc else build_llmc(args)
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        for B in args.b:
            for key, label, flags in OURS:
                if key not in wanted:
                    continue
                run = Run(key, label, B)
                runs.append(run)
                json_path = os.path.join(scratch, f"{key}_{B}.json")
                run_peer(run, ours_command(args, B, flags, json_path), args, read_memory, from_json(json_path))
                run.details["flags"] = flags
            if "pytorch" in wanted:
                run = Run("pytorch", LABELS["pytorch"], B)
                runs.append(run)
                json_path = os.path.join(scratch, f"pytorch_{B}.json")
                run_peer(run, torch_command(args, B, json_path), args, read_memory, from_json(json_path))
            if "llmc" in wanted:
                run = Run("llmc", LABELS["llmc"], B)
                runs.append(run)
                if llmc_problem:
                    run.status, run.reason = ("skipped" if not args.llmc else "failed"), llmc_problem
                    print(f"B={B} {run.label}: {run.status}: {llmc_problem}", flush=True)
                else:
                    run_peer(run, llmc_command(args, B), args, read_memory, from_llmc(args))
    return runs


def summarize(runs, config, T, device):
    """Fills each ok run's median, tok/s, MFU and its ratios to `ours` at the same B; returns the bf16 peak."""
    peak = get_flops_promised(device, "bf16") if device else -1.0
    for run in runs:
        if run.status == "ok":
            run.median_ms = float(np.median(run.step_ms))
            run.tok_per_s = run.B * T / (run.median_ms / 1000.0)
            mfu = estimate_mfu(config.num_parameters, config.num_layers, config.channels, T, run.B * T,
                               run.median_ms / 1000.0, peak)
            run.mfu = mfu if mfu >= 0 else None
    ours = {run.B: run for run in runs if run.peer == "ours" and run.status == "ok"}
    for run in runs:
        ref = ours.get(run.B)
        if run.status == "ok" and ref is not None:
            run.vs_ours = dict(tok_per_s=run.tok_per_s / ref.tok_per_s)
            if run.peak_mib is not None and ref.peak_mib:
                run.vs_ours["peak_mib"] = run.peak_mib / ref.peak_mib
    return peak


def table(runs):
    """The printed table: one row per run."""
    def num(value, fmt):
        return "n/a" if value is None else format(value, fmt)
    header = (f"{'B':>3}  {'peer':<34} {'ms/step':>8} {'tok/s':>9} {'MFU':>6} {'peak MiB':>9} {'own MiB':>8} "
              f"{'tok/s vs ours':>13} {'memory vs ours':>14}")
    lines = [header, "-" * len(header)]
    for run in runs:
        if run.status != "ok":
            lines.append(f"{run.B:>3}  {run.label:<34} {run.status.upper()}: {run.reason}")
            continue
        mfu = None if run.mfu is None else 100 * run.mfu
        lines.append(f"{run.B:>3}  {run.label:<34} {run.median_ms:>8.2f} {run.tok_per_s:>9,.0f} "
                     f"{num(mfu, '.1f') + ('%' if mfu is not None else ''):>6} {num(run.peak_mib, ','):>9} "
                     f"{num(run.own_mib, ','):>8} {num(run.vs_ours.get('tok_per_s'), '.2f'):>13} "
                     f"{num(run.vs_ours.get('peak_mib'), '.2f'):>14}")
    return "\n".join(lines)


def add_run_args(p):
    """The options this and dev/kernel_peers.py share: what every program runs on, and how."""
    p.add_argument("-e", default="gpt2_d12_bf16.bin", help="bf16 llm.c model file, the same for every program")
    p.add_argument("-i", default="dev/data/tinyshakespeare/tiny_shakespeare_train.bin", help="data shard")
    p.add_argument("-t", type=int, default=1024)
    p.add_argument("-r", type=int, default=1, choices=[0, 1, 2], help="recompute, ours and llm.c")
    p.add_argument("-ge", type=int, default=-1, choices=[-1, 0, 1, 2],
                   help="GELU fusion for ours and llm.c; -1 (default): each program's own default")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_args(p)
    p.add_argument("-b", default="4,64", help="micro batch sizes, comma-separated")
    p.add_argument("--warmup", type=int, default=9, help="untimed steps first (default 9: steps 10-30 count)")
    p.add_argument("--steps", type=int, default=21, help="timed steps")
    p.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated, of {', '.join(PEERS)}")
    p.add_argument("--llmc", default=None, help="llm.c checkout holding (or to build) train_gpt2cu with cuDNN")
    p.add_argument("--timeout", type=int, default=420, help="seconds per run")
    p.add_argument("--build-timeout", type=int, default=600, help="seconds for building llm.c")
    p.add_argument("--json", default="bench_peers.json", help="where the figures go")
    p.add_argument("--logs", default=None, help="folder for each run's output (default: beside --json)")
    args = p.parse_args(argv)
    try:
        args.b = [int(b) for b in args.b.split(",")]
    except ValueError:
        raise LlmcError(f"-b {args.b}: expected comma-separated batch sizes such as 4,64") from None
    args.peers = [name.strip() for name in args.peers.split(",") if name.strip()]
    unknown = [name for name in args.peers if name not in PEERS]
    if unknown:
        raise LlmcError(f"--peers: unknown {', '.join(unknown)}; expected some of {', '.join(PEERS)}")
    if min(args.b) < 1 or args.t < 1 or args.steps < 1 or args.warmup < 0:
        raise LlmcError(f"-b {args.b} -t {args.t} --warmup {args.warmup} --steps {args.steps}: expected positive "
                        f"sizes, at least one timed step")
    if args.llmc is not None and not os.path.isfile(os.path.join(args.llmc, "train_gpt2.cu")):
        raise LlmcError(f"--llmc {args.llmc}: not an llm.c checkout (no train_gpt2.cu); see dev/gpu/prepare_peers.sh")
    resolve_paths(args)
    return args


def resolve_paths(args):
    """The checks and paths this and dev/kernel_peers.py share: -e and -i must exist; they and --llmc become
    absolute (the runs may start elsewhere); --logs defaults to beside --json, and is made."""
    for path, what in ((args.e, "-e model file"), (args.i, "-i data shard")):
        if not os.path.isfile(path):
            raise LlmcError(f"{what} {path}: not found (run from a folder holding it, or pass its path)")
    args.e, args.i = os.path.abspath(args.e), os.path.abspath(args.i)
    if args.llmc is not None:
        args.llmc = os.path.abspath(args.llmc)
    args.logs = args.logs or os.path.splitext(args.json)[0] + "_logs"
    os.makedirs(args.logs, exist_ok=True)


def bf16_model_config(path):
    """The GPT2Config of a bf16 model file (version 5), which every peer reads; LlmcError for any other."""
    config, version = read_model_header(path)
    if version != 5:
        raise LlmcError(f"-e {path}: expected a bf16 model file (version 5), found version {version}")
    return config


def main(argv=None):
    args = parse_args(argv)
    config = bf16_model_config(args.e)
    nvml = open_nvml()
    read_memory = nvml.used_mib if nvml is not None else None
    print(f"model {args.e}: {config.num_parameters:,} parameters; data {args.i}; T={args.t}, B in {args.b}, "
          f"steps {args.warmup + 1}-{args.warmup + args.steps} timed; peak memory "
          f"{'from NVML' if nvml else 'n/a (NVML not found)'}", flush=True)
    runs = benchmark(args, read_memory)
    device = next((run.device for run in runs if run.device), nvml.name() if nvml else None)
    peak = summarize(runs, config, args.t, device)
    where = f"{device}, peak {peak:.1f} bf16 TFLOPS" if peak > 0 else f"{device}, MFU n/a (no peak known)"
    print(f"\n{where}; d{config.num_layers} ({config.num_parameters:,} parameters), bf16, T={args.t}, median of "
          f"steps {args.warmup + 1}-{args.warmup + args.steps}; peak MiB: NVML during the run minus before it\n")
    print(table(runs))
    write_json(args.json, dict(
        device=device, peak_tflops=peak if peak > 0 else None, model=args.e, data=args.i, T=args.t,
        num_parameters=config.num_parameters, flops_per_token=flops_per_token(
            config.num_parameters, config.num_layers, config.channels, args.t),
        warmup=args.warmup, steps=args.steps, recompute=args.r, gelu_fusion=args.ge,
        runs=[asdict(run) for run in runs]))
    print(f"\nwrote {args.json}; logs in {args.logs}")
    return 0 if all(run.status != "failed" for run in runs) else 1


if __name__ == "__main__":
    run_main(main)
