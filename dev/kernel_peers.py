"""Where one training step's GPU time goes, kernel by kernel, ours beside llm.c's, from Nsight Compute.

    cd <folder with gpt2_d12_bf16.bin and dev/data/tinyshakespeare/>     # e.g. the d12 fixture folder
    python <repo>/dev/kernel_peers.py --llmc <llm.c dir with train_gpt2cu built>    # B=64, T=1024, -r 1
    bash <repo>/dev/gpu/kernel_peers.sh                                             # on the GPU machine: the same

dev/bench_peers.py times whole steps; this says which kernels make a difference between them. Each program trains
--steps steps (default 3) under `ncu --metrics gpu__time_duration.sum`: one counter pass per kernel, nothing
replayed, the clocks left alone. Ours runs eagerly (--cuda-graph 0: a replayed graph runs the same kernels).
The design decision is how a step is found in a kernel list with no markers in it: every forward pass starts
with the encoder's forward kernel in both programs, so the list is cut before each one, and the last cut that
holds an AdamW kernel is the last whole training step (llm.c's validation passes have no AdamW). That step's
kernels are grouped by kind (matmul, attention, layernorm, ...) and the kinds and the heaviest kernels printed
side by side. Each program's kernel total against its step time in dev/bench_peers.py is the time its GPU
waits between kernels. Writes everything as JSON too (--json); each run's output goes to --logs.
"""
import argparse
import csv
import glob
import os
import re
import shutil
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "dev"))

from bench import write_json  # noqa: E402
from bench_peers import (add_run_args, bf16_model_config, exit_reason, llmc_command, ours_command,  # noqa: E402
                         print_failure, resolve_paths, run_logged)
from llmc_py import LlmcError, run_main  # noqa: E402

METRIC = "gpu__time_duration.sum"
NS_PER_UNIT = {"nsecond": 1.0, "ns": 1.0, "usecond": 1e3, "us": 1e3, "msecond": 1e6, "ms": 1e6, "second": 1e9,
               "s": 1e9}
STEP_START = re.compile(r"encoder_forward_kernel")
OPTIMIZER_STEP = re.compile(r"adamw_kernel")
# (kind, pattern on the kernel's name), the first match wins; a kernel matching none is "other"
KINDS = (("attention", r"sdpa|fmha|flash|cudnn|permute|softmax"),
         ("classifier", r"classifier"),
         ("matmul bias", r"bias|reduce_add_sum"),
         ("matmul", r"gemm|xmma|cutlass|cublas|matmul|wgmma"),
         ("layernorm", r"layernorm"),
         ("residual", r"residual"),
         ("gelu", r"gelu"),
         ("encoder", r"encoder|wte_|wpe_"),
         ("optimizer", r"adamw|master|norm_squared|norm_aggregate|grad_clip|global_sum"))
PROGRAMS = (("ours", "ours"), ("llmc", "llm.c"))


def find_ncu(given):
    """The ncu executable: `given`, else the PATH's, else one under CUDA's or Nsight Compute's usual folders."""
    if given:
        if not os.access(given, os.X_OK):
            raise LlmcError(f"--ncu {given}: not an executable")
        return given
    found = shutil.which("ncu") or next(iter(sorted(glob.glob("/usr/local/cuda*/bin/ncu")) +
                                             sorted(glob.glob("/opt/nvidia/nsight-compute/*/ncu"))), None)
    if found is None:
        raise LlmcError("ncu (Nsight Compute) not found on PATH, in /usr/local/cuda*/bin or "
                        "/opt/nvidia/nsight-compute/*/; name it with --ncu")
    return found


def ncu_command(ncu, csv_path, cmd):
    return [ncu, "--clock-control", "none", "--metrics", METRIC, "--csv", "--print-units", "base",
            "--log-file", csv_path] + cmd


