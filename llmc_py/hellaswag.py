"""HellaSwag scoring over EvalLoader batches: completion style, llm.c's acc_norm.

The non-obvious decision: an ending's score is the *mean* per-token loss over its masked positions
(acc_norm), accumulated in float32 in position order and divided by the count, as llm.c's
evalloader_stat_losses does, and the prediction is the *first* ending with the strictly smallest mean,
so ties resolve to the lower index exactly as in llm.c. Scoring reads only the per-token losses the model
left behind (GPT2.validate fills acts["losses"] with -log p of each target), so it works the same for
every device and precision.
"""
import numpy as np

from llmc_py import progress_bar
from llmc_py.dataloader import NUM_COMPLETIONS


def score_batch(losses, mask, labels, num_examples_in_batch):
    """Number of correctly predicted examples in one batch.

    losses: (B, T) per-token losses, mask: (B, T) 1 at ending positions, labels: [>= num_examples_in_batch]
    correct ending per example slot; slot i owns rows 4i..4i+3. A slot with no mask bit set is inactive
    and never counts.
    """
    losses = np.asarray(losses, dtype=np.float32)
    mask = np.asarray(mask)
    correct = 0
    for i in range(int(num_examples_in_batch)):
        best_loss, best, active = np.float32(0.0), -1, False
        for c in range(NUM_COMPLETIONS):
            row = i * NUM_COMPLETIONS + c
            picked = losses[row][mask[row] == 1]
            mean = np.float32(0.0)
            if picked.size:
                active = True
                # cumsum adds strictly left to right, in float32, like llm.c's loop
                mean = np.float32(np.cumsum(picked, dtype=np.float32)[-1] / np.float32(picked.size))
            if c == 0 or mean < best_loss:
                best_loss, best = mean, c
        if active and best == int(labels[i]):
            correct += 1
    return correct


def evaluate(model, loader, print_progress=False):
    """Runs every batch of this rank's share through model.validate and scores it.

    Returns (correct on this rank, total examples in the file); the caller sums `correct` over ranks
    and divides by the total. With print_progress, a progress bar over the batches on stderr, cleared when
    done (stdout keeps only the result line the caller prints).
    """
    B, T = loader.B, loader.T
    loader.reset()
    correct = 0
    with progress_bar(total=loader.num_batches, desc="evaluating HellaSwag", unit="batch", leave=False,
                      disable=not print_progress) as bar:
        for _ in range(loader.num_batches):
            inputs, targets = loader.next_batch()
            model.validate(inputs, targets)
            losses = model.acts["losses"][:B * T]
            if not isinstance(losses, np.ndarray):
                losses = losses.get()  # a device array (CuPy): score on the host, as llm.c does
            losses = losses.reshape(B, T)
            correct += score_batch(losses, loader.mask, loader.label, loader.num_examples_in_batch)
            bar.update()
    return correct, loader.num_examples
