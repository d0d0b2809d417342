"""Sampling (llmc_py.sampler, sample_gpt2.py, train_gpt2cu.py's samples) against independent references.

The reference is train_gpt2.py's PyTorch GPT on the same weights: a 2-layer model with GPT-2's vocabulary
drawn by its own init, then rescaled so that its next-token distributions are peaked and depend on the context,
as a trained model's do (a fresh init's are nearly uniform, and its tied embeddings make it repeat its input). Its logits, a PyTorch softmax and top-k mask,
and greedy argmax decoding are what our probabilities, draws and top-k=1 runs must equal. llm.c's own
sampling loop is rewritten here from spec 12 to show the training loop's default samples did not change.
"""
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from llmc_py import LlmcError
from llmc_py.checkpoint import write_model
from llmc_py.config import GPT2Config
from llmc_py.gpt2 import GPT2
from llmc_py.rand import random_f32
from llmc_py.sampler import SAMPLE_RNG_SEED, Sampler, check_fits, generate, prompt_tokens, sample_softmax
from llmc_py.tokenizer import Tokenizer

from conftest import load_program

REPO_ROOT = Path(__file__).resolve().parent.parent
V, EOT = 50257, 50256
# train_gpt2.py's model config (unpadded vocab); our files pad it to 50304
SMALL = dict(max_seq_len=64, vocab_size=V, num_layers=2, num_heads=4, channels=64)
PROMPT = "First Citizen:\nBefore we proceed any further, hear me speak."


def run(cwd, script, *args, expect=0):
    """The program's run, its output decoded as the tokenizer decodes (random models print partial UTF-8)."""
    proc = subprocess.run([sys.executable, str(REPO_ROOT / script), *map(str, args)], cwd=cwd,
                          capture_output=True, timeout=900)
    proc.stdout, proc.stderr = (x.decode("utf-8", errors="replace") for x in (proc.stdout, proc.stderr))
    assert proc.returncode == expect, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


def samples(stdout):
    """The sample texts sample_gpt2.py prints between its --- lines (each ends with a newline)."""
    body = stdout.split("---\n", 1)[1]
    assert body.endswith("\n---\n")
    return body[:-len("\n---\n")].split("\n---\n")


# ----------------------------------------------------------------------------
# the reference model and ours on the same weights

@pytest.fixture(scope="module")
def reference():
    """(train_gpt2.py's GPT, our CPU GPT2 on the same weights allocated for (1, 64), its model file)."""
    import train_gpt2
    ref = train_gpt2.GPT(GPT2Config(padded_vocab_size=V, **SMALL), init_rng=torch.Generator().manual_seed(42))
    with torch.no_grad():  # blocks outweigh the (tied) embeddings, and logits of std ~5: peaked, varied
        for block in ref.transformer.h:
            block.attn.c_proj.weight.mul_(20.0)
            block.mlp.c_proj.weight.mul_(20.0)
        ref.transformer.ln_f.weight.mul_(30.0)
    ref.eval()
    config = ref.llmc_config()
    params = train_gpt2.flatten_llmc(ref)
    model = GPT2(config, params)
    model.allocate(1, config.max_seq_len)
    return ref, model, config, params


@pytest.fixture(scope="module")
def small_model_file(reference, tmp_path_factory):
    path = tmp_path_factory.mktemp("small") / "small.bin"
    _, _, config, params = reference
    write_model(str(path), config, params, 3)
    return path


@pytest.fixture(scope="module")
def tokenizer(d12_dir):
    return Tokenizer.load(d12_dir / "gpt2_tokenizer.bin")


def reference_logits(ref, tokens):
    with torch.no_grad():
        logits, _ = ref(torch.tensor([tokens], dtype=torch.long))
    return logits[0, -1]


def torch_probabilities(logits, temperature, top_k):
    """nanoGPT's sampling distribution: logits / temperature, below the k-th largest set to -inf, softmax
    (in float64, so that tiny probabilities compare with ours instead of underflowing)."""
    logits = logits.double() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits = torch.where(logits < kth, torch.full_like(logits, -math.inf), logits)
    return torch.softmax(logits, dim=-1).numpy()


