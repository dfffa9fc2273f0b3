"""Checks of plots: what a test can read back of a figure the code saved as a PNG."""

from __future__ import annotations


def curves(fig) -> dict:
    """label -> (x, y) of every line drawn on the figure's one axes."""
    (ax,) = fig.axes
    return {ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata())) for ln in ax.get_lines()}


def png_shape(path, fig) -> tuple:
    """The PNG decodes, has the figure's shape at a readable size (at least 300 pixels each
    way), and is not one flat colour."""
    from matplotlib.image import imread

    img = imread(path)
    (h, w), (fw, fh) = img.shape[:2], fig.get_size_inches()
    assert min(h, w) >= 300 and abs(h - w * fh / fw) <= 1 and img[..., :3].std() > 0.05
    return img.shape
