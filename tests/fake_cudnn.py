"""A fake cuDNN for CPU-only tests: the `cudnn` module that llmc_py/attention_cudnn.py imports, in which the real
nvidia-cudnn-frontend declares and validates every graph and only what needs a GPU is stood in for.

Real: the tensor declarations, the sdpa / sdpa_backward nodes (the frontend binds their keyword arguments to its
own signatures, so a misspelled option fails) and validate(), which, given the fake GPU's sm version and SM count
in place of a device, checks dims, strides, data types, head size and the causal arguments against what cuDNN
supports on that architecture; the enums, versions and set_stream. Stood in for: the handle (a real cudnn.Handle
with no backend handle behind it, on which the real set_stream only records the stream), build_operation_graph and
the steps after it (the backend needs libcuda), and execute.
Checked besides: the build steps in their order, each stood-in call's arguments against the real method's
signature, and on execute: the handle is the graph's and runs on the current CuPy stream; every operand of the
graph, and nothing else, is bound to a plain int address (an array would be read through DLPack, which syncs and
cannot be captured), 16-byte aligned; the memory each tensor covers by its declared dims, strides and data type
lies inside one device allocation; no output shares memory with another operand or the workspace; the workspace
holds what get_workspace_size() said.
With emulation on, execute computes: the forward with llmc_py.attention's NumPy op and the statistics as each
row's log-sum-exp of scaled scores; the backward with the NumPy backward on the probabilities rebuilt from the
given statistics, as flash attention's backward rebuilds them; outputs rounded to bf16 as stored.
"""
import inspect
import math
import sys
import types

import numpy as np

from fake_gpu import store, to_f32

try:
    import cudnn as REAL
    REAL.backend_version()
except Exception:  # no frontend or no libcudnn here: llmc_py finds no cuDNN, as on such a machine
    REAL = None

STAGES = ("declared", "validated", "operation graph", "plans", "supported", "built")


def _bind(fn, *args, **kwargs):
    """The call's arguments bound to the real function's signature: what the real call would refuse fails here."""
    try:
        return inspect.signature(fn).bind(*args, **kwargs).arguments
    except TypeError as e:
        raise AssertionError(f"{fn.__qualname__}: {e}") from None


def _storage(data_type):
    dtypes = {REAL.data_type.BFLOAT16: np.dtype(np.uint16), REAL.data_type.FLOAT: np.dtype(np.float32)}
    assert data_type in dtypes, f"data type {data_type} is not one llmc_py binds"
    return dtypes[data_type]


def device_view(registry, address, tensor):
    """The device memory a tensor covers at `address`, by its declared dims, strides and data type, as a strided
    view (the registry asserts that it lies inside one allocation)."""
    dtype = _storage(tensor.data_type)
    dims, strides = tuple(tensor.dim), tuple(tensor.stride)
    assert dims and all(d >= 1 for d in dims) and all(s >= 0 for s in strides), f"{tensor.name}: {dims} {strides}"
    assert address % 16 == 0, f"{tensor.name} at {address:#x}: not 16-byte aligned"
    extent = (sum((d - 1) * s for d, s in zip(dims, strides)) + 1) * dtype.itemsize
    buf, offset = registry.find(address, extent)
    return np.ndarray(dims, dtype=dtype, buffer=buf, offset=offset, strides=[s * dtype.itemsize for s in strides])