# ----------------------------------------------------------------------------
# probabilities and draws against PyTorch

@pytest.mark.parametrize("temperature,top_k", [(1.0, None), (0.7, 40), (1.6, 1000), (0.05, None), (1.0, 1)])
def test_probabilities_equal_pytorch_softmax(reference, tokenizer, temperature, top_k):
    ref, model, _, _ = reference
    prompt = prompt_tokens(tokenizer, PROMPT, EOT)
    ours = model.forward(np.array([prompt], np.int32))[0, -1, :V]
    theirs = reference_logits(ref, prompt)
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-4, atol=2e-4)
    sampler = Sampler(temperature, top_k)
    probs = sampler.probabilities(ours)
    expected = torch_probabilities(theirs, temperature, top_k)
    if top_k is not None:
        assert np.array_equal(probs > 0, expected > 0) and (probs > 0).sum() == top_k
    np.testing.assert_allclose(probs, expected, rtol=2e-3, atol=1e-7)
    assert abs(probs.sum() - 1.0) < 1e-12
    assert probs.max() > 0.05 or temperature > 1  # the reference is peaked, so the test has teeth

    # the draws: one coin of the seed-1337 xorshift sequence per token, inverse CDF of those probabilities
    cdf = np.cumsum(expected)
    state, checked = SAMPLE_RNG_SEED, 0
    for _ in range(200):
        coin, state = random_f32(state)
        token = sampler(ours)
        if np.min(np.abs(cdf - coin)) > 1e-5:  # a coin this close to a boundary may fall either side
            assert token == int(np.searchsorted(cdf, coin, side="right")), coin
            checked += 1
    assert checked >= 190


def test_sample_softmax_draws_from_the_softmax(reference, tokenizer):
    """llm.c's arithmetic (no max subtraction, f32 CDF) picks the inverse-CDF token of PyTorch's softmax."""
    ref, model, _, _ = reference
    prompt = prompt_tokens(tokenizer, "Hello", EOT)
    ours = model.forward(np.array([prompt], np.int32))[0, -1, :V]
    cdf = np.cumsum(torch.softmax(reference_logits(ref, prompt), -1).double().numpy())
    for coin in np.linspace(0.0, 0.999, 400):
        if np.min(np.abs(cdf - coin)) > 1e-5:
            assert sample_softmax(ours, coin) == int(np.searchsorted(cdf, coin, side="right"))


def test_top_k_1_equals_greedy_argmax_of_the_reference(reference, tokenizer):
    ref, model, _, _ = reference
    prompt = prompt_tokens(tokenizer, PROMPT, EOT)
    greedy = list(prompt)
    for _ in range(10):
        greedy.append(int(torch.argmax(reference_logits(ref, greedy))))
    for window in (1, 8):  # exact prefixes, and llm.c's padded forwards
        tokens = list(generate(model, prompt, 10, Sampler(top_k=1), window))
        assert tokens == greedy[len(prompt):]
    assert len(set(greedy[len(prompt):])) > 1


def test_plain_sampler_is_llmc_sampling(reference):
    """Spec 12 written out: EOT-filled buffer, forward of ceil(t / min(T,256)) * min(T,256) positions, the
    logits at t-1, one coin per token from xorshift state 1337, sample_softmax."""
    _, model, _, _ = reference
    genT, T, chunk = 40, model.T, 16  # a chunk below T, so forwards of 16, 32 and 48 positions
    buf = np.full((1, T), EOT, np.int32)
    state, expected = 1337, []
    for t in range(1, genT):
        length = min(math.ceil(t / chunk) * chunk, T)
        logits = model.forward(buf[:, :length])[0, t - 1, :V].copy()
        coin, state = random_f32(state)
        expected.append(sample_softmax(logits, coin))
        buf[0, t] = expected[-1]
    assert list(generate(model, [EOT], genT - 1, Sampler(), window=chunk)) == expected
    assert len(set(expected)) > 3