def read_ncu_csv(path):
    """[(kernel name, ns)] in launch order from the CSV that `ncu --csv --metrics gpu__time_duration.sum` writes:
    a header row starting "ID", then a row per kernel and metric (ncu's own ==PROF== lines are skipped)."""
    with open(path, errors="replace") as f:
        lines = [line for line in f if not line.startswith("==")]
    start = next((i for i, line in enumerate(lines) if line.startswith('"ID"')), None)
    if start is None:
        raise LlmcError(f"{path}: no ncu CSV header (a line starting \"ID\") found")
    kernels = {}
    for row in csv.DictReader(lines[start:]):
        if row.get("Metric Name") != METRIC:
            continue
        unit = row.get("Metric Unit", "")
        if unit not in NS_PER_UNIT:
            raise LlmcError(f"{path}: {METRIC} in unit {unit!r}; expected one of {', '.join(NS_PER_UNIT)}")
        try:
            kernels[int(row["ID"])] = (row["Kernel Name"], float(row["Metric Value"].replace(",", "")) *
                                       NS_PER_UNIT[unit])
        except (KeyError, TypeError, ValueError):
            raise LlmcError(f"{path}: unreadable row {row}") from None
    if not kernels:
        raise LlmcError(f"{path}: no {METRIC} values")
    return [kernels[i] for i in sorted(kernels)]


def last_training_step(kernels):
    """(the kernels of the last whole training step, how many training steps were found)."""
    cuts = [i for i, (name, _) in enumerate(kernels) if STEP_START.search(name)]
    segments = [kernels[a:b] for a, b in zip(cuts, cuts[1:] + [len(kernels)])]
    steps = [segment for segment in segments if any(OPTIMIZER_STEP.search(name) for name, _ in segment)]
    if not steps:
        raise LlmcError(f"no training step among {len(kernels)} kernels (none between an encoder forward kernel "
                        f"and the next holds an AdamW kernel)")
    return steps[-1], len(steps)


def kind_of(name):
    lowered = name.lower()
    return next((kind for kind, pattern in KINDS if re.search(pattern, lowered)), "other")


def short_name(name, width=72):
    """A kernel's name without its return type and parameter list, cut to `width` characters."""
    name = name[len("void "):] if name.startswith("void ") else name
    depth = 0
    for i, ch in enumerate(name):
        depth += (ch == "<") - (ch == ">")
        if ch == "(" and depth == 0:
            name = name[:i]
            break
    return name if len(name) <= width else name[:width - 3] + "..."


def summarize_step(step):
    """{kernels, kernel_ms, kinds: {kind: [ms, calls]}, top: [[ms, calls, name]]} of one step's kernels."""
    kinds, names = {}, {}
    for name, ns in step:
        for table, key in ((kinds, kind_of(name)), (names, short_name(name))):
            entry = table.setdefault(key, [0.0, 0])
            entry[0] += ns / 1e6
            entry[1] += 1
    top = sorted(([ms, calls, name] for name, (ms, calls) in names.items()), key=lambda row: -row[0])
    return dict(kernels=len(step), kernel_ms=sum(ns for _, ns in step) / 1e6, kinds=kinds, top=top)


def side_by_side(results, top):
    """The printed tables: kinds side by side (with ours minus llm.c when both ran), then each one's top kernels."""
    labels = dict(PROGRAMS)
    ran = [key for key, _ in PROGRAMS if results.get(key, {}).get("status") == "ok"]
    order = [kind for kind, _ in KINDS] + ["other"]
    header = f"{'kind':<12}" + "".join(f" {labels[key] + ' ms':>12} {'kernels':>7}" for key in ran)
    both = len(ran) == 2
    header += f" {'ours - llm.c':>12}" if both else ""
    lines = [header, "-" * len(header)]
    for kind in order + ["total"]:
        cells, values = "", []
        for key in ran:
            step = results[key]
            ms, calls = ((step["kernel_ms"], step["kernels"]) if kind == "total"
                         else step["kinds"].get(kind, [0.0, 0]))
            cells += f" {ms:>12.3f} {calls:>7}"
            values.append(ms)
        if kind != "total" and not any(values):
            continue
        if kind == "total":
            lines.append("-" * len(header))
        lines.append(f"{kind:<12}{cells}" + (f" {values[0] - values[1]:>+12.3f}" if both else ""))
    for key in ran:
        lines += ["", f"{labels[key]}: the {top} heaviest kernels of the step"]
        lines += [f"  {ms:>9.3f} ms {calls:>4}x  {name}" for ms, calls, name in results[key]["top"][:top]]
    return "\n".join(lines)