class Graph:
    """A cudnn.pygraph whose declarations and validation are the real frontend's."""

    def __init__(self, gpu, *args, **kwargs):
        _bind(REAL.pygraph.__init__, None, *args, **kwargs)
        self.handle = kwargs.pop("handle", None)
        assert any(self.handle is h for h in gpu.cudnn_handles), "pygraph: handle= is not one create_handle made"
        props = sys.modules["cupy"].cuda.runtime.getDeviceProperties(0)
        self.real = REAL.pygraph(*args, **kwargs, sm_version=10 * props["major"] + props["minor"],
                                 sm_count=props["multiProcessorCount"])
        self.gpu, self.stage, self.nodes, self.workspace_bytes = gpu, "declared", [], 0
        gpu.cudnn_graphs.append(self)

    def _step(self, what, stage):
        """Moves to `stage`, which must follow the current one."""
        expected = STAGES[STAGES.index(stage) - 1]
        assert self.stage == expected, f"{what} called at stage '{self.stage}', expected after '{expected}'"
        self.stage = stage

    def tensor(self, *args, **kwargs):
        assert self.stage == "declared", "tensor declared after validate()"
        return self.real.tensor(*args, **kwargs)

    def _node(self, op, args, kwargs):
        assert self.stage == "declared" and not args, f"{op}: operands by name, before validate()"
        outputs = tuple(getattr(self.real, op)(**kwargs))
        self.nodes.append((op, kwargs, outputs))
        return outputs

    def sdpa(self, *args, **kwargs):
        return self._node("sdpa", args, kwargs)

    def sdpa_backward(self, *args, **kwargs):
        return self._node("sdpa_backward", args, kwargs)

    def validate(self):
        assert len(self.nodes) == 1, "llmc_py builds one SDPA node per graph"
        self.real.validate()
        self._step("validate", "validated")

    def build_operation_graph(self, *args, **kwargs):
        _bind(REAL.pygraph.build_operation_graph, self.real, *args, **kwargs)
        self._step("build_operation_graph", "operation graph")

    def create_execution_plans(self, *args, **kwargs):
        modes = _bind(REAL.pygraph.create_execution_plans, self.real, *args, **kwargs).get("heuristics")
        assert modes and all(isinstance(m, REAL.heur_mode) for m in modes), f"heuristics {modes!r}"
        self._step("create_execution_plans", "plans")

    def check_support(self, *args, **kwargs):
        _bind(REAL.pygraph.check_support, self.real, *args, **kwargs)
        self._step("check_support", "supported")

    def build_plans(self, *args, **kwargs):
        _bind(REAL.pygraph.build_plans, self.real, *args, **kwargs)
        self._step("build_plans", "built")
        # stand-in figures shaped like the backend's (the backward keeps an f32 dQ accumulator and a row sum; the
        # forward a row's running max and sum): the real sizes are the GPU's to tell
        op, kwargs, _ = self.nodes[0]
        B, NH, T, HS = kwargs["q"].dim
        self.workspace_bytes = B * NH * T * (HS + 1) * 4 if op == "sdpa_backward" else B * NH * T * 8

    def get_workspace_size(self, *args, **kwargs):
        _bind(REAL.pygraph.get_workspace_size, self.real, *args, **kwargs)
        assert self.stage == "built", "get_workspace_size before build_plans"
        return self.workspace_bytes

    def execute(self, *args, **kwargs):
        a = _bind(REAL.pygraph.execute, self.real, *args, **kwargs)
        assert self.stage == "built", "execute before build_plans"
        pack, workspace, handle = a["tensor_dict"], a.get("workspace"), a.get("handle")
        assert handle is self.handle, "execute: not the handle the graph was built with"
        assert handle.stream == self.gpu.stream_ptr, \
            f"execute: the cuDNN handle runs on stream {handle.stream}, the current stream is {self.gpu.stream_ptr}"
        operands = {t.uid: t for t in self.real.tensors.values() if not t.is_virtual and not t.is_pass_by_value}
        views = {}
        for key, address in pack.items():
            assert isinstance(key, REAL.Tensor) and operands.get(key.uid) is key, \
                f"execute: {key!r} is not an operand of this graph"
            assert type(address) is int, \
                f"execute: {key.name} bound to a {type(address).__name__}, expected a plain int device address"
            views[key.uid] = device_view(self.gpu.registry, address, key)
        missing = sorted(operands[uid].name for uid in set(operands) - set(views))
        assert not missing, f"execute: no address for {missing}"
        assert type(workspace) is int, f"execute: workspace {type(workspace).__name__}, expected an int address"
        others = list(views.items())
        if self.workspace_bytes:
            try:
                buf, offset = self.gpu.registry.find(workspace, self.workspace_bytes)
            except AssertionError as e:
                raise AssertionError(f"execute: the workspace of {self.workspace_bytes} bytes: {e}") from None
            others.append(("workspace", buf[offset:offset + self.workspace_bytes]))
        op, kwargs, outputs = self.nodes[0]
        for out in outputs:
            for uid, other in others:
                assert uid == out.uid or not np.shares_memory(views[out.uid], other), \
                    f"execute: {out.name} overlaps {operands[uid].name if uid in operands else uid}"

        def run():  # device work: recorded, not run, inside a CUDA graph capture
            self.gpu.cudnn_executes.append((op, tuple(kwargs["q"].dim)))
            if self.gpu.emulate:
                (_emulate_forward if op == "sdpa" else _emulate_backward)(kwargs, outputs, views)
        self.gpu.enqueue(f"cudnn {op}", run)

    def __getattr__(self, name):
        raise AttributeError(f"the fake cuDNN graph has no {name}: llmc_py calls something new, add it here")

