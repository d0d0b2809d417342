"""The training step of train_gpt2cu.py and dev/bench.py: the micro steps, the one readback of the loss and the
grad norm, and the AdamW update, with the GPU's part of each captured once as a CUDA graph and then replayed.

The decision: capture lives here and nowhere else. A step of GPT-2 is about a thousand kernel and library calls
made from Python; replayed as graphs they cost a handful of launches. GPT2 splits every part of a step into the
host's writes (`stage`, `stage_update`: ids, targets, seeds, learning rate... copied asynchronously into device
buffers) and launch-only device work (`launch_*`), which reads those buffers and never allocates, synchronizes or
reads back. So the device work of each kind of call is the same every step and can be recorded once:
- a micro step (forward, backward): the first one of a step zeroes the gradients, the last one reduces them
  over the processes, sums the loss and computes the grad norm and the clip scale; the middle ones do neither.
  With gradient accumulation that is up to three graphs, one per kind, each replayed as often as it comes up;
- the update (AdamW, ZeRO-1's gather), a graph of its own: between the two the host reads the loss and the norm
  back (one copy) and decides whether to update at all (the outlier z-scores).
Every kind runs eagerly the first time it comes up: that warm-up compiles the kernels, makes the cuBLASLt plans
and NCCL's state, and initializes the optimizer state; the second time it is captured, then replayed. A
replayed run computes exactly what an eager one does: the same launches read the same buffers. On the CPU, or
with cuda_graph off, every call runs eagerly.
"""
import math

from llmc_py import LlmcError, cuda


class TrainStep:
    """One optimizer step of `model` over grad_accum_steps micro batches of (B, T): micro_step() for each batch,
    then readback(), then update() unless the host skips it."""

    def __init__(self, model, grad_accum_steps, cuda_graph=False):
        if cuda_graph and not model.gpu:
            raise LlmcError("--cuda-graph 1: CUDA graphs need --device cuda")
        self.model = model
        self.grad_accum_steps = grad_accum_steps
        self.cuda_graph = bool(cuda_graph)
        self.graphs = {}     # kind of call -> its CUDA graph
        self._warm = set()   # kinds of call that have run eagerly once
        self._tokens = 0     # tokens of this rank's step, for the mean loss

    def micro_step(self, inputs, targets, micro_step):
        """Forward and backward of one micro batch (int32 (B, T) host arrays), gradients accumulating."""
        model, accum = self.model, self.grad_accum_steps
        B, T = inputs.shape
        first, last = micro_step == 0, micro_step == accum - 1
        model.stage(inputs, targets, 1.0 / (B * T * accum), backward=True)
        self._tokens = B * T * accum

        def work():
            model.launch_forward(B, T)
            model.launch_backward(B, T, accum, micro_step)
            if last:
                model.launch_grad_norm()
        self._run(("micro step", B, T, first, last), work)

    def readback(self):
        """After the last micro step: (mean loss of the whole batch over all processes, global grad norm), the
        step's one copy from the device; also sets model.mean_loss."""
        loss_sum, norm_squared = self.model.read_step()
        self.model.mean_loss = loss_sum / self._tokens
        return self.model.mean_loss, math.sqrt(norm_squared)

    def update(self, learning_rate, weight_decay, t):
        """AdamW with llm.c's clipping (the clip scale the last micro step computed on the device); t = step + 1."""
        model = self.model
        model.stage_update(learning_rate, weight_decay, None, t)
        if not model.optimizer_ready:
            model.init_optimizer()  # once, eagerly: never part of a graph
        self._run(("update",), model.launch_update)

    def _run(self, kind, work):
        graph = self.graphs.get(kind)
        if graph is None and self.cuda_graph and kind in self._warm:
            graph = self.graphs[kind] = cuda.capture(work)
        if graph is None:
            work()
            self._warm.add(kind)
        else:
            graph.launch()