def profile(key, cmd, args, ncu):
    """Runs one program under ncu; returns its result dict (status ok with the step's summary, or failed)."""
    csv_path = os.path.join(args.logs, f"{key}_ncu.csv")
    log = os.path.join(args.logs, f"{key}.log")
    full = ncu_command(ncu, csv_path, cmd)
    print(f"{dict(PROGRAMS)[key]}: {' '.join(full)}", flush=True)
    status, _, seconds = run_logged(full, log, args.timeout, None, cwd=os.getcwd())
    result = dict(status="failed", command=full, log=log, csv=csv_path, wall_s=seconds)
    if status != 0:
        result["reason"] = exit_reason(status, args.timeout)
    else:
        try:
            step, found = last_training_step(read_ncu_csv(csv_path))
            result.update(status="ok", steps_found=found, **summarize_step(step))
        except (LlmcError, OSError) as e:
            result["reason"] = str(e)
    if result["status"] == "ok":
        print(f"    {seconds:.1f} s: {result['steps_found']} training steps; the last: {result['kernels']} kernels, "
              f"{result['kernel_ms']:.3f} ms", flush=True)
    else:
        print_failure(result["reason"], seconds, log)
    return result


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_args(p)
    p.add_argument("-b", type=int, default=64, help="micro batch size")
    p.add_argument("--steps", type=int, default=3, help="training steps each program runs (the last is reported)")
    p.add_argument("--llmc", default=None, help="llm.c checkout with train_gpt2cu built (dev/gpu/build_llmc.sh)")
    p.add_argument("--ncu", default=None, help="the ncu executable (default: found on PATH or CUDA's folders)")
    p.add_argument("--top", type=int, default=15, help="heaviest kernels listed per program")
    p.add_argument("--timeout", type=int, default=600, help="seconds per program")
    p.add_argument("--json", default="kernel_peers.json", help="where the figures go")
    p.add_argument("--logs", default=None, help="folder for each run's output and ncu CSV (default: beside --json)")
    args = p.parse_args(argv)
    if args.b < 1 or args.t < 1 or args.steps < 2 or args.top < 1:
        raise LlmcError(f"-b {args.b} -t {args.t} --steps {args.steps} --top {args.top}: expected positive sizes "
                        f"and at least 2 steps (the first is a warm-up)")
    if args.llmc is not None and not os.access(os.path.join(args.llmc, "train_gpt2cu"), os.X_OK):
        raise LlmcError(f"--llmc {args.llmc}: no train_gpt2cu built there (dev/gpu/build_llmc.sh)")
    resolve_paths(args)
    args.warmup = 0  # what ours_command and llmc_command read: every step runs, none is timed here
    return args


def main(argv=None):
    args = parse_args(argv)
    config = bf16_model_config(args.e)
    ncu = find_ncu(args.ncu)
    print(f"model {args.e}: {config.num_parameters:,} parameters; B={args.b} T={args.t} -r {args.r}, {args.steps} "
          f"steps each under {ncu}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        ours = ours_command(args, args.b, {"--attention": "cudnn", "--cuda-graph": "0"},
                            os.path.join(scratch, "ours.json"))
        results["ours"] = profile("ours", ours, args, ncu)
    if args.llmc:
        results["llmc"] = profile("llmc", llmc_command(args, args.b), args, ncu)
    print()
    print(f"GPU time of one training step by kernel kind (ncu, each kernel timed alone; B={args.b} T={args.t}, "
          f"the last of {args.steps} steps)")
    print(side_by_side(results, args.top))
    write_json(args.json, dict(model=args.e, data=args.i, B=args.b, T=args.t, recompute=args.r, steps=args.steps,
                               ncu=ncu, programs=results))
    print(f"\nwrote {args.json}; logs and ncu CSVs in {args.logs}")
    return 0 if all(result["status"] == "ok" for result in results.values()) else 1


if __name__ == "__main__":
    run_main(main)
