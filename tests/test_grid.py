import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from cropseg.grid import Grid
from cropseg.testing import make_grid


def test_from_bounds_snaps_outwards():
    g = Grid.from_bounds((100.5, 200.2, 130.1, 229.0), 3.0, 32610)
    left, bottom, right, top = g.bounds
    assert left <= 100.5 and bottom <= 200.2 and right >= 130.1 and top >= 229.0
    assert g.res == (3.0, 3.0)
    assert left % 3 == 0 and top % 3 == 0


def test_window_grid_is_offset():
    g = make_grid()
    win = next(iter(g.windows(16)))
    sub = g.window_grid(win)
    assert sub.transform.c == g.transform.c and sub.shape == (16, 16)


@given(st.integers(1, 90), st.integers(1, 90), st.integers(1, 40))
def test_windows_tile_the_grid_exactly(width, height, tile):
    g = make_grid(width, height)
    cover = np.zeros(g.shape, dtype=int)
    for win in g.windows(tile):
        cover[win.slices] += 1
    assert (cover == 1).all()


def test_same_as():
    assert make_grid().same_as(make_grid())
    assert not make_grid().same_as(make_grid(width=47))