def test_same_seed_same_samples(reference):
    _, model, _, _ = reference
    draw = lambda seed: list(generate(model, [EOT, 464], 12, Sampler(1.3, 200, seed)))  # noqa: E731
    assert draw(5) == draw(5)
    assert draw(5) != draw(6)
    sampler = Sampler(1.3, 200, 5)
    first, second = list(generate(model, [EOT], 12, sampler)), list(generate(model, [EOT], 12, sampler))
    assert first != second  # one sampler goes on with its coin sequence


# ----------------------------------------------------------------------------
# bad input

@pytest.mark.parametrize("kwargs,message", [
    (dict(top_k=0), "--top-k 0: expected an integer >= 1"),
    (dict(top_k=-3), "--top-k -3: expected an integer >= 1"),
    (dict(temperature=0.0), "--temperature 0.0: expected a number > 0"),
    (dict(temperature=-1.0), "--temperature -1.0: expected a number > 0"),
    (dict(temperature=float("nan")), "--temperature nan: expected a number > 0"),
])
def test_sampler_rejects_bad_options(kwargs, message):
    with pytest.raises(LlmcError, match=f"^{re.escape(message)}$"):
        Sampler(**kwargs)


def test_prompt_and_length_checks(tokenizer):
    assert prompt_tokens(None, None, EOT) == [EOT]
    assert prompt_tokens(tokenizer, "Hello world", EOT) == [EOT, 15496, 995]
    with pytest.raises(LlmcError, match="^--prompt: expected some text, found an empty prompt$"):
        prompt_tokens(tokenizer, "", EOT)
    with pytest.raises(LlmcError, match="^--prompt: encoding the prompt needs the tokenizer file gpt2_tokenizer.bin"):
        prompt_tokens(None, "Hello", EOT)
    check_fits(64, 1, 64, "the model's context", "--prompt", "-g 1")
    check_fits(10, 55, 64, "the model's context", "--prompt", "-g 55")
    with pytest.raises(LlmcError, match="^--prompt: 65 tokens with the leading EOT, more than the model's context 64$"):
        check_fits(65, 1, 64, "the model's context", "--prompt", "-g 1")
    with pytest.raises(LlmcError, match="^-g 56: the prompt's 10 tokens and 56 generated tokens need 65 positions, "
                                        "more than the model's context 64$"):
        check_fits(10, 56, 64, "the model's context", "--prompt", "-g 56")


def one_line_error(proc, message):
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args,message", [
    (["--prompt", ""], "error: --prompt: expected some text, found an empty prompt"),
    (["--prompt", " ".join(["the"] * 70)], "error: --prompt: 71 tokens with the leading EOT, more than the model's "
                                            "context 64"),
    (["--prompt", " ".join(["the"] * 60), "-g", 5], "error: -g 5: the prompt's 61 tokens and 5 generated tokens "
                                                    "need 65 positions"),
    (["--top-k", 0], "error: --top-k 0: expected an integer >= 1"),
    (["--temperature", 0], "error: --temperature 0.0: expected a number > 0"),
    (["--temperature", -0.5], "error: --temperature -0.5: expected a number > 0"),
    (["--seed", 0], "error: --seed 0: expected an integer in [1, 2^64)"),
    (["-n", 0], "error: -n 0: expected at least 1 sample"),
    (["-g", 0], "error: -g 0: expected at least 1 token to generate"),
    (["--prompt-file", "missing.txt"], "error: --prompt-file missing.txt: cannot read the prompt file: No such file"),
    (["--prompt-file", "empty.txt"], "error: --prompt-file empty.txt: expected some text, found an empty file"),
    (["--prompt", "Hi", "--tokenizer", "nothing.bin"], "error: nothing.bin: tokenizer not found"),
])
def test_sample_program_bad_input_is_one_line(small_model_file, d12_dir, tmp_path, args, message):
    (tmp_path / "empty.txt").write_text("")
    proc = run(tmp_path, "sample_gpt2.py", "--device", "cpu", "-e", small_model_file,
               "--tokenizer", d12_dir / "gpt2_tokenizer.bin", *args, expect=1)
    one_line_error(proc, message)


