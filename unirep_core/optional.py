"""One helper for optional imports, so a missing package names the extra that installs it."""
from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require"]


def require(module: str, *, extra: str | None, package: str | None = None) -> ModuleType:
    """Import ``module`` or raise an ImportError that says what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        what = f'pip install "unirep[{extra}]"' if extra else f"pip install {package or module}"
        raise ImportError(f"{module} is required for this feature: {what}") from e
