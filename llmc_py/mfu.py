"""Model FLOPs utilization (llm.c's mfu.h and gpt2_estimate_mfu).

The non-obvious decision: a GPU's peak is not looked up directly but scaled from its architecture's
flagship whitepaper figure by tensor-core count and boost clock (peak = family value * cores/base_cores *
MHz/base_MHz, in f32), matched on the exact CUDA device name; any other name (H100 NVL, ...) has no peak, and
the MFU is reported as "n/a" instead of llm.c's "-100.0%". Beyond llm.c's table: the H200, with sourced figures.
"""
import numpy as np

from llmc_py import LlmcError

f32 = np.float32

# family -> (TF32, BF16 with f32 accumulate, FP16 with f32 accumulate, base MHz, base tensor cores);
# None = no tensor-core support for that precision
FAMILIES = {
    "volta": (125.0, None, 125.0, 1530, 640),
    "ampere_datacenter": (156.0, 312.0, 312.0, 1410, 432),
    "ampere_consumer": (40.0, 80.0, 80.0, 1860, 336),
    "hopper": (378.0, 756.0, 756.0, 1620, 456),
    "ada": (82.6, 165.2, 165.2, 2520, 512),
}
PRECISION_COLUMNS = {"fp32": 0, "bf16": 1, "fp16": 2}  # fp32 builds run their matmuls in TF32

# exact deviceProp.name -> (family, tensor cores, boost MHz)
GPUS = {
    "Tesla V100-SXM2-16GB": ("volta", 640, 1530),
    "Tesla V100-PCIE-32GB": ("volta", 640, 1530),
    "NVIDIA A100-PCIE-40GB": ("ampere_datacenter", 432, 1410),
    "NVIDIA A100-PCIE-80GB": ("ampere_datacenter", 432, 1410),
    "NVIDIA A100-SXM4-40GB": ("ampere_datacenter", 432, 1410),
    "NVIDIA A100-SXM4-80GB": ("ampere_datacenter", 432, 1410),
    "NVIDIA RTX A2000": ("ampere_consumer", 104, 1200),
    "NVIDIA RTX A4000": ("ampere_consumer", 192, 1560),
    "NVIDIA RTX A4500": ("ampere_consumer", 224, 1650),
    "NVIDIA RTX A5000": ("ampere_consumer", 256, 1695),
    "NVIDIA RTX A5500": ("ampere_consumer", 320, 1770),
    "NVIDIA RTX A6000": ("ampere_consumer", 336, 1800),
    "NVIDIA GeForce RTX 3090 Ti": ("ampere_consumer", 336, 1860),
    "NVIDIA GeForce RTX 3090": ("ampere_consumer", 328, 1695),
    "NVIDIA GeForce RTX 3080 Ti": ("ampere_consumer", 320, 1665),
    "NVIDIA GeForce RTX 3080": ("ampere_consumer", 272, 1710),
    "NVIDIA GeForce RTX 3070 Ti": ("ampere_consumer", 192, 1770),
    "NVIDIA GeForce RTX 3070": ("ampere_consumer", 184, 1725),
    "NVIDIA GeForce RTX 3060 Ti": ("ampere_consumer", 152, 1665),
    "NVIDIA GeForce RTX 3060": ("ampere_consumer", 112, 1777),
    "NVIDIA RTX A2000 ADA": ("ada", 88, 2130),
    "NVIDIA RTX A4000 ADA": ("ada", 192, 2175),
    "NVIDIA RTX A4500 ADA": ("ada", 224, 2580),
    "NVIDIA RTX A5000 ADA": ("ada", 400, 2550),
    "NVIDIA RTX A5880 ADA": ("ada", 440, 2460),
    "NVIDIA RTX A6000 ADA": ("ada", 568, 2505),
    "NVIDIA GeForce RTX 4090": ("ada", 512, 2520),
    "NVIDIA GeForce RTX 4080 SUPER": ("ada", 320, 2550),
    "NVIDIA GeForce RTX 4080": ("ada", 304, 2505),
    "NVIDIA GeForce RTX 4070 Ti SUPER": ("ada", 264, 2610),
    "NVIDIA GeForce RTX 4070 Ti": ("ada", 240, 2610),
    "NVIDIA GeForce RTX 4070 SUPER": ("ada", 224, 2475),
    "NVIDIA GeForce RTX 4070": ("ada", 184, 2475),
    "NVIDIA GeForce RTX 4060 Ti": ("ada", 136, 2535),
    "NVIDIA GeForce RTX 4060": ("ada", 96, 2460),
    "NVIDIA H100 PCIe": ("hopper", 456, 1620),
    "NVIDIA H100 80GB HBM3": ("hopper", 528, 1830),  # SXM5
    # H200 SXM (not in llm.c's table). NVIDIA's H200 datasheet: 1,979 BF16 tensor TFLOPS with sparsity, i.e. 989.5
    # dense, the H100 SXM's figure. NVIDIA's H100 whitepaper: the H100 SXM5 has 132 SMs with 528 fourth-generation
    # tensor cores of 512 dense BF16 FMA per clock and 989.4 dense BF16 TFLOPS, which is a 1830 MHz boost clock
    # (528 * 512 * 2 * 1830e6 = 989.5e12), the entry above; the H200 is that GH100 configuration.
    "NVIDIA H200": ("hopper", 528, 1830),
}


