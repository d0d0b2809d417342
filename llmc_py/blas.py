"""GEMMs on the GPU: cuBLASLt for bf16 (bias and GELU epilogues), cuBLAS for fp32 (SGEMM, TF32 with -f 1), and the
strided-batched GEMMs of attention, through nvmath-python's low-level bindings (llm.c's cublas_common.h).

The decision: callers speak row-major, cuBLAS speaks column-major, and the translation lives in one function,
`_colmajor`. A row-major (r, c) matrix is the column-major (c, r) matrix with ld = c, so the row-major product
out (M, N) = op(a) (M, K) @ op(b) (K, N) is the column-major out^T = op(b)^T op(a)^T: cuBLAS's A is our b and its
B our a, m = N, n = M, k = K, and a transpose flag carries over unchanged (transa is trans_b). Every linear layer
and every attention product is one `matmul` / `batched_matmul` call in row-major words above that.
Below it is the thin layer that touches nvmath: our own cuBLAS and cuBLASLt handles, one 32 MiB workspace, the
current CuPy stream (so a step can later be captured as a CUDA graph), f32 compute everywhere. cuBLAS forgets a
user workspace whenever its stream changes (cublasSetStream falls back to its own pool, which allocates), so the
workspace is set again with every stream change. cuBLASLt descriptors, layouts and the heuristic's algorithm are
made once per shape and epilogue and kept, and only the bias / aux pointers are set per call; the algorithm is
asked for with the alignment every operand is guaranteed (16 bytes: the arena's 256-byte views are sliced per
layer and batch, so a view may be only 16-byte aligned), not cuBLASLt's default of 256, which could pick an
algorithm that the next, less aligned view of the same shape cannot run. Tests stand a recording fake in for the
two nvmath modules. nvmath is imported on first use, never at import time; constants of the CUDA C ABI
(cudaDataType) are spelled out here so nothing else of nvmath is needed, and attribute value types are nvmath's.
"""
import importlib
import importlib.util
import os
import sys
import types

import numpy as np

from llmc_py import LlmcError
from llmc_py.cuda import per_device

WORKSPACE_BYTES = 32 << 20
# cudaDataType_t (library_types.h)
CUDA_R_32F, CUDA_R_16F, CUDA_R_16BF = 0, 2, 14
DATA_TYPES = {np.dtype(np.float32): CUDA_R_32F, np.dtype(np.uint16): CUDA_R_16BF}  # device floatX storage
OPERAND_ALIGN = 16  # bytes every cuBLASLt pointer (A, B, C, D, bias, aux) is guaranteed and checked to have

# ----------------------------------------------------------------------------
# nvmath bindings


def _import_bindings():
    """(cublas, cublasLt) binding modules. nvmath's package __init__ also imports its high-level APIs (and through
    them cuda-core and cuda-bindings); where those are missing, or fail to load (a version made for another CUDA),
    the binding modules themselves still load, so fall back to them."""
    try:
        from nvmath.bindings import cublas, cublasLt
        return cublas, cublasLt
    except Exception as e:  # ImportError, or whatever a mismatched cuda-core / cuda-bindings raises on import
        first = e
    names = ("nvmath.bindings.cublas", "nvmath.bindings.cublasLt")
    if not all(name in sys.modules for name in names):
        try:
            spec = importlib.util.find_spec("nvmath")
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            raise LlmcError(f"--device cuda needs nvmath-python for cuBLAS/cuBLASLt (pip install nvmath-python, "
                            f"see requirements.txt): {first}") from None
        for name, folders in (("nvmath", list(spec.submodule_search_locations)),
                              ("nvmath.bindings", [os.path.join(f, "bindings")
                                                   for f in spec.submodule_search_locations])):
            if name not in sys.modules:  # bare packages: their __init__ (the part that failed) is skipped
                package = types.ModuleType(name)
                package.__path__ = folders
                sys.modules[name] = package
        try:
            for name in names:
                importlib.import_module(name)
        except ImportError as e:
            raise LlmcError(f"nvmath-python's cuBLAS bindings cannot be loaded: {first}; then {e}") from None
    return sys.modules[names[0]], sys.modules[names[1]]

# ----------------------------------------------------------------------------
# row-major -> column-major


