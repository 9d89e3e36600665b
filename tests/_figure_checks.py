"""Checks that a matplotlib figure is legible, shared by test_plot.py and test_report.py.

Everything is measured on the drawn figure (artists, their window extents after
``fig.canvas.draw()``), never taken from ctframe.plot.
"""

from __future__ import annotations

import re
from itertools import combinations

#: A snake_case identifier (a column name) in a title: two lowercase words joined by "_".
SNAKE_CASE = re.compile(r"\b[a-z][a-z0-9]*_[a-z0-9_]+\b")
#: A unit a value axis of a table figure must name.
UNITS = ("mL", "HU", "%", "mm²", "mm", "voxels")


def data_artists(ax) -> int:
    """How many things with data an Axes draws (lines with points, bars and steps, images, collections)."""
    lines = [line for line in ax.lines if len(line.get_xdata()) > 0]
    return len(lines) + len(ax.patches) + len(ax.images) + len(ax.collections)


def _overlaps(boxes) -> list[tuple[int, int]]:
    return [(i, j) for (i, a), (j, b) in combinations(enumerate(boxes), 2) if a.overlaps(b)]


def shown_tick_labels(axis) -> list:
    """The major tick labels matplotlib draws: visible, not empty, their tick inside the view limits."""
    low, high = sorted(axis.get_view_interval())
    span = high - low
    return [
        tick.label1
        for tick in axis.get_major_ticks()
        if tick.label1.get_visible() and tick.label1.get_text().strip()
        and low - 1e-9 * span <= tick.get_loc() <= high + 1e-9 * span
    ]  # fmt: skip


def tick_label_overlaps(fig) -> list[str]:
    """Pairs of visible, non-empty tick labels of one axis whose drawn boxes overlap."""
    renderer = fig.canvas.get_renderer()
    problems = []
    for k, ax in enumerate(fig.axes):
        for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            labels = shown_tick_labels(axis)
            boxes = [t.get_window_extent(renderer).shrunk(0.98, 0.98) for t in labels]
            for i, j in _overlaps(boxes):
                problems.append(
                    f"axes {k} ({ax.get_label()}) {name}: {labels[i].get_text()!r} / {labels[j].get_text()!r}"
                )
    return problems


def cut_off_texts(fig) -> list[str]:
    """Visible texts (titles, notes, labels, tick labels, legend entries) reaching outside the figure."""
    renderer = fig.canvas.get_renderer()
    frame = fig.bbox
    texts = list(fig.texts)
    for ax in fig.axes:
        texts += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label]
        texts += shown_tick_labels(ax.xaxis) + shown_tick_labels(ax.yaxis)
        if ax.get_legend() is not None:
            texts += ax.get_legend().get_texts()
    for legend in fig.legends:
        texts += legend.get_texts()
    out = []
    for text in texts:
        if not (text.get_visible() and text.get_text().strip()):
            continue
        box = text.get_window_extent(renderer)
        if box.x0 < frame.x0 - 1 or box.x1 > frame.x1 + 1 or box.y0 < frame.y0 - 1 or box.y1 > frame.y1 + 1:
            out.append(text.get_text())
    return out


def titles(fig) -> list[str]:
    out = [fig.get_suptitle()] if fig.get_suptitle() else []
    for ax in fig.axes:
        out += [ax.get_title(loc) for loc in ("left", "center", "right") if ax.get_title(loc)]
    return out


def assert_legible(fig, *, value_axis: str | None = "y", allow_inside_legend: bool = False) -> None:
    """No empty panel, no overlapping tick labels, no text cut off, no column names in titles, units.

    value_axis: "y" or "x" (horizontal bars), the axis that must carry a unit on every data Axes; None
    for image figures. Legends with more than three entries must not cover their axes.
    """
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert visible, "the figure has no axes"
    empty = [ax.get_label() or str(k) for k, ax in enumerate(visible) if data_artists(ax) == 0]
    assert not empty, f"empty panels: {empty}"
    overlaps = tick_label_overlaps(fig)
    assert not overlaps, overlaps
    cut = cut_off_texts(fig)
    assert not cut, f"texts cut off at the figure's edge: {cut}"
    snake = [t for t in titles(fig) if SNAKE_CASE.search(t)]
    assert not snake, f"column names in titles: {snake}"
    for ax in visible:
        if value_axis is not None and ax.get_label() != "<colorbar>":
            label = ax.get_ylabel() if value_axis == "y" else ax.get_xlabel()
            assert any(unit in label for unit in UNITS), f"no unit on {ax.get_label()!r}: {label!r}"
        legend = ax.get_legend()
        if legend is not None and len(legend.get_texts()) > 3 and not allow_inside_legend:
            assert not legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer)), (
                f"the legend covers axes {ax.get_label()!r}"
            )
    width, height = fig.get_size_inches()
    assert width <= 20 and height <= 20, (width, height)