def get_flops_promised(device_name, precision):
    """Peak dense tensor-core TFLOPS of `device_name` at `precision` ("bf16", "fp32" -> TF32, "fp16"),
    or -1.0 when the device is not in the table or has no figure for that precision."""
    if precision not in PRECISION_COLUMNS:
        raise LlmcError(f"unknown precision {precision!r} for the MFU estimate: expected one of "
                        f"{', '.join(PRECISION_COLUMNS)}")
    entry = GPUS.get(device_name)
    if entry is None:
        return -1.0
    family, cores, mhz = entry
    perf = FAMILIES[family]
    value = perf[PRECISION_COLUMNS[precision]]
    if value is None:
        return -1.0
    base_mhz, base_cores = perf[3], perf[4]
    return float(f32(value) * (f32(cores) / f32(base_cores)) * (f32(mhz) / f32(base_mhz)))


def describe_peak(device_name, precision):
    """The start-up line that says which peak the step line's MFU is measured against."""
    peak = get_flops_promised(device_name, precision)
    kind = "TF32" if precision == "fp32" else precision.upper()
    if peak < 0:
        return f"MFU: no {kind} tensor-core peak known for {device_name!r}; the step line prints MFU n/a"
    family, cores, mhz = GPUS[device_name]
    return (f"MFU: against {peak:.1f} TFLOPS, the dense {kind} tensor-core peak of {device_name} "
            f"({family} family at {cores} tensor cores, {mhz} MHz)")


def flops_per_token(num_parameters, num_layers, channels, T):
    """Training FLOPs per token: 6 per parameter (forward + backward) plus attention's 6*L*C*T."""
    return 6 * int(num_parameters) + 6 * int(num_layers) * int(channels) * int(T)


def estimate_mfu(num_parameters, num_layers, channels, T, tokens_per_step, dt_seconds, peak_tflops):
    """Fraction of this GPU's peak achieved by one step of `tokens_per_step` tokens (this rank's B*T*grad_accum)
    in `dt_seconds`; -1.0 when the peak is unknown (< 0)."""
    if peak_tflops < 0:
        return -1.0
    flops_per_step = flops_per_token(num_parameters, num_layers, channels, T) * int(tokens_per_step)
    achieved = f32(flops_per_step) * (f32(1.0) / f32(dt_seconds))
    return float(achieved / (f32(peak_tflops) * f32(1e12)))


def format_mfu(mfu):
    """The MFU field of the per-step line: "41.3% bf16 MFU" (fixed text in every precision), or "MFU n/a"."""
    if mfu < 0:
        return "MFU n/a"
    return f"{100 * mfu:.1f}% bf16 MFU"