def _colmajor(out_shape, a_shape, b_shape, trans_a, trans_b):
    """cuBLAS arguments (transa, transb, m, n, k, lda, ldb, ldc) for the row-major out = op(a) @ op(b), with cuBLAS's
    A = b and B = a (see the module docstring). Shapes are 2-D (rows, cols) of contiguous row-major matrices."""
    M, N = out_shape
    a_rows, a_cols = a_shape
    b_rows, b_cols = b_shape
    K = a_rows if trans_a else a_cols
    if (a_cols if trans_a else a_rows) != M or (b_cols if trans_b else b_rows) != K \
            or (b_rows if trans_b else b_cols) != N:
        raise ValueError(f"matmul shapes: out {out_shape} = op(a {a_shape}, T={trans_a}) @ op(b {b_shape}, "
                         f"T={trans_b}) do not fit")
    return bool(trans_b), bool(trans_a), N, M, K, b_cols, a_cols, N


def _check_contiguous(*arrays):
    for a in arrays:
        if a is not None and not a.flags.c_contiguous:
            raise ValueError(f"cuBLAS operand of shape {a.shape} is not C-contiguous")

# ----------------------------------------------------------------------------
# the context: handles, workspace, cached cuBLASLt plans


class _Plan:
    __slots__ = ("desc", "a_layout", "b_layout", "c_layout", "preference", "heuristic", "algo")


