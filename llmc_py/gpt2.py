"""GPT-2: parameters, activations, forward, backward and the AdamW update, orchestrated over the layer ops.

The one decision that shapes this file: every buffer is planned up front, so a training step allocates
nothing. Parameters and gradients are each one flat array with a view per tensor in llm.c's file order;
the optimizer state (m, v, master) is flat over this rank's ZeRO-1 shard; activations are sized once for
the largest (B, T), live in one allocation (typed views at 256-byte aligned offsets), and every call takes
views of them for its own (B, T). Buffers are reused the way llm.c reuses them: `output` is the forward
scratch, then the logits, then dlogits and datt; in the backward residual3[L-1] becomes the (B,T,C) gradient
scratch, fch[l] holds dq/dk/dv and atty[l] the permuted dout. Recompute (-r 1: GELU, -r 2: GELU and
layernorms) trades those activations for work. With cuDNN attention (llm.c's USE_CUDNN layout) the QKV matmul writes
qkvr[l] as (B,T,3C), which the attention backward reads again, the (L,B,NH,T,T) `att` is not allocated, and the
arena holds the (L,B,NH,T) f32 softmax statistics and cuDNN's workspace instead.
One code path serves both devices: `xp` is numpy (--device cpu, float32) or cupy (--device cuda, floatX =
bf16 stored as uint16, or fp32), and each op picks its implementation from the array type. The GPU adds a
few buffers the NumPy ops do not need (an f32 scratch for the deterministic reductions, the grad-norm slots)
and allocates m, v and master at start-up instead of at the first update.
A step is split so that it can be captured once as a CUDA graph and replayed (llmc_py.step): `stage`,
`stage_update` are the host's part: they write everything that changes from step to step (token ids, targets,
the loss scale, the encoder backward's bucket tables and rounding seed, learning rate, bias corrections, AdamW's
seeds) into `staging`, copied to the device asynchronously; `launch_forward`, `launch_backward`,
`launch_grad_norm` and `launch_update` are the device's part: they only launch work that reads those buffers,
and allocate, synchronize and read back nothing. The grad norm and the clip scale stay on the device, and the
loss and the norm come back to the host together (`read_step`). forward, backward, grad_norm_squared, update
and validate are the same two parts run back to back, eagerly.
With several processes (`comm`, llmc_py.zero) the last micro step averages each layer's gradients right
after that layer's backward (all-reduce, or with ZeRO-1 reduce-scatter into the owned parts), and ZeRO-1
all-gathers the parameters after the update; with one process those calls do nothing.
"""
import math
from dataclasses import dataclass

import numpy as np

from llmc_py import LlmcError
from llmc_py import attention_cudnn, blas, cuda
from llmc_py.adamw import HYPER_SIZE, adamw_hyper, adamw_update, init_from_master
from llmc_py.attention import attention_backward, attention_forward, choose_attention
from llmc_py.cast import cast_floatx_to_f32
from llmc_py.checkpoint import (MODEL_VERSION_BF16, MODEL_VERSION_FP32, STATE_MAGIC, STATE_VERSION, TrainingState,
                                read_model, read_state, write_model, write_state)
from llmc_py.config import DECAYED, LAYERED, config_from_descriptor
from llmc_py.encoder import encoder_backward, encoder_forward, wte_bucket_rows, write_wte_buckets
from llmc_py.fileio import read_header
from llmc_py.fused_classifier import fused_classifier
from llmc_py.gelu import gelu_forward
from llmc_py.global_norm import global_norm_squared, global_sum, grad_clip_scale, norm_slots
from llmc_py.layernorm import backward_scratch_floats, fused_residual_forward, layernorm_backward, layernorm_forward
from llmc_py.matmul import bias_scratch_floats, fp16_scratch_elements, matmul_backward, matmul_forward
from llmc_py.rand import gpt2_random_init, random_u32
from llmc_py.zero import SingleProcess

# AdamW hyperparameters of llm.c's training loop (the learning rate and weight decay come from flags)
BETA1, BETA2, EPS = 0.9, 0.95, 1e-8
# gradients reduced across processes right after a layer's backward (the 12 layered tensors), and after
# the encoder backward (wte, wpe, lnfw, lnfb), as llm.c's gpt2_backward_and_reduce
LAYER_GRADS = LAYERED
REST_GRADS = (0, 1, 14, 15)
GRAD_CLIP = 1.0  # llm.c's global-norm clipping threshold
DEVICES = ("cpu", "cuda")
MATMUL_VARIANTS = ("cublas", "custom", "fp16fc")
ARENA_ALIGN = 256  # bytes: every activation view starts 256-byte aligned (cuBLAS and 128-bit loads want 16)


@dataclass(frozen=True)
class Shard:
    """This rank's part of the optimizer state: ZeRO-1 splits every tensor (and every layer slice of the
    layered ones) into `num_processes` equal parts; stage 0 owns everything."""
    zero_stage: int = 0
    process_rank: int = 0
    num_processes: int = 1

    @property
    def parts(self):
        return self.num_processes if self.zero_stage == 1 else 1

    @property
    def index(self):
        return self.process_rank if self.zero_stage == 1 else 0


