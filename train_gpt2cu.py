"""GPT-2 training with llm.c's flags, step line, log file and checkpoints.

    python train_gpt2cu.py -b 4 -t 1024                     # GPU (CUDA backend), bf16
    python train_gpt2cu.py --precision fp32 -f 0 -e gpt2_124M.bin -b 4 -t 1024
    python train_gpt2cu.py --device cpu -b 4 -t 64 -e gpt2_d12.bin -x 40
    mpirun -np 2 python train_gpt2cu.py --device cpu -z 1 -b 4 -t 64 -e gpt2_d12.bin -x 40

Reads top to bottom as the algorithm: parse flags, build the model and loaders, then the loop
{val loss, sample, checkpoint, train step}. Flags follow llm.c's rules exactly (pairs of `-x value`, one
or two letters after the dash); `--device`, `--precision`, `--matmul`, `--attention`, `--cuda-graph` and the
sampler's `--prompt`, `--top-k` and `--temperature` are this program's own additions. A training step is
llmc_py.step's TrainStep: on the GPU its device work is captured once as CUDA graphs and replayed (`--cuda-graph 1`,
the default there), and the loss and grad norm come back once per step.
Several processes (mpirun, srun, or -pn/-pr with -pi tcp/fs) each train on their own slice of every batch
and average gradients through llmc_py.zero; only rank 0 prints, logs, samples and writes the model file.
Beyond llm.c: SIGTERM/SIGINT stop the run at the next step boundary with a checkpoint (llmc_py.preemption),
and a step whose loss or gradient norm is NaN or infinite skips its update (-sn: how many in a row end the run).
"""
import math
import os
import sys
import traceback

import numpy as np

from llmc_py import LlmcError, cuda, run_main
from llmc_py.attention import ATTENTION_CHOICES
from llmc_py.dataloader import DataLoader, EvalLoader
from llmc_py.fileio import atomic_write, remove_stale_temps
from llmc_py.gpt2 import GPT2, Shard
from llmc_py.hellaswag import evaluate as evaluate_hellaswag
from llmc_py.logger import Logger
from llmc_py.mfu import describe_peak, estimate_mfu, format_mfu, get_flops_promised
from llmc_py.outlier_detector import OutlierDetector
from llmc_py.preemption import StopRequest
from llmc_py.sampler import Sampler, check_fits, generate, prompt_tokens
from llmc_py.schedulers import LearningRateScheduler
from llmc_py.step import TrainStep
from llmc_py.tokenizer import Tokenizer, print_token
from llmc_py.zero import choose_zero_stage, discover, make_communicator

# flag -> (option name, type, default), in llm.c's order
FLAGS = {
    "-i": ("train_data_pattern", str, "dev/data/tinyshakespeare/tiny_shakespeare_train.bin"),
    "-j": ("val_data_pattern", str, "dev/data/tinyshakespeare/tiny_shakespeare_val.bin"),
    "-e": ("load_filename", str, "gpt2_124M_bf16.bin"),
    "-o": ("output_log_dir", str, None),
    "-lg": ("log_gpu_every", int, -1),
    "-n": ("checkpoint_every", int, 0),
    "-nk": ("checkpoints_keep", int, 0),
    "-nm": ("major_checkpoint_every", int, 0),
    "-y": ("resume", int, 0),
    "-b": ("B", int, 4),
    "-t": ("T", int, 1024),
    "-d": ("total_batch_size", int, -1),
    "-x": ("max_steps", int, -1),
    "-k": ("lr_scheduler_type", str, "cosine"),
    "-l": ("learning_rate", float, 3e-4),
    "-u": ("warmup_iterations", int, 0),
    "-q": ("final_learning_rate_frac", float, 1.0),
    "-c": ("weight_decay", float, 0.0),
    "-sl": ("skip_update_lossz", float, 0.0),
    "-sg": ("skip_update_gradz", float, 0.0),
    "-sn": ("nonfinite_steps_limit", int, 10),
    "-v": ("val_loss_every", int, 20),
    "-m": ("val_max_steps", int, 20),
    "-s": ("sample_every", int, 20),
    "-g": ("genT", int, 64),
    "-h": ("hellaswag_eval", int, 0),
    "-a": ("overfit_single_batch", int, 0),
    "-f": ("override_enable_tf32", int, 1),
    "-w": ("use_master_weights", int, 1),
    "-ge": ("gelu_fusion", int, -1),
    "-z": ("zero_stage", int, 0),
    "-r": ("recompute", int, 1),
    "-pn": ("num_processes", int, 1),
    "-pr": ("process_rank", int, 0),
    "-pg": ("gpus_per_node", int, 8),
    "-pi": ("nccl_init_method", str, "mpi"),
    "-ps": ("server_ip", str, ""),
    "-pf": ("fs_path", str, ""),
}
# letters whose unrecognized three-character forms still select the letter's flag, as in llm.c
CATCH_ALL = set("ijeoybtducqxvmafwzrhkg")
# long option -> (option name, its choices or its type)
LONG_OPTIONS = {"--device": ("device", ("cuda", "cpu")), "--precision": ("precision", ("bf16", "fp32")),
                "--matmul": ("matmul", ("cublas", "custom", "fp16fc")), "--attention": ("attention", ATTENTION_CHOICES),
                "--cuda-graph": ("cuda_graph", ("0", "1")),
                "--prompt": ("prompt", str), "--top-k": ("top_k", int), "--temperature": ("temperature", float)}