class Blas:
    """Our cuBLAS and cuBLASLt handles with one workspace; made on first use for the current GPU."""

    def __init__(self):
        import cupy

        self.cupy = cupy
        self.cublas, self.lt = _import_bindings()
        # cuBLAS and cuBLASLt share the workspace: both run on the one stream, one call after the other
        self.workspace = cupy.empty(WORKSPACE_BYTES, dtype=cupy.uint8)
        self.handle = self.cublas.create()
        self.lt_handle = self.lt.create()
        self.stream = None
        self._stream_ptr()  # the current stream, and with it our workspace
        self.tf32 = None
        self.set_tf32(False)
        self.one = np.ones(1, dtype=np.float32)   # alpha, beta: host pointers (cuBLAS's default pointer mode)
        self.zero = np.zeros(1, dtype=np.float32)
        self.plans = {}
        op = self.cublas.Operation
        self.ops = (int(op.N), int(op.T))

    # ------------------------------------------------------------------
    # settings

    def set_tf32(self, enabled):
        """TF32 tensor-core math for the fp32 GEMMs (llm.c: FP32 build, SM >= 8 and -f 1)."""
        enabled = bool(enabled)
        if enabled != self.tf32:
            mode = self.cublas.Math.TF32_TENSOR_OP_MATH if enabled else self.cublas.Math.DEFAULT_MATH
            self.cublas.set_math_mode(self.handle, int(mode))
            self.tf32 = enabled

    def _stream_ptr(self):
        """The current stream, made the cuBLAS handle's if it changed, with our workspace set again (cuBLAS drops
        a user workspace on every set_stream)."""
        ptr = self.cupy.cuda.get_current_stream().ptr
        if ptr != self.stream:
            self.cublas.set_stream(self.handle, ptr)
            self.cublas.set_workspace(self.handle, self.workspace.data.ptr, WORKSPACE_BYTES)
            self.stream = ptr
        return ptr

    def _compute_type(self, data_type):
        ct = self.cublas.ComputeType
        return int(ct.COMPUTE_32F_FAST_TF32 if data_type == CUDA_R_32F and self.tf32 else ct.COMPUTE_32F)

    # ------------------------------------------------------------------
    # cuBLASLt

    def _set_desc(self, desc, name, value):
        attr = self.lt.MatmulDescAttribute[name]
        buf = np.array([value], dtype=self.lt.get_matmul_desc_attribute_dtype(attr))
        self.lt.matmul_desc_set_attribute(desc, int(attr), buf.ctypes.data, buf.itemsize)

    def _set_preference(self, preference, name, value):
        attr = self.lt.MatmulPreferenceAttribute[name]
        buf = np.array([value], dtype=self.lt.get_matmul_preference_attribute_dtype(attr))
        self.lt.matmul_preference_set_attribute(preference, int(attr), buf.ctypes.data, buf.itemsize)

    def _lt_plan(self, data_type, transa, transb, m, n, k, lda, ldb, ldc, epilogue, bias_ptr, aux_ptr):
        key = (data_type, transa, transb, m, n, k, lda, ldb, ldc, epilogue, bias_ptr != 0, aux_ptr != 0)
        plan = self.plans.get(key)
        if plan is None:
            try:
                plan = self._make_lt_plan(data_type, transa, transb, m, n, k, lda, ldb, ldc, epilogue, bias_ptr,
                                          aux_ptr)
            except LlmcError:
                raise
            except Exception as e:
                raise LlmcError(f"cuBLASLt set-up for m={m} n={n} k={k} epilogue {epilogue}: {e}") from None
            self.plans[key] = plan
        return plan

    def _make_lt_plan(self, data_type, transa, transb, m, n, k, lda, ldb, ldc, epilogue, bias_ptr, aux_ptr):
        """Descriptor, layouts and the heuristic's first algorithm for one shape and epilogue."""
        lt = self.lt
        plan = _Plan()
        plan.desc = lt.matmul_desc_create(int(self.cublas.ComputeType.COMPUTE_32F), CUDA_R_32F)
        self._set_desc(plan.desc, "TRANSA", self.ops[transa])
        self._set_desc(plan.desc, "TRANSB", self.ops[transb])
        self._set_desc(plan.desc, "EPILOGUE", int(lt.Epilogue[epilogue]))
        if bias_ptr:
            self._set_desc(plan.desc, "BIAS_DATA_TYPE", data_type)
            self._set_desc(plan.desc, "BIAS_POINTER", bias_ptr)
        if aux_ptr:
            self._set_desc(plan.desc, "EPILOGUE_AUX_LD", m)  # aux is shaped like D: m rows, ld m
            self._set_desc(plan.desc, "EPILOGUE_AUX_POINTER", aux_ptr)
        # layouts describe the matrices as stored, before op(): A is m x k (k x m if transposed), B k x n (n x k)
        plan.a_layout = lt.matrix_layout_create(data_type, *((k, m) if transa else (m, k)), lda)
        plan.b_layout = lt.matrix_layout_create(data_type, *((n, k) if transb else (k, n)), ldb)
        plan.c_layout = lt.matrix_layout_create(data_type, m, n, ldc)
        plan.preference = lt.matmul_preference_create()
        self._set_preference(plan.preference, "MAX_WORKSPACE_BYTES", WORKSPACE_BYTES)
        for operand in "ABCD":  # the plan serves every view of this shape, not just the first one's alignment
            self._set_preference(plan.preference, f"MIN_ALIGNMENT_{operand}_BYTES", OPERAND_ALIGN)
        plan.heuristic = np.zeros(1, dtype=lt.matmul_heuristic_result_dtype)
        found = np.zeros(1, dtype=np.int32)
        lt.matmul_algo_get_heuristic(self.lt_handle, plan.desc, plan.a_layout, plan.b_layout, plan.c_layout,
                                     plan.c_layout, plan.preference, 1, plan.heuristic.ctypes.data,
                                     found.ctypes.data)
        if found[0] < 1:
            raise LlmcError(f"cuBLASLt: no algorithm for m={m} n={n} k={k} transa={transa} transb={transb} "
                            f"epilogue {epilogue} (data type {data_type})")
        if int(plan.heuristic["workspace_size"][0]) > WORKSPACE_BYTES:
            raise LlmcError(f"cuBLASLt: the chosen algorithm wants {int(plan.heuristic['workspace_size'][0])} "
                            f"bytes of workspace, more than {WORKSPACE_BYTES}")
        plan.algo = plan.heuristic.ctypes.data + plan.heuristic.dtype.fields["algo"][1]
        return plan

    def lt_matmul(self, data_type, transa, transb, m, n, k, a_ptr, lda, b_ptr, ldb, d_ptr, ldc, accumulate=False,
                  epilogue="DEFAULT", bias_ptr=0, aux_ptr=0):
        """D (m x n, column-major, ld ldc) = op(A) op(B) [+ D if accumulate] with a cuBLASLt epilogue
        (DEFAULT, BIAS, GELU_AUX_BIAS, DGELU); C is D."""
        if (a_ptr | b_ptr | d_ptr | bias_ptr | aux_ptr) % OPERAND_ALIGN:
            raise LlmcError(f"cuBLASLt matmul m={m} n={n} k={k}: an operand is not {OPERAND_ALIGN}-byte aligned "
                            f"(A {a_ptr:#x}, B {b_ptr:#x}, D {d_ptr:#x}, bias {bias_ptr:#x}, aux {aux_ptr:#x})")
        plan = self._lt_plan(data_type, transa, transb, m, n, k, lda, ldb, ldc, epilogue, bias_ptr, aux_ptr)
        if bias_ptr:
            self._set_desc(plan.desc, "BIAS_POINTER", bias_ptr)
        if aux_ptr:
            self._set_desc(plan.desc, "EPILOGUE_AUX_POINTER", aux_ptr)
        beta = self.one if accumulate else self.zero
        try:
            self.lt.matmul(self.lt_handle, plan.desc, self.one.ctypes.data, a_ptr, plan.a_layout, b_ptr,
                           plan.b_layout, beta.ctypes.data, d_ptr, plan.c_layout, d_ptr, plan.c_layout, plan.algo,
                           self.workspace.data.ptr, WORKSPACE_BYTES, self._stream_ptr())
        except Exception as e:
            raise LlmcError(f"cuBLASLt matmul m={m} n={n} k={k} epilogue {epilogue}: {e}") from None

    # ------------------------------------------------------------------
    # cuBLAS

    def sgemm(self, transa, transb, m, n, k, a_ptr, lda, b_ptr, ldb, c_ptr, ldc, accumulate=False):
        beta = self.one if accumulate else self.zero
        stream = self._stream_ptr()
        try:
            self.cublas.sgemm(self.handle, self.ops[transa], self.ops[transb], m, n, k, self.one.ctypes.data,
                              a_ptr, lda, b_ptr, ldb, beta.ctypes.data, c_ptr, ldc)
        except Exception as e:
            raise LlmcError(f"cuBLAS sgemm m={m} n={n} k={k} (stream {stream}): {e}") from None

    def gemm_ex(self, transa, transb, m, n, k, a_ptr, ab_type, lda, b_ptr, ldb, c_ptr, c_type, ldc,
                accumulate=False):
        beta = self.one if accumulate else self.zero
        self._stream_ptr()
        try:
            self.cublas.gemm_ex(self.handle, self.ops[transa], self.ops[transb], m, n, k, self.one.ctypes.data,
                                a_ptr, ab_type, lda, b_ptr, ab_type, ldb, beta.ctypes.data, c_ptr, c_type, ldc,
                                int(self.cublas.ComputeType.COMPUTE_32F), int(self.cublas.GemmAlgo.DEFAULT))
        except Exception as e:
            raise LlmcError(f"cuBLAS GemmEx m={m} n={n} k={k}: {e}") from None

    def gemm_strided_batched(self, data_type, transa, transb, m, n, k, a_ptr, lda, stride_a, b_ptr, ldb, stride_b,
                             c_ptr, ldc, stride_c, batch):
        self._stream_ptr()
        try:
            self.cublas.gemm_strided_batched_ex(
                self.handle, self.ops[transa], self.ops[transb], m, n, k, self.one.ctypes.data,
                a_ptr, data_type, lda, stride_a, b_ptr, data_type, ldb, stride_b, self.zero.ctypes.data,
                c_ptr, data_type, ldc, stride_c, batch, self._compute_type(data_type),
                int(self.cublas.GemmAlgo.DEFAULT))
        except Exception as e:
            raise LlmcError(f"cuBLAS GemmStridedBatchedEx m={m} n={n} k={k} batch={batch}: {e}") from None