@pytest.mark.parametrize("args,message", [
    (["--top-k", 0], "error: --top-k 0: expected an integer >= 1"),
    (["--top-k", "x"], "error: --top-k x: expected an integer"),
    (["--temperature", "-1"], "error: --temperature -1.0: expected a number > 0"),
    (["--prompt", ""], "error: --prompt: expected some text, found an empty prompt"),
    (["--prompt", " ".join(["the"] * 40)], "error: --prompt: 41 tokens with the leading EOT, more than the sequence "
                                            "length -t 32"),
    (["-g", 40], "error: -g 40: the prompt's 1 tokens and 39 generated tokens need 39 positions, more than the "
                 "sequence length -t 32"),
])
def test_train_sampler_bad_input_is_one_line(small_model_file, d12_dir, args, message):
    proc = run(d12_dir, "train_gpt2cu.py", "--device", "cpu", "-e", small_model_file, "-b", 1, "-t", 32, "-x", 1,
               "-g", 16, *args, expect=1)
    one_line_error(proc, message)


# ----------------------------------------------------------------------------
# the programs

def test_sample_program_streams_prompt_and_tokens(small_model_file, d12_dir, tmp_path, tokenizer, reference):
    """sample_gpt2.py: the prompt and the top-k=1 continuation, decoded; the same as generate() and as the
    reference's greedy tokens; --prompt-file gives the same; -n samples continue the coin sequence."""
    _, model, _, _ = reference
    tok = ["--device", "cpu", "-e", small_model_file, "--tokenizer", d12_dir / "gpt2_tokenizer.bin"]
    out = run(tmp_path, "sample_gpt2.py", *tok, "--prompt", PROMPT, "-g", 12, "--top-k", 1, "-n", 2).stdout
    prompt = prompt_tokens(tokenizer, PROMPT, EOT)
    assert out.splitlines()[0] == (f"{small_model_file}: 2 layers, 64 channels, 3,323,648 parameters, cpu fp32 | "
                                   f"prompt {len(prompt)} tokens | top-k 1, temperature 1, seed 1337")
    expected = PROMPT + tokenizer.decode_safe_text(generate(model, prompt, 12, Sampler(top_k=1)))
    assert samples(out) == [expected] * 2
    (tmp_path / "prompt.txt").write_text(PROMPT)
    from_file = run(tmp_path, "sample_gpt2.py", *tok, "--prompt-file", "prompt.txt", "-g", 12, "--top-k", 1).stdout
    assert samples(from_file) == [expected]

    args = [*tok, "--prompt", "The", "-g", 16, "--top-k", 50, "--temperature", 1.5, "-n", 3, "--seed", 7]
    first, again = run(tmp_path, "sample_gpt2.py", *args).stdout, run(tmp_path, "sample_gpt2.py", *args).stdout
    assert first == again
    assert len(set(samples(first))) == 3 and all(s.startswith("The") for s in samples(first))
    sampler = Sampler(1.5, 50, 7)
    prompt = prompt_tokens(tokenizer, "The", EOT)
    assert samples(first) == ["The" + tokenizer.decode_safe_text(generate(model, prompt, 16, sampler))
                              for _ in range(3)]
    other = run(tmp_path, "sample_gpt2.py", *args[:-1], 8).stdout
    assert samples(other) != samples(first)


def test_stop_at_eot(reference, d12_dir, tmp_path):
    """A model whose every next token is EOT: without --stop-at-eot the sample is -g EOTs, with it the prompt."""
    _, _, config, params = reference
    params = params.copy()
    views = dict(zip(range(16), np.split(params, config.param_offsets()[1:])))
    C = config.channels
    direction = np.zeros(C, np.float32)
    direction[0] = 1.0
    views[14][:] = 0.0                                             # lnfw: the final layernorm outputs lnfb
    views[15][:] = direction                                       # lnfb
    views[0].reshape(config.padded_vocab_size, C)[EOT] = 50.0 * direction
    path = tmp_path / "eot.bin"
    write_model(str(path), config, params, 3)
    tok = ["--device", "cpu", "-e", path, "--tokenizer", d12_dir / "gpt2_tokenizer.bin", "--prompt", "Hi", "-g", 3]
    assert samples(run(tmp_path, "sample_gpt2.py", *tok).stdout) == ["Hi" + "<|endoftext|>" * 3]
    assert samples(run(tmp_path, "sample_gpt2.py", *tok, "--stop-at-eot").stdout) == ["Hi"]


