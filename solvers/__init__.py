"""Built-in allocators, one module each; importing this package registers them by name."""

from __future__ import annotations

__all__: list[str] = []
