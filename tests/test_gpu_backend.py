"""The CUDA backend on a real GPU (tier 4: skipped cleanly without one): the library ops, cuBLAS/cuBLASLt through
llmc_py.blas, and the whole model against the CPU path, its determinism and its memory discipline.

The same scenarios as tests/test_cuda_backend_cpu.py, where a fake GPU stands in; here the real kernels
(--use_fast_math), cuBLAS and cuBLASLt compute, so the tolerances are the kernels' own: fp32 runs with TF32 off.
"""
import numpy as np
import pytest

from gpu_gate import cp  # noqa: E402  (skips this module without a GPU)

from test_cuda_backend_cpu import (B, T, TINY, allocations_during, assert_params_close, batches, gpt2,  # noqa: E402
                                   train)

from llmc_py import blas, cuda  # noqa: E402
from llmc_py.rand import gpt2_random_init  # noqa: E402


@pytest.fixture(scope="module")
def tiny_params():
    return gpt2_random_init(TINY)


@pytest.fixture(autouse=True)
def device():
    return cuda.init_device(0)


def test_blas_row_major_on_cublas():
    """Every transpose combination (cuBLAS SGEMM and cuBLASLt bf16, plain and batched) against NumPy."""
    rng = np.random.default_rng(0)
    M, N, K = 48, 40, 24
    blas.set_tf32(False)
    for precision, tol in (("fp32", 1e-5), ("bf16", 2e-2)):
        for trans_a in (False, True):
            for trans_b in (False, True):
                a = rng.standard_normal((K, M) if trans_a else (M, K)).astype(np.float32)
                b = rng.standard_normal((N, K) if trans_b else (K, N)).astype(np.float32)
                qa, qb = (cuda.to_host(_dev(x, precision)) for x in (a, b))
                expected = (qa.T if trans_a else qa) @ (qb.T if trans_b else qb)
                out = _dev(np.zeros((M, N), np.float32), precision)
                blas.matmul(out, _dev(a, precision), _dev(b, precision), trans_a=trans_a, trans_b=trans_b)
                np.testing.assert_allclose(cuda.to_host(out), expected, rtol=tol, atol=tol * np.abs(expected).max())
                out3 = _dev(np.zeros((2, M, N), np.float32), precision)
                a3, b3 = np.stack([a, 2 * a]), np.stack([b, -b])
                blas.batched_matmul(out3, _dev(a3, precision), _dev(b3, precision), trans_a=trans_a, trans_b=trans_b)
                np.testing.assert_allclose(cuda.to_host(out3), np.stack([expected, -2 * expected]), rtol=tol,
                                           atol=tol * np.abs(expected).max() * 2)


def _dev(values, precision):
    host = cuda.host_floatx(values, precision)
    out = cp.empty(host.shape, dtype=host.dtype)
    out.set(host)
    return out


@pytest.mark.parametrize("precision,matmul,flags", [("fp32", "cublas", {}), ("fp32", "custom", {}),
                                                    ("fp32", "fp16fc", {}), ("bf16", "cublas", {}),
                                                    ("bf16", "cublas", dict(recompute=2, gelu_fusion=2))])
def test_model_matches_cpu(tiny_params, precision, matmul, flags):
    data = batches(7)
    cpu = gpt2(tiny_params, **flags)
    expected = train(cpu, data)
    model = gpt2(tiny_params, device="cuda", precision=precision, matmul=matmul, **flags)
    got = train(model, data)
    rtol = 1e-4 if precision == "fp32" and matmul != "fp16fc" else 5e-3
    for (loss, norm2), (ref_loss, ref_norm2) in zip(got, expected):
        assert loss == pytest.approx(ref_loss, rel=rtol)
        assert norm2 == pytest.approx(ref_norm2, rel=20 * rtol)
    if precision == "fp32" and matmul == "cublas":
        assert_params_close(model.host(model.params), cpu.params, atol=1e-5, within=0.99, worst=1e-3)


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_deterministic_and_reload_exact(tiny_params, tmp_path, precision):
    """Two runs give identical bits; a reload from model + state files continues with identical losses."""
    from llmc_py.gpt2 import GPT2
    from test_cuda_backend_cpu import FakeLoader
    data = batches(10, seed=5)
    runs = []
    for _ in range(2):
        model = gpt2(tiny_params, device="cuda", precision=precision)
        runs.append(train(model, data[:4], steps=2))
    assert runs[0] == runs[1]
    model.write_model(str(tmp_path / "m.bin"))
    model.write_state(str(tmp_path / "s.bin"), 2, FakeLoader())
    after = train(model, data[4:8], steps=2)
    reloaded = GPT2.from_checkpoint(str(tmp_path / "m.bin"), device="cuda", precision=precision)
    reloaded.allocate(B, T)
    reloaded.load_state(str(tmp_path / "s.bin"), FakeLoader())
    assert train(reloaded, data[4:8], steps=2) == after


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_no_device_allocation_inside_a_step(tiny_params, precision):
    """A CuPy memory hook sees every malloc from the pool, cached or not: after the first step (kernels compiled,
    cuBLASLt plans made), a step, a validation and a sampling-sized forward allocate nothing; a leak check
    would miss an allocation freed again within the step."""
    model = gpt2(tiny_params, device="cuda", precision=precision)
    data = batches(7)
    train(model, data[:2], steps=1)

    def step():
        train(model, data[2:4], steps=1)
        model.validate(*data[4])
        model.forward(data[5][0][:1, :5])
        cp.cuda.get_current_stream().synchronize()

    assert allocations_during(step) == []
    assert allocations_during(lambda: cp.empty(10, dtype=cp.float32)) == [40]  # the hook does see allocations


@pytest.mark.parametrize("precision,accum", [("bf16", 3), ("fp32", 1)])
def test_cuda_graph_replay_matches_eager(tiny_params, precision, accum):
    """The training step replayed as CUDA graphs (llmc_py.step) gives the eager step's bits: losses, norms and
    every byte of params, m, v and master (tests/test_cuda_graph.py checks the same on the fake GPU)."""
    from test_cuda_graph import run_steps
    data = batches(4 * accum + 1, seed=9)
    runs = []
    for cuda_graph in (False, True):
        model = gpt2(tiny_params, device="cuda", precision=precision)
        train_step, losses = run_steps(model, data, accum, cuda_graph)
        assert len(train_step.graphs) == (min(accum, 3) + 1 if cuda_graph else 0)
        runs.append((losses, [cp.asnumpy(a) for a in (model.params, model.m, model.v, model.master)]))
    assert runs[1][0] == runs[0][0]
    for got, expected in zip(runs[1][1], runs[0][1]):
        assert np.array_equal(got, expected)
