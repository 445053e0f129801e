"""zoomshot: the package namespace of the pipeline's folders (`zoomshot.cache`, `zoomshot.extract`, ...).

`from zoomshot import load_model` loads an exported model (`pipeline export`) the way
`open_clip.create_model_and_transforms` + `get_tokenizer` do. Imported lazily, so `import zoomshot.cache`
stays free of model code.
"""
from __future__ import annotations

from typing import Any

__all__ = ["load_model"]


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from zoomshot.export.model import load_model
        return load_model
    raise AttributeError(f"module 'zoomshot' has no attribute {name!r}")
