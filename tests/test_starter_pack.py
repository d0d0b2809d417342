"""dev/download_starter_pack.sh against a local stand-in for the Hugging Face Hub (no network here).

The stand-in answers as the Hub answers for a Git LFS file: the resolve URL redirects to a CDN URL and carries
x-linked-size and x-linked-etag (the SHA-256); the CDN URL serves the bytes and byte ranges. It can publish a
wrong checksum or size, or cut a transfer short, and it logs every request, so the tests see what the script
asked for (a resume is a GET with a Range header). The files served are the d12 fixture's tokenizer and
tinyshakespeare shards, which are byte-for-byte llm.c's, so the sizes the script fixes are checked too.
"""
import hashlib
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "dev" / "download_starter_pack.sh"
SHARDS = "dev/data/tinyshakespeare"


class Hub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, files):
        super().__init__(("127.0.0.1", 0), HubHandler)
        self.files = dict(files)        # name -> bytes served
        self.published = {}             # name -> (size, sha256) to publish instead of the true ones
        self.cut = {}                   # name -> bytes after which the next transfer of it is cut off
        self.plain = False              # answer like a plain mirror: no redirect, no x-linked headers
        self.log = []                   # (method, path, Range header)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/"


class HubHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.answer(body=False)

    def do_GET(self):
        self.answer(body=True)

    def answer(self, body):
        hub = self.server
        hub.log.append((self.command, self.path, self.headers.get("Range")))
        cdn = self.path.startswith("/cdn/")
        name = self.path.removeprefix("/cdn/").lstrip("/")
        if name not in hub.files:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = hub.files[name]
        if not cdn and not hub.plain:
            size, sha = hub.published.get(name, (len(data), hashlib.sha256(data).hexdigest()))
            self.send_response(302)
            self.send_header("Location", f"/cdn/{name}")
            self.send_header("X-Linked-Size", str(size))
            self.send_header("X-Linked-ETag", f'"{sha}"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if body:
            stop = hub.cut.pop(name, len(data)) if start == 0 else len(data)
            self.wfile.write(data[start:stop])
            self.wfile.flush()
            self.close_connection = True


@pytest.fixture
def hub(d12_dir):
    files = {"gpt2_tokenizer.bin": (d12_dir / "gpt2_tokenizer.bin").read_bytes(),
             "tiny_shakespeare_val.bin": (d12_dir / SHARDS / "tiny_shakespeare_val.bin").read_bytes(),
             "tiny_shakespeare_train.bin": (d12_dir / SHARDS / "tiny_shakespeare_train.bin").read_bytes(),
             "hellaswag_val.bin": bytes(range(256)) * 300}
    server = Hub(files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def run(hub_url, dest, *names, expect=0):
    proc = subprocess.run(["bash", str(SCRIPT), "-d", str(dest), *names], capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "LLMC_STARTER_PACK_URL": hub_url})
    assert proc.returncode == expect, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def gets(hub):
    return [(path, rng) for method, path, rng in hub.log if method == "GET" and path.startswith("/cdn/")]


def test_list_sizes_are_llmc_formats(d12_dir):
    """The sizes fixed in the script are those of files in llm.c's formats: the d12 files have GPT-2 124M's
    shape, and the tinyshakespeare shards are llm.c's."""
    out = subprocess.run(["bash", str(SCRIPT), "--list"], capture_output=True, text=True, check=True).stdout
    table = {name: (folder, size) for name, folder, size in (line.split() for line in out.splitlines())}
    size = lambda path: str(path.stat().st_size)  # noqa: E731
    assert table == {
        "gpt2_124M.bin": (".", size(d12_dir / "gpt2_d12.bin")),
        "gpt2_124M_bf16.bin": (".", size(d12_dir / "gpt2_d12_bf16.bin")),
        "gpt2_124M_debug_state.bin": (".", size(d12_dir / "gpt2_d12_debug_state.bin")),
        "gpt2_tokenizer.bin": (".", size(d12_dir / "gpt2_tokenizer.bin")),
        "tiny_shakespeare_train.bin": (SHARDS, size(d12_dir / SHARDS / "tiny_shakespeare_train.bin")),
        "tiny_shakespeare_val.bin": (SHARDS, size(d12_dir / SHARDS / "tiny_shakespeare_val.bin")),
        "hellaswag_val.bin": ("dev/data/hellaswag", "-")}


def test_download_check_and_rerun(hub, tmp_path):
    names = ["gpt2_tokenizer.bin", "tiny_shakespeare_val.bin", "hellaswag_val.bin"]
    out = run(hub.url, tmp_path, *names).stdout
    for name in names:
        place = tmp_path / ("." if name.startswith("gpt2") else SHARDS if name.startswith("tiny") else
                            "dev/data/hellaswag") / name
        assert place.read_bytes() == hub.files[name]
        assert f"{name}: downloaded and checked: {tmp_path}/" in out
    assert "[1/3] gpt2_tokenizer.bin (372108 bytes) -> " in out and "[3/3] hellaswag_val.bin -> " in out
    assert out.rstrip().endswith("all 3 files in place and checked")
    assert not list(tmp_path.rglob("*.part"))
    assert len(gets(hub)) == 3 and all(rng is None for _, rng in gets(hub))
    hub.log.clear()
    out = run(hub.url, tmp_path, *names).stdout
    assert out.count("already in place and checked") == 3 and gets(hub) == []


def test_interrupted_download_resumes(hub, tmp_path):
    name, full = "tiny_shakespeare_train.bin", 611544
    hub.cut[name] = 250000
    err = run(hub.url, tmp_path, name, expect=1).stderr
    part = tmp_path / SHARDS / f"{name}.part"
    have = part.stat().st_size
    assert 0 < have <= 250000 and not (tmp_path / SHARDS / name).exists()
    assert f"error: {name}: the download stopped at byte {have} of {full} (curl exit 18); run this again to resume" in err
    hub.log.clear()
    out = run(hub.url, tmp_path, name).stdout
    assert f"resuming {name} at byte {have} of {full}" in out
    assert gets(hub) == [(f"/cdn/{name}", f"bytes={have}-")]
    assert (tmp_path / SHARDS / name).read_bytes() == hub.files[name] and not part.exists()


def test_wrong_checksum_removes_the_download(hub, tmp_path):
    name = "tiny_shakespeare_val.bin"
    hub.published[name] = (66560, "0" * 64)
    err = run(hub.url, tmp_path, name, expect=1).stderr
    sha = hashlib.sha256(hub.files[name]).hexdigest()
    assert (f"error: {name}: the download is not the published file (SHA-256 {sha}, published {'0' * 64}); "
            f"removed it, run this again to download it anew") in err
    assert not list((tmp_path / SHARDS).iterdir())


def test_oversized_part_starts_over(hub, tmp_path):
    name = "gpt2_tokenizer.bin"
    (tmp_path / f"{name}.part").write_bytes(b"x" * 400000)
    run(hub.url, tmp_path, name)
    assert (tmp_path / name).read_bytes() == hub.files[name]
    assert gets(hub) == [(f"/cdn/{name}", None)]


def test_published_size_must_match_llmc_format(hub, tmp_path):
    name = "gpt2_tokenizer.bin"
    hub.published[name] = (372107, hashlib.sha256(hub.files[name]).hexdigest())
    err = run(hub.url, tmp_path, name, expect=1).stderr
    assert (f"error: {name}: the published file has 372107 bytes, llm.c's format makes it 372108; "
            f"not downloaded") in err
    assert gets(hub) == [] and not (tmp_path / name).exists()


def test_different_file_in_place_is_kept(hub, tmp_path):
    name = "gpt2_tokenizer.bin"
    (tmp_path / name).write_bytes(b"y" * 372108)
    err = run(hub.url, tmp_path, name, expect=1).stderr
    assert f"error: {name}: {tmp_path}/{name} exists but is not the published file (SHA-256 " in err
    assert "move it away to download it" in err
    assert (tmp_path / name).read_bytes() == b"y" * 372108 and gets(hub) == []


def test_plain_mirror_checks_size_only(hub, tmp_path):
    hub.plain = True
    out = run(hub.url, tmp_path, "hellaswag_val.bin").stdout
    assert "note: hellaswag_val.bin: 127.0.0.1" in out and "publishes no SHA-256 for it; checking its size only" in out
    assert (tmp_path / "dev/data/hellaswag/hellaswag_val.bin").read_bytes() == hub.files["hellaswag_val.bin"]


def test_missing_on_server(hub, tmp_path):
    del hub.files["tiny_shakespeare_val.bin"]
    err = run(hub.url, tmp_path, "tiny_shakespeare_val.bin", "gpt2_tokenizer.bin", expect=1).stderr
    assert "error: tiny_shakespeare_val.bin: cannot look it up at " in err and "(HTTP 404)" in err
    assert "1 of 2 files not in place" in err
    assert (tmp_path / "gpt2_tokenizer.bin").exists()  # the others still come


def test_offline_is_one_clear_message(tmp_path):
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as closed:
        url = f"http://127.0.0.1:{closed.server_address[1]}/"
    err = run(url, tmp_path, expect=1).stderr
    assert err.startswith(f"error: cannot reach 127.0.0.1:{url.split(':')[2][:-1]} (curl: (7) ")
    assert "the starter pack needs network access; files already in place stay, and a later run resumes" in err
    assert len(err.strip().splitlines()) == 1


def test_bad_arguments(tmp_path):
    for args, message in ((["gpt2_125M.bin"], "error: gpt2_125M.bin: not a starter pack file (see --list)"),
                          (["--fast"], "error: --fast: unknown option"), (["-d"], "error: -d: expected a folder")):
        proc = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1 and proc.stderr.startswith(message)
