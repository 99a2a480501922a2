"""The grid value: where a raster's pixels lie on the Earth.

A :class:`Grid` is the small immutable value that the pure core passes around beside numpy
arrays: an affine transform, a CRS and a shape. It knows nothing of files.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from affine import Affine
from pyproj import CRS

from cropseg.errors import InputError


@dataclass(frozen=True)
class Window:
    """A rectangle of pixels: column and row offset, width and height."""

    col_off: int
    row_off: int
    width: int
    height: int

    @property
    def slices(self) -> tuple[slice, slice]:
        """Row and column slices that cut this window out of a full-grid array."""
        return (
            slice(self.row_off, self.row_off + self.height),
            slice(self.col_off, self.col_off + self.width),
        )


@dataclass(frozen=True)
class Grid:
    """A north-up raster grid.

    Attributes:
        transform: affine transform from (col, row) pixel corners to CRS coordinates.
        crs: coordinate reference system of the grid.
        width: number of columns.
        height: number of rows.
    """

    transform: Affine
    crs: CRS
    width: int
    height: int

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols)."""
        return (self.height, self.width)

    @property
    def res(self) -> tuple[float, float]:
        """Pixel size (x, y), both positive."""
        return (abs(self.transform.a), abs(self.transform.e))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in CRS units."""
        left, top = self.transform @ (0, 0)
        right, bottom = self.transform @ (self.width, self.height)
        return (min(left, right), min(bottom, top), max(left, right), max(bottom, top))

    @classmethod
    def from_bounds(
        cls, bounds: tuple[float, float, float, float], res: float, crs: CRS | str | int
    ) -> Grid:
        """Grid covering ``bounds`` (left, bottom, right, top) at ``res``, snapped outwards to ``res``."""
        if res <= 0:
            raise InputError(f"resolution must be positive, got {res}")
        left, bottom, right, top = bounds
        left = math.floor(left / res) * res
        top = math.ceil(top / res) * res
        width = max(1, math.ceil((right - left) / res))
        height = max(1, math.ceil((top - bottom) / res))
        return cls(Affine(res, 0.0, left, 0.0, -res, top), CRS.from_user_input(crs), width, height)

    def window_grid(self, window: Window) -> Grid:
        """The grid of a window of this grid."""
        transform = self.transform @ Affine.translation(window.col_off, window.row_off)
        return Grid(transform, self.crs, window.width, window.height)

    def windows(self, tile: int) -> Iterator[Window]:
        """Windows of at most ``tile`` x ``tile`` pixels covering the grid, row-major, no overlap."""
        for row in range(0, self.height, tile):
            for col in range(0, self.width, tile):
                yield Window(col, row, min(tile, self.width - col), min(tile, self.height - row))

    def same_as(self, other: Grid, tolerance: float = 1e-6) -> bool:
        """Whether two grids share shape, CRS and (within ``tolerance`` pixels) transform."""
        if self.shape != other.shape or not self.crs.equals(other.crs):
            return False
        return bool(self.transform.almost_equals(other.transform, precision=tolerance * max(self.res)))

