"""A Python port of src/rng.rs (SplitMix64 streams keyed by (seed, purpose,
a, b), normals by Box-Muller in float64 rounded once to float32), written
from its documented algorithm so that fixtures can reproduce the noise the
Rust code draws. Python's math.log/cos/sin and Rust's f64 methods both call
the platform libm, so the float64 values agree and so do the float32 ones.
"""

import math

import numpy as np

MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15

# rng::Purpose discriminants.
PURPOSE_SAMPLE = 6
PURPOSE_BPD = 7


def mix64(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def key(seed, purpose, a, b):
    h = mix64(seed ^ GOLDEN)
    h = mix64(h ^ ((purpose * GOLDEN) & MASK))
    h = mix64(h ^ ((a * 0xD6E8FEB86659FD93) & MASK))
    return mix64(h ^ ((b * 0xA0761D6478BD642F) & MASK))


class Stream:
    def __init__(self, state):
        self.state = state

    def next_u64(self):
        self.state = (self.state + GOLDEN) & MASK
        return mix64(self.state)

    def uniform(self):
        return (self.next_u64() >> 11) * (1.0 / (1 << 53))

    def normal_pair(self):
        u1 = 1.0 - self.uniform()
        u2 = self.uniform()
        r = math.sqrt(-2.0 * math.log(u1))
        theta = 2.0 * math.pi * u2
        return r * math.cos(theta), r * math.sin(theta)

    def normals(self, n):
        """n standard normals as float32, like Stream::fill_normal."""
        out = []
        while len(out) < n:
            out.extend(self.normal_pair())
        return np.array(out[:n], dtype=np.float64).astype(np.float32)


def normals(seed, purpose, a, b, n):
    return Stream(key(seed, purpose, a, b)).normals(n)