_contexts = {}


def context():
    """The Blas of the current GPU, made on first use."""
    return per_device(_contexts, Blas)


def set_tf32(enabled):
    context().set_tf32(enabled)

# ----------------------------------------------------------------------------
# row-major API


def _data_type(array):
    try:
        return DATA_TYPES[np.dtype(array.dtype)]
    except KeyError:
        raise ValueError(f"no cuBLAS data type for {array.dtype}") from None


def matmul(out, a, b, trans_a=False, trans_b=False, accumulate=False, bias=None, gelu_aux=None, dgelu_aux=None):
    """out (M, N) [+]= op(a) @ op(b), 2-D row-major device arrays of one floatX dtype.

    bf16 (uint16) runs cuBLASLt, with the epilogues: bias (N,) added (BIAS); gelu_aux: out = gelu(x) and
    gelu_aux = x, x = op(a) @ op(b) + bias (GELU_AUX_BIAS); dgelu_aux: out = (op(a) @ op(b)) * gelu'(dgelu_aux)
    (DGELU). fp32 (float32) runs cuBLAS SGEMM (TF32 per set_tf32), which has no epilogues."""
    _check_contiguous(out, a, b, bias, gelu_aux, dgelu_aux)
    transa, transb, m, n, k, lda, ldb, ldc = _colmajor(out.shape, a.shape, b.shape, trans_a, trans_b)
    data_type = _data_type(out)
    if _data_type(a) != data_type or _data_type(b) != data_type:
        raise ValueError(f"matmul operands {a.dtype} and {b.dtype} do not match the output {out.dtype}")
    ctx = context()
    if data_type == CUDA_R_32F:
        if bias is not None or gelu_aux is not None or dgelu_aux is not None:
            raise ValueError("the fp32 cuBLAS path has no epilogues: add the bias and GELU with kernels")
        ctx.sgemm(transa, transb, m, n, k, b.data.ptr, lda, a.data.ptr, ldb, out.data.ptr, ldc, accumulate)
        return
    if gelu_aux is not None and dgelu_aux is not None:
        raise ValueError("matmul: gelu_aux and dgelu_aux exclude each other")
    for aux in (gelu_aux, dgelu_aux):
        if aux is not None and aux.shape != out.shape:
            raise ValueError(f"matmul: the GELU aux {aux.shape} must be shaped like out {out.shape}")
    if bias is not None and bias.shape != (out.shape[1],):
        raise ValueError(f"matmul: bias {bias.shape} must have out's {out.shape[1]} columns")
    if dgelu_aux is not None:
        if bias is not None or accumulate:
            raise ValueError("matmul: the DGELU epilogue takes no bias and does not accumulate here")
        epilogue, aux = "DGELU", dgelu_aux
    elif gelu_aux is not None:
        epilogue, aux = ("GELU_AUX_BIAS" if bias is not None else "GELU_AUX"), gelu_aux
    else:
        epilogue, aux = ("BIAS" if bias is not None else "DEFAULT"), None
    ctx.lt_matmul(data_type, transa, transb, m, n, k, b.data.ptr, lda, a.data.ptr, ldb, out.data.ptr, ldc,
                  accumulate=accumulate, epilogue=epilogue, bias_ptr=0 if bias is None else bias.data.ptr,
                  aux_ptr=0 if aux is None else aux.data.ptr)


