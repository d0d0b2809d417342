"""Summarizes a train_gpt2cu.py output for dev/gpu/check.sh: first and last train loss, val losses, median
step time and the start of the decoded sample, on one line. Exits 1 unless the loss fell by more than
--min-drop and a non-empty sample was printed."""
import argparse
import re
import statistics
import sys

STEP = re.compile(r"^step\s+(\d+)/\d+ \| loss (\S+) .*\| (\S+) ms \|")
VAL = re.compile(r"^val loss (\S+)")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("log")
    p.add_argument("--min-drop", type=float, default=3.0)
    args = p.parse_args()
    text = open(args.log, encoding="utf-8", errors="replace").read()
    steps = [(int(m[1]), float(m[2]), float(m[3])) for m in map(STEP.match, text.splitlines()) if m]
    vals = [float(m[1]) for m in map(VAL.match, text.splitlines()) if m]
    sample = text.split("generating:\n---\n", 1)[1].split("\n---", 1)[0] if "generating:\n---\n" in text else ""
    if not steps:
        print("no step lines")
        return 1
    drop = steps[0][1] - steps[-1][1]
    ms = statistics.median(t for _, _, t in steps[1:]) if len(steps) > 1 else steps[0][2]
    snippet = " ".join(sample.split())[:60]
    print(f"loss {steps[0][1]:.3f} -> {steps[-1][1]:.3f} in {steps[-1][0]} steps, val "
          f"{' -> '.join(f'{v:.3f}' for v in vals) or 'none'}, {ms:.1f} ms/step, sample: {snippet!r}")
    return 0 if drop > args.min_drop and snippet else 1


if __name__ == "__main__":
    sys.exit(main())
