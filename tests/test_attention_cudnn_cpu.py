"""cuDNN attention without a GPU: llmc_py/attention_cudnn.py against tests/fake_cudnn.py, in which the real
nvidia-cudnn-frontend declares and validates every graph and execute is checked at the level of device addresses.

With the fake's emulation the forward and backward, bound by the addresses and strides llmc_py hands cuDNN, must
give PyTorch's causal attention (float64, on the same bf16 inputs) within bf16 rounding: a q, k or v read at the
wrong offset or stride, or an output written to the wrong place, fails that. What none of this can show is what
cuDNN computes on a GPU and how much workspace it asks for: tests/test_attention_cudnn_gpu.py does that.
"""
import dataclasses
import re
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fake_cudnn
from llmc_py import LlmcError
from llmc_py.config import GPT2Config
from llmc_py.rand import gpt2_random_init

import test_cuda_backend_cpu as backend
from conftest import load_program
from test_cuda_backend_cpu import TINY, _dev, _host, _q, batches, gpt2, train

pytestmark = pytest.mark.skipif(fake_cudnn.REAL is None,
                                reason="nvidia-cudnn-frontend with libcudnn is not installed (requirements-cpu.txt)")
# test_cuda_backend_cpu's fixtures: pytest finds them here by these names
fake, emulated, tiny_params, wide_model = backend.fake, backend.emulated, backend.tiny_params, backend.wide_model
# odd shapes: T not a multiple of 64, B*NH odd
SHAPES = [(3, 37, 3, 64), (1, 20, 5, 32)]
TOL = 2e-2  # bf16 outputs: 2^-9 relative rounding, plus flash attention's f32 sums in another order


def close(actual, expected, tol=TOL):
    expected = np.asarray(expected)
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * float(np.abs(expected).max()))