HELLASWAG_PATH = "dev/data/hellaswag/hellaswag_val.bin"
TOKENIZER_PATH = "gpt2_tokenizer.bin"

USAGE = """Usage:   python train_gpt2cu.py [options]
Options:
  -i <string> train data filename pattern (default = dev/data/tinyshakespeare/tiny_shakespeare_train.bin)
  -j <string> val data filename pattern (default = dev/data/tinyshakespeare/tiny_shakespeare_val.bin)
  -e <string> input .bin filename or descriptor, see code comments as to how they are used (default = gpt2_124M_bf16.bin)
  -o <string> output log dir (default = NULL, no logging)
  -lg <int>   log gpu info every x steps (default = -1; disabled)
  -n <int>    write optimization checkpoints every how many steps? (default 0, don't)
  -nk <int>   max number of checkpoints to keep in the directory, removing old ones (0 = disable, default)
  -nm <int>   every how many step checkpoints are considered major? major checkpoints never get deleted.
  -y <int>    resume optimization found inside output log dir? (0=restart/overwrite, 1=resume/append)
  -b <int>    (per-GPU, micro) batch size B (default = 4)
  -t <int>    sequence length T (default = 1024)
  -d <int>    desired total batch size (default = B * T * num_processes, i.e. no grad accumulation
  -x <int>    max_steps of optimization to run (-1 (default) = disable, run 1 epoch)
  -k <string> learning rate scheduler (default = cosine)
  -l <float>  learning rate (default = 3e-4f)
  -u <int>    learning rate warmup iterations (default = 0, no warmup)
  -q <float>  learning rate decay: final fraction, at end of training (default = 1.0 (no decay))
  -c <float>  weight decay (default = 0.0f)
  -sl <float> outlier stability: skip update if loss goes above this in zscore (0.0f=off)
  -sg <float> outlier stability: skip update if grad_norm goes above this in zscore (0.0f=off)
  -sn <int>   NaN/inf loss or grad_norm always skips the update; stop after this many in a row (default = 10, 0 = never)
  -v <int>    val_loss_every, how often we evaluate val loss (default = 20)
  -m <int>    val_max_steps, up to how many val batches to estimate val loss? (default = 20)
  -s <int>    sample_every, how often we inference the model (default = 20)
  -g <int>    genT, how many steps of inference we do (default = 64)
  -h <int>    hellaswag eval run? (default = 0)
  -a <int>    overfit a single batch? 0/1. useful for debugging
  -f <int>    enable_tf32 override (default: 1, set to 0 to disable tf32)
  -w <int>    keep f32 copy of weights for the optimizer? (default: 1)
  -ge <int>   gelu fusion: 0=none, 1=forward, 2=forward+backward (default: 0)
  -z <int>    zero_stage, Zero Optimization Stage, 0,1,2,3 (default = 0)
  -r <int>    recompute: less memory but less speed. (default = 1), 0|1|2 = none,gelu,gelu+ln
  -pn <int>   num_processes (default = 1)
  -pr <int>   process_rank (default = 0)
  -pg <int>   gpus_per_node (default = 8)
  -pi <string> NCCL init method: tcp, fs, mpi (default = mpi)
  -ps <string> server ip address (default = "")
  -pf <string> shared folder path for fs init (default = "")
  --device <cuda|cpu>   where to run (default = cuda)
  --precision <bf16|fp32> (default = bf16 on cuda; cpu runs fp32 only)
  --matmul <cublas|custom|fp16fc> fp32 on cuda: forward matmuls by cuBLAS SGEMM, our tiled kernel, or the MLP's
                        first linear with fp16 operands (default = cublas)
  --attention <auto|cudnn|llmc> cuDNN flash attention or llm.c's kernels (default = auto: cuDNN for bf16 on a
                        GPU where nvidia-cudnn-frontend and libcudnn load)
  --cuda-graph <0|1>    capture the training step as CUDA graphs and replay them (default = 1 on cuda)
  --prompt <string>     samples continue EOT + this text instead of EOT alone (-g still sets genT-1 new tokens)
  --top-k <int>         samples draw from the k most likely tokens only (default: all, llm.c's sampler)
  --temperature <float> samples draw from softmax(logits / temperature) (default = 1.0)"""


