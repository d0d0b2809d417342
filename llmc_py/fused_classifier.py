"""Fused classifier: softmax cross-entropy loss and the start of the backward in one pass over the logits.

Design decision: the logits are overwritten in place with dlogits = (softmax - onehot(target)) * dloss,
so the largest activation (B,T,Vp) never needs a second buffer; only the real V columns are read and
written, and the padded columns V..Vp-1 are left exactly as they were. The loss is accumulated (+=) into
the per-token buffer because gradient accumulation adds micro steps into it. As in llm.c the softmax is
max-subtracted, the reciprocal of the sum is taken once, and the loss is -log(p_target) of that same p
(a p_target that underflows to 0 gives an infinite loss, as in llm.c).
On the GPU (kernels_cu/fused_classifier.cu) one 1024-thread block handles one row, in floatX. `dloss` is a
1-element array (device memory on the GPU, where the kernel reads it), written with the targets before the launch.
"""
import numpy as np

from llmc_py import LlmcError
from llmc_py.cuda import launch, on_device, precision_of, x128_size

CLASSIFIER_BLOCK = 1024  # kernels_cu/fused_classifier.cu

# ----------------------------------------------------------------------------
# NumPy reference


def fused_classifier(logits, losses, dloss, targets, V):
    """logits (B,T,Vp) float32, read then overwritten over [..., :V] with dlogits; losses (B,T) += -log p_target;
    dloss: float32 (1,), the gradient seed of every token's loss (llm.c: 1/(B*T*grad_accum_steps)); targets int
    (B,T); on the GPU dloss and targets are device buffers."""
    if on_device(logits):
        return _fused_classifier_gpu(logits, losses, dloss, targets, V)
    x = logits[..., :V]  # a view: every write below lands in logits
    x -= x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x *= 1.0 / x.sum(axis=-1, keepdims=True)  # x now holds the probabilities p
    idx = targets[..., None].astype(np.intp)
    p_target = np.take_along_axis(x, idx, axis=-1)[..., 0]
    with np.errstate(divide="ignore"):
        losses -= np.log(p_target)
    np.put_along_axis(x, idx, p_target[..., None] - 1.0, axis=-1)
    x *= np.float32(dloss[0])

# ----------------------------------------------------------------------------
# launcher (kernels_cu/fused_classifier.cu)


def _fused_classifier_gpu(logits, losses, dloss, targets, V):
    P = logits.shape[-1]
    BT = logits.size // P
    precision = precision_of(logits)
    X = x128_size(precision)
    if P % X != 0 or not 0 < V <= P:  # each row starts on a 16-byte packet: a row of P values must fill whole ones
        raise LlmcError(f"fused classifier: padded vocab size {P} (vocab {V}) must be at least the vocab and a "
                        f"multiple of {X} ({precision} values per 16-byte packet) on the GPU; llm.c pads to 128")
    launch("fused_classifier", "fused_classifier_kernel", (BT,), (CLASSIFIER_BLOCK,),
           (logits, losses, dloss, targets, np.int32(BT), np.int32(V), np.int32(P)), precision)
