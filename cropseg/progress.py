"""Progress reporting without a UI dependency in the core.

Long-running stage functions accept ``progress: ProgressCallback | None`` and call it as
``progress(description, completed, total)``. The CLI turns these calls into rich progress bars;
library users may pass any callable or nothing.
"""

from __future__ import annotations

from collections.abc import Callable

ProgressCallback = Callable[[str, int, int], None]


def report(progress: ProgressCallback | None, description: str, completed: int, total: int) -> None:
    """Call ``progress`` if one was given."""
    if progress is not None:
        progress(description, completed, total)
