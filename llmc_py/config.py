"""GPT-2 model configuration and the parameter layout shared by every file format and both devices.

The layout is llm.c's: 16 tensors concatenated in a fixed order with a leading layer dimension on the
per-layer ones, so a whole model is one flat buffer and each tensor is a view into it. The vocabulary is
padded to a multiple of 128 rows (zeros) so the classifier matmul has friendly shapes; only the first
`vocab_size` logits are ever real.
"""
from dataclasses import dataclass

from llmc_py import LlmcError

VOCAB_SIZE = 50257
PADDED_VOCAB_SIZE = 50304

PARAM_NAMES = ("wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb",
               "ln2w", "ln2b", "fcw", "fcb", "fcprojw", "fcprojb", "lnfw", "lnfb")
# Tensors that get weight decay: the 2-D weight matrices and the embeddings.
DECAYED = (0, 1, 4, 6, 10, 12)
# Tensors with a leading layer dimension (2..13): ZeRO-1 shards these per layer slice.
LAYERED = tuple(range(2, 14))

# GPT-2 family: depth -> (channels, heads), max sequence length 1024.
GPT2_DEPTHS = {6: (384, 6), 12: (768, 12), 24: (1024, 16), 36: (1280, 20), 48: (1600, 25),
               60: (1920, 30), 72: (2880, 30), 84: (3456, 36)}
# GPT-3 family: channels -> (depth, head size), max sequence length 2048.
GPT3_CHANNELS = {384: (6, 64), 768: (12, 64), 1024: (24, 64), 1536: (24, 96), 2048: (24, 128),
                 2560: (32, 80), 4096: (32, 128), 5140: (40, 128), 12288: (96, 128)}


@dataclass(frozen=True)
class GPT2Config:
    max_seq_len: int
    vocab_size: int
    padded_vocab_size: int
    num_layers: int
    num_heads: int
    channels: int

    def param_shapes(self):
        """The 16 tensor shapes in file order."""
        maxT, Vp, L, C = self.max_seq_len, self.padded_vocab_size, self.num_layers, self.channels
        return ((Vp, C), (maxT, C), (L, C), (L, C), (L, 3 * C, C), (L, 3 * C), (L, C, C), (L, C),
                (L, C), (L, C), (L, 4 * C, C), (L, 4 * C), (L, C, 4 * C), (L, C), (C,), (C,))

    def param_sizes(self):
        sizes = []
        for shape in self.param_shapes():
            n = 1
            for d in shape:
                n *= d
            sizes.append(n)
        return sizes

    def param_offsets(self):
        offsets, total = [], 0
        for n in self.param_sizes():
            offsets.append(total)
            total += n
        return offsets

    @property
    def num_parameters(self):
        return sum(self.param_sizes())

    def validate(self, source):
        """Raises LlmcError (naming `source`) if the dimensions cannot describe a GPT-2."""
        fields = dict(max_seq_len=self.max_seq_len, vocab_size=self.vocab_size,
                      padded_vocab_size=self.padded_vocab_size, num_layers=self.num_layers,
                      num_heads=self.num_heads, channels=self.channels)
        for name, value in fields.items():
            if value <= 0:
                raise LlmcError(f"{source}: expected a positive {name}, found {value}")
        if self.padded_vocab_size < self.vocab_size:
            raise LlmcError(f"{source}: padded_vocab_size {self.padded_vocab_size} is smaller than "
                            f"vocab_size {self.vocab_size}")
        if self.channels % self.num_heads != 0:
            raise LlmcError(f"{source}: channels {self.channels} is not divisible by num_heads {self.num_heads}")


def config_from_descriptor(descriptor):
    """Model descriptors of llm.c's -e flag: dN, gpt2:dN (GPT-2 depths) and gpt3:cC (GPT-3 widths)."""
    spec = descriptor
    if spec.startswith("gpt2:"):
        spec = spec[len("gpt2:"):]
    if spec.startswith("d") and spec[1:].isdigit() and int(spec[1:]) in GPT2_DEPTHS:
        depth = int(spec[1:])
        channels, heads = GPT2_DEPTHS[depth]
        return GPT2Config(1024, VOCAB_SIZE, PADDED_VOCAB_SIZE, depth, heads, channels)
    if spec.startswith("gpt3:c") and spec[6:].isdigit() and int(spec[6:]) in GPT3_CHANNELS:
        channels = int(spec[6:])
        depth, head_size = GPT3_CHANNELS[channels]
        if channels % head_size != 0:
            raise LlmcError(f"-e {descriptor}: channels {channels} is not a multiple of the head size {head_size}")
        return GPT2Config(2048, VOCAB_SIZE, PADDED_VOCAB_SIZE, depth, channels // head_size, channels)
    raise LlmcError(f"-e {descriptor}: expected a .bin checkpoint or a model descriptor "
                    f"(d6, d12, d24, d36, d48, d60, d72, d84, gpt2:dN, gpt3:cC)")
