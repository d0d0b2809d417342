"""The captured training step (llmc_py.step) on the fake GPU: replayed CUDA graphs against eager launches, and
the capture checker of tests/fake_gpu.py.

The fake records what a capture issues with the arguments frozen as they were passed, and a launch of the graph
runs that recording again, so a value that changes from step to step but reached a kernel by value would stay at
its capture-time value in every replay: the replayed run would then drift from the eager one, which is what these
tests compare, bit for bit, with the learning rate, the bias corrections, the seeds, the clip scale and the token
ids all changing from step to step. What only a GPU can show (that CUDA, cuBLASLt and NCCL capture and replay as
modeled here) is dev/gpu/steps/45_cuda_graph.sh's part.
"""
import inspect
import re

import numpy as np
import pytest

import fake_gpu
import test_cuda_backend_cpu as backend
from conftest import load_program
from test_cuda_backend_cpu import batches, gpt2
from llmc_py import LlmcError
from llmc_py.checkpoint import read_model

# test_cuda_backend_cpu's fixtures: pytest finds them here by these names
emulated, tiny_params, wide_model = backend.emulated, backend.tiny_params, backend.wide_model


def lr_at(step):
    """A learning rate that changes every step (warm-up, then decay)."""
    return 1e-3 * min(step + 1, 3) / 3 / (1 + step)


def run_steps(model, data, accum, cuda_graph, steps=4, skip=()):
    """`steps` steps of `accum` micro steps through TrainStep, skipping the update of the steps in `skip`; a
    validation and a short forward (eager work on the same buffers) between steps. Returns the TrainStep and
    [(loss, grad norm)]."""
    from llmc_py.step import TrainStep
    train_step = TrainStep(model, accum, cuda_graph=cuda_graph)
    it, out = iter(data), []
    for step in range(steps):
        for micro in range(accum):
            x, y = next(it)
            train_step.micro_step(x, y, micro)
        out.append(train_step.readback())
        if step not in skip:
            train_step.update(lr_at(step), 0.1, step + 1)
        model.validate(*data[-1])
        model.forward(data[0][0][:1, :5])
    return train_step, out


def state_of(model):
    return [fake_gpu.plain(a).copy() for a in (model.params, model.grads, model.m, model.v)
            + (() if model.master is None else (model.master,))]


CASES = [("bf16", 1, dict(), ()), ("bf16", 3, dict(recompute=0, gelu_fusion=2), (2,)),
         ("fp32", 2, dict(recompute=2, gelu_fusion=1, use_master_weights=False), ()),
         ("bf16", 2, dict(zero_rank=1), ()), ("fp32", 1, dict(matmul="custom"), (1,))]


@pytest.mark.parametrize("precision,accum,flags,skip", CASES,
                         ids=[f"{p}-accum{a}-" + "-".join(f"{k}{v}" for k, v in f.items()) + f"-skip{s}"
                              for p, a, f, s in CASES])
def test_replayed_steps_match_eager_bit_for_bit(emulated, tiny_params, precision, accum, flags, skip):
    """The same steps eagerly and as replayed graphs (first, middle and last micro steps, the update; a skipped
    update; ZeRO-1's shard; -r and -ge): identical losses, norms and every byte of params, grads, m, v, master."""
    from llmc_py.gpt2 import Shard
    flags = dict(flags)
    rank = flags.pop("zero_rank", None)
    if rank is not None:
        flags["shard"] = Shard(zero_stage=1, process_rank=rank, num_processes=2)
    data = batches(4 * accum + 1, seed=7)
    runs = []
    for cuda_graph in (False, True):
        captures_before = len(emulated.captures)
        model = gpt2(tiny_params, device="cuda", precision=precision, **flags)
        train_step, losses = run_steps(model, data, accum, cuda_graph, skip=skip)
        runs.append((losses, state_of(model)))
        kinds = {1: 1, 2: 2}.get(accum, 3) + 1  # micro step kinds (first/middle/last) and the update
        assert len(train_step.graphs) == (kinds if cuda_graph else 0)
        assert len(emulated.captures) - captures_before == len(train_step.graphs)
    (eager, eager_state), (replayed, replayed_state) = runs
    assert replayed == eager
    for got, expected in zip(replayed_state, eager_state):
        assert np.array_equal(got, expected)
    norms = [norm for _, norm in eager]
    assert max(norms) > 1.0 and len(set(norms)) == len(norms)  # clipping at work, with a new scale every step


