"""Shared test setup. Each section belongs to one area; add new fixtures in their own section."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# ----------------------------------------------------------------------------
# import paths: the repo root (llmc_py) and dev/data (data_common, which the dataset scripts share)

for _p in (REPO_ROOT, REPO_ROOT / "dev" / "data"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

# the fake GPU's checks are plain asserts in a helper module: let pytest explain them like a test's own
pytest.register_assert_rewrite("fake_gpu", "fake_cudnn")

# ----------------------------------------------------------------------------
# the programs, loaded as modules so that a test calls their main() in its own process


def load_program(name, path):
    """The program at `path` (relative to the repo root) imported as a new module called `name`."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

# ----------------------------------------------------------------------------
# shared test data: LLMC_TEST_DATA, default ../shared/data from the repo root

TEST_DATA_FILES = ("tinyshakespeare/input.txt", "gpt2/gpt2.tiktoken")


@pytest.fixture(scope="session")
def test_data_dir():
    """The shared data folder; skips the test when it is missing, except on CI (CI=true), where that fails."""
    folder = Path(os.environ.get("LLMC_TEST_DATA", REPO_ROOT.parent / "shared" / "data"))
    missing = [name for name in TEST_DATA_FILES if not (folder / name).is_file()]
    if missing:
        reason = f"shared test data missing in {folder} (set LLMC_TEST_DATA): {', '.join(missing)}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return folder


@pytest.fixture
def gpt2_tiktoken(test_data_dir, monkeypatch):
    """Points LLMC_GPT2_TIKTOKEN at the shared GPT-2 ranks file, so get_gpt2_encoding() works offline."""
    path = test_data_dir / "gpt2" / "gpt2.tiktoken"
    monkeypatch.setenv("LLMC_GPT2_TIKTOKEN", str(path))
    return path


@pytest.fixture(scope="session")
def tinyshakespeare_dir(test_data_dir, tmp_path_factory):
    """A folder holding tiny_shakespeare_val.bin and tiny_shakespeare_train.bin, made once per session
    by running dev/data/tinyshakespeare.py on the shared input.txt (its stdout is saved as stdout.txt)."""
    out = tmp_path_factory.mktemp("tinyshakespeare")
    env = dict(os.environ, LLMC_GPT2_TIKTOKEN=str(test_data_dir / "gpt2" / "gpt2.tiktoken"))
    cmd = [sys.executable, str(REPO_ROOT / "dev" / "data" / "tinyshakespeare.py"),
           "--input", str(test_data_dir / "tinyshakespeare" / "input.txt"), "--out-dir", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"tinyshakespeare.py exited {proc.returncode}: {proc.stderr.strip()}")
    (out / "stdout.txt").write_text(proc.stdout)
    return out

# ----------------------------------------------------------------------------
# model fixtures: the d12 random-init files that train_gpt2.py writes, built once into .fixtures/ and
# rebuilt whenever a source that shapes them changes (their hash is kept beside them)

FIXTURE_SOURCES = ("train_gpt2.py", "dev/data/tinyshakespeare.py", "dev/data/data_common.py",
                   "llmc_py/checkpoint.py", "llmc_py/config.py", "llmc_py/rand.py", "llmc_py/tokenizer.py",
                   "llmc_py/fileio.py", "llmc_py/dataloader.py")


def _sources_hash():
    import hashlib
    h = hashlib.sha256()
    for name in FIXTURE_SOURCES:
        h.update((REPO_ROOT / name).read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="session")
def d12_dir(test_data_dir):
    """A folder laid out like a user's run directory: gpt2_d12.bin, gpt2_d12_bf16.bin,
    gpt2_d12_debug_state.bin, gpt2_tokenizer.bin and dev/data/tinyshakespeare/*.bin."""
    folder = REPO_ROOT / ".fixtures" / "d12"
    stamp = folder / "sources.sha256"
    digest = _sources_hash()
    if stamp.is_file() and stamp.read_text() == digest:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, LLMC_GPT2_TIKTOKEN=str(test_data_dir / "gpt2" / "gpt2.tiktoken"))
    for cmd in ([sys.executable, str(REPO_ROOT / "dev" / "data" / "tinyshakespeare.py"),
                 "--input", str(test_data_dir / "tinyshakespeare" / "input.txt"),
                 "--out-dir", str(folder / "dev" / "data" / "tinyshakespeare")],
                [sys.executable, str(REPO_ROOT / "train_gpt2.py"), "--model", "d12", "--num_iterations", "0"]):
        proc = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            pytest.fail(f"{' '.join(cmd[1:3])} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    tmp = stamp.with_name(stamp.name + ".tmp")
    tmp.write_text(digest)
    os.replace(tmp, stamp)  # a new file: never written through a hard link that other copies of .fixtures share
    return folder
