"""Window plans for streaming work over a raster: tiles aligned to blocks, halos, centre crops.

Pure functions on shapes and arrays (no files). A plan cuts a grid of ``rows x cols`` pixels into
:class:`Tile` s. Each tile has a *core* (the pixels it outputs; the cores partition the grid) and a
*read* window: the core grown by a ``halo`` on every side, which may reach past the grid (those
pixels are read as 0 / nodata). A computation that needs ``halo`` pixels of context (neighbourhood
features, a median blur, a CNN's receptive field) runs on the read window and keeps only the
centre, :attr:`Tile.crop`; because every core pixel sees the same neighbourhood as it would in
the whole image, tiled results equal whole-image results.

Tiles are aligned to the blocks of the files involved (:func:`tile_shape`): their size is a
multiple of the output block (512 px, as cropseg writes) and of the input's internal block where
the two agree, so each block is decoded and encoded once. For a CNN whose layers down-sample by
``stride``, the halo is rounded up to a multiple of ``stride`` so that every read window starts on
the network's pooling lattice, as the whole image does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from cropseg.grid import Window

#: Block size (pixels, both axes) of the GeoTIFFs cropseg writes.
OUT_BLOCK = 512


@dataclass(frozen=True)
class Tile:
    """One unit of tiled work.

    Attributes:
        index: position in the plan (row-major), stable for a given plan.
        core: the pixels this tile outputs; the cores of a plan partition the grid.
        read: ``core`` grown by the halo on every side; may reach past the grid.
    """

    index: int
    core: Window
    read: Window

    @property
    def halo(self) -> int:
        """Context pixels on each side of the core."""
        return self.core.col_off - self.read.col_off

    @property
    def crop(self) -> tuple[slice, slice]:
        """Row and column slices that cut the core out of an array covering :attr:`read`."""
        h = self.halo
        return (slice(h, h + self.core.height), slice(h, h + self.core.width))


def round_up(value: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is >= ``value`` (``multiple`` >= 1)."""
    return -(-value // multiple) * multiple


def _axis_unit(in_block: int, out_block: int, extent: int) -> int:
    """Alignment unit of one axis: a size that is a multiple of both blocks when they nest."""
    if in_block >= extent:
        # strips (or a single block): the input has no alignment constraint on this axis
        return out_block
    if in_block % out_block == 0 or out_block % in_block == 0:
        return max(in_block, out_block)
    return math.lcm(in_block, out_block) if math.lcm(in_block, out_block) <= 4 * out_block else out_block


def tile_shape(
    tile_size: int,
    shape: tuple[int, int],
    in_block: tuple[int, int] | None = None,
    out_block: int = OUT_BLOCK,
    stride: int = 1,
) -> tuple[int, int]:
    """Tile (rows, cols) for a grid of ``shape``, aligned to the input and output blocks.

    Args:
        tile_size: wanted tile side in pixels. At least ``out_block``: rounded to the nearest
            multiple of the alignment unit of each axis. Smaller: used as it is (no alignment,
            for tests and tiny images).
        shape: grid (rows, cols).
        in_block: the input file's block (rows, cols); strips are (rows_per_strip, width).
        out_block: the output file's square block.
        stride: tile sides are also multiples of this (a CNN's total down-sampling).

    Returns:
        (rows, cols), each at least 1 and at most the grid's extent rounded up to the unit.
    """
    if tile_size < 1:
        raise ValueError(f"tile size must be positive, got {tile_size}")
    rows, cols = shape
    if tile_size < out_block:
        size = round_up(tile_size, stride)
        return (max(1, min(size, rows)), max(1, min(size, cols)))
    in_rows, in_cols = in_block or (out_block, out_block)
    out: list[int] = []
    for extent, in_b in ((rows, in_rows), (cols, in_cols)):
        unit = math.lcm(_axis_unit(in_b, out_block, extent), stride)
        size = max(unit, round(tile_size / unit) * unit)
        out.append(max(1, min(size, round_up(extent, unit))))
    return (out[0], out[1])


def plan_tiles(shape: tuple[int, int], tile: int | tuple[int, int], halo: int = 0) -> list[Tile]:
    """Tiles of at most ``tile`` pixels covering a grid of ``shape`` (rows, cols), row-major.

    Args:
        shape: grid (rows, cols).
        tile: tile side, or (rows, cols).
        halo: context pixels added on every side of each core to make its read window.
    """
    rows, cols = shape
    t_rows, t_cols = (tile, tile) if isinstance(tile, int) else tile
    if t_rows < 1 or t_cols < 1 or halo < 0:
        raise ValueError(f"tile must be positive and halo non-negative, got tile={tile}, halo={halo}")
    tiles: list[Tile] = []
    for r in range(0, rows, t_rows):
        for c in range(0, cols, t_cols):
            core = Window(c, r, min(t_cols, cols - c), min(t_rows, rows - r))
            read = Window(c - halo, r - halo, core.width + 2 * halo, core.height + 2 * halo)
            tiles.append(Tile(len(tiles), core, read))
    return tiles


def in_strips(tiles: list[Tile], width: int) -> list[Tile]:
    """``tiles`` reordered strip by strip: columns of ``width`` pixels, each row-major (indices unchanged).

    A tile read with a halo shares blocks with the tiles around it, also with those of the tile rows
    above and below; row-major over a wide scene, those are read again only after a whole row of the
    scene, by which time a bounded block cache has dropped them and they are decompressed again.
    Within a strip the blocks of two rows of tiles stay cached, however wide the scene.
    """
    return sorted(tiles, key=lambda t: (t.core.col_off // width, t.core.row_off, t.core.col_off))


#: Width (px) of the strips streaming prediction goes down (:func:`stream_order`): the blocks of two rows of tiles
#: of a strip of a 4-band 16-bit scene and its UDM2, halos included, stay in the block cache (BENCHMARKS.md).
STRIP_PX = 4096


def stream_order(tiles: list[Tile], block_shape: tuple[int, int]) -> list[Tile]:
    """The order to predict ``tiles`` of an image stored in ``block_shape`` (rows, cols) blocks.

    Tiled images go down strips of :data:`STRIP_PX` (:func:`in_strips`); an image stored in
    full-width strips (blocks as wide as the image, or wider than a strip) is read row-major, since
    every tile of a row decompresses the same blocks.
    """
    return in_strips(tiles, max(STRIP_PX, block_shape[1]))


def overlap(a: Window, b: Window) -> Window | None:
    """The pixels two windows share, or None."""
    c0, r0 = max(a.col_off, b.col_off), max(a.row_off, b.row_off)
    c1 = min(a.col_off + a.width, b.col_off + b.width)
    r1 = min(a.row_off + a.height, b.row_off + b.height)
    if c1 <= c0 or r1 <= r0:
        return None
    return Window(c0, r0, c1 - c0, r1 - r0)


def intersect(window: Window, shape: tuple[int, int]) -> Window | None:
    """The part of ``window`` inside a grid of ``shape`` (rows, cols), or None if it lies outside."""
    return overlap(window, Window(0, 0, shape[1], shape[0]))


def blocks_of(window: Window, shape: tuple[int, int], block: int) -> list[Window]:
    """The ``block`` x ``block`` blocks of a grid of ``shape`` (clipped to it) that ``window`` touches."""
    part = intersect(window, shape)
    if part is None:
        return []
    out = []
    for r in range(part.row_off // block * block, part.row_off + part.height, block):
        for c in range(part.col_off // block * block, part.col_off + part.width, block):
            out.append(Window(c, r, min(block, shape[1] - c), min(block, shape[0] - r)))
    return out


def inner_slices(window: Window, inner: Window) -> tuple[slice, slice]:
    """Slices that place ``inner`` (a sub-window) inside an array covering ``window``."""
    r, c = inner.row_off - window.row_off, inner.col_off - window.col_off
    return (slice(r, r + inner.height), slice(c, c + inner.width))


def cut(image: np.ndarray, window: Window, fill: float = 0) -> np.ndarray:
    """The pixels of ``image`` (..., rows, cols) under ``window``, ``fill`` where it reaches outside."""
    out = np.full((*image.shape[:-2], window.height, window.width), fill, dtype=image.dtype)
    part = intersect(window, (image.shape[-2], image.shape[-1]))
    if part is not None:
        out[(..., *inner_slices(window, part))] = image[(..., *part.slices)]
    return out


def stitch(pieces: Iterable[tuple[Tile, np.ndarray]], shape: tuple[int, int], fill: float = 0) -> np.ndarray:
    """Assemble tile outputs into one (..., rows, cols) array.

    Each piece is a tile and an array covering either its core or its read window (the centre is
    kept: :attr:`Tile.crop`).
    """
    out: np.ndarray | None = None
    for tile, array in pieces:
        if array.shape[-2:] == (tile.read.height, tile.read.width) and tile.halo:
            array = array[(..., *tile.crop)]
        if out is None:
            out = np.full((*array.shape[:-2], *shape), fill, dtype=array.dtype)
        out[(..., *tile.core.slices)] = array
    if out is None:
        raise ValueError("no tiles to stitch")
    return out
