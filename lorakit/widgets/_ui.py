"""What every course widget shares: a friendly text before it runs, one-line errors, plots as PNG images.

* **Before the cell runs** (a fresh clone, the site, GitHub) a widget output shows its ``text/plain`` form.
  ipywidgets makes that ``repr(widget)``, e.g. ``VBox(children=(SelectionSlider(...``; :class:`Panel`
  replaces it with one plain sentence saying what the widget is and that running the cell shows it.
* **Bad input** (``d_in = 0``, a rank the model cannot take) never puts a traceback inside a widget:
  :func:`guarded` runs an update and, when it raises, writes the error's first line into a message widget.
* **Plots** are drawn with matplotlib's object API (no pyplot state, nothing printed into the cell) and
  shown in an ``ipywidgets.Image``; replacing the image's bytes is what "the plot updates" means.
"""

from __future__ import annotations

import functools
import html
import io
from collections.abc import Callable

__all__ = ["Panel", "error_line", "figure", "guarded", "png_bytes"]


def _widgets():
    import ipywidgets

    return ipywidgets


def error_line(err: BaseException) -> str:
    """One line for a widget: ``"check the input: <first line of the message>"`` (no traceback)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if isinstance(err, (ValueError, TypeError, KeyError)):
        return f"check the input: {text}"
    return f"could not update ({type(err).__name__}): {text}"


def guarded(update: Callable[[], None], message) -> Callable[..., None]:
    """A callback that runs ``update()`` and shows any error as one line in ``message`` (an ipywidgets HTML)."""

    def run(*_: object) -> None:
        try:
            update()
        except Exception as err:  # noqa: BLE001 - a widget must never show a traceback
            message.value = f"<span style='color:#b00020'>{html.escape(error_line(err))}</span>"
        else:
            message.value = ""

    return run


def figure(width: float = 8.0, height: float = 3.2):
    """A matplotlib ``Figure`` not registered with pyplot (so nothing is displayed or leaked)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=90, layout="constrained")


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


@functools.lru_cache(maxsize=1)
def _panel_class():
    widgets = _widgets()

    class Panel(widgets.VBox):
        """A VBox whose plain-text form (shown before the cell runs) is one friendly sentence."""

        def __init__(self, children, title: str, **kwargs) -> None:
            super().__init__(children, **kwargs)
            self._friendly = f"[interactive] {title}: run this cell in Jupyter to use it."
            self.add_class("lorakit-widget")

        def __repr__(self) -> str:
            return self._friendly

    return Panel


def Panel(children, title: str, **kwargs):  # noqa: N802 - used like a class
    """A VBox of ``children`` whose ``text/plain`` form is ``"[interactive] <title>: run this cell ..."``."""
    return _panel_class()(children, title, **kwargs)