def test_replay_runs_the_recording_with_frozen_arguments(emulated):
    """What the checks above rely on: a capture records (it runs nothing), a launch replays what was recorded,
    kernels read device memory as it is at the launch, and a by-value argument keeps its capture-time value."""
    import cupy
    from llmc_py import cuda
    from llmc_py.global_norm import grad_clip_scale
    scale, norm_squared = cupy.zeros(1, cupy.float32), cupy.zeros(1, cupy.float32)
    host = np.array([16.0], np.float32)
    max_norm = 2.0
    norm_squared.set(host)
    grad_clip_scale(scale, norm_squared, max_norm)  # warm-up: loading the module cannot happen in a capture
    cuda.zero(scale)
    graph = cuda.capture(lambda: grad_clip_scale(scale, norm_squared, max_norm))
    assert fake_gpu.plain(scale)[0] == 0.0  # recorded, not run
    graph.launch()
    assert fake_gpu.plain(scale)[0] == np.float32(2.0 / 4.0)
    norm_squared.set(np.array([64.0], np.float32))
    max_norm = 4.0  # noqa: F841 (a host value captured by value: the replay cannot see the change)
    graph.launch()
    assert fake_gpu.plain(scale)[0] == np.float32(2.0 / 8.0)


def _violations():
    """(what, work) pairs that a capture must refuse."""
    import cupy
    import cupyx
    from llmc_py import blas, cuda
    cublas = blas._import_bindings()[0]
    x = cupy.zeros(8, cupy.float32)
    other = cupy.cuda.Stream(non_blocking=True)
    ours = cupy.cuda.get_current_stream()

    def on_other_stream():
        other.use()
        try:
            cuda.zero(x)
        finally:
            ours.use()
    return [("a device allocation", lambda: cupy.empty(4, cupy.float32)),
            ("Stream.synchronize", lambda: cupy.cuda.get_current_stream().synchronize()),
            ("Device.synchronize", lambda: cupy.cuda.Device().synchronize()),
            ("Event.synchronize", lambda: cupy.cuda.Event().synchronize()),
            ("reading back to the host (get())", lambda: x.get()),
            ("indexing a scalar out", lambda: float(x[0])),
            ("a blocking set()", lambda: x.set(np.zeros(8, np.float32))),
            ("a pinned host allocation", lambda: cupyx.empty_pinned(16, np.uint8)),
            ("cublas.create, which cannot be captured", cublas.create),
            ("compiling and loading a module", lambda: cuda.load_module("gelu", "fp32", ("x",))),
            ("outside the graph", on_other_stream)]


def test_capture_refuses_what_a_graph_cannot_hold(emulated):
    """Allocations, synchronizations, read-backs, blocking copies, module loads, non-capturable library calls and
    work on another stream all fail inside a capture, and the stream leaves capture mode afterwards."""
    import cupy
    from llmc_py import cuda
    for what, work in _violations():
        with pytest.raises(fake_gpu.CaptureError, match=re.escape(what)):
            cuda.capture(work)
        assert emulated.capturing is None, what
    legacy = cupy.cuda.Stream(null=True)
    with pytest.raises(AssertionError, match="legacy default stream"):
        legacy.begin_capture()
    stream = cupy.cuda.get_current_stream()
    assert stream.non_blocking, "init_device must make a non-blocking stream current"
    graph = cuda.capture(lambda: None)
    with pytest.raises(fake_gpu.CaptureError, match="a graph launch"):
        cuda.capture(graph.launch)
    assert "cublas.sgemm" in fake_gpu.LIBRARY_CALLS and fake_gpu.LIBRARY_CALLS["cublasLt.matmul"] == "work"


def _parameters(doc_or_fn):
    """Parameter names (self left out) of a Python function, or of the signature line that opens a Cython
    docstring, e.g. 'MemoryPointer.memset_async(self, int value, size_t size, stream=None)'."""
    if callable(doc_or_fn) and not isinstance(doc_or_fn, str):
        return [p for p in inspect.signature(doc_or_fn).parameters if p != "self"]
    inner = doc_or_fn.strip().splitlines()[0].split("(", 1)[1].rsplit(")", 1)[0]
    names = [part.split("=")[0].split()[-1] for part in inner.split(",") if part.strip()]
    return [name for name in names if name != "self"]


