"""One figure style for every figure svfcheck draws (toy, real models, emergence, report).

Widths match the report page (:mod:`svfcheck.reports.html`): :data:`NARROW` is one column,
:data:`WIDE` the full page; at those sizes the page shows a figure at about 100%, so the text
sizes of :data:`RC` (nothing under 9 pt) hold on screen. Decorate drawing functions with
:func:`legible`; get pyplot through :func:`pyplot` (the Agg backend, no display needed).
"""

from __future__ import annotations

import functools

__all__ = ["NARROW", "WIDE", "RC", "pyplot", "legible"]

#: Figure widths in inches: one column of the report page, and the full page.
NARROW, WIDE = 5.5, 11.0
#: Text sizes (pt): nothing under 9 pt at the drawn size.
RC = {"font.size": 10, "axes.titlesize": 10.5, "axes.labelsize": 10, "xtick.labelsize": 9, "ytick.labelsize": 9,
      "legend.fontsize": 9, "legend.title_fontsize": 9, "figure.titlesize": 12}


def pyplot():
    """matplotlib.pyplot on the Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def legible(fn):
    """Draw (and save) the figure under :data:`RC`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with pyplot().rc_context(RC):
            return fn(*args, **kwargs)

    return wrapper