def matmul_f16(out, a16, b16, trans_a=False, trans_b=False):
    """out (M, N) float32 = op(a16) @ op(b16) with fp16 operands (uint16 bit patterns) and f32 accumulation: cuBLAS
    GemmEx, --matmul fp16fc."""
    _check_contiguous(out, a16, b16)
    if out.dtype != np.float32 or a16.dtype != np.uint16 or b16.dtype != np.uint16:
        raise ValueError("matmul_f16: expected fp16 (uint16) operands and a float32 output")
    transa, transb, m, n, k, lda, ldb, ldc = _colmajor(out.shape, a16.shape, b16.shape, trans_a, trans_b)
    context().gemm_ex(transa, transb, m, n, k, b16.data.ptr, CUDA_R_16F, lda, a16.data.ptr, ldb, out.data.ptr,
                      CUDA_R_32F, ldc)


def batched_matmul(out, a, b, trans_a=False, trans_b=False):
    """out[i] = op(a[i]) @ op(b[i]) for every i of the leading batch axis: 3-D row-major contiguous device arrays of
    one floatX dtype; cuBLAS strided-batched GemmEx with f32 compute (TF32 in fp32 per set_tf32)."""
    _check_contiguous(out, a, b)
    if not (out.ndim == a.ndim == b.ndim == 3) or not (out.shape[0] == a.shape[0] == b.shape[0]):
        raise ValueError(f"batched_matmul: expected 3-D arrays with one batch size, got {out.shape}, {a.shape}, "
                         f"{b.shape}")
    data_type = _data_type(out)
    if _data_type(a) != data_type or _data_type(b) != data_type:
        raise ValueError(f"batched_matmul operands {a.dtype} and {b.dtype} do not match the output {out.dtype}")
    transa, transb, m, n, k, lda, ldb, ldc = _colmajor(out.shape[1:], a.shape[1:], b.shape[1:], trans_a, trans_b)
    batch = out.shape[0]
    stride = lambda x: x.shape[1] * x.shape[2]  # noqa: E731 (elements per matrix)
    context().gemm_strided_batched(data_type, transa, transb, m, n, k, b.data.ptr, lda, stride(b), a.data.ptr, ldb,
                                   stride(a), out.data.ptr, ldc, stride(out), batch)