def test_fake_capture_api_follows_the_installed_cupy():
    """The fake's stream-capture, event, pinned-memory and async-copy entry points take the parameters of the
    installed CuPy's (read off its Cython signatures): a rename there breaks this test, not a GPU run."""
    real = pytest.importorskip("cupy")
    cupyx = pytest.importorskip("cupyx")
    from cupy.cuda import graph, memory
    fake = fake_gpu.FakeGPU().cupy_module()
    fcuda = fake["cupy.cuda"]
    pairs = [(real.cuda.Stream.begin_capture, fcuda.Stream.begin_capture),
             (real.cuda.Stream.end_capture, fcuda.Stream.end_capture),
             (real.cuda.Stream.is_capturing, fcuda.Stream.is_capturing),
             (real.cuda.Stream.synchronize, fcuda.Stream.synchronize), (real.cuda.Stream.use, fcuda.Stream.use),
             (graph.Graph.launch, fcuda.Graph.launch), (graph.Graph.upload, fcuda.Graph.upload),
             (real.cuda.Event.__init__, fcuda.Event.__init__), (real.cuda.Event.record, fcuda.Event.record),
             (real.cuda.Event.synchronize, fcuda.Event.synchronize),
             (real.cuda.get_current_stream, fcuda.get_current_stream),
             (real.cuda.get_elapsed_time, fcuda.get_elapsed_time),
             (memory.MemoryPointer.memset_async, fake_gpu._Memory.memset_async),
             (memory.MemoryPointer.copy_from_host_async, fake_gpu._Memory.copy_from_host_async),
             (real.ndarray.get, fake_gpu.DeviceArray.get), (real.ndarray.set, fake_gpu.DeviceArray.set),
             (real.ndarray.fill, fake_gpu.DeviceArray.fill), (real.cuda.Device.synchronize, fcuda.Device.synchronize)]
    for real_fn, fake_fn in pairs:
        assert _parameters(fake_fn) == _parameters(real_fn.__doc__), real_fn.__doc__.splitlines()[0]
    assert _parameters(fake["cupyx"].empty_pinned) == _parameters(cupyx.empty_pinned)
    stream_params = _parameters(real.cuda.Stream.__init__.__doc__)
    assert _parameters(fcuda.Stream.__init__) == stream_params[:len(_parameters(fcuda.Stream.__init__))]


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_one_readback_and_no_allocation_per_step(emulated, tiny_params, cuda_graph):
    """After the warm-up, a step of 2 micro steps and its update read the device back once (loss and norm
    together) and allocate nothing, on the device or pinned."""
    from llmc_py.step import TrainStep
    model = gpt2(tiny_params, device="cuda", precision="bf16")
    data = batches(8, seed=2)
    train_step = TrainStep(model, 2, cuda_graph=cuda_graph)
    counts = []
    for step in range(4):
        readbacks, allocations = len(emulated.readbacks), len(emulated.registry.allocations) + len(emulated.pinned)
        for micro in range(2):
            train_step.micro_step(*data[2 * step + micro], micro)
        train_step.readback()
        train_step.update(1e-3, 0.0, step + 1)
        counts.append((len(emulated.readbacks) - readbacks,
                       len(emulated.registry.allocations) + len(emulated.pinned) - allocations))
    assert counts == [(1, 0)] * 4
    assert emulated.graph_launches == (3 * 3 if cuda_graph else 0)  # steps 1 (captured), 2, 3: three graphs each


def test_staging_sends_adjacent_entries_only(emulated):
    import cupy  # noqa: F401 (the fake)
    from llmc_py import cuda
    layout = {"a": (0, np.dtype(np.int32), 4), "b": (256, np.dtype(np.float32), 2), "c": (512, np.dtype(np.uint32), 1)}
    staging = cuda.Staging(layout, 516, True)
    host = staging.host()
    host["a"][:] = [1, 2, 3, 4]
    host["b"][:] = [0.5, -1.0]
    staging.send(["b", "a"])
    assert fake_gpu.plain(staging.device["a"]).tolist() == [1, 2, 3, 4]
    assert fake_gpu.plain(staging.device["b"]).tolist() == [0.5, -1.0]
    assert staging.host() is not host  # the other pinned copy takes the next turn
    with pytest.raises(ValueError, match="not adjacent"):
        staging.send(["a", "c"])


def test_train_program_graphs_match_eager(emulated, d12_dir, wide_model, tmp_path, monkeypatch, capsys):
    """train_gpt2cu.py with --cuda-graph 0 and 1, with gradient accumulation (-d: first, middle and last micro
    steps): the same step lines (loss, norm) and a byte-identical model file at the end."""
    monkeypatch.chdir(d12_dir)
    program = load_program("train_gpt2cu_graphs", "train_gpt2cu.py")
    lines, models = [], []
    for flag in ("0", "1"):
        out_dir = tmp_path / f"graph{flag}"
        args = ["-e", str(wide_model), "-b", "2", "-t", "16", "-d", "96", "-x", "4", "-v", "100", "-m", "1",
                "-s", "0", "-u", "2", "-o", str(out_dir), "-n", "4", "--cuda-graph", flag]
        assert program.main(args) == 0
        out = capsys.readouterr().out
        assert f"| CUDA graph            | {'on' if flag == '1' else 'off'}" in out
        steps = re.findall(r"^step +\d+/4 \| loss (\S+) .*\| norm (\S+) .*\| lr (\S+) \|", out, re.M)
        assert len(steps) == 4 and "3 accumulation steps" in out
        lines.append(steps)
        models.append((out_dir / "model_00000004.bin").read_bytes())
    assert lines[0] == lines[1] and models[0] == models[1]
    assert len({lr for _, _, lr in lines[0]}) > 1  # the learning rate changed from step to step
    _, params, _ = read_model(str(tmp_path / "graph1" / "model_00000004.bin"))
    assert np.isfinite(params).all()


def test_cuda_graph_flag_needs_cuda(d12_dir, monkeypatch):
    monkeypatch.chdir(d12_dir)
    program = load_program("train_gpt2cu_flags", "train_gpt2cu.py")
    with pytest.raises(LlmcError, match=r"^--cuda-graph 1: CUDA graphs need --device cuda$"):
        program.main(["--device", "cpu", "--cuda-graph", "1", "-e", "d6"])
    with pytest.raises(LlmcError, match="--cuda-graph 2: expected one of 0, 1"):
        program.main(["--cuda-graph", "2"])
