"""Plots main.log files (train/val loss, HellaSwag accuracy) beside OpenAI's GPT-2 checkpoints, to a PNG.

    python dev/vislog.py log_gpt2_124M/main.log -o loss.png
    python dev/vislog.py runA/main.log runB/main.log --size 350M -o compare.png

The non-obvious decision: a log is read as llm.c's dev/vislog.ipynb reads it, one {step: value} map
per stream, later lines replacing earlier ones, because a run resumed with -y 1 appends to main.log and
logs the steps after its checkpoint a second time. Streams (spec 8.4): `trl` train loss, `tel` val
loss, `eval` HellaSwag accuracy; train_gpt2.py's lines (`s:N tel:x`) read the same way.

The dashed baselines are the values of llm.c's dev/vislog.ipynb for OpenAI's released GPT-2 checkpoints:
val loss on the FineWeb val split (loss_baseline: 124M 3.424958, 350M 3.083089, 774M 3.000580,
1558M 2.831273) and HellaSwag accuracy (hella2_baseline: 124M 0.294463, 350M 0.375224,
774M 0.431986, 1558M 0.488946).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llmc_py import LlmcError, run_main  # noqa: E402

# OpenAI GPT-2 checkpoints, from llm.c's dev/vislog.ipynb (see the module docstring)
LOSS_BASELINE = {"124M": 3.424958, "350M": 3.083089, "774M": 3.000580, "1558M": 2.831273}
HELLASWAG_BASELINE = {"124M": 0.294463, "350M": 0.375224, "774M": 0.431986, "1558M": 0.488946}


def parse_log(path):
    """{stream: {step: value}} of one main.log; a repeated (stream, step) keeps its last value."""
    streams = {}
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except (OSError, UnicodeDecodeError) as e:
        raise LlmcError(f"{path}: cannot read the log: {getattr(e, 'strerror', None) or e}") from None
    for lineno, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        try:
            key, step = parts[0].split(":")
            stream, value = parts[1].split(":")
            if key != "s":
                raise ValueError
            streams.setdefault(stream, {})[int(step)] = float(value)
        except (ValueError, IndexError):
            raise LlmcError(f"{path}:{lineno}: expected 's:<step> <stream>:<value> ...', "
                            f"found {line.strip()[:60]!r}") from None
    return streams


def series(stream):
    """(steps, values) sorted by step."""
    steps = sorted(stream)
    return steps, [stream[s] for s in steps]


def pyplot():
    """matplotlib's pyplot on the Agg backend (it draws to files, no display needed)."""
    try:
        import matplotlib
    except ImportError:
        raise LlmcError("dev/vislog.py needs matplotlib (pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def draw(parsed, labels, size="124M"):
    """The figure: a loss panel and a HellaSwag panel over the parsed logs; a panel with nothing to draw
    says so in its middle rather than showing an empty axis."""
    fig, (ax_loss, ax_eval) = pyplot().subplots(1, 2, figsize=(16, 6))
    for streams, label in zip(parsed, labels):
        if "trl" in streams:
            ax_loss.plot(*series(streams["trl"]), linewidth=0.8, label=f"{label} train loss")
        if "tel" in streams:
            ax_loss.plot(*series(streams["tel"]), linewidth=2.0, label=f"{label} val loss")
        if "eval" in streams:
            ax_eval.plot(*series(streams["eval"]), marker=".", label=label)
    if size in LOSS_BASELINE:
        ax_loss.axhline(LOSS_BASELINE[size], color="r", linestyle="--",
                        label=f"OpenAI GPT-2 ({size}) checkpoint val loss")
        ax_eval.axhline(HELLASWAG_BASELINE[size], color="r", linestyle="--",
                        label=f"OpenAI GPT-2 ({size}) checkpoint")
    ax_loss.set(xlabel="steps", ylabel="loss", title="Loss")
    losses = [v for s in parsed for k in ("trl", "tel") for v in s.get(k, {}).values()]
    if losses and min(losses) > 0:
        ax_loss.set_yscale("log")  # as llm.c's notebook: the late curve stays readable
    ax_eval.set(xlabel="steps", ylabel="accuracy", title="HellaSwag eval")
    where = "this log" if len(parsed) == 1 else "these logs"
    for ax, keys, what in ((ax_loss, ("trl", "tel"), "train or val loss"),
                           (ax_eval, ("eval",), "HellaSwag evaluations")):
        if not any(k in streams for streams in parsed for k in keys):
            ax.text(0.5, 0.5, f"no {what} in {where}", transform=ax.transAxes, ha="center", va="center",
                    fontsize=16, color="0.35")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    return fig


def plot(logs, out_path, size="124M", labels=None):
    """Draws the loss and HellaSwag panels for each log in `logs` and writes a PNG to out_path."""
    parsed = [parse_log(path) for path in logs]
    labels = labels or [os.path.basename(os.path.dirname(os.path.abspath(p))) or p for p in logs]
    fig = draw(parsed, labels, size)
    try:
        fig.savefig(out_path, format="png", dpi=100)
    except OSError as e:
        raise LlmcError(f"{out_path}: cannot write the plot: {e.strerror}") from None
    finally:
        pyplot().close(fig)
    for streams, label in zip(parsed, labels):
        summary = [f"{label}:"]
        if "trl" in streams:
            summary.append(f"min train loss {min(streams['trl'].values()):.4f}")
        if "tel" in streams:
            summary.append(f"min val loss {min(streams['tel'].values()):.4f}")
        if "eval" in streams:
            summary.append(f"max HellaSwag {max(streams['eval'].values()):.4f}")
        print(" ".join(summary))
    print(f"wrote {out_path}")


def main():
    p = argparse.ArgumentParser(description="plot main.log files to a PNG")
    p.add_argument("logs", nargs="+", help="main.log files")
    p.add_argument("-o", "--output", default="vislog.png", help="PNG to write (default vislog.png)")
    p.add_argument("--size", default="124M", choices=[*LOSS_BASELINE, "none"],
                   help="which OpenAI GPT-2 checkpoint to draw as the dashed baselines")
    p.add_argument("--labels", nargs="+", help="one legend label per log (default: each log's folder name)")
    args = p.parse_args()
    if args.labels and len(args.labels) != len(args.logs):
        raise LlmcError(f"--labels: expected {len(args.logs)} labels, one per log, found {len(args.labels)}")
    plot(args.logs, args.output, args.size, args.labels)


if __name__ == "__main__":
    run_main(main)
