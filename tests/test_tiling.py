import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cropseg.grid import Window
from cropseg.tiling import (
    OUT_BLOCK,
    STRIP_PX,
    cut,
    in_strips,
    intersect,
    plan_tiles,
    stitch,
    stream_order,
    tile_shape,
)

shapes = st.tuples(st.integers(1, 70), st.integers(1, 70))


@settings(max_examples=60, deadline=None)
@given(shape=shapes, tile=st.tuples(st.integers(1, 40), st.integers(1, 40)), halo=st.integers(0, 9),
       bands=st.integers(1, 3))
def test_tiling_then_stitching_is_the_identity(shape, tile, halo, bands):
    image = np.random.default_rng(0).integers(0, 255, (bands, *shape), dtype=np.uint8)
    tiles = plan_tiles(shape, tile, halo)
    # read windows carry the halo; stitching keeps each centre
    assert np.array_equal(stitch(((t, cut(image, t.read)) for t in tiles), shape), image)
    # cores partition the grid
    count = np.zeros(shape, int)
    for t in tiles:
        count[t.core.slices] += 1
        assert t.halo == halo
        assert cut(image, t.read)[(..., *t.crop)].shape[-2:] == (t.core.height, t.core.width)
    assert (count == 1).all()


@settings(max_examples=40, deadline=None)
@given(shape=shapes, tile=st.integers(1, 30), halo=st.integers(0, 6))
def test_a_neighbourhood_filter_tiled_equals_whole(shape, tile, halo):
    # a (2*halo+1) box sum with zero padding: tiled with that halo equals the whole-image result
    from scipy.ndimage import uniform_filter

    image = np.random.default_rng(1).integers(0, 9, shape).astype(np.float64)
    size = 2 * halo + 1

    def box(a):
        return np.rint(uniform_filter(a, size, mode="constant", cval=0.0) * size * size)

    whole = box(image)
    pieces = ((t, box(cut(image, t.read))) for t in plan_tiles(shape, tile, halo))
    assert np.array_equal(stitch(pieces, shape), whole)


def test_strips_keep_every_tile_and_go_down_each_strip_first():
    tiles = plan_tiles((1000, 2600), 256, halo=20)
    ordered = in_strips(tiles, 1024)
    assert sorted(t.index for t in ordered) == [t.index for t in tiles]  # each tile once, indices kept
    strips = [t.core.col_off // 1024 for t in ordered]
    assert strips == sorted(strips) and set(strips) == {0, 1, 2}
    first = [(t.core.row_off, t.core.col_off) for t in ordered[:8]]
    assert first == [(0, 0), (0, 256), (0, 512), (0, 768), (256, 0), (256, 256), (256, 512), (256, 768)]
    assert in_strips(tiles, 10_000) == tiles  # one strip: row-major, as planned


def test_stream_order_goes_down_strips_of_tiled_images_only():
    width = 3 * STRIP_PX
    tiles = plan_tiles((2048, width), 512, halo=40)
    tiled = stream_order(tiles, (512, 512))
    assert tiled == in_strips(tiles, STRIP_PX) and tiled != tiles
    assert stream_order(tiles, (1, width)) == tiles  # full-width strips: every tile of a row reads the same blocks


def test_cut_pads_outside_with_fill():
    image = np.arange(12).reshape(3, 4)
    out = cut(image, Window(-1, -1, 3, 3), fill=-7)
    assert out.tolist() == [[-7, -7, -7], [-7, 0, 1], [-7, 4, 5]]
    assert intersect(Window(10, 10, 2, 2), (3, 4)) is None


def test_tile_shape_aligns_to_blocks():
    # a tiled 512 input: multiples of 512
    assert tile_shape(512, (9000, 4800), (512, 512)) == (512, 512)
    assert tile_shape(1000, (9000, 4800), (512, 512)) == (1024, 1024)
    # 256 px input blocks nest in the 512 px output blocks
    assert tile_shape(512, (9000, 4800), (256, 256)) == (512, 512)
    # strips: rows stay multiples of the output block
    assert tile_shape(512, (4800, 9000), (8, 9000)) == (512, 512)
    # a small image: one tile
    assert tile_shape(512, (40, 48), (40, 48)) == (512, 512)
    # tiles under the output block are used as they are (tests, tiny images)
    assert tile_shape(7, (40, 48)) == (7, 7)
    assert tile_shape(7, (40, 48), stride=4) == (8, 8)
    # a CNN's stride
    rows, cols = tile_shape(600, (5000, 5000), (512, 512), stride=32)
    assert rows % OUT_BLOCK == 0 and rows % 32 == 0 and cols == rows


def test_bad_arguments():
    with pytest.raises(ValueError):
        tile_shape(0, (4, 4))
    with pytest.raises(ValueError):
        plan_tiles((4, 4), 0)
    with pytest.raises(ValueError):
        stitch([], (4, 4))