def torch_attention(inp, dout, NH):
    """PyTorch's causal attention in float64 on (B,T,3C) rows [q|k|v]: out (B,T,C), each row's log-sum-exp of the
    scaled scores (B,NH,T), and d inp (B,T,3C) for dout."""
    B, T, C3 = inp.shape
    C = C3 // 3
    x = torch.tensor(inp, dtype=torch.float64, requires_grad=True)
    q, k, v = (t.reshape(B, T, NH, C // NH).transpose(1, 2) for t in x.split(C, dim=-1))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    scores = (q @ k.transpose(-1, -2)) / (C // NH) ** 0.5
    lse = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")).logsumexp(-1)
    out = y.transpose(1, 2).reshape(B, T, C)
    out.backward(torch.tensor(dout, dtype=torch.float64))
    return out.detach().numpy(), lse.detach().numpy(), x.grad.numpy()

# ----------------------------------------------------------------------------
# the op


@pytest.mark.parametrize("B,T,NH,HS", SHAPES)
def test_forward_backward_match_torch(emulated, B, T, NH, HS):
    """Through llmc_py.attention's two calls (the saved statistics select cuDNN), on odd shapes."""
    import cupy
    from llmc_py import attention_cudnn
    from llmc_py.attention import attention_backward, attention_forward
    rng = np.random.default_rng(7)
    C = NH * HS
    inp, dout = _q(rng.standard_normal((B, T, 3 * C)), np.uint16), _q(rng.standard_normal((B, T, C)), np.uint16)
    workspace = cupy.zeros(attention_cudnn.workspace_bytes(B, T, NH, HS, "bf16"), cupy.uint8)
    assert len(emulated.cudnn_graphs) == 2  # the forward and the backward, built once
    qkv, out = _dev(inp, np.uint16), _dev(np.zeros((B, T, C)), np.uint16)
    stats = _dev(np.zeros((B, NH, T)), np.float32)
    attention_forward(out, qkv, stats, qkv, NH, workspace=workspace)
    ref_out, ref_lse, ref_dinp = torch_attention(inp, dout, NH)
    close(_host(out), ref_out)
    np.testing.assert_allclose(_host(stats), ref_lse, rtol=1e-5, atol=1e-5)
    dqkv = _dev(np.zeros((B, T, 3 * C)), np.uint16)
    attention_backward(dqkv, None, None, out, _dev(dout, np.uint16), qkv, stats, NH, workspace=workspace)
    for i in range(3):  # dq, dk, dv: each on its own scale
        part = np.s_[..., i * C:(i + 1) * C]
        close(_host(dqkv)[part], ref_dinp[part])
    assert np.array_equal(_host(qkv), inp)  # q, k, v are only read
    assert len(emulated.cudnn_graphs) == 2 and [op for op, _ in emulated.cudnn_executes] == ["sdpa", "sdpa_backward"]


def test_execute_checks_catch_mistakes(fake):
    """The fake's execute checks are only worth their silence if they speak up: each binding mistake is caught."""
    import cupy
    from llmc_py import attention_cudnn
    B, T, NH, HS = 2, 16, 2, 32
    C = NH * HS
    ctx = attention_cudnn.context()
    g = ctx.graph("forward", B, T, NH, HS, "bf16")
    qkv, out = cupy.zeros((B, T, 3 * C), cupy.uint16), cupy.zeros((B, T, C), cupy.uint16)
    stats, ws = cupy.zeros((B, NH, T), cupy.float32), cupy.zeros(g.workspace_bytes, cupy.uint8)
    q, step = qkv.data.ptr, 2 * C

    def addresses(**change):
        a = dict(q=q, k=q + step, v=q + 2 * step, o=out.data.ptr, stats=stats.data.ptr)
        a.update(change)
        return tuple(a.values())

    ctx.execute(g, addresses(), ws)
    bad = [(addresses(k=q + step + 2), "not 16-byte aligned"),
           (addresses(o=cupy.zeros((B, T, C - 8), cupy.uint16).data.ptr), "not inside one device allocation"),
           (addresses(o=q + step), "overlaps"),
           (addresses(stats=out.data.ptr), "overlaps")]
    for a, message in bad:
        with pytest.raises(LlmcError, match=message):
            ctx.execute(g, a, ws)
    with pytest.raises(LlmcError, match="bytes of workspace"):
        ctx.execute(g, addresses(), ws[:g.workspace_bytes - 1])
    pack = dict(zip(g.tensors, addresses()))
    with pytest.raises(AssertionError, match="plain int"):
        g.graph.execute({**pack, g.tensors[3]: out}, ws.data.ptr, handle=ctx.handle)
    with pytest.raises(AssertionError, match="no address for"):
        g.graph.execute({t: a for t, a in pack.items() if t is not g.tensors[4]}, ws.data.ptr, handle=ctx.handle)
    with pytest.raises(AssertionError, match="workspace"):
        g.graph.execute(pack, ws.data.ptr - 256, handle=ctx.handle)
    cupy.cuda.Stream(non_blocking=True).use()  # the handle still points at the old stream
    with pytest.raises(AssertionError, match="current stream"):
        g.graph.execute(pack, ws.data.ptr, handle=ctx.handle)
    ctx.execute(g, addresses(), ws)  # through llmc_py the handle follows the current stream


def test_real_frontend_validates_the_graphs(fake):
    """The graphs are validated by the real frontend for the fake GPU's sm_90: a head size the backward cannot run
    there is refused with cuDNN's own reason, and a graph used out of order is refused by the fake."""
    from llmc_py import attention_cudnn
    with pytest.raises(LlmcError, match=r"backward \(B=1, T=8, NH=1, HS=512\).*256"):
        attention_cudnn.workspace_bytes(1, 8, 1, 512, "bf16")
    with pytest.raises(LlmcError, match="bf16 only"):
        attention_cudnn.workspace_bytes(1, 8, 1, 64, "fp32")
    import cudnn
    g = cudnn.pygraph(io_data_type=cudnn.data_type.BFLOAT16, handle=attention_cudnn.context().handle)
    with pytest.raises(AssertionError, match="stage 'declared'"):
        g.create_execution_plans([cudnn.heur_mode.A])

# ----------------------------------------------------------------------------
# choosing


def test_choose_attention(fake, monkeypatch):
    from llmc_py import cuda
    from llmc_py.attention import choose_attention
    info = cuda.device_info()
    assert choose_attention("auto", "cpu", "fp32") == ("llmc", "--device cpu runs the NumPy reference")
    assert choose_attention("auto", "cuda", "fp32", info) == ("llmc", "cuDNN attention is bf16 only")
    assert choose_attention("llmc", "cuda", "bf16", info) == ("llmc", "--attention llmc")
    which, why = choose_attention("auto", "cuda", "bf16", info)
    assert which == "cudnn" and re.fullmatch(r"bf16 on sm_90, cuDNN 9\.\d+\.\d+, frontend 1\.28\.0", why), why
    assert choose_attention("cudnn", "cuda", "bf16", info)[1].startswith("--attention cudnn on sm_90, cuDNN 9.")
    for args, message in ((("cudnn", "cuda", "fp32", info), "bf16 only"), (("cudnn", "cpu", "fp32"), "--device cuda"),
                          (("flash", "cuda", "bf16", info), "expected one of auto, cudnn, llmc")):
        with pytest.raises(LlmcError, match=message):
            choose_attention(*args)
    turing = dataclasses.replace(info, compute_capability="75")
    assert choose_attention("auto", "cuda", "bf16", turing) == ("llmc", "sm_75: cuDNN flash attention needs sm_80 "
                                                                "or newer")
    with pytest.raises(LlmcError, match="sm_75"):
        choose_attention("cudnn", "cuda", "bf16", turing)
    no_library = types.ModuleType("cudnn")
    no_library.backend_version = lambda: (_ for _ in ()).throw(RuntimeError("libcudnn.so.9: cannot open"))
    monkeypatch.setitem(sys.modules, "cudnn", no_library)
    which, why = choose_attention("auto", "cuda", "bf16", info)
    assert which == "llmc" and "libcudnn cannot be loaded" in why and "pip install nvidia-cudnn-cu12" in why
    monkeypatch.setitem(sys.modules, "cudnn", None)  # the frontend not installed
    which, why = choose_attention("auto", "cuda", "bf16", info)
    assert which == "llmc" and "pip install nvidia-cudnn-frontend==1.28.0" in why
    with pytest.raises(LlmcError, match=r"^--attention cudnn: .*pip install nvidia-cudnn-frontend==1\.28\.0$"):
        choose_attention("cudnn", "cuda", "bf16", info)

# ----------------------------------------------------------------------------
# the model


def test_buffers_and_memory_lines(fake, tiny_params):
    """With cuDNN no att matrix: the arena shrinks by it, less the statistics and the largest workspace."""
    cudnn_model = gpt2(tiny_params, device="cuda", precision="bf16")
    llmc_model = gpt2(tiny_params, device="cuda", precision="bf16", attention="llmc")
    assert cudnn_model.attention == "cudnn" and llmc_model.attention == "llmc"
    L, NH, B, T = TINY.num_layers, TINY.num_heads, cudnn_model.B, cudnn_model.T
    assert cudnn_model.acts["att"].size == 0 and llmc_model.acts["att"].size == L * B * NH * T * T
    stats, ws = cudnn_model.bufs["att_stats"], cudnn_model.bufs["cudnn_workspace"]
    assert stats.shape == (L * B * NH * T,) and stats.dtype == np.float32
    assert ws.nbytes == max(g.workspace_bytes for g in fake.cudnn_graphs) > 0
    saved = llmc_model.acts["att"].nbytes - stats.nbytes - ws.nbytes
    assert abs(llmc_model.arena_bytes - cudnn_model.arena_bytes - saved) <= 2 * 256  # alignment of 2 more buffers
    assert re.fullmatch(r"cuDNN attention: 0 MiB softmax statistics and 0 MiB workspace in the activations, in "
                        r"place of the 0 MiB attention matrix", cudnn_model.memory_report()[-1])
    assert not any(line.startswith("cuDNN") for line in llmc_model.memory_report())
    assert cudnn_model.attention_line().startswith("attention: cuDNN flash attention (bf16 on sm_90, cuDNN 9.")
    assert llmc_model.attention_line() == "attention: llm.c's kernels (att matrix) (--attention llmc)"


def test_graphs_built_at_allocate_nothing_inside_steps(fake, tiny_params):
    """Both graphs are built by allocate(); training steps, the grad norm and validation build none and allocate
    nothing; every layer runs one forward and one backward per micro step; a smaller forward (sampling) builds its
    own forward graph once, fitting the planned workspace."""
    model = gpt2(tiny_params, device="cuda", precision="bf16")
    assert [g.nodes[0][0] for g in fake.cudnn_graphs] == ["sdpa", "sdpa_backward"]
    allocations = len(fake.registry.allocations)
    data = batches(5)
    train(model, data, steps=2)
    model.validate(*data[-1])
    L = TINY.num_layers
    ops = [op for op, _ in fake.cudnn_executes]
    assert ops == (["sdpa"] * L + ["sdpa_backward"] * L) * 4 + ["sdpa"] * L
    assert len(fake.cudnn_graphs) == 2 and len(fake.registry.allocations) == allocations
    for _ in range(2):
        model.forward(data[0][0][:1, :5])
    assert len(fake.cudnn_graphs) == 3 and fake.cudnn_graphs[2].workspace_bytes <= model.bufs["cudnn_workspace"].nbytes
    assert len(fake.registry.allocations) == allocations


def test_falls_back_when_cudnn_cannot_run_the_model(fake):
    """A head size cuDNN's backward cannot run: auto falls back to llm.c's kernels at allocate and says why;
    --attention cudnn stops with cuDNN's reason."""
    from llmc_py.gpt2 import GPT2
    wide_head = GPT2Config(max_seq_len=16, vocab_size=100, padded_vocab_size=128, num_layers=1, num_heads=1,
                           channels=512)
    params = gpt2_random_init(wide_head)
    model = GPT2(wide_head, params, device="cuda", precision="bf16")
    assert model.attention == "cudnn"
    model.allocate(2, 8)
    assert model.attention == "llmc" and model.acts["att"].size == 2 * 8 * 8 and "att_stats" not in model.bufs
    assert model.attention_line().startswith("attention: llm.c's kernels (att matrix) (cuDNN cannot run this model: "
                                             "cuDNN attention backward (B=2, T=8, NH=1, HS=512)")
    model.forward(np.zeros((2, 8), np.int32))
    with pytest.raises(LlmcError, match=r"^--attention cudnn: cuDNN attention backward .*HS=512"):
        GPT2(wide_head, params, device="cuda", precision="bf16", attention="cudnn").allocate(2, 8)


# ----------------------------------------------------------------------------
# the programs


def test_programs_take_attention_flag(fake, d12_dir, wide_model, monkeypatch, capsys):
    """train_gpt2cu.py and dev/bench.py: --attention picks the implementation and the start-up line says which and
    why; --attention cudnn where it cannot run is one error naming what to do."""
    monkeypatch.chdir(d12_dir)
    train_program = load_program("train_gpt2cu_attention", "train_gpt2cu.py")
    args = ["-e", str(wide_model), "-b", "2", "-t", "16", "-v", "10", "-m", "1", "-s", "0", "-x", "1"]
    assert train_program.main(args + ["--attention", "cudnn"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^attention: cuDNN flash attention \(--attention cudnn on sm_90, cuDNN 9\.", out, re.M)
    assert re.search(r"^cuDNN attention: \d+ MiB softmax statistics and \d+ MiB workspace", out, re.M)
    assert train_program.main(args + ["--attention", "llmc"]) == 0
    out = capsys.readouterr().out
    assert "attention: llm.c's kernels (att matrix) (--attention llmc)" in out and "cuDNN attention:" not in out
    assert train_program.main(args + ["--precision", "fp32"]) == 0
    assert "attention: llm.c's kernels (att matrix) (cuDNN attention is bf16 only)" in capsys.readouterr().out
    with pytest.raises(LlmcError, match="--precision bf16 only"):
        train_program.main(args + ["--precision", "fp32", "--attention", "cudnn"])
    fake_module = sys.modules["cudnn"]
    monkeypatch.setitem(sys.modules, "cudnn", None)
    with pytest.raises(LlmcError, match="pip install nvidia-cudnn-frontend"):
        train_program.main(args + ["--attention", "cudnn"])
    monkeypatch.setitem(sys.modules, "cudnn", fake_module)
    bench = load_program("bench_attention", "dev/bench.py")
    for attention, line in (("cudnn", "attention: cuDNN flash attention (--attention cudnn"),
                            ("llmc", "attention: llm.c's kernels (att matrix) (--attention llmc)")):
        monkeypatch.setattr(sys, "argv", ["bench.py", "--device", "cuda", "-e", str(wide_model), "-b", "2", "-t", "16",
                                          "--steps", "1", "--attention", attention])
        bench.main()
        assert line in capsys.readouterr().out