class UsageError(Exception):
    """A malformed or unknown flag: print the usage and exit 1, as llm.c does."""


def convert(flag, value, kind):
    try:
        return kind(value)
    except ValueError:
        raise LlmcError(f"{flag} {value}: expected {'an integer' if kind is int else 'a number'}") from None


def parse_args(argv):
    opts = {name: default for name, _, default in FLAGS.values()}
    opts.update(device="cuda", precision=None, matmul="cublas", attention="auto", cuda_graph=None, prompt=None,
                top_k=None, temperature=1.0)
    i = 0
    while i < len(argv):
        flag = argv[i]
        if i + 1 >= len(argv):
            raise UsageError(f"{flag}: missing value")
        value = argv[i + 1]
        i += 2
        if flag in LONG_OPTIONS:
            name, kind = LONG_OPTIONS[flag]
            if isinstance(kind, tuple) and value not in kind:
                raise LlmcError(f"{flag} {value}: expected one of {', '.join(kind)}")
            opts[name] = value if isinstance(kind, tuple) else convert(flag, value, kind)
            continue
        if not flag.startswith("-") or len(flag) not in (2, 3):
            raise UsageError(f"{flag}: flags are a dash and one or two letters")
        key = flag if flag in FLAGS else flag[:2] if flag[1] in CATCH_ALL else None
        if key is None:
            raise UsageError(f"{flag}: unknown flag")
        name, kind, _ = FLAGS[key]
        opts[name] = convert(flag, value, kind)
    if opts["precision"] is None:
        opts["precision"] = "bf16" if opts["device"] == "cuda" else "fp32"
    opts["cuda_graph"] = int(opts["device"] == "cuda" if opts["cuda_graph"] is None else opts["cuda_graph"])
    return opts


