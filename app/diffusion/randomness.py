"""Counter-based random numbers: every draw is a pure function of (seed, step, position, purpose).

A `torch.Generator` per request makes a request's numbers depend on how many it drew before, so
rows cannot share one batched kernel without drawing in a fixed order. Hashing the draw's
coordinates instead (SplitMix64's finaliser, as in counter-based generators such as Philox) gives
each request the same numbers alone or in any batch, on any device, in plain int64 tensor ops:
a batched step needs no per-row generator and no sequential draws.
"""

from __future__ import annotations

from enum import IntEnum

import torch


class Purpose(IntEnum):
    """What a draw is for: different purposes at the same coordinates are independent."""

    REMASK = 1  # random remasking: does a masked position stay masked this step?
    TOKEN = 2  # which token a revealed position gets
    LENGTH = 3  # where a length-first story ends (drawn once, at step 0, position 0)
    END = 4  # calibrated endings: does a revealed position end the story?
    REVISE = 5  # revision sampling: does a written word return to the mask this step?


def _signed(value: int) -> int:
    """A 64-bit constant as the int64 that has its bits (torch has no uint64 arithmetic)."""
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX_1 = _signed(0xBF58476D1CE4E5B9)
_MIX_2 = _signed(0x94D049BB133111EB)


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns (torch's >> is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _mix(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser: a bijection on 64-bit words that scatters every input bit."""
    z = (z ^ _shift_right(z, 30)) * _MIX_1  # int64 products wrap modulo 2**64
    z = (z ^ _shift_right(z, 27)) * _MIX_2
    return z ^ _shift_right(z, 31)


def counter_hash(seed: torch.Tensor, step: torch.Tensor, position: torch.Tensor, purpose: Purpose) -> torch.Tensor:
    """64 random bits (as int64) for each broadcast (seed, step, position) and `purpose`."""
    h = _mix(seed * _GOLDEN + int(purpose))
    h = _mix(h + (step + 1) * _GOLDEN)
    return _mix(h + (position + 1) * _GOLDEN)


def uniform(seed: torch.Tensor, step: torch.Tensor, position: torch.Tensor, purpose: Purpose) -> torch.Tensor:
    """Float64 uniforms in [0, 1) from the top 53 bits of `counter_hash`, broadcast over the inputs."""
    bits = _shift_right(counter_hash(seed, step, position, purpose), 11)
    return bits.to(torch.float64) * 2.0**-53