# ----------------------------------------------------------------------------
# emulation


def _causal_scale(kwargs, HS):
    """The attention scale, after checking that the node asks for what the emulation computes."""
    assert kwargs["diagonal_alignment"] == REAL.diagonal_alignment.TOP_LEFT and \
        kwargs["diagonal_band_right_bound"] == 0, "not the causal mask (top-left diagonal, right bound 0)"
    scale = kwargs["attn_scale"]
    assert math.isclose(scale, 1.0 / math.sqrt(HS), rel_tol=1e-7), f"attn_scale {scale}, expected 1/sqrt({HS})"
    return scale


def _scores(q, k, scale):
    """Scaled q k^T in float64 with -inf above the diagonal."""
    s = scale * (q.astype(np.float64) @ k.astype(np.float64).swapaxes(-1, -2))
    T = s.shape[-1]
    s[..., np.triu(np.ones((T, T), dtype=bool), k=1)] = -np.inf
    return s


def _emulate_forward(kwargs, outputs, views):
    from llmc_py.attention import attention_forward
    assert kwargs.get("generate_stats") is True, "the training forward must generate the statistics"
    q, k, v = (to_f32(views[kwargs[n].uid]) for n in "qkv")
    B, NH, T, HS = q.shape
    scale = _causal_scale(kwargs, HS)
    inp = np.concatenate([x.transpose(0, 2, 1, 3).reshape(B, T, NH * HS) for x in (q, k, v)], axis=-1)
    out = np.empty((B, T, NH * HS), np.float32)
    attention_forward(out, np.empty((3, B, NH, T, HS), np.float32), np.empty((B, NH, T, T), np.float32), inp, NH)
    o, stats = outputs
    store(views[o.uid], out.reshape(B, T, NH, HS).transpose(0, 2, 1, 3))
    s = _scores(q, k, scale)
    m = s.max(axis=-1, keepdims=True)
    store(views[stats.uid], m + np.log(np.exp(s - m).sum(axis=-1, keepdims=True)))


def _emulate_backward(kwargs, outputs, views):
    from llmc_py.attention import attention_backward
    assert kwargs.get("use_deterministic_algorithm") is True, "the backward must use the deterministic algorithm"
    q, k, v, d_o = (to_f32(views[kwargs[n].uid]) for n in ("q", "k", "v", "dO"))
    stats = to_f32(views[kwargs["stats"].uid])
    B, NH, T, HS = q.shape
    att = np.exp(_scores(q, k, _causal_scale(kwargs, HS)) - stats).astype(np.float32)
    dinp = np.empty((B, T, 3 * NH * HS), np.float32)
    dqkvr = np.empty((3, B, NH, T, HS), np.float32)
    attention_backward(dinp, dqkvr, np.empty((B, NH, T, T), np.float32), np.empty(B * T * NH * HS, np.float32),
                       d_o.transpose(0, 2, 1, 3).reshape(B, T, NH * HS), np.stack([q, k, v]), att, NH)
    for t, d in zip(outputs, dqkvr):
        store(views[t.uid], d)

# ----------------------------------------------------------------------------
# the module


def modules(gpu):
    """{'cudnn': the fake module} for fake_gpu.install (and the gpu's records of handles, graphs and executes), or
    {} where the real frontend is missing: llmc_py then finds no cuDNN, as on such a machine."""
    if REAL is None:
        return {}
    gpu.cudnn_handles, gpu.cudnn_graphs, gpu.cudnn_executes = [], [], []
    mod = types.ModuleType("cudnn")
    mod.__getattr__ = lambda name: getattr(REAL, name)  # enums, Tensor, Handle, set_stream, versions: the real ones

    def create_handle(*args, **kwargs):
        _bind(REAL.create_handle, *args, **kwargs)
        handle = REAL.Handle(None, 0, 0)
        gpu.cudnn_handles.append(handle)
        return handle

    mod.create_handle = gpu.library("cudnn.create_handle", create_handle)
    mod.pygraph = gpu.library("cudnn.pygraph", lambda *args, **kwargs: Graph(gpu, *args, **kwargs))
    return {"cudnn": mod}
