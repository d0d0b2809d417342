"""Causal self-attention through cuDNN's fused flash attention (SDPA), from pip alone: the nvidia-cudnn-frontend
Python package over libcudnn (nvidia-cudnn-cu12 / -cu13). llm.c reaches the same kernels through the C++ frontend
headers and a build step; here nothing is compiled, and no (B,NH,T,T) matrix exists.

Design decision: no permutes and no copies. q, k and v are read by strides straight out of the packed (B,T,3C) QKV
matmul output: each is declared (B,NH,T,HS) with strides (T*3C, HS, 3C, 1) and bound at element offsets 0, C and
2C; O is declared (B,NH,T,HS) with strides (T*C, HS, C, 1), which is the (B,T,C) layout the next matmul reads; dQ,
dK, dV take q's strides, so the backward writes dqkv (B,T,3C) directly. The forward saves each row's softmax
statistic (log-sum-exp of the scaled scores, f32, (B,NH,T)) and the backward rebuilds the probabilities from it.
Causal mask as a diagonal band (top-left aligned, right bound 0), scale 1/sqrt(HS), bf16 in and out with f32
intermediates, and the backward's deterministic algorithm (without it dQ is accumulated with atomics and reruns
differ in the last bits, which llm.c's reload check would catch).

Graphs are built once per (kind, B, T, NH, HS, precision) and kept for the life of the process with the one cuDNN
handle they run on; before each call the handle is pointed at the current CuPy stream. execute() gets plain
integer device addresses, the workspace included (an array would be read through DLPack, which syncs), so a call
neither allocates nor synchronizes and can be captured in a CUDA graph. The workspace belongs to the caller:
workspace_bytes() builds the training graphs and reports the largest need, the model plans that much in its
activation arena, and every call checks that the buffer it is handed is big enough. The frontend and libcudnn
are loaded on first use, never at import time.
"""
import math

import numpy as np

from llmc_py import LlmcError
from llmc_py.cuda import dotted_version, error_line, per_device, precision_of

FRONTEND_PACKAGE = "nvidia-cudnn-frontend==1.28.0"  # the version requirements.txt pins
LIBRARY_PACKAGE = "nvidia-cudnn-cu12 (nvidia-cudnn-cu13 with CUDA 13)"
MIN_COMPUTE_CAPABILITY = 80  # cuDNN's fused attention needs sm_80 or newer
KINDS = ("forward", "backward")

# ----------------------------------------------------------------------------
# loading


def _preload_cuda_libraries():
    """The frontend finds libcudnn in site-packages itself, but opens libcudart by its soname through the system
    search path, which does not see the pip wheels; cuda-pathfinder (a CuPy 14 dependency) loads both from
    wherever they are installed, and a later dlopen by soname then finds them already loaded."""
    try:
        from cuda.pathfinder import load_nvidia_dynamic_lib
    except ImportError:
        return
    for name in ("cudart", "cudnn"):
        try:
            load_nvidia_dynamic_lib(name)
        except Exception:  # not found this way: the frontend's own search still runs
            pass


def load():
    """The cudnn module with libcudnn loaded; otherwise one LlmcError line naming the package to install."""
    _preload_cuda_libraries()
    try:
        import cudnn
    except Exception as e:
        raise LlmcError(f"cuDNN attention needs the cudnn module ({error_line(e)}): pip install "
                        f"{FRONTEND_PACKAGE}") from None
    try:
        cudnn.backend_version()
    except Exception as e:
        raise LlmcError(f"cuDNN attention: libcudnn cannot be loaded ({error_line(e)}): pip install "
                        f"{LIBRARY_PACKAGE}") from None
    return cudnn


def versions(cudnn):
    """'cuDNN 9.28.0, frontend 1.28.0' (the library's version number is 10000*major + 100*minor + patch)."""
    return f"cuDNN {dotted_version(int(cudnn.backend_version()))}, frontend {cudnn.__version__}"

# ----------------------------------------------------------------------------
# graphs


class _Graph:
    """A built graph, its operand tensors in the order the callers bind addresses, and its workspace need."""
    __slots__ = ("graph", "tensors", "pack", "workspace_bytes", "what")

    def __init__(self, graph, tensors, workspace_bytes, what):
        self.graph, self.tensors, self.workspace_bytes, self.what = graph, tuple(tensors), workspace_bytes, what
        self.pack = dict.fromkeys(self.tensors, 0)  # the variant pack, refilled with addresses on every call


