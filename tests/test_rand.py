"""MT19937 and normal_ against torch's CPU generator and llm.c's reference vectors; xorshift64*."""
import numpy as np
import pytest
import torch

from llmc_py import LlmcError
from llmc_py.rand import MT19937, MT_STATE_BYTES, random_f32, random_u32


def test_reference_vectors():
    """llm.c's rand.h vectors (seed 137), produced by torch."""
    rng = MT19937(137)
    assert [rng.randint32() for _ in range(5)] == [4053805790, 2173880614, 380293709, 1237255315, 2986595568]
    expected8 = [0.7947664260864258, 1.4369317293167114, -0.2292192131280899, 0.47556325793266296,
                 -0.6334410905838013, -0.5791953802108765, -0.0925704762339592, -0.8659197092056274]
    assert rng.normal_(8).tolist() == pytest.approx(expected8, abs=1e-7)
    assert rng.randint32() == 2186503452
    expected16 = [-1.2813878059387207, -2.646395683288574, -0.06569503247737885, 0.2180829495191574,
                  -0.46536165475845337, -0.33108410239219666, 2.5485482215881348, 0.10425379872322083,
                  0.8460659980773926, 0.9462448358535767, -0.2913765013217926, 0.34313806891441345,
                  -1.1186704635620117, -0.18305328488349915, -2.3153159618377686, 0.3961987793445587]
    assert rng.normal_(16).tolist() == np.float32(expected16).tolist()  # bit for bit
    assert rng.randint32() == 2756748748


@pytest.mark.parametrize("seed,n,mean,std", [(42, 16, 0.0, 0.02), (7, 37, 0.0, 1.0), (1337, 4099, 0.5, 3.0),
                                             (42, 100_003, 0.0, 0.02 / np.sqrt(24))])
def test_normal_matches_torch_bitwise(seed, n, mean, std):
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("torch's generic CPU build rounds normal_'s log/sin/cos differently")
    expected = torch.empty(n).normal_(mean, std, generator=torch.Generator().manual_seed(seed)).numpy()
    got = MT19937(seed).normal_(n, mean, std)
    assert got.view(np.uint32).tolist() == expected.view(np.uint32).tolist()


def test_randfloat32_and_draw_count_follow_torch():
    g = torch.Generator().manual_seed(5)
    rng = MT19937(5)
    expected = torch.empty(1000).uniform_(generator=g).numpy()  # 24-bit floats from one u32 each
    assert np.array_equal(rng.randfloat32(1000), expected)
    # normal_ of 20 values consumes 20 + 16 draws (the last 16 are redrawn); both streams stay aligned
    torch.empty(20).normal_(generator=g)
    rng.normal_(20)
    assert np.array_equal(rng.randfloat32(10), torch.empty(10).uniform_(generator=g).numpy())


def test_state_bytes_round_trip():
    rng = MT19937(42)
    rng.randint32(1000)
    raw = rng.state_bytes()
    assert len(raw) == MT_STATE_BYTES == 2520
    again = MT19937.from_state_bytes(raw)
    assert np.array_equal(again.randint32(2000), rng.randint32(2000))
    fresh = MT19937(42).state_bytes()
    assert np.frombuffer(fresh, "<i4", count=1, offset=8)[0] == 1  # left_ = 1 after seeding
    with pytest.raises(LlmcError, match="expected a 2520-byte Mersenne Twister state, found 2519 bytes"):
        MT19937.from_state_bytes(raw[:-1])


def test_xorshift_against_uint64_arithmetic():
    state, s = 13371337, np.uint64(13371337)
    with np.errstate(over="ignore"):
        for _ in range(100):
            s ^= s >> np.uint64(12)
            s ^= s << np.uint64(25)
            s ^= s >> np.uint64(27)
            expected = int((s * np.uint64(0x2545F4914F6CDD1D)) >> np.uint64(32))
            value, state = random_u32(state)
            assert value == expected and state == int(s)
    f, _ = random_f32(1337)
    assert 0.0 <= f < 1.0 and f * 16777216 == int(f * 16777216)