def check_options(o):
    if o["device"] == "cpu" and o["precision"] != "fp32":
        raise LlmcError(f"--precision {o['precision']}: --device cpu runs fp32 only")
    if o["matmul"] != "cublas" and (o["device"] != "cuda" or o["precision"] != "fp32"):
        raise LlmcError(f"--matmul {o['matmul']}: the matmul variants exist for --device cuda --precision fp32 only")
    if o["cuda_graph"] and o["device"] != "cuda":
        raise LlmcError("--cuda-graph 1: CUDA graphs need --device cuda")
    for flag, name, low in (("-b", "B", 1), ("-t", "T", 1), ("-v", "val_loss_every", 1), ("-u", "warmup_iterations", 0),
                            ("-r", "recompute", 0), ("-nk", "checkpoints_keep", 0), ("-nm", "major_checkpoint_every", 0),
                            ("-sn", "nonfinite_steps_limit", 0)):
        if o[name] < low:
            raise LlmcError(f"{flag} {o[name]}: expected an integer >= {low}")
    if o["recompute"] > 2:
        raise LlmcError(f"-r {o['recompute']}: expected 0, 1 or 2")
    if o["gelu_fusion"] not in (-1, 0, 1, 2):
        raise LlmcError(f"-ge {o['gelu_fusion']}: expected 0, 1 or 2")
    if o["resume"] == 1 and not o["output_log_dir"]:
        raise LlmcError("-y 1: resuming needs the output dir -o that holds the checkpoints")
    if o["output_log_dir"] and len(o["output_log_dir"]) >= 400:
        raise LlmcError("-o: the output dir path must be shorter than 400 characters")
    if o["genT"] < 1 and o["sample_every"] > 0:
        raise LlmcError(f"-g {o['genT']}: the sample length must be at least 1")
    Sampler(o["temperature"], o["top_k"])  # --top-k and --temperature checked before the model loads
    if o["sample_every"] > 0:  # a sample that cannot fit even with no prompt (EOT alone) fails before anything loads
        check_fits(1, o["genT"] - 1, o["T"], "the sequence length -t", "--prompt", f"-g {o['genT']}")


def print_table(rows):
    print("+-----------------------+----------------------------------------------------+")
    print("| Parameter             | Value                                              |")
    print("+-----------------------+----------------------------------------------------+")
    for name, value in rows:
        print(f"| {name:<21} | {value!s:<50} |")
    print("+-----------------------+----------------------------------------------------+")


def latest_checkpoint_step(output_dir):
    steps = [int(name[len("DONE_"):]) for name in os.listdir(output_dir)
             if name.startswith("DONE_") and name[len("DONE_"):].isdigit()]
    return max(steps) if steps else -1


def checkpoint_paths(output_dir, step, rank):
    return (os.path.join(output_dir, f"model_{step:08d}.bin"),
            os.path.join(output_dir, f"state_{step:08d}_{rank:05d}.bin"),
            os.path.join(output_dir, f"DONE_{step:08d}"))


def check_resume_world(output_dir, step, rank, num_processes):
    """Resuming needs this rank's state file of the checkpoint, i.e. the world size it was written with."""
    if not os.path.exists(checkpoint_paths(output_dir, step, rank)[1]):
        prefix = f"state_{step:08d}_"
        written = sum(1 for name in os.listdir(output_dir) if name.startswith(prefix) and name.endswith(".bin"))
        raise LlmcError(f"{output_dir}: checkpoint {step} holds state files of {written} processes and none for "
                        f"rank {rank}; this run has {num_processes} processes: resume with the same number")


def save_checkpoint(model, loader, output_dir, step, rank, comm):
    """Rank 0 writes the model, every rank its state; DONE_ appears once all of them are on disk."""
    model_path, state_path, done_path = checkpoint_paths(output_dir, step, rank)
    if rank == 0:
        model.write_model(model_path)
    model.write_state(state_path, step, loader)
    comm.barrier()
    if rank == 0:
        with atomic_write(done_path):
            pass


def prune_checkpoint(output_dir, step, rank, keep, every, major_every):
    """After writing at `step`, delete the checkpoint keep*every steps older unless it is major."""
    old = step - keep * every
    if keep > 0 and old > 0 and (major_every == 0 or old % major_every != 0):
        model_path, state_path, done_path = checkpoint_paths(output_dir, old, rank)
        for path in ((done_path, model_path, state_path) if rank == 0 else (state_path,)):
            if os.path.exists(path):
                os.remove(path)


def open_data(o, train_pattern, B, T, rank, num_processes):
    """The train, val and HellaSwag loaders (the last with -h 1 when its eval file exists, else None), opened
    before the model is built: each checks its files against B, T and the process count now (every shard
    holds a batch, every HellaSwag example fits T), so a run that cannot finish stops at start-up. Their token
    ids are checked against the model's vocabulary once its file is read (DataLoader.check_vocab)."""
    train_loader = DataLoader(train_pattern, B, T, rank, num_processes, should_shuffle=not o["overfit_single_batch"])
    val_loader = DataLoader(o["val_data_pattern"], B, T, rank, num_processes, should_shuffle=False)
    eval_loader = None
    if o["hellaswag_eval"] and os.path.exists(HELLASWAG_PATH):
        eval_loader = EvalLoader(HELLASWAG_PATH, B, T, rank, num_processes)
    return train_loader, val_loader, eval_loader


