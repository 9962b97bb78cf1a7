"""Progress bars for long loops: tqdm when asked for, nothing otherwise. Library calls pass
``progress=False`` by default; the CLI turns them on unless ``--no-progress`` or ``-q``."""
from __future__ import annotations


class Progress:
    """tqdm over a count (tokens, examples, steps); silent when ``enabled`` is False."""

    def __init__(self, total: int, desc: str, enabled: bool = False, unit: str = "tok"):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total or None, desc=desc, unit=unit, unit_scale=True,
                            dynamic_ncols=True, leave=True)

    def update(self, n: int = 1, **postfix) -> None:
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(**postfix)
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
