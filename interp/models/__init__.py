"""Model loading by spec: the default GGUF, local Hugging Face folders, `.gguf` paths, tiny models."""

from interp.models.hooked import HookedModel
from interp.models.loader import DEFAULT_MODEL, SPECS, load_hf_model, load_model, resolve_spec

__all__ = ["HookedModel", "DEFAULT_MODEL", "SPECS", "load_hf_model", "load_model", "resolve_spec"]