def stop_for_signal(model, loader, output_dir, step, rank, comm, stop, checkpoint_exists):
    """Preemption, reached by every rank at the same step boundary: the checkpoint of `step` (when there is an
    output dir and an update to save), then one line saying where to resume. Returns the exit status, 0."""
    cause = stop.signal_name or "a stop signal to another process"
    if not output_dir:
        print(f"stopped at step {step} on {cause}: no output dir (-o), so no checkpoint to resume from")
    elif not model.optimizer_ready:
        print(f"stopped at step {step} on {cause}: no update done yet, nothing to checkpoint")
    else:
        if not checkpoint_exists:
            save_checkpoint(model, loader, output_dir, step, rank, comm)
        print(f"stopped at step {step} on {cause}: checkpoint {step} is in {output_dir}; "
              f"run again with the same flags and -y 1 to continue from it", flush=True)
    return 0


NONFINITE = "a non-finite loss or gradient norm"


def update_decision(loss, grad_norm, loss_outliers, norm_outliers, o):
    """Between backward and update, on the host: (why this step's update is skipped, or None; loss z-score;
    norm z-score). A NaN or infinite loss or norm always skips, and stays out of the outlier windows (one NaN
    would poison their running sums for good); then llm.c's z-score tests (-sl, -sg). Every rank holds the same
    reduced loss and norm, so all ranks decide alike."""
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        return NONFINITE, math.nan, math.nan
    zloss, zgrad = loss_outliers.update(loss), norm_outliers.update(grad_norm)
    if math.isfinite(zloss) and o["skip_update_lossz"] != 0 and zloss > o["skip_update_lossz"]:
        return f"loss z-score of {zloss:f}", zloss, zgrad
    if math.isfinite(zgrad) and o["skip_update_gradz"] != 0 and zgrad > o["skip_update_gradz"]:
        return f"grad z-score of {zgrad:f}", zloss, zgrad
    return None, zloss, zgrad


def evaluate_val_loss(model, val_loader, num_batches, comm):
    """Mean over this rank's val batches, then summed over ranks and divided by their number, as llm.c."""
    val_loader.reset()
    total = 0.0
    for _ in range(num_batches):
        inputs, targets = val_loader.next_batch()
        total += model.validate(inputs, targets)
    return comm.all_reduce_sum(total / num_batches) / comm.num_processes


def sample(model, tokenizer, prompt, genT, T, o):
    """llm.c's sampling (EOT prompt, no KV cache, the coin sequence from seed 1337 at every event, forwards
    of a multiple of min(T, 256) positions), with the --prompt, --top-k and --temperature options."""
    sampler = Sampler(o["temperature"], o["top_k"])
    print("generating:\n---")
    for token in generate(model, prompt, genT - 1, sampler, window=min(T, 256)):
        print_token(tokenizer, token)
    print("\n---")


