"""Execute notebooks in place with the current environment's kernel (what `make execute` runs).

    python scripts/execute_notebooks.py notebooks/01_lora_forward.ipynb [...]

Prints each notebook's wall time, which the README's notebook map records.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def execute(path: Path) -> float:
    nb = nbformat.read(path, as_version=4)
    start = time.time()
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.time() - start
    nbformat.write(nb, path)
    return seconds


def main(paths: list[str]) -> None:
    for p in paths:
        print(f"{p}: {execute(Path(p)):.1f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