class Cudnn:
    """The cuDNN handle of the current GPU and every graph built on it."""

    def __init__(self):
        import cupy

        self.cupy = cupy
        self.cudnn = load()
        try:
            self.handle = self.cudnn.create_handle()
        except Exception as e:
            raise LlmcError(f"cuDNN attention: no cuDNN handle ({error_line(e)})") from None
        self.graphs = {}

    def graph(self, kind, B, T, NH, HS, precision):
        """The built `kind` graph ('forward' or 'backward') for this shape, made on first use and kept."""
        key = (kind, B, T, NH, HS, precision)
        g = self.graphs.get(key)
        if g is None:
            if precision != "bf16":
                raise LlmcError(f"cuDNN attention is bf16 only, got {precision}")
            what = f"cuDNN attention {kind} (B={B}, T={T}, NH={NH}, HS={HS})"
            try:
                g = self._build(kind, B, T, NH, HS, what)
            except Exception as e:  # the frontend's own: cudnnGraphNotSupportedError, RuntimeError, TypeError
                raise LlmcError(f"{what}: {error_line(e)}") from None
            self.graphs[key] = g
        return g

    def _build(self, kind, B, T, NH, HS, what):
        cudnn = self.cudnn
        bf16, f32 = cudnn.data_type.BFLOAT16, cudnn.data_type.FLOAT
        C = NH * HS
        g = cudnn.pygraph(io_data_type=bf16, intermediate_data_type=f32, compute_data_type=f32, handle=self.handle)
        bhtd = [B, NH, T, HS]
        qkv_stride, out_stride = [T * 3 * C, HS, 3 * C, 1], [T * C, HS, C, 1]
        stats_dim, stats_stride = [B, NH, T, 1], [NH * T, T, 1, 1]
        q, k, v = (g.tensor(name=n, dim=bhtd, stride=qkv_stride, data_type=bf16) for n in ("Q", "K", "V"))
        causal = dict(attn_scale=1.0 / math.sqrt(HS), diagonal_alignment=cudnn.diagonal_alignment.TOP_LEFT,
                      diagonal_band_right_bound=0)
        if kind == "forward":
            o, stats = g.sdpa(name="sdpa", q=q, k=k, v=v, generate_stats=True, **causal)
            o.set_output(True).set_dim(bhtd).set_stride(out_stride).set_data_type(bf16)
            stats.set_output(True).set_dim(stats_dim).set_stride(stats_stride).set_data_type(f32)
            tensors = (q, k, v, o, stats)
        else:
            o, d_o = (g.tensor(name=n, dim=bhtd, stride=out_stride, data_type=bf16) for n in ("O", "dO"))
            stats = g.tensor(name="Stats", dim=stats_dim, stride=stats_stride, data_type=f32)
            dq, dk, dv = g.sdpa_backward(name="sdpa_backward", q=q, k=k, v=v, o=o, dO=d_o, stats=stats,
                                         use_deterministic_algorithm=True, **causal)
            for t in (dq, dk, dv):
                t.set_output(True).set_dim(bhtd).set_stride(qkv_stride).set_data_type(bf16)
            tensors = (q, k, v, o, d_o, stats, dq, dk, dv)
        g.validate()
        g.build_operation_graph()
        g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
        g.check_support()
        g.build_plans()
        return _Graph(g, tensors, int(g.get_workspace_size()), what)

    def execute(self, g, addresses, workspace):
        """Runs graph g on the current stream with its operands at `addresses` (ints, in g.tensors' order)."""
        if workspace.nbytes < g.workspace_bytes:
            raise LlmcError(f"{g.what} needs {g.workspace_bytes} bytes of workspace, {workspace.nbytes} were planned "
                            f"at start-up for the allocated (B, T)")
        for t, address in zip(g.tensors, addresses):
            g.pack[t] = address
        try:
            self.cudnn.set_stream(self.handle, self.cupy.cuda.get_current_stream().ptr)
            g.graph.execute(g.pack, workspace.data.ptr, handle=self.handle)
        except Exception as e:
            raise LlmcError(f"{g.what}: {error_line(e)}") from None


_contexts = {}


def context():
    """The Cudnn of the current GPU, made on first use."""
    return per_device(_contexts, Cudnn)


def workspace_bytes(B, T, NH, HS, precision):
    """Builds the training graphs for (B, T) (kept for the run) and returns the workspace the larger one needs."""
    ctx = context()
    return max(ctx.graph(kind, B, T, NH, HS, precision).workspace_bytes for kind in KINDS)

# ----------------------------------------------------------------------------
# the two calls


def _check(name, array, shape, dtype):
    if array.shape != shape or array.dtype != dtype or not array.flags.c_contiguous:
        raise ValueError(f"cuDNN attention: {name} must be a C-contiguous {np.dtype(dtype)} array of shape {shape}, "
                         f"got {array.dtype} {array.shape}")


def _dims(qkv, NH):
    B, T, C3 = qkv.shape
    C = C3 // 3
    if C3 % 3 or C % NH:
        raise ValueError(f"cuDNN attention: qkv {qkv.shape} does not split into 3 x {NH} heads")
    return B, T, C, C // NH


def attention_forward(out, stats, qkv, NH, workspace):
    """qkv (B,T,3C) rows [q|k|v] -> out (B,T,C) = causal softmax(q k^T / sqrt(HS)) v, heads concatenated, and
    stats (B,NH,T) f32, the log-sum-exp of each row of scaled scores. qkv is only read: the backward reads it again."""
    B, T, C, HS = _dims(qkv, NH)
    p = precision_of(out)
    _check("qkv", qkv, (B, T, 3 * C), out.dtype)
    _check("out", out, (B, T, C), out.dtype)
    _check("stats", stats, (B, NH, T), np.float32)
    ctx = context()
    q = qkv.data.ptr
    step = C * qkv.dtype.itemsize
    ctx.execute(ctx.graph("forward", B, T, NH, HS, p), (q, q + step, q + 2 * step, out.data.ptr, stats.data.ptr),
                workspace)


def attention_backward(dqkv, dout, qkv, out, stats, NH, workspace):
    """dout (B,T,C) -> dqkv (B,T,3C) rows [dq|dk|dv] (assigned), from the forward's qkv, out and stats."""
    B, T, C, HS = _dims(qkv, NH)
    p = precision_of(dqkv)
    for name, array, shape in (("dqkv", dqkv, (B, T, 3 * C)), ("dout", dout, (B, T, C)), ("qkv", qkv, (B, T, 3 * C)),
                               ("out", out, (B, T, C))):
        _check(name, array, shape, dqkv.dtype)
    _check("stats", stats, (B, NH, T), np.float32)
    ctx = context()
    q, dq = qkv.data.ptr, dqkv.data.ptr
    step = C * qkv.dtype.itemsize
    ctx.execute(ctx.graph("backward", B, T, NH, HS, p),
                (q, q + step, q + 2 * step, out.data.ptr, dout.data.ptr, stats.data.ptr, dq, dq + step, dq + 2 * step),
                workspace)