def main(argv):
    try:
        o = parse_args(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        print(USAGE)
        return 1
    check_options(o)
    info = discover(o["num_processes"], o["process_rank"], o["gpus_per_node"], o["nccl_init_method"],
                    o["server_ip"], o["fs_path"])
    # the GPU of this process (local rank), with our stream made current, before anything touches CUDA
    device = cuda.init_device(info.local_rank) if o["device"] == "cuda" else None
    comm = make_communicator(info, o["device"], o["server_ip"], o["fs_path"])
    if info.process_rank != 0:
        sys.stdout = open(os.devnull, "w")  # only rank 0 prints, as llm.c's printf0
    try:
        with StopRequest() as stop:
            return train(o, info, comm, device, stop)
    except (Exception, KeyboardInterrupt) as e:
        # one failing rank takes the others down instead of leaving them in a collective (no-op alone)
        comm.abort(f"error: {e}" if isinstance(e, LlmcError)
                   else f"rank {info.process_rank}: {traceback.format_exc()}")
        raise


def train(o, info, comm, device=None, stop=None):
    """The training run; `device` is the GPU's DeviceInfo (--device cuda) or None (cpu); `stop` the installed
    StopRequest (None: signals keep their usual effect)."""
    stop = stop if stop is not None else StopRequest()
    rank, num_processes = info.process_rank, info.num_processes
    B, T = o["B"], o["T"]
    tokens_per_fwdbwd = B * T * num_processes
    total_batch_size = tokens_per_fwdbwd if o["total_batch_size"] == -1 else o["total_batch_size"]
    if total_batch_size <= 0 or total_batch_size % tokens_per_fwdbwd != 0:
        raise LlmcError(f"-d {total_batch_size}: the total batch size must be a positive multiple of "
                        f"B*T*processes = {tokens_per_fwdbwd}")
    grad_accum_steps = total_batch_size // tokens_per_fwdbwd
    gelu_fusion = max(o["gelu_fusion"], 0)
    train_pattern = o["val_data_pattern"] if o["overfit_single_batch"] else o["train_data_pattern"]
    output_dir = o["output_log_dir"]
    gpu = device is not None
    # TF32 for the fp32 GEMMs, as llm.c: fp32 precision, compute capability >= 8.0 and -f 1 (the default)
    enable_tf32 = (gpu and o["precision"] == "fp32" and int(device.compute_capability) >= 80
                   and bool(o["override_enable_tf32"]))
    peak = get_flops_promised(device.name, o["precision"]) if gpu else -1.0
    if gpu:
        print(cuda.versions_line())

    print_table([
        ("train data pattern", train_pattern), ("val data pattern", o["val_data_pattern"]),
        ("output log dir", output_dir or "NULL"), ("checkpoint_every", o["checkpoint_every"]),
        ("resume", o["resume"]), ("micro batch size B", B), ("sequence length T", T),
        ("total batch size", total_batch_size), ("LR scheduler", o["lr_scheduler_type"]),
        ("learning rate (LR)", f"{o['learning_rate']:e}"), ("warmup iterations", o["warmup_iterations"]),
        ("final LR fraction", f"{o['final_learning_rate_frac']:e}"), ("weight decay", f"{o['weight_decay']:e}"),
        ("skip update lossz", f"{o['skip_update_lossz']:f}"), ("skip update gradz", f"{o['skip_update_gradz']:f}"),
        ("max_steps", o["max_steps"]), ("val_loss_every", o["val_loss_every"]),
        ("val_max_steps", o["val_max_steps"]), ("sample_every", o["sample_every"]), ("genT", o["genT"]),
        ("overfit_single_batch", o["overfit_single_batch"]), ("use_master_weights", o["use_master_weights"]),
        ("gelu_fusion", gelu_fusion), ("recompute", o["recompute"]),
        ("device", device.name if gpu else "cpu (NumPy reference)"),
        ("peak TFlops", f"{peak:.1f}" if peak >= 0 else "n/a"),
        ("precision", o["precision"].upper() + (" (TF32 matmuls)" if enable_tf32 else "")
         + (f", --matmul {o['matmul']}" if o["matmul"] != "cublas" else "")),
        ("CUDA graph", "on" if o["cuda_graph"] else "off"), ("process", info.describe())])
    if gpu:
        print(describe_peak(device.name, o["precision"]))

    # resume: the newest complete (DONE_) checkpoint in the output dir, if any
    resume_step = -1
    if o["resume"] and os.path.isdir(output_dir):
        resume_step = latest_checkpoint_step(output_dir)
        if resume_step >= 0:
            check_resume_world(output_dir, resume_step, rank, num_processes)
    if output_dir and rank == 0:
        try:
            os.makedirs(output_dir, mode=0o700, exist_ok=True)
        except OSError as e:
            raise LlmcError(f"-o {output_dir}: cannot create the output dir: {e.strerror}") from None
        stale = remove_stale_temps(output_dir)  # left by a run killed mid-write; no writer runs yet
        if stale:
            print(f"removed {len(stale)} unfinished file(s) of an interrupted write from {output_dir}")
    train_loader, val_loader, eval_loader = open_data(o, train_pattern, B, T, rank, num_processes)
    model_kwargs = dict(recompute=o["recompute"], gelu_fusion=gelu_fusion,
                        use_master_weights=bool(o["use_master_weights"]),
                        rng_seed=13371337 + rank, comm=comm, device=o["device"], precision=o["precision"],
                        matmul=o["matmul"], tf32=enable_tf32, attention=o["attention"])
    if resume_step >= 0:
        model = GPT2.from_checkpoint(checkpoint_paths(output_dir, resume_step, rank)[0], **model_kwargs)
    elif o["load_filename"].endswith(".bin"):
        model = GPT2.from_checkpoint(o["load_filename"], **model_kwargs)
    else:
        model = GPT2.from_descriptor(o["load_filename"], **model_kwargs)
    c = model.config
    if T > c.max_seq_len:
        raise LlmcError(f"-t {T}: the sequence length must be at most the model's max_seq_len {c.max_seq_len}")
    if T < c.max_seq_len:
        print(f"!!!!!!!!\nWARNING: sequence length T={T} is less than the model's max_seq_len={c.max_seq_len}\n!!!!!!!!")
    print_table([("max_sequence_length T", c.max_seq_len), ("vocab_size V", c.vocab_size),
                 ("padded_vocab_size Vp", c.padded_vocab_size), ("num_layers L", c.num_layers),
                 ("num_heads NH", c.num_heads), ("channels C", c.channels), ("num_parameters", c.num_parameters)])

    for loader in (train_loader, val_loader):
        loader.check_vocab(c.vocab_size)
    train_num_batches = o["max_steps"] if o["max_steps"] != -1 else train_loader.num_tokens // total_batch_size
    val_num_batches = o["val_max_steps"] if o["val_max_steps"] != -1 else val_loader.num_tokens // tokens_per_fwdbwd
    if train_num_batches <= 0:
        raise LlmcError(f"-x: no training steps to run (train data has {train_loader.num_tokens} tokens, "
                        f"total batch {total_batch_size})")
    if val_num_batches <= 0:
        raise LlmcError(f"-m {o['val_max_steps']}: expected at least one val batch")
    zero_stage, zero_notice = choose_zero_stage(o["zero_stage"], c, num_processes)
    model.set_shard(Shard(zero_stage, rank, num_processes))
    print(zero_notice)
    print_table([("train_num_batches", train_num_batches), ("val_num_batches", val_num_batches),
                 ("num_processes", num_processes), ("zero_stage", zero_stage)])
    print(f"batch size: {B * T} tokens per micro step, {grad_accum_steps} accumulation steps, "
          f"{total_batch_size} tokens per step")
    # HellaSwag only when asked for and its eval file has been prepared (dev/data/hellaswag.py)
    print_table([("run hellaswag", "yes" if eval_loader is not None else
                  f"no ({HELLASWAG_PATH} missing)" if o["hellaswag_eval"] else "no")])

    logger = Logger(output_dir, rank, start_step=max(resume_step, 0))
    tokenizer = Tokenizer.load_optional(TOKENIZER_PATH)
    eot = tokenizer.eot_token if tokenizer is not None else c.vocab_size - 1
    scheduler = LearningRateScheduler(o["lr_scheduler_type"], o["learning_rate"], o["warmup_iterations"],
                                      train_num_batches, o["final_learning_rate_frac"])
    prompt = prompt_tokens(tokenizer, o["prompt"], eot)
    if o["sample_every"] > 0:  # the run samples at its last step at least: a sample that cannot fit fails now
        check_fits(len(prompt), o["genT"] - 1, T, "the sequence length -t", "--prompt", f"-g {o['genT']}")
    model.allocate(B, T)
    print(model.attention_line())
    for line in model.memory_report():
        print(line)
    start_step = 0
    if resume_step >= 0:
        start_step = model.load_state(checkpoint_paths(output_dir, resume_step, rank)[1], train_loader)
        print(f"resumed from step {start_step} of {output_dir}")
    loss_outliers, norm_outliers = OutlierDetector(), OutlierDetector()
    train_step = TrainStep(model, grad_accum_steps, cuda_graph=bool(o["cuda_graph"]))
    nonfinite_in_a_row = 0

    total_time_ms, ema_tokens_per_second = 0.0, 0.0
    tokens_per_step = total_batch_size
    timer = cuda.StepTimer(gpu)  # CUDA events on the GPU: from before the first micro step to after the update
    for step in range(start_step, train_num_batches + 1):
        last = step == train_num_batches
        if stop.ranks_stopping(comm):
            return stop_for_signal(model, train_loader, output_dir, step, rank, comm, stop, step == resume_step)
        if step % o["val_loss_every"] == 0 or last:
            val_loss = evaluate_val_loss(model, val_loader, val_num_batches, comm)
            print(f"val loss {val_loss:f}")
            logger.log_val(step, val_loss)
        if eval_loader is not None and ((step > 0 and step % o["val_loss_every"] == 0) or last):
            correct, num_examples = evaluate_hellaswag(model, eval_loader, print_progress=rank == 0)
            correct = comm.all_reduce_sum(float(correct))
            accuracy = float(np.float32(correct) / np.float32(num_examples))
            print(f"HellaSwag: {int(correct)}/{num_examples} = {accuracy:f}")
            logger.log_eval(step, accuracy)
        if rank == 0 and o["sample_every"] > 0 and ((step > 0 and step % o["sample_every"] == 0) or last):
            sample(model, tokenizer, prompt, o["genT"], T, o)
        just_resumed = resume_step >= 0 and step == start_step
        if (o["checkpoint_every"] > 0 and output_dir and not just_resumed
                and ((step > 0 and step % o["checkpoint_every"] == 0) or last)):
            save_checkpoint(model, train_loader, output_dir, step, rank, comm)
            prune_checkpoint(output_dir, step, rank, o["checkpoints_keep"], o["checkpoint_every"],
                             o["major_checkpoint_every"])
        if last:
            break

        timer.start()
        if o["overfit_single_batch"]:
            train_loader.reset()
        for micro_step in range(grad_accum_steps):
            inputs, targets = train_loader.next_batch()
            train_step.micro_step(inputs, targets, micro_step)
        mean_loss, grad_norm = train_step.readback()
        lr = scheduler.get(step)
        skip, zloss, zgrad = update_decision(mean_loss, grad_norm, loss_outliers, norm_outliers, o)
        nonfinite_in_a_row = nonfinite_in_a_row + 1 if skip == NONFINITE else 0
        if skip is not None:
            print(f"skipping update due to {skip}")
        else:
            train_step.update(lr, o["weight_decay"], step + 1)
        ms = timer.stop()
        if step > start_step:
            total_time_ms += ms
        tokens_per_second = tokens_per_step / ms * 1000.0
        bias_corrected = tokens_per_second
        if step > 0:
            ema_tokens_per_second = 0.95 * ema_tokens_per_second + 0.05 * tokens_per_second
            bias_corrected = ema_tokens_per_second / (1.0 - 0.95 ** step)
        mfu = estimate_mfu(c.num_parameters, c.num_layers, c.channels, T, tokens_per_step // num_processes,
                           ms / 1000.0, peak)
        skipped = " | update skipped: non-finite" if skip == NONFINITE else ""
        print(f"step {step + 1:4d}/{train_num_batches} | loss {mean_loss:7.6f} ({zloss:+.2f}z)| "
              f"norm {grad_norm:6.4f} ({zgrad:+.2f}z)| lr {lr:.2e} | {ms:.2f} ms | {format_mfu(mfu)} | "
              f"{bias_corrected:.0f} tok/s{skipped}", flush=True)
        logger.log_train(step, mean_loss, lr, grad_norm, nonfinite=skip == NONFINITE)
        if nonfinite_in_a_row and nonfinite_in_a_row == o["nonfinite_steps_limit"]:
            last_good = latest_checkpoint_step(output_dir) if output_dir else -1
            raise LlmcError(f"-sn {o['nonfinite_steps_limit']}: steps {step + 2 - nonfinite_in_a_row}..{step + 1} "
                            f"all had a NaN or infinite loss or gradient norm and skipped their updates; stopping"
                            + (f" (the last checkpoint, step {last_good}, is in {output_dir})" if last_good >= 0
                               else ""))

    if train_num_batches - start_step > 1:
        print(f"total average iteration time: {total_time_ms / (train_num_batches - 1):f} ms")
    return 0


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