def plan_arena(entries):
    """[(name, dtype, count)] -> ({name: (byte offset, dtype, count)}, total bytes), each buffer starting at a
    multiple of ARENA_ALIGN bytes."""
    layout, offset = {}, 0
    for name, dtype, count in entries:
        dtype = np.dtype(dtype)
        layout[name] = (offset, dtype, int(count))
        offset += -(-int(count) * dtype.itemsize // ARENA_ALIGN) * ARENA_ALIGN
    return layout, offset


class GPT2:
    def __init__(self, config, params, recompute=1, gelu_fusion=0, use_master_weights=True,
                 shard=Shard(), rng_seed=13371337, comm=None, device="cpu", precision="fp32", matmul="cublas",
                 tf32=False, attention="auto"):
        if device not in DEVICES:
            raise LlmcError(f"--device {device}: expected one of {', '.join(DEVICES)}")
        if device == "cpu" and precision != "fp32":
            raise LlmcError(f"--precision {precision}: --device cpu runs fp32 only")
        if matmul not in MATMUL_VARIANTS:
            raise LlmcError(f"--matmul {matmul}: expected one of {', '.join(MATMUL_VARIANTS)}")
        if matmul != "cublas" and (device != "cuda" or precision != "fp32"):
            raise LlmcError(f"--matmul {matmul}: the matmul variants exist for --device cuda --precision fp32 only")
        self.config = config
        self.comm = SingleProcess() if comm is None else comm
        self.recompute = recompute
        self.gelu_fusion = gelu_fusion
        self.use_master_weights = use_master_weights
        self.shard = shard
        self.device, self.precision, self.matmul = device, precision, matmul
        self.tf32 = bool(tf32) and device == "cuda" and precision == "fp32"  # TF32 math for the fp32 GEMMs
        self.gpu = device == "cuda"
        if self.gpu:
            import cupy
            self.xp = cupy
            self.device_info = cuda.device_info()
            self.floatx = cuda.floatx_dtype(precision)
            self.params = cupy.empty(config.num_parameters, dtype=self.floatx)
            self.params.set(cuda.host_floatx(params, precision))
        else:
            self.xp = np
            self.device_info = None
            self.floatx = np.dtype(np.float32)
            self.params = np.ascontiguousarray(params, dtype=np.float32)
        # 'cudnn' or 'llmc', and why; allocate() may still fall back to llmc when asked for auto
        self.attention_requested = attention
        self.attention, self.attention_reason = choose_attention(attention, device, precision, self.device_info)
        self.grads = self.xp.zeros(config.num_parameters, dtype=self.floatx)
        self.param_views = self._views(self.params)
        self.grad_views = self._views(self.grads)
        # the same views with the layered tensors split into per-layer views once: p[4][l] is then a list lookup,
        # not a new array view per call (on the GPU every view costs microseconds of Python, every step)
        self._p = [list(v) if i in LAYERED else v for i, v in enumerate(self.param_views)]
        self._g = [list(v) if i in LAYERED else v for i, v in enumerate(self.grad_views)]
        self.rng_state = rng_seed
        self.rng_state_last_update = rng_seed
        self.shard_num_parameters = self._shard_size()
        self.m = self.v = self.master = None  # CPU: made at the first update or a state load; GPU: at allocate
        self.optimizer_ready = False           # m, v (and master) hold a state: after the first update or a load
        self.scalars = self.xp.zeros(2, dtype=np.float32)  # [grad norm squared, loss sum], read back per step
        self.acts = None
        self.bufs = {}                         # GPU-only buffers in the same allocation as the activations
        self.staging = None                    # host-written inputs of the device work (cuda.Staging)
        self._view_cache = {}                  # (name, layer, shape) -> activation view, per allocation
        self.arena_bytes = 0
        self.B = self.T = 0
        self.mean_loss = -1.0

    # ------------------------------------------------------------------
    # construction

    @classmethod
    def from_checkpoint(cls, path, **kwargs):
        """A version 3 (f32) or 5 (bf16) model file; a bf16 run rounds f32 weights to nearest even, an fp32 run
        widens bf16 ones exactly."""
        config, params, _ = read_model(path)
        return cls(config, params, **kwargs)

    @classmethod
    def from_descriptor(cls, descriptor, **kwargs):
        config = config_from_descriptor(descriptor)
        return cls(config, gpt2_random_init(config), **kwargs)

    def _views(self, flat):
        return [flat[o:o + n].reshape(s) for o, n, s in
                zip(self.config.param_offsets(), self.config.param_sizes(), self.config.param_shapes())]

    def set_shard(self, shard):
        """Chooses this rank's optimizer shard (the ZeRO stage) before the optimizer state exists."""
        if self.m is not None or self.optimizer_ready:
            raise LlmcError("the ZeRO shard cannot change once the optimizer state exists")
        self.shard = shard
        self.shard_num_parameters = self._shard_size()

    def _shard_size(self):
        if self.config.num_parameters % self.shard.parts != 0:
            raise LlmcError(f"ZeRO-1: {self.config.num_parameters} parameters do not split over "
                            f"{self.shard.parts} processes")
        return self.config.num_parameters // self.shard.parts

    def host(self, array):
        """A host float32 view or copy of one of this model's arrays (the array itself on the CPU)."""
        return cuda.to_host(array)

    def write_model(self, path):
        """The live floatX parameters: version 5 (bf16) or 3 (fp32)."""
        version = MODEL_VERSION_BF16 if self.precision == "bf16" else MODEL_VERSION_FP32
        write_model(path, self.config, self.host(self.params), version)

    # ------------------------------------------------------------------
    # activations

    def allocate(self, B, T):
        """Plans and allocates every activation for batches up to (B, T) in one allocation, llm.c's table of
        10.6, memset to 0 once, and the staging buffers; on the GPU also its own buffers and the optimizer state.
        Returns the element counts of the 21 activation tensors."""
        c = self.config
        if T > c.max_seq_len:
            raise LlmcError(f"-t {T}: the sequence length must be at most the model's max_seq_len {c.max_seq_len}")
        L, C, NH, Vp = c.num_layers, c.channels, c.num_heads, c.padded_vocab_size
        BT = B * T
        r = self.recompute
        cudnn_workspace = self._plan_cudnn(B, T)
        att = 0 if self.attention == "cudnn" else L * B * NH * T * T
        sizes = dict(
            encoded=BT * C, ln1=0 if r >= 2 else L * BT * C, ln1_mean=L * BT, ln1_rstd=L * BT,
            atty=L * BT * C, att=att, residual2=L * BT * C, ln2=0 if r >= 2 else L * BT * C,
            ln2_mean=L * BT, ln2_rstd=L * BT, fch=L * BT * 4 * C, fch_gelu=(L if r == 0 else 1) * BT * 4 * C,
            residual3=L * BT * C, lnf=BT * C, lnf_mean=BT, lnf_rstd=BT, losses=BT, qkvr=L * BT * 3 * C,
            output=BT * max(3 * C, NH * T, Vp), scratch_bt4c=BT * 4 * C, scratch_btc=BT * C)
        f32_names = ("ln1_mean", "ln1_rstd", "ln2_mean", "ln2_rstd", "lnf_mean", "lnf_rstd", "losses")
        entries = [(name, np.float32 if name in f32_names else self.floatx, n) for name, n in sizes.items()]
        extras = self._extra_buffers(B, T, cudnn_workspace) if self.gpu else []
        layout, total = plan_arena(entries + extras)
        arena = self.xp.zeros(max(total, 1), dtype=np.uint8)
        views = {name: arena[off:off + n * dt.itemsize].view(dt) for name, (off, dt, n) in layout.items()}
        self.acts = {name: views[name] for name in sizes}
        self.bufs = {name: views[name] for name, _, _ in extras}
        self.staging = cuda.Staging(*plan_arena(self._staging_entries(B, T)), self.gpu)
        self._view_cache = {}
        self.arena_bytes = total
        self.B, self.T = B, T
        if self.gpu:
            blas.context().set_tf32(self.tf32)  # handles and workspace now, not inside the first step
        if self.gpu and self.m is None:
            n = self.shard_num_parameters
            self.m = self.xp.empty(n, dtype=np.float32)
            self.v = self.xp.empty(n, dtype=np.float32)
            if self.use_master_weights:
                self.master = self.xp.empty(n, dtype=np.float32)
        return sizes

    def _plan_cudnn(self, B, T):
        """With cuDNN attention: builds its training graphs for (B, T) and returns the workspace they need (bytes).
        A model cuDNN cannot run falls back to llm.c's kernels when auto chose cuDNN, and stops when asked for it."""
        if self.attention != "cudnn":
            return 0
        c = self.config
        try:
            return attention_cudnn.workspace_bytes(B, T, c.num_heads, c.channels // c.num_heads, self.precision)
        except LlmcError as e:
            if self.attention_requested == "cudnn":
                raise LlmcError(f"--attention cudnn: {e}") from None
            self.attention, self.attention_reason = "llmc", f"cuDNN cannot run this model: {e}"
            return 0

    def _extra_buffers(self, B, T, cudnn_workspace):
        """The GPU-only buffers: the f32 scratch of the deterministic
        reductions (layernorm and bias backward), the grad-norm slots, --matmul fp16fc's fp16 operands, and with
        cuDNN attention the softmax statistics and its workspace."""
        c, info = self.config, self.device_info
        L, C, BT = c.num_layers, c.channels, B * T
        scratch = max([backward_scratch_floats(C, info.num_sms)] +
                      [bias_scratch_floats(BT, OC, self.precision, info.num_sms) for OC in (C, 3 * C, 4 * C)])
        extras = [("scratch_f32", np.float32, scratch), ("norm_slots", np.float32, norm_slots(L, info))]
        if self.matmul == "fp16fc":
            extras.append(("fp16", np.uint16, fp16_scratch_elements(BT, C, 4 * C)))
        if self.attention == "cudnn":
            extras += [("att_stats", np.float32, L * B * c.num_heads * T),
                       ("cudnn_workspace", np.uint8, cudnn_workspace)]
        return extras

    def _staging_entries(self, B, T):
        """What the host writes for the device, in the order stage() and stage_update() send it: a micro step's
        ids, targets, loss scale, encoder seed (and on the GPU the wte-backward tables), then the update's clip
        scale (when the host gives one), AdamW values and one seed per parameter tensor."""
        BT = B * T
        entries = [("inputs", np.int32, BT), ("targets", np.int32, BT), ("dloss", np.float32, 1),
                   ("encoder_seed", np.uint32, 1)]
        if self.gpu:
            rows = wte_bucket_rows(BT, self.config.padded_vocab_size)
            entries += [("bucket_info", np.int32, 4 * rows), ("workload", np.int32, BT)]
        return entries + [("grad_scale", np.float32, 1), ("hyper", np.float32, HYPER_SIZE),
                          ("seeds", np.uint32, len(self.param_views))]

    def memory_report(self):
        """llm.c's start-up lines: MiB per buffer group (and the device's memory use on the GPU; with cuDNN attention
        what its buffers take instead of the attention matrix)."""
        mib = lambda nbytes: int(nbytes) >> 20  # noqa: E731
        opt = self.shard_num_parameters * 4
        lines = [f"allocating {mib(self.grads.nbytes)} MiB for parameter gradients",
                 f"allocating {mib(self.arena_bytes)} MiB for activations",
                 f"allocating {mib(opt)} MiB for AdamW optimizer state m",
                 f"allocating {mib(opt)} MiB for AdamW optimizer state v"]
        if self.use_master_weights:
            lines.append(f"allocating {mib(opt)} MiB for master copy of params")
        if self.gpu:
            used, total = cuda.memory_usage()
            lines.append(f"device memory usage: {used} MiB / {total} MiB")
        if self.attention == "cudnn":
            c = self.config
            matrix = c.num_layers * self.B * c.num_heads * self.T * self.T * self.floatx.itemsize
            lines.append(f"cuDNN attention: {mib(self.bufs['att_stats'].nbytes)} MiB softmax statistics and "
                         f"{mib(self.bufs['cudnn_workspace'].nbytes)} MiB workspace in the activations, in place "
                         f"of the {mib(matrix)} MiB attention matrix")
        return lines

    def attention_line(self):
        """The start-up line saying which attention runs and why."""
        what = "cuDNN flash attention" if self.attention == "cudnn" else "llm.c's kernels (att matrix)"
        return f"attention: {what} ({self.attention_reason})"

    def _layer(self, name, layer, *shape):
        """View of layer `layer` of a per-layer activation (or GPU buffer), shaped for the current call (made once
        per shape)."""
        key = (name, layer, shape)
        view = self._view_cache.get(key)
        if view is None:
            n = math.prod(shape)
            flat = self.acts[name] if name in self.acts else self.bufs[name]
            view = self._view_cache[key] = flat[layer * n:(layer + 1) * n].reshape(shape)
        return view

    def _act(self, name, *shape):
        return self._layer(name, 0, *shape)

    def _ln_out(self, name, layer, B, T):
        """ln1[l] / ln2[l], or with -r 2 the one shared layernorm output buffer (lnf)."""
        C = self.config.channels
        return self._act("lnf", B, T, C) if self.recompute >= 2 else self._layer(name, layer, B, T, C)

    def _fch_gelu(self, layer, B, T):
        C4 = 4 * self.config.channels
        return self._layer("fch_gelu", layer if self.recompute == 0 else 0, B, T, C4)

    def _staged(self, name, *shape):
        """The device view of a staged entry, shaped for the current call (made once per shape)."""
        key = ("staged", name, shape)
        view = self._view_cache.get(key)
        if view is None:
            view = self._view_cache[key] = self.staging.device[name][:math.prod(shape)].reshape(shape)
        return view

    # ------------------------------------------------------------------
    # staging: the host's part of a step

    def stage(self, inputs, targets=None, dloss=None, backward=False):
        """Writes a batch for the device work that follows: the ids (B,T); with targets also the targets and
        dloss, every token's loss gradient; with backward also the encoder backward's stochastic-rounding seed
        (drawn from the rng, one per backward as llm.c draws it) and on the GPU the wte-backward bucket tables."""
        c = self.config
        B, T = inputs.shape
        if self.acts is None or B > self.B or T > self.T:
            raise LlmcError(f"forward: batch ({B}, {T}) exceeds the allocated ({self.B}, {self.T})")
        if inputs.min() < 0 or inputs.max() >= c.vocab_size:
            raise LlmcError(f"forward: token ids must lie in [0, {c.vocab_size}), found "
                            f"{int(inputs.min())}..{int(inputs.max())}")
        host = self.staging.host()
        host["inputs"][:B * T] = inputs.reshape(-1)
        names = ["inputs"]
        if targets is not None:
            host["targets"][:B * T] = targets.reshape(-1)
            host["dloss"][0] = dloss
            names += ["targets", "dloss"]
        if backward:
            seed, self.rng_state = random_u32(self.rng_state)
            host["encoder_seed"][0] = seed
            names.append("encoder_seed")
            if self.gpu:
                write_wte_buckets(host["bucket_info"], host["workload"], inputs)
                names += ["bucket_info", "workload"]
        self.staging.send(names)

    def stage_update(self, learning_rate, weight_decay, grad_scale, t):
        """Writes an update for the device work that follows: learning rate, weight decay and the bias corrections
        of t = step + 1, one stochastic-rounding seed per parameter tensor (drawn from the rng as llm.c draws
        them), and grad_scale when given; None keeps the clip scale launch_grad_norm computed on the device."""
        self.rng_state_last_update = self.rng_state
        host = self.staging.host()
        adamw_hyper(host["hyper"], learning_rate, weight_decay, t, BETA1, BETA2)
        host["seeds"][:] = self._draw_seeds()
        names = ["hyper", "seeds"]
        if grad_scale is not None:
            host["grad_scale"][0] = grad_scale
            names.insert(0, "grad_scale")
        self.staging.send(names)

    def read_step(self):
        """The one readback of a training step: (sum of the per-token losses averaged over the processes, grad
        norm squared), as launch_backward's last micro step and launch_grad_norm left them."""
        values = self.host(self.scalars)
        return float(values[1]), float(values[0])

    def _attention_state(self, layer, B, T):
        """(qkvr, att): what the attention forward of `layer` saves for its backward. llm.c's kernels: q, k, v
        permuted (3,B,NH,T,HS) and the (B,NH,T,T) probabilities; cuDNN: the QKV matmul output itself (B,T,3C),
        written straight into qkvr[l], and the (B,NH,T) f32 softmax statistics."""
        C, NH = self.config.channels, self.config.num_heads
        if self.attention == "cudnn":
            return self._layer("qkvr", layer, B, T, 3 * C), self._layer("att_stats", layer, B, NH, T)
        return self._layer("qkvr", layer, 3, B, NH, T, C // NH), self._layer("att", layer, B, NH, T, T)

    def _variant(self, fc=False):
        """The forward matmul variant (fp32 GPU only): our kernel everywhere, or fp16 operands for the fc layer."""
        if self.matmul == "custom":
            return "custom"
        return "fp16" if self.matmul == "fp16fc" and fc else None

    # ------------------------------------------------------------------
    # forward

    def forward(self, inputs):
        """inputs int32 (B, T) on the host, with B, T up to the allocated sizes; logits land in the `output`
        buffer (on the device for the GPU: see host())."""
        self.stage(inputs)
        return self.launch_forward(*inputs.shape)

    def launch_forward(self, B, T):
        """The forward of the staged ids (B, T); returns the logits view."""
        c = self.config
        L, C, NH = c.num_layers, c.channels, c.num_heads
        p = self._p
        variant = self._variant()
        encoded = self._act("encoded", B, T, C)
        encoder_forward(encoded, self._staged("inputs", B, T), p[0], p[1])
        layernorm_forward(self._ln_out("ln1", 0, B, T), self._layer("ln1_mean", 0, B, T),
                          self._layer("ln1_rstd", 0, B, T), encoded, p[2][0], p[3][0])
        for l in range(L):
            residual = encoded if l == 0 else self._layer("residual3", l - 1, B, T, C)
            ln1 = self._ln_out("ln1", l, B, T)
            qkvr, att = self._attention_state(l, B, T)
            qkv = qkvr if self.attention == "cudnn" else self._act("output", B, T, 3 * C)
            matmul_forward(qkv, ln1, p[4][l], p[5][l], variant=variant)
            atty = self._layer("atty", l, B, T, C)
            attention_forward(atty, qkvr, att, qkv, NH, workspace=self.bufs.get("cudnn_workspace"))
            proj = self._act("output", B, T, C)
            matmul_forward(proj, atty, p[6][l], p[7][l], variant=variant)
            residual2 = self._layer("residual2", l, B, T, C)
            ln2 = self._ln_out("ln2", l, B, T)
            fused_residual_forward(residual2, ln2, self._layer("ln2_mean", l, B, T),
                                   self._layer("ln2_rstd", l, B, T), residual, proj, p[8][l], p[9][l])
            fch, fch_gelu = self._layer("fch", l, B, T, 4 * C), self._fch_gelu(l, B, T)
            fc = dict(variant=self._variant(fc=True), scratch=self.bufs.get("fp16"))
            if self.gelu_fusion >= 1:
                matmul_forward(fch_gelu, ln2, p[10][l], p[11][l], pre_gelu=fch, **fc)
            else:
                matmul_forward(fch, ln2, p[10][l], p[11][l], **fc)
                gelu_forward(fch_gelu, fch)
            matmul_forward(proj, fch_gelu, p[12][l], p[13][l], variant=variant)
            if l + 1 < L:
                out, mean, rstd = (self._ln_out("ln1", l + 1, B, T), self._layer("ln1_mean", l + 1, B, T),
                                   self._layer("ln1_rstd", l + 1, B, T))
                weight, bias = p[2][l + 1], p[3][l + 1]
            else:
                out, mean, rstd = self._act("lnf", B, T, C), self._act("lnf_mean", B, T), self._act("lnf_rstd", B, T)
                weight, bias = p[14], p[15]
            fused_residual_forward(self._layer("residual3", l, B, T, C), out, mean, rstd,
                                   residual2, proj, weight, bias)
        logits = self._act("output", B, T, c.padded_vocab_size)
        matmul_forward(logits, self._act("lnf", B, T, C), p[0], variant=variant)
        return logits

    def validate(self, inputs, targets):
        """Mean loss of one batch; like llm.c the logits are overwritten with dlogits on the way, and the
        per-token losses are summed on the host in float32."""
        B, T = inputs.shape
        self.stage(inputs, targets, 1.0 / (B * T))
        self.launch_forward(B, T)
        losses = self._act("losses", B, T)
        cuda.zero(losses)
        fused_classifier(self._act("output", B, T, self.config.padded_vocab_size), losses, self._staged("dloss", 1),
                         self._staged("targets", B, T), self.config.vocab_size)
        return float(np.float32(self.host(losses).sum(dtype=np.float32)) / np.float32(B * T))

    # ------------------------------------------------------------------
    # backward

    def backward(self, inputs, targets, grad_accum_steps, micro_step):
        """Classifier + backward of the batch forwarded last; grads accumulate over micro steps, and on
        the last one `mean_loss` becomes the mean loss of the whole accumulated batch."""
        B, T = inputs.shape
        self.stage(inputs, targets, 1.0 / (B * T * grad_accum_steps), backward=True)
        self.launch_backward(B, T, grad_accum_steps, micro_step)
        if micro_step == grad_accum_steps - 1:
            self.mean_loss = self.read_step()[0] / (B * T * grad_accum_steps)

    def launch_backward(self, B, T, grad_accum_steps, micro_step):
        """Classifier + backward of the staged batch (B, T) forwarded last: the first micro step zeroes the
        grads and losses, the last one reduces the grads over the processes and sums the losses (read_step)."""
        c = self.config
        L, C, NH, Vp = c.num_layers, c.channels, c.num_heads, c.padded_vocab_size
        p, g = self._p, self._g
        scratch = self.bufs.get("scratch_f32")
        losses = self._act("losses", B, T)
        last_step = micro_step == grad_accum_steps - 1
        if micro_step == 0:
            cuda.zero(self.grads)
            cuda.zero(losses)
        dlogits = self._act("output", B, T, Vp)
        fused_classifier(dlogits, losses, self._staged("dloss", 1), self._staged("targets", B, T), c.vocab_size)

        dresidual = self._act("scratch_btc", B, T, C)
        cuda.zero(dresidual)
        dlnf = self._act("scratch_bt4c", B, T, C)
        matmul_backward(dlnf, g[0], None, dlogits, self._act("lnf", B, T, C), p[0], scratch=scratch)
        layernorm_backward(dresidual, g[14], g[15], dlnf, self._layer("residual3", L - 1, B, T, C), p[14],
                           self._act("lnf_mean", B, T), self._act("lnf_rstd", B, T), scratch=scratch)
        dl_btc = self._layer("residual3", L - 1, B, T, C)
        for l in reversed(range(L)):
            residual = self._act("encoded", B, T, C) if l == 0 else self._layer("residual3", l - 1, B, T, C)
            residual2 = self._layer("residual2", l, B, T, C)
            fch, fch_gelu = self._layer("fch", l, B, T, 4 * C), self._fch_gelu(l, B, T)
            ln1_mean, ln1_rstd = self._layer("ln1_mean", l, B, T), self._layer("ln1_rstd", l, B, T)
            ln2_mean, ln2_rstd = self._layer("ln2_mean", l, B, T), self._layer("ln2_rstd", l, B, T)
            if self.recompute >= 1:
                gelu_forward(fch_gelu, fch)
            dl_bt4c = self._act("scratch_bt4c", B, T, 4 * C)
            matmul_backward(dl_bt4c, g[12][l], g[13][l], dresidual, fch_gelu, p[12][l], pre_gelu=fch,
                            scratch=scratch, fuse_gelu=self.gelu_fusion >= 2)
            ln2 = self._ln_out("ln2", l, B, T)
            if self.recompute >= 2:
                layernorm_forward(ln2, ln2_mean, ln2_rstd, residual2, p[8][l], p[9][l])
            matmul_backward(dl_btc, g[10][l], g[11][l], dl_bt4c, ln2, p[10][l], scratch=scratch)
            layernorm_backward(dresidual, g[8][l], g[9][l], dl_btc, residual2, p[8][l], ln2_mean, ln2_rstd,
                               scratch=scratch)
            atty = self._layer("atty", l, B, T, C)
            matmul_backward(dl_btc, g[6][l], g[7][l], dresidual, atty, p[6][l], scratch=scratch)
            dqkv = self._act("scratch_bt4c", B, T, 3 * C)
            dqkvr = self._layer("fch", l, B * T * 4 * C)[:3 * B * T * C].reshape(3, B, NH, T, C // NH)
            qkvr, att = self._attention_state(l, B, T)
            attention_backward(dqkv, dqkvr, self._act("output", B, NH, T, T), atty, dl_btc, qkvr, att, NH,
                               workspace=self.bufs.get("cudnn_workspace"))
            ln1 = self._ln_out("ln1", l, B, T)
            if self.recompute >= 2:
                layernorm_forward(ln1, ln1_mean, ln1_rstd, residual, p[2][l], p[3][l])
            matmul_backward(dl_btc, g[4][l], g[5][l], dqkv, ln1, p[4][l], scratch=scratch)
            layernorm_backward(dresidual, g[2][l], g[3][l], dl_btc, residual, p[2][l], ln1_mean, ln1_rstd,
                               scratch=scratch)
            if last_step:
                self._reduce_gradients(LAYER_GRADS, l)
        staged = self.staging.device
        encoder_backward(g[0], g[1], dresidual, self._staged("inputs", B, T), seed=staged["encoder_seed"],
                         bucket_info=staged.get("bucket_info"), workload=staged.get("workload"))
        if last_step:
            # loss summed on this rank and averaged over ranks; read_step's reader divides by the token count
            loss_sum = self.scalars[1:2]
            cuda.zero(loss_sum)
            global_sum(loss_sum, losses, precision=self.precision)
            self.comm.all_reduce(loss_sum, "avg")
            self._reduce_gradients(REST_GRADS, 0, T)

    def _reduce_gradients(self, tensors, layer, T=None):
        """Averages the gradients of `tensors` (their slice `layer` if layered) over the processes, grouped:
        all-reduce with ZeRO-0; with ZeRO-1 a reduce-scatter leaves each rank the mean of the parts it owns
        (spec 11.3), which is all its update reads. Stage 0 reduces only the first T rows of wpe: the rows
        past T have no gradient on any rank (llm.c does the same); ZeRO-1 reduces all of wpe, because its
        shards split maxT*C, where llm.c's T*C reduce-scatter leaves wrong grads whenever T < maxT.
        One process calls through too: SingleProcess does nothing, NCCL at world size 1 runs for real."""
        with self.comm.group():
            for i in tensors:
                grad = self.grad_views[i][layer] if i in LAYERED else self.grad_views[i]
                if self.shard.parts > 1:
                    self.comm.reduce_scatter(grad.reshape(-1), "avg")
                else:
                    self.comm.all_reduce((grad[:T] if i == 1 else grad).reshape(-1), "avg")

    # ------------------------------------------------------------------
    # optimizer

    def shard_units(self):
        """What ZeRO-1 splits: (tensor i, slice of the flat buffer) for each tensor and, for the layered
        ones, each layer slice, in buffer order."""
        L = self.config.num_layers
        out = []
        for i, (offset, size) in enumerate(zip(self.config.param_offsets(), self.config.param_sizes())):
            num_slices = L if i in LAYERED else 1
            n = size // num_slices
            out.extend((i, slice(offset + layer * n, offset + (layer + 1) * n)) for layer in range(num_slices))
        return out

    def shard_slices(self):
        """For each tensor i and layer slice: (i, slice of the full buffer, slice of the shard buffers).
        Rank r owns [r*n/P, (r+1)*n/P) of every n-element unit; its shard buffers hold tensor i's parts
        from offset_i/P on, layer after layer (spec 11.3)."""
        parts, index = self.shard.parts, self.shard.index
        out = []
        for i, unit in self.shard_units():
            n = unit.stop - unit.start
            if n % parts != 0:
                raise LlmcError(f"ZeRO-1: tensor {i} slices of {n} elements do not split over {parts} processes")
            own = n // parts
            start = unit.start + index * own
            shard_start = unit.start // parts
            out.append((i, slice(start, start + own), slice(shard_start, shard_start + own)))
        return out

    def tensor_shards(self):
        """shard_slices grouped per tensor, in llm.c's sliced layout: (i, start in the full buffers, start in
        the shard buffers, n owned per slice, num_slices, full stride): slice y of tensor i is
        [start + y*stride, + n) of params/grads and [shard start + y*n, + n) of m, v, master."""
        parts, index, L = self.shard.parts, self.shard.index, self.config.num_layers
        out = []
        for i, (offset, size) in enumerate(zip(self.config.param_offsets(), self.config.param_sizes())):
            num_slices = L if i in LAYERED else 1
            unit = size // num_slices
            if unit % parts != 0:
                raise LlmcError(f"ZeRO-1: tensor {i} slices of {unit} elements do not split over {parts} processes")
            own = unit // parts
            out.append((i, offset + index * own, offset // parts, own, num_slices, unit))
        return out

    def _tensor_buffers(self, start, shard_start, n, num_slices, unit):
        """(params, grads, m, v, master) spans of one tensor's slices, and the slicing keyword arguments."""
        span, shard_span = (num_slices - 1) * unit + n, num_slices * n
        w, s = slice(start, start + span), slice(shard_start, shard_start + shard_span)
        master = None if self.master is None else self.master[s]
        m = None if self.m is None else self.m[s]
        v = None if self.v is None else self.v[s]
        return (self.params[w], self.grads[w], m, v, master), dict(n=n, num_slices=num_slices)

    def grad_norm_squared(self):
        """Sum of squares of the gradients (launch_grad_norm, read back)."""
        self.launch_grad_norm()
        return self.read_step()[1]

    def launch_grad_norm(self):
        """Sum of squares of the gradients into scalars[0], then llm.c's clip scale into the staged grad_scale
        that the update reads: with ZeRO-1 each rank sums its owned parts and the ranks add their sums;
        otherwise every rank holds all the (already averaged) gradients and sums them itself."""
        acc = self.scalars[0:1]
        cuda.zero(acc)
        slots = self.bufs.get("norm_slots")
        if self.shard.parts == 1:
            global_norm_squared(acc, self.grads, slots=slots)
        else:
            for _, start, shard_start, n, num_slices, unit in self.tensor_shards():
                (_, grads, _, _, _), kw = self._tensor_buffers(start, shard_start, n, num_slices, unit)
                global_norm_squared(acc, grads, slots=slots, stride=unit, **kw)
            self.comm.all_reduce(acc, "sum")
        grad_clip_scale(self.staging.device["grad_scale"], acc, GRAD_CLIP, precision=self.precision)

    def init_optimizer(self):
        """The first update of a fresh run: m and v zero, master weights the exact widening of the params."""
        n = self.shard_num_parameters
        if self.m is None:  # the CPU makes the optimizer state here
            self.m = self.xp.zeros(n, dtype=np.float32)
            self.v = self.xp.zeros(n, dtype=np.float32)
            if self.use_master_weights:
                self.master = self.xp.empty(n, dtype=np.float32)
        else:
            cuda.zero(self.m)
            cuda.zero(self.v)
        if self.use_master_weights:
            for _, start, shard_start, own, num_slices, unit in self.tensor_shards():
                (params, _, _, _, master), kw = self._tensor_buffers(start, shard_start, own, num_slices, unit)
                cast_floatx_to_f32(master, params, dst_stride=own, src_stride=unit, **kw)
        self.optimizer_ready = True

    def update(self, learning_rate, weight_decay, grad_scale, t):
        """AdamW on this rank's shard, one call per parameter tensor (its layers as slices); t = step + 1;
        grad_scale None takes the clip scale of the last grad_norm_squared(). The first update of a fresh run
        initializes m, v (zeros) and master."""
        self.stage_update(learning_rate, weight_decay, grad_scale, t)
        if not self.optimizer_ready:
            self.init_optimizer()
        self.launch_update()

    def launch_update(self):
        """AdamW with the staged values (stage_update) on the initialized optimizer state, then ZeRO-1's gather."""
        staged = self.staging.device
        seeds = staged["seeds"]
        for i, start, shard_start, own, num_slices, unit in self.tensor_shards():
            (params, grads, m, v, master), kw = self._tensor_buffers(start, shard_start, own, num_slices, unit)
            adamw_update(params, grads, m, v, master, staged["hyper"], staged["grad_scale"], seeds[i:i + 1],
                         BETA1, BETA2, EPS, i in DECAYED, w_stride=unit, s_stride=own, **kw)
        self._gather_params()

    def _gather_params(self):
        """ZeRO-1: every rank updated only its parts; all-gather each unit so all hold the full params."""
        if self.shard.parts == 1:
            return
        with self.comm.group():
            for _, unit in self.shard_units():
                self.comm.all_gather(self.params[unit])

    def _draw_seeds(self):
        seeds = []
        for _ in range(len(self.param_views)):
            seed, self.rng_state = random_u32(self.rng_state)
            seeds.append(seed)
        return seeds

    # ------------------------------------------------------------------
    # training state files

    def write_state(self, path, step, loader):
        if not self.optimizer_ready:
            raise LlmcError(f"{path}: no optimizer state to save before the first update")
        loader_state = loader.state()
        write_state(path, TrainingState(
            num_processes=self.shard.num_processes, process_rank=self.shard.process_rank, step=step,
            rng_state=self.rng_state, rng_state_last_update=self.rng_state_last_update,
            shard_idx=loader.current_shard_idx, sample_idx=loader.current_sample_idx,
            m=self.host(self.m), v=self.host(self.v),
            master=None if self.master is None else self.host(self.master), loader=loader_state))

    def _load_f32(self, name, values):
        """Optimizer array `name` from host values: taken as it is on the CPU, copied into the GPU buffer."""
        if not self.gpu:
            setattr(self, name, values)
            return
        buf = getattr(self, name)
        if buf is None:
            buf = self.xp.empty(self.shard_num_parameters, dtype=np.float32)
            setattr(self, name, buf)
        buf.set(np.ascontiguousarray(values, dtype=np.float32))

    def load_state(self, path, loader):
        """Restores optimizer, rng and loader position; returns the step the state was written at."""
        header, _ = read_header(path, STATE_MAGIC, (STATE_VERSION,), what="training state file")
        written_p, written_rank = int(header[2]), int(header[3])  # checked before the (shard-sized) payload
        if written_p != self.shard.num_processes or written_rank != self.shard.process_rank:
            raise LlmcError(f"{path}: written by rank {written_rank} of {written_p} processes, cannot resume "
                            f"as rank {self.shard.process_rank} of {self.shard.num_processes}: resume with "
                            f"the same number of processes")
        state = read_state(path, self.shard_num_parameters)
        if self.use_master_weights and state.master is None:
            raise LlmcError(f"{path}: has no master weights but the run uses them (-w 1); resume with -w 0")
        self._load_f32("m", state.m)
        self._load_f32("v", state.v)
        if self.use_master_weights:
            self._load_f32("master", state.master)
            # re-derive the params from the master copy consuming the seeds the last update drew, so
            # the (stochastically rounded, on GPU) params are exactly those the last update produced
            self.rng_state = state.rng_state_last_update
            seeds = self._draw_seeds()
            for i, start, shard_start, own, num_slices, unit in self.tensor_shards():
                (params, _, _, _, master), kw = self._tensor_buffers(start, shard_start, own, num_slices, unit)
                init_from_master(params, master, seeds[i], w_stride=unit, s_stride=own, **kw)
            self._gather_params()
        self.optimizer_ready = True
        self.rng_state = state.rng_state
        self.rng_state_last_update = state.rng_state_last_update
        try:
            loader.resume(state.shard_idx, state.sample_idx, state.loader)
        except LlmcError as e:
            raise LlmcError(f"{path}: its loader position does not fit the data: {e}") from None
        return state.step
