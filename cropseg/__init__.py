"""cropseg: open, local-first crop / non-crop segmentation for satellite imagery."""

from cropseg.config import Config
from cropseg.errors import CropSegError
from cropseg.grid import Grid, Window

__version__ = "0.1.0"

__all__ = ["Config", "CropSegError", "Grid", "Window", "__version__"]
