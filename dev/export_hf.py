"""llm.c model .bin (version 3 fp32 or 5 bf16) -> a Hugging Face GPT-2 folder: config.json + model.safetensors.

    python dev/export_hf.py -i log_gpt2_124M/model_00018865.bin -o gpt2_124M_hf
    python dev/export_hf.py -i gpt2_124M_bf16.bin -o out --dtype float32     # bf16 weights widened to F32

Then, with transformers installed: GPT2LMHeadModel.from_pretrained("gpt2_124M_hf"), and GPT-2's own
tokenizer (AutoTokenizer.from_pretrained("gpt2")), which this script does not write.

The non-obvious decisions: llm.c keeps every linear weight in nn.Linear layout (out, in) while Hugging
Face's GPT-2 keeps its Conv1D layout (in, out), so c_attn, attn.c_proj, c_fc and mlp.c_proj weights are
transposed; wte loses llm.c's padding rows (Vp -> V); and the LM head is tied to wte, so, as
`save_pretrained` does, only transformer.wte.weight is written and config.json says tie_word_embeddings.
model.safetensors is written by the safetensors package's numpy API (ml_dtypes' bfloat16 arrays become BF16).
By default tensors keep the file's dtype (v3 -> F32, v5 -> BF16, bits unchanged).
"""
import argparse
import json
import os
import sys

import ml_dtypes
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llmc_py import LlmcError, run_main  # noqa: E402
from llmc_py.checkpoint import MODEL_VERSION_BF16, read_model  # noqa: E402
from llmc_py.config import PARAM_NAMES  # noqa: E402
from llmc_py.fileio import atomic_path, atomic_write  # noqa: E402

SAFETENSORS_DTYPES = {np.dtype(np.float32): "F32", np.dtype(ml_dtypes.bfloat16): "BF16"}
OUT_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
# llm.c tensor -> (Hugging Face name in layer i, transposed to Conv1D layout?)
LAYER_TENSORS = {
    "ln1w": ("ln_1.weight", False), "ln1b": ("ln_1.bias", False),
    "qkvw": ("attn.c_attn.weight", True), "qkvb": ("attn.c_attn.bias", False),
    "attprojw": ("attn.c_proj.weight", True), "attprojb": ("attn.c_proj.bias", False),
    "ln2w": ("ln_2.weight", False), "ln2b": ("ln_2.bias", False),
    "fcw": ("mlp.c_fc.weight", True), "fcb": ("mlp.c_fc.bias", False),
    "fcprojw": ("mlp.c_proj.weight", True), "fcprojb": ("mlp.c_proj.bias", False),
}


def hf_tensors(config, params):
    """[(Hugging Face name, array)] in GPT2LMHeadModel's state-dict order, from the flat llm.c params
    (views; the transposed ones are not contiguous)."""
    views = {name: params[o:o + n].reshape(s) for name, o, n, s in
             zip(PARAM_NAMES, config.param_offsets(), config.param_sizes(), config.param_shapes())}
    out = [("transformer.wte.weight", views["wte"][:config.vocab_size]),
           ("transformer.wpe.weight", views["wpe"])]
    for i in range(config.num_layers):
        for name, (hf_name, transpose) in LAYER_TENSORS.items():
            t = views[name][i]
            out.append((f"transformer.h.{i}.{hf_name}", t.T if transpose else t))
    out += [("transformer.ln_f.weight", views["lnfw"]), ("transformer.ln_f.bias", views["lnfb"])]
    return out


def write_safetensors(path, tensors, metadata=None):
    """Writes [(name, array)] as a safetensors file through the safetensors package; the library reads
    each array's memory as it stands, so every array is made C-contiguous first."""
    try:
        from safetensors.numpy import save_file
    except ImportError:
        raise LlmcError("dev/export_hf.py needs the safetensors package (pip install safetensors)") from None
    arrays = {name: np.ascontiguousarray(a) for name, a in tensors}
    with atomic_path(path) as tmp:
        save_file(arrays, tmp, metadata=metadata)


def hf_config(config, dtype):
    """config.json of a GPT2LMHeadModel with these dimensions (the other fields are GPT-2's defaults)."""
    eot = config.vocab_size - 1  # GPT-2's <|endoftext|> is its last token
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": config.vocab_size, "n_positions": config.max_seq_len, "n_ctx": config.max_seq_len,
        "n_embd": config.channels, "n_layer": config.num_layers, "n_head": config.num_heads, "n_inner": None,
        "activation_function": "gelu_new",  # the tanh approximation, as llm.c's GELU
        "resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1, "layer_norm_epsilon": 1e-05,
        "initializer_range": 0.02, "summary_type": "cls_index", "summary_use_proj": True,
        "summary_activation": None, "summary_proj_to_labels": True, "summary_first_dropout": 0.1,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "use_cache": True, "bos_token_id": eot, "eos_token_id": eot, "tie_word_embeddings": True,
        "torch_dtype": "bfloat16" if dtype == OUT_DTYPES["bfloat16"] else "float32",
    }


def export(input_path, output_dir, dtype="auto"):
    """Writes output_dir/config.json and output_dir/model.safetensors; returns the dtype written."""
    config, params, version = read_model(input_path)
    if dtype == "auto":
        out_dtype = params.dtype
    elif dtype in OUT_DTYPES:
        out_dtype = OUT_DTYPES[dtype]
    else:
        raise LlmcError(f"--dtype {dtype}: expected auto, float32 or bfloat16")
    params = params.astype(out_dtype, copy=False)  # bf16 -> f32 is exact; f32 -> bf16 rounds to nearest even
    os.makedirs(output_dir, exist_ok=True)
    tensors = hf_tensors(config, params)
    print(f"{input_path}: version {version} ({'bf16' if version == MODEL_VERSION_BF16 else 'fp32'}), "
          f"L={config.num_layers} NH={config.num_heads} C={config.channels} maxT={config.max_seq_len} "
          f"V={config.vocab_size} (padded {config.padded_vocab_size})")
    st_path = os.path.join(output_dir, "model.safetensors")
    write_safetensors(st_path, tensors, metadata={"format": "pt"})
    with atomic_write(os.path.join(output_dir, "config.json")) as f:
        f.write((json.dumps(hf_config(config, out_dtype), indent=2) + "\n").encode("utf-8"))
    print(f"wrote {len(tensors)} tensors ({SAFETENSORS_DTYPES[np.dtype(out_dtype)]}) to {st_path} "
          f"and config.json")
    return out_dtype


def main():
    p = argparse.ArgumentParser(description="llm.c GPT-2 .bin -> Hugging Face folder (config.json, model.safetensors)")
    p.add_argument("-i", "--input", required=True, help="model .bin (version 3 or 5)")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("-d", "--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="tensor dtype: auto keeps the file's (v3 F32, v5 BF16)")
    args = p.parse_args()
    export(args.input, args.output, args.dtype)


if __name__ == "__main__":
    run_main(main)