def test_sample_program_prints_ids_without_tokenizer(small_model_file, tmp_path, reference):
    _, model, _, _ = reference
    out = run(tmp_path, "sample_gpt2.py", "--device", "cpu", "-e", small_model_file, "-g", 5).stdout
    assert "WARNING: Failed to open the tokenizer file gpt2_tokenizer.bin" in out
    expected = list(generate(model, [EOT], 5, Sampler()))
    assert samples(out.split("---\nWARNING", 1)[1].split("---\n", 1)[1]) == ["".join(f"{t} " for t in expected)]


@pytest.mark.parametrize("extra", [[], ["--prompt", "Hello", "--top-k", "20", "--temperature", "0.9"]])
def test_training_samples_equal_sample_program(small_model_file, d12_dir, tmp_path, extra):
    """The sample train_gpt2cu.py prints at its last step is the one sample_gpt2.py draws from the checkpoint
    written at that step: one sampling code, llm.c's coin sequence from seed 1337 in both."""
    out = run(d12_dir, "train_gpt2cu.py", "--device", "cpu", "-e", small_model_file, "-b", 1, "-t", 32, "-x", 1, "-v", 100,
              "-m", 1, "-s", 5, "-g", 9, "-o", tmp_path, "-n", 1, *extra).stdout
    trained = out.split("generating:\n---\n", 1)[1].split("\n---\n", 1)[0]
    assert out.count("generating:") == 1
    sampled = run(d12_dir, "sample_gpt2.py", "--device", "cpu", "-e", tmp_path / "model_00000001.bin",
                  "-g", 8, *extra).stdout
    prefix = "Hello" if extra else ""
    assert samples(sampled) == [prefix + trained]
    assert len(trained) > 8


def test_readme_command_on_d12(d12_dir):
    out = run(d12_dir, "sample_gpt2.py", "-e", "gpt2_d12.bin", "--prompt", "First Citizen:", "--device", "cpu",
              "-g", 4).stdout
    assert out.startswith("gpt2_d12.bin: 12 layers, 768 channels, 124,475,904 parameters, cpu fp32 | prompt 4 tokens")
    assert samples(out)[0].startswith("First Citizen:") and len(samples(out)) == 1


# ----------------------------------------------------------------------------
# the GPU path on the fake GPU

def test_sample_program_on_fake_gpu(monkeypatch, capsys, small_model_file, d12_dir):
    """--device cuda --precision fp32 on the emulated GPU (forwards of 64 positions, logits copied to the
    host) gives the CPU's greedy tokens."""
    import fake_gpu
    program = load_program("sample_gpt2_under_test", "sample_gpt2.py")
    args = ["-e", str(small_model_file), "--tokenizer", str(d12_dir / "gpt2_tokenizer.bin"), "--prompt", PROMPT,
            "-g", 6, "--top-k", 1]
    monkeypatch.setattr(sys, "argv", ["sample_gpt2.py", *map(str, args), "--device", "cpu"])
    assert program.main() == 0
    cpu = capsys.readouterr().out
    fake_gpu.install(monkeypatch, emulate=True)
    monkeypatch.setattr(sys, "argv", ["sample_gpt2.py", *map(str, args), "--device", "cuda", "--precision", "fp32"])
    assert program.main() == 0
    gpu = capsys.readouterr().out
    assert "cuda fp32" in gpu.splitlines()[0]
    assert samples(gpu) == samples(cpu) and len(samples(cpu)[0]) > len(PROMPT)
