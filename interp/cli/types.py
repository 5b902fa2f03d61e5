"""Argument types shared by every command: numbers checked for range and finiteness, devices and dtypes.

argparse calls these on the option's text (and on string defaults); a bad value becomes one usage
line and exit 2 before anything runs. Every numeric option of every command uses one of them, so
`--lr inf`, `--alpha nan` or `--batch-size -3` never reach the analysis.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable


def int_range(low: int | None, high: int | None = None) -> Callable[[str], int]:
    """A type for whole numbers in [low, high] (no bound where None: e.g. a layer, -1 the last, that the
    command checks against the model)."""
    if low is not None and high is not None:
        bound = f"a whole number from {low} to {high}"
    elif low is not None:
        bound = f"a whole number of {low} or more"
    else:
        bound = f"a whole number of {high} or less"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} is out of range; pass {bound}")
        return value

    parse.__name__ = f"int_{low}_{high}"
    return parse


def float_range(low: float | None = None, high: float | None = None, low_open: bool = False) -> Callable[[str], float]:
    """A type for finite numbers in [low, high] ((low, high] when `low_open`); inf and nan are refused."""
    if low is not None and high is not None:
        bound = f" in {'(' if low_open else '['}{low:g}, {high:g}]"
    elif low is not None:
        bound = f" above {low:g}" if low_open else f" of at least {low:g}"
    else:
        bound = ""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if (not math.isfinite(value) or (low is not None and (value <= low if low_open else value < low))
                or (high is not None and value > high)):
            raise argparse.ArgumentTypeError(f"must be a finite number{bound} (got {text})")
        return value

    parse.__name__ = f"float_{low}_{high}"
    return parse


integer = int_range(None)
positive_int = int_range(1)
nonneg_int = int_range(0)
finite_float = float_range()
positive_float = float_range(0.0, low_open=True)
nonneg_float = float_range(0.0)
probability = float_range(0.0, 1.0)
port = int_range(0, 65535)

DEVICE = re.compile(r"cpu|mps|cuda(?::(\d+))?")


def device(text: str) -> str:
    """A torch device that exists here: cpu, cuda, cuda:N or mps."""
    match = DEVICE.fullmatch(text)
    if not match:
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; use cpu, cuda, cuda:N or mps")
    if text == "cpu":
        return text
    import torch

    if text == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError("mps is not available on this machine; use --device cpu")
        return text
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise argparse.ArgumentTypeError(f"{text} asked for, but this machine has no CUDA device; use --device cpu")
    if match.group(1) is not None and int(match.group(1)) >= count:
        raise argparse.ArgumentTypeError(f"{text} does not exist: this machine has {count} CUDA device(s), "
                                         f"cuda:0..cuda:{count - 1}")
    return text


DTYPES = ("float32", "bfloat16", "float16")


def dtype(text: str) -> str:
    """A model dtype name: float32, bfloat16 or float16 (statistics that need precision stay float32 anyway)."""
    if text not in DTYPES:
        raise argparse.ArgumentTypeError(f"unknown dtype {text!r}; use {', '.join(DTYPES)}")
    return text
