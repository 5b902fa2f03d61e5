"""Turn a `--model` spec into a TransformerLens `HookedTransformer` or `TransformerBridge`, fully offline.

Every spec resolves to a local Hugging Face folder first (the GGUF and the tiny models are written
into the cache as such folders), and one path turns a folder into a hooked model. Weights are loaded
without folding or centering, so every activation equals the Hugging Face model's own.
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from interp.cache import cache_dir
from interp.errors import InterpError
from interp.models import gguf, tiny

DEFAULT_MODEL = "smollm2-135m"
SPECS = (DEFAULT_MODEL, *tiny.TINY_SPECS)
SPEC_HELP = f"use one of {', '.join(SPECS)}, a Hugging Face model folder or a .gguf path"
# The architectures whose folders load and match transformers in the tests (TransformerLens converts more).
TESTED_ARCHITECTURES = ("LlamaForCausalLM", "Gemma2ForCausalLM", "GPT2LMHeadModel")
# How `load_model` may build the model: "auto" tries HookedTransformer first, then TransformerBridge.
LOADERS = ("auto", "hooked-transformer", "transformer-bridge")
# Config attributes TransformerLens's converter reads that transformers 5 dropped: old name -> current name.
LEGACY_CONFIG_NAMES = {"n_ctx": "n_positions"}

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _build_atomically(folder: Path, build) -> Path:
    """Build into a temporary sibling, then rename: an interrupted build never leaves half a cache."""
    if (folder / "config.json").is_file():
        return folder
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        build(tmp)
        if not (folder / "config.json").is_file():
            tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def spec_name(spec: str) -> str:
    """A model's short name: a built-in spec itself, else its folder name or `.gguf` file stem, so that the same
    model loaded through another path (relative, absolute, a copy under the same name) keeps its name. A built-in
    model's cache folder (`<spec>-<content key>`) is named by its spec, and so is the default model's GGUF file
    passed by its path (an SAE trained on `smollm2-135m` fits `--model .../SmolLM2-135M-Instruct.Q4_1.gguf`)."""
    if spec in SPECS:
        return spec
    path = Path(spec).expanduser()
    if path.name == gguf.DEFAULT_GGUF:
        return DEFAULT_MODEL
    if path.parent.resolve() == cache_dir("models").resolve():
        for builtin in SPECS:
            if path.name.startswith(builtin + "-"):
                return builtin
    return path.stem if path.suffix == ".gguf" else path.name


def resolve_spec(spec: str) -> Path:
    """The local Hugging Face folder for `spec`, converting or building it on first use."""
    if not spec.strip():
        raise InterpError(f"the model spec is empty; {SPEC_HELP}")
    if spec == DEFAULT_MODEL:
        path = gguf.default_gguf_path()
        folder = cache_dir("models") / f"{DEFAULT_MODEL}-{gguf.DEFAULT_SHA256[:12]}"
        if not (folder / "config.json").is_file():
            gguf.check_default_gguf(path)
            print(f"converting {path.name} to float32 once (about 20 s)...", file=sys.stderr)
        return _build_atomically(folder, lambda tmp: gguf.convert_gguf(path, tmp))
    if spec in tiny.TINY_SPECS:
        folder = cache_dir("models") / f"{spec}-{tiny.cache_key(spec)}"
        return _build_atomically(folder, lambda tmp: tiny.write_tiny_model(spec, tmp))
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise InterpError(f"GGUF file {path} not found; pass an existing .gguf path")
        key = gguf.sha256_of(path)[:12]
        folder = cache_dir("models") / f"{path.stem}-{key}"
        return _build_atomically(folder, lambda tmp: gguf.convert_gguf(path.resolve(), tmp))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InterpError(f"{path} has no config.json; pass a Hugging Face model folder")
        return path.resolve()
    raise InterpError(f"unknown model spec {spec!r}; {SPEC_HELP}")


def _neutral_path(folder: Path) -> str:
    """A link to `folder` whose name has no model-family words.

    TransformerLens guesses the architecture from words such as "llama" or "gemma" in the name and
    then skips reading config.json; a neutral name makes it read the folder's own config.
    """
    import hashlib

    link = cache_dir("links") / hashlib.sha1(str(folder).encode()).hexdigest()[:16]
    if not link.exists():
        try:
            link.symlink_to(folder, target_is_directory=True)
        except FileExistsError:
            pass
    return str(link)


@contextlib.contextmanager
def _loading(folder: Path):
    """Turn a failure to read or convert the model in `folder` (a config that does not match its weights,
    an architecture TransformerLens cannot convert, a broken file) into a one-line InterpError."""
    try:
        yield
    except InterpError:
        raise
    except (OSError, ValueError, KeyError, AttributeError, TypeError, RuntimeError) as e:  # and NotImplementedError
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        detail = " ".join(lines[:2] if lines[0].endswith(":") else lines[:1])  # "Error(s) ...:" + the first one
        detail = detail.replace(_neutral_path(folder), str(folder))
        raise InterpError(f"cannot load the model in {folder} ({detail}); pass a complete save_pretrained folder "
                          f"(config.json matching the weights) of a causal LM that transformers loads, such as "
                          f"{' or '.join(TESTED_ARCHITECTURES)}") from e


@contextlib.contextmanager
def _legacy_config_names():
    """While TransformerLens converts a config, give it the attribute names that transformers 5 dropped
    and its converter still reads (GPT-2's `n_ctx` is `n_positions` now)."""
    from transformer_lens import loading_from_pretrained as loading

    auto = loading.AutoConfig

    class AutoConfigWithLegacyNames:
        @staticmethod
        def from_pretrained(*args, **kwargs):
            config = auto.from_pretrained(*args, **kwargs)
            for old, new in LEGACY_CONFIG_NAMES.items():
                if not hasattr(config, old) and hasattr(config, new):
                    setattr(config, old, getattr(config, new))
            return config

    loading.AutoConfig = AutoConfigWithLegacyNames
    try:
        yield
    finally:
        loading.AutoConfig = auto


def load_hf_model(spec: str = DEFAULT_MODEL, dtype: torch.dtype = torch.float32):
    """The plain Hugging Face model and tokenizer for `spec` (for comparisons and saving)."""
    return _load_hf_folder(resolve_spec(spec), dtype)


def _load_hf_folder(folder: Path, dtype: torch.dtype, **model_kwargs):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per load drowns the useful progress output
    with _loading(folder):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **model_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    model.eval()
    return model, tokenizer


def _safetensors_files(folder: Path) -> list[Path]:
    """The folder's weight files (sharded: those its index names), or [] when it has none (a .bin folder)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        import json

        return [folder / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    single = folder / "model.safetensors"
    return [single] if single.is_file() else []


def _load_hf_lean(folder: Path, dtype: torch.dtype):
    """The Hugging Face model of `folder` in `dtype`, holding one copy of its weights at any time.

    transformers memory-maps safetensors files: every page it reads stays resident until the files close,
    so loading a float32 file as bfloat16 peaks at 1.5x the float32 size. Read with plain reads (safetensors'
    pread backend) each tensor is cast on arrival and the peak is the weights in `dtype`. Folders of .bin
    files load as transformers loads them.
    """
    files = _safetensors_files(folder)
    if not files:
        return _load_hf_folder(folder, dtype)
    from safetensors import safe_open
    from transformers import AutoConfig, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    with _loading(folder):
        config = AutoConfig.from_pretrained(folder)
        if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
            return _load_hf_folder(folder, dtype)
        readers = [safe_open(str(f), framework="pt", backend="pread") for f in files]
        lazy = {name: r.get_slice(name) for r in readers for name in r.keys()}  # read as the model takes them
        model = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)].from_pretrained(None, config=config, state_dict=lazy,
                                                                          dtype=dtype)
        del lazy, readers
        tokenizer = AutoTokenizer.from_pretrained(folder)
    model.eval()
    return model, tokenizer


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A model dtype from its name ("float32", "bfloat16", "float16") or itself; others are refused."""
    if isinstance(dtype, str):
        if dtype.removeprefix("torch.") not in DTYPES:
            raise InterpError(f"unknown dtype {dtype!r}; use {', '.join(DTYPES)}")
        return DTYPES[dtype.removeprefix("torch.")]
    if dtype not in DTYPES.values():
        raise InterpError(f"dtype {dtype} is not supported for models; use {', '.join(DTYPES)}")
    return dtype


def load_model(spec: str = DEFAULT_MODEL, device: str = "cpu", dtype: torch.dtype | str = torch.float32,
               loader: str = "auto", n_devices: int = 1, device_map: str | None = None):
    """A hooked model for `spec`, its weights in `dtype`
    (float32, bfloat16 or float16, a torch dtype or its name) on `device`.

    A `HookedModel` (TransformerLens's `HookedTransformer`, with the fused fast paths) where TransformerLens
    converts the architecture, else a `BridgeModel` (TransformerLens's `TransformerBridge` around the Hugging Face
    model) for any causal LM transformers loads; `loader` forces one ("hooked-transformer", "transformer-bridge")
    and `model.loader` says which built it. Both fire the same hook names.

    Bigger than one device: `n_devices` > 1 splits a `HookedModel`'s layers over cuda:0..N-1 (TransformerLens's
    pipeline split: the residual moves to the next GPU between blocks); `device_map="auto"` lets
    transformers/accelerate place the Hugging Face model over every GPU (then CPU memory, then disk) and wraps
    it in a `BridgeModel`.

    No BOS token is prepended by default (SmolLM2's tokenizer adds none either); `model.cfg.spec`
    remembers the spec so results can say which model made them.
    """
    try:
        torch.device(device)
    except RuntimeError as e:  # not to be taken for a broken model below
        raise InterpError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from e
    dtype = as_dtype(dtype)
    if loader not in LOADERS:
        raise InterpError(f"unknown loader {loader!r}; use {', '.join(LOADERS)}")
    check_placement(device, n_devices, device_map, loader)
    folder = resolve_spec(spec)
    bridge_only = loader == "transformer-bridge" or device_map is not None
    cfg = None if bridge_only else _hooked_config(folder, device, dtype, n_devices)
    if cfg is not None:
        model = _load_hooked(folder, cfg, device, dtype)
    elif loader == "hooked-transformer":
        raise InterpError(f"TransformerLens's HookedTransformer cannot convert the model in {folder}; "
                          f"load it with loader='auto' (through TransformerBridge)")
    elif n_devices > 1:
        raise InterpError(f"n_devices splits HookedTransformer models only; load the model in {folder} with "
                          "device_map='auto' (--device-map auto) instead")
    else:
        model = _load_bridged(folder, device, dtype, device_map)
    model.cfg.spec = spec
    model.cfg.model_name = spec_name(spec)
    return model


def check_placement(device: str, n_devices: int, device_map: str | None, loader: str = "auto") -> None:
    """Raise a one-line InterpError unless the placement options can work here (before anything loads)."""
    if device_map not in (None, "auto"):
        raise InterpError(f"unknown device map {device_map!r}; use auto")
    if device_map is not None and loader == "hooked-transformer":
        raise InterpError("device_map='auto' places a Hugging Face model: use loader='auto' or 'transformer-bridge'")
    if n_devices < 1:
        raise InterpError(f"n_devices must be 1 or more (got {n_devices})")
    if n_devices == 1:
        return
    if device_map is not None:
        raise InterpError("pass either --n-devices or --device-map auto, not both")
    if torch.device(device).type != "cuda":
        raise InterpError(f"--n-devices {n_devices} splits the layers over CUDA devices; pass --device cuda")
    available = torch.cuda.device_count() - (torch.device(device).index or 0)
    if available < n_devices:
        raise InterpError(f"--n-devices {n_devices} needs {n_devices} CUDA devices from {device}; this machine has "
                          f"{max(available, 0)}: pass --n-devices {max(available, 1)} or --device-map auto")


def _split_layers(model) -> None:
    """Place a `HookedTransformer` as its forward pass expects with `cfg.n_devices` > 1: the embeddings on the
    first block's device, block i on TransformerLens's `get_device_for_block_index(i)` (consecutive layers
    share a GPU), the final norm and unembedding with the last block."""
    from transformer_lens.utilities.multi_gpu import get_device_for_block_index

    place = [get_device_for_block_index(i, model.cfg) for i in range(model.cfg.n_layers)]
    for name, module in model.named_children():
        if name == "blocks":
            for block, device in zip(module, place):
                block.to(device)
        else:
            module.to(place[-1] if name in ("ln_final", "unembed") else place[0])


def _hooked_config(folder: Path, device: str, dtype: torch.dtype, n_devices: int = 1):
    """TransformerLens's `HookedTransformer` config for the model in `folder` (read first: it fails fast, before
    the weights load), or None when TransformerLens does not map its architecture."""
    from transformer_lens import loading_from_pretrained as loading

    with _loading(folder), _legacy_config_names():
        try:
            return loading.get_pretrained_model_config(
                _neutral_path(folder), fold_ln=False, device=device, dtype=dtype, default_prepend_bos=False,
                n_devices=n_devices,
            )
        except NotImplementedError:  # "<Architecture> is not currently supported."
            return None


def _load_bridged(folder: Path, device: str, dtype: torch.dtype, device_map: str | None = None):
    """A `BridgeModel` around the Hugging Face model in `folder` (eager attention, so patterns can be hooked),
    on `device`, or placed by accelerate with `device_map`."""
    from interp.models.bridge import boot_bridge, check_bridge_supports

    with _loading(folder):
        check_bridge_supports(folder)  # before the weights load
    placement = {"device_map": device_map} if device_map else {}
    hf_model, tokenizer = _load_hf_folder(folder, dtype, attn_implementation="eager", **placement)
    with _loading(folder):
        return boot_bridge(folder, hf_model if device_map else hf_model.to(device), tokenizer)


def _return_freed_memory() -> None:
    """Hand memory freed inside the C heap back to the system (glibc keeps it resident otherwise, so a model's
    weights freed one by one while its copy fills would still count twice); a no-op without glibc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, Windows, musl)
        pass


def _load_hooked(folder: Path, cfg, device: str, dtype: torch.dtype):
    """A `HookedModel` with the fused fast paths, its weights converted from the Hugging Face model in `folder`."""
    from transformer_lens import loading_from_pretrained as loading

    from interp.models.fast import install_fast_paths
    from interp.models.hooked import HookedModel

    hf_model, tokenizer = _load_hf_lean(folder, dtype)  # resolving again would re-hash a .gguf
    with _loading(folder), contextlib.redirect_stdout(io.StringIO()):  # TransformerLens prints while loading
        state = loading.get_pretrained_state_dict(_neutral_path(folder), cfg, hf_model=hf_model, dtype=dtype)
        del hf_model  # its tensors now live on only as the state's views, each freed once loaded below
        gc.collect()  # the Hugging Face modules hold reference cycles
        cfg.init_weights = False  # every weight is overwritten: untouched (so unallocated) until then
        model = HookedModel(cfg, tokenizer, move_to_device=False, default_padding_side="right")
        model.cfg.init_weights = True
        if any("W_" in name and name not in state for name, _ in model.named_parameters()):
            model.init_weights()  # TransformerLens fills a missing weight from the model, so it must be one
        # As load_and_process_state_dict with every processing off, less its float32 round trip of the whole
        # state (two extra copies at once), and one weight at a time, each freed once copied
        state = model.fill_missing_keys(state)
        for i, name in enumerate(list(state)):
            owner, _, key = name.rpartition(".")  # loaded by its own module: the model's walks all 940 (4 s)
            model.get_submodule(owner).load_state_dict({key: state.pop(name)}, strict=False)
            if i % 16 == 15:
                _return_freed_memory()
        _return_freed_memory()
    with contextlib.redirect_stdout(io.StringIO()):  # and while moving devices
        if cfg.n_devices > 1:
            _split_layers(model)
        else:
            model.to(device)
    install_fast_paths(model)
    model.eval()
    return model
