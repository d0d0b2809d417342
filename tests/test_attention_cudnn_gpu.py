"""cuDNN attention on a real GPU (tier 4: skipped cleanly without one): llmc_py/attention_cudnn.py against PyTorch's
causal attention on odd shapes, its determinism, and the model with it against the CPU path and llm.c's kernels.

Where tests/test_attention_cudnn_cpu.py had the fake's emulation compute, cuDNN computes here: bf16 in and out,
f32 inside, so outputs carry bf16 rounding (TOL there); the statistics are f32 (the log-sum-exp of each row of
scaled scores, if cuDNN saves what flash attention's backward needs). A cuDNN that does not load fails these
tests instead of skipping them: on a GPU machine cuDNN attention is what is being proven.
"""
import numpy as np
import pytest

from gpu_gate import cp  # noqa: E402  (skips this module without a GPU)

from test_attention_cudnn_cpu import SHAPES, close, torch_attention  # noqa: E402
from test_cuda_backend_cpu import _dev, _q, batches, train  # noqa: E402

from llmc_py import attention_cudnn, cuda  # noqa: E402
from llmc_py.attention import attention_backward, attention_forward, choose_attention  # noqa: E402
from llmc_py.config import GPT2Config  # noqa: E402
from llmc_py.gpt2 import GPT2  # noqa: E402
from llmc_py.rand import gpt2_random_init  # noqa: E402

# a small model with GPT-2's head size 64; batches() draws B=2, T=16 from 1000 token ids
HS64 = GPT2Config(max_seq_len=32, vocab_size=1000, padded_vocab_size=1024, num_layers=2, num_heads=2, channels=128)


@pytest.fixture(autouse=True)
def device():
    info = cuda.init_device(0)
    assert choose_attention("cudnn", "cuda", "bf16", info)[0] == "cudnn"  # one clear line when cuDNN is missing
    return info


@pytest.mark.parametrize("B,T,NH,HS", SHAPES)
def test_forward_backward_match_torch(B, T, NH, HS):
    rng = np.random.default_rng(11)
    C = NH * HS
    inp, dout = _q(rng.standard_normal((B, T, 3 * C)), np.uint16), _q(rng.standard_normal((B, T, C)), np.uint16)
    workspace = cp.zeros(attention_cudnn.workspace_bytes(B, T, NH, HS, "bf16"), cp.uint8)
    qkv, out = _dev(inp, np.uint16), _dev(np.zeros((B, T, C)), np.uint16)
    stats = cp.zeros((B, NH, T), cp.float32)
    attention_forward(out, qkv, stats, qkv, NH, workspace=workspace)
    ref_out, ref_lse, ref_dinp = torch_attention(inp, dout, NH)
    close(cuda.to_host(out), ref_out)
    close(cuda.to_host(stats), ref_lse, tol=1e-3)
    runs = []
    for _ in range(2):
        dqkv = _dev(np.full((B, T, 3 * C), np.nan), np.uint16)  # every element must be written
        attention_backward(dqkv, None, None, out, _dev(dout, np.uint16), qkv, stats, NH, workspace=workspace)
        runs.append(dqkv.get())
    assert np.array_equal(runs[0], runs[1]), "the deterministic backward differs between two runs"
    dinp = cuda.to_host(dqkv)
    for i in range(3):  # dq, dk, dv: each on its own scale
        part = np.s_[..., i * C:(i + 1) * C]
        close(dinp[part], ref_dinp[part])
    assert np.array_equal(cuda.to_host(qkv), inp)  # q, k, v are only read


def _model(params, attention):
    model = GPT2(HS64, params.copy(), device="cuda", precision="bf16", attention=attention)
    model.allocate(2, 16)
    assert model.attention == attention
    return model


def test_model_matches_cpu_and_llmc_attention():
    """Three steps of two micro steps: cuDNN's attention against the CPU path (float32) and against llm.c's kernels
    on the GPU, within bf16 tolerance; two cuDNN runs give identical bits; a step allocates nothing."""
    params = gpt2_random_init(HS64)
    data = batches(7)
    cpu = GPT2(HS64, params.copy())
    cpu.allocate(2, 16)
    expected = train(cpu, data)
    runs = [train(_model(params, "cudnn"), data) for _ in range(2)]
    assert runs[0] == runs[1]
    llmc = train(_model(params, "llmc"), data)
    for (loss, norm2), (ref_loss, ref_norm2), (llmc_loss, _) in zip(runs[0], expected, llmc):
        assert loss == pytest.approx(ref_loss, rel=5e-3) and norm2 == pytest.approx(ref_norm2, rel=0.1)
        assert loss == pytest.approx(llmc_loss, rel=5e-3)
    model = _model(params, "cudnn")
    train(model, data[:2], steps=1)  # the first step loads the kernels and cuDNN's engines
    cp.cuda.get_current_stream().synchronize()
    free = cp.cuda.runtime.memGetInfo()[0]
    train(model, data[2:4], steps=1)
    cp.cuda.get_current_stream().synchronize()
    assert cp.cuda.runtime.memGetInfo()[0] == free, "device memory allocated inside a step (by CuPy or by cuDNN)"
