from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cropseg.errors import ConfigError
from cropseg.features import (
    FEATURE_PRESETS,
    INDICES,
    PLANETSCOPE_BANDS,
    FeatureSpec,
    box_means,
    compute_features,
    correlate_1d,
    correlate_1d_at,
    data_mask,
    feature_preset,
    lattice_shape,
    local_stats,
    row_texture,
    to_samples,
)


def _refl(rows=20, cols=24, seed=0):
    rng = np.random.default_rng(seed)
    refl = rng.uniform(0.02, 0.5, size=(4, rows, cols)).astype(np.float32)
    refl[:, :3, :5] = 0  # nodata corner
    return refl


def test_default_is_the_reference():
    spec = FeatureSpec()
    assert spec.names == list(PLANETSCOPE_BANDS) and spec.halo == 0
    assert feature_preset("reference") == spec
    refl = _refl()
    assert np.array_equal(compute_features(refl, spec), refl)


def test_indices_values():
    refl = np.array([0.05, 0.1, 0.2, 0.4], np.float32)[:, None, None] * np.ones((1, 2, 2), np.float32)
    spec = FeatureSpec(reflectance=False, indices=tuple(INDICES))
    f = compute_features(refl, spec)[:, 0, 0]
    got = dict(zip(spec.names, f, strict=True))
    assert got["ndvi"] == pytest.approx(0.2 / 0.6)
    assert got["ndwi"] == pytest.approx(-0.3 / 0.5)
    assert got["gndvi"] == pytest.approx(0.3 / 0.5)
    assert got["evi2"] == pytest.approx(2.5 * 0.2 / (0.4 + 0.48 + 1))
    assert got["savi"] == pytest.approx(1.5 * 0.2 / 1.1)
    assert got["brightness"] == pytest.approx(0.1875)
    # nodata (all zero) gives 0, not NaN
    assert np.isfinite(compute_features(np.zeros((4, 3, 3), np.float32), spec)).all()


def test_local_stats_match_brute_force_and_ignore_invalid():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(9, 11)).astype(np.float32)
    valid = rng.random((9, 11)) > 0.3
    got = local_stats(x, valid, 5)
    for r in range(9):
        for c in range(11):
            win = (slice(max(r - 2, 0), r + 3), slice(max(c - 2, 0), c + 3))
            vals = x[win][valid[win]]
            if vals.size:
                assert got["mean"][r, c] == pytest.approx(vals.mean(), abs=1e-5)
                assert got["std"][r, c] == pytest.approx(vals.std(), abs=1e-3)
            else:
                assert got["mean"][r, c] == 0


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize(
    "inner",
    [
        (slice(16, 30, 2), slice(15, 37, 2)),  # a lattice whose windows lie inside: one integral image
        (slice(16, 30, 3), slice(15, 37, 4)),
        (slice(2, 30, 2), slice(0, 40, 2)),  # windows past the edge: box filters
        (slice(None), slice(None)),
    ],
)
def test_box_means_equal_brute_force_means(inner, stride):
    rng = np.random.default_rng(5)
    x = rng.uniform(0, 0.5, (46, 52)).astype(np.float32)
    sizes = (3, 7, 15, 31)
    padded = np.pad(x.astype(np.float64), 15)  # zeros outside the array
    for size, got in zip(sizes, box_means(x, sizes, inner, stride), strict=True):
        # with a stride, a window holds the pixels a multiple of the stride away from its centre
        r = size // 2 // stride * stride
        windows = np.lib.stride_tricks.sliding_window_view(padded[15 - r : 15 + 46 + r, 15 - r : 15 + 52 + r],
                                                           (2 * r + 1, 2 * r + 1))[:, :, ::stride, ::stride]
        want = windows.mean(axis=(2, 3))[inner]
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_nodata_does_not_bleed_into_context():
    refl = np.zeros((4, 10, 10), np.float32)
    refl[:, :, 5:] = 0.3  # data only on the right half, constant
    spec = FeatureSpec(context=("nir",), scales=(5,))
    f = compute_features(refl, spec)
    names = spec.names
    assert np.allclose(f[names.index("mean5_nir"), :, 5:], 0.3)
    assert np.all(f[names.index("std5_nir"), :, 5:] == 0)
    assert data_mask(refl)[:, 5:].all() and not data_mask(refl)[:, :5].any()


def _assert_tiled_equals_whole(spec, refl, tile, atol, crop):
    h = spec.halo
    whole = compute_features(refl, spec)
    padded = np.pad(refl, ((0, 0), (h, h), (h, h)))
    rows, cols = refl.shape[1:]
    for r in range(0, rows, tile):
        for c in range(0, cols, tile):
            r1, c1 = min(r + tile, rows), min(c + tile, cols)
            window = padded[:, r : r1 + 2 * h, c : c1 + 2 * h]
            # cropped by compute_features itself, or afterwards
            part = compute_features(window, spec, crop=h) if crop else compute_features(window, spec)[:, h:-h, h:-h]
            np.testing.assert_allclose(part, whole[:, r:r1, c:c1], rtol=0, atol=atol)


@settings(max_examples=15, deadline=None)
@given(tile=st.integers(3, 17), seed=st.integers(0, 5), crop=st.booleans())
def test_tiled_features_equal_whole(tile, seed, crop):
    _assert_tiled_equals_whole(FEATURE_PRESETS["context"], _refl(30, 26, seed), tile, 2e-6, crop)


@settings(max_examples=6, deadline=None)
@given(tile=st.integers(9, 33), seed=st.integers(0, 3), stride=st.sampled_from([1, 2, 4]))
def test_tiled_texture_equals_whole(tile, seed, stride):
    spec = replace(FEATURE_PRESETS["texture"], texture_stride=stride)
    _assert_tiled_equals_whole(spec, _refl(60, 52, seed), tile, 2e-5, True)


@pytest.mark.parametrize("stride", [2, 4])
def test_texture_stride_changes_the_energy_windows_only(stride):
    refl = _refl(90, 96, 2)
    spec = replace(FEATURE_PRESETS["texture"], texture_stride=stride)
    every = compute_features(refl, replace(spec, texture_stride=1))
    strided = compute_features(refl, spec)
    texture = [i for i, n in enumerate(spec.names) if n.startswith("rows")]
    others = [i for i in range(len(spec.names)) if i not in texture]
    assert np.array_equal(every[others], strided[others])
    assert not np.allclose(every[texture], strided[texture], rtol=1e-3)
    # a mean energy over a quarter (a sixteenth) of the field-sized window's pixels: close to the mean over all
    energy = [i for i, n in enumerate(spec.names) if n.endswith("_energy63")]
    np.testing.assert_allclose(np.exp(strided[energy]), np.exp(every[energy]), rtol=0.5)


def test_correlate_1d_at_rows_equals_every_row_then_slicing():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(41, 23)).astype(np.float32)
    kernel = rng.normal(size=9)
    full = correlate_1d(x, kernel, along_rows=False)
    for rows in (slice(4, 41, 2), slice(5, 30, 3), slice(4, 35, 1)):
        np.testing.assert_allclose(correlate_1d_at(x, kernel, rows), full[rows], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="above row 3"):
        correlate_1d_at(x, kernel, slice(3, 41, 2))


def test_row_texture_finds_rows_in_any_direction():
    rows, cols = 64, 64
    yy, xx = np.mgrid[:rows, :cols].astype(np.float32)
    mask = np.ones((rows, cols), bool)
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.01, (rows, cols)).astype(np.float32)
    flat_energy, flat_aniso = row_texture(0.3 + noise, mask, 4.0)
    for angle in (0, 30, 60, 90, 120):
        u = xx * np.cos(np.radians(angle)) + yy * np.sin(np.radians(angle))
        striped = 0.3 + 0.03 * np.cos(2 * np.pi * u / 4.0) + noise
        energy, aniso = row_texture(striped, mask, 4.0)
        core = (slice(20, 44), slice(20, 44))
        assert energy[core].mean() > flat_energy[core].mean() + 2  # log energy: e^2 times stronger
        assert aniso[core].mean() > 2 * flat_aniso[core].mean()
    # other periods respond less
    stripes4 = 0.3 + 0.03 * np.cos(2 * np.pi * xx / 4.0) + noise
    assert row_texture(stripes4, mask, 4.0)[0][core].mean() > row_texture(stripes4, mask, 8.0)[0][core].mean()


@pytest.mark.parametrize("period", [2.5, 4.0])
def test_twelve_directions_see_rows_at_any_angle(period):
    # rows every 7.5 degrees from 0 to 90: with 4 directions 45 degrees apart, rows half-way between two
    # of them (22.5 degrees) leave a fiftieth of the energy of rows along one; with 12 directions every
    # angle keeps at least half of it
    size = 96
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    mask = np.ones((size, size), bool)
    core = (slice(40, 56), slice(40, 56))

    def energies(orientations):
        out = []
        for angle in np.radians(np.arange(0, 91, 7.5)):
            u = xx * np.cos(angle) + yy * np.sin(angle)
            image = (0.3 + 0.03 * np.cos(2 * np.pi * u / period)).astype(np.float32)
            out.append(np.exp(row_texture(image, mask, period, orientations=orientations)[0][core].mean()))
        return np.array(out)

    four, twelve = energies(4), energies(12)
    assert four.min() < 0.05 * four.max()
    assert twelve.min() > 0.45 * twelve.max()
    # 0 and 90 degrees are among the directions of both
    np.testing.assert_allclose(twelve[[0, -1]], four[[0, -1]], rtol=1e-4)


def test_texture_base_is_the_brightness_or_red_plus_nir():
    noise = np.random.default_rng(5).normal(0, 0.002, (4, 90, 96)).astype(np.float32)
    plain = np.float32(0.15) + noise
    rows = plain.copy()
    rows[0] += 0.02 * np.cos(np.arange(96) * 2 * np.pi / 4.0)[None, :].astype(np.float32)  # rows in blue only
    spec = FEATURE_PRESETS["texture"]
    assert spec.texture_base == "brightness" and spec.texture_orientations == 12
    energy = spec.names.index("rows4_energy63")
    core = (slice(40, 50), slice(40, 56))
    assert compute_features(rows, spec)[energy][core].mean() > compute_features(plain, spec)[energy][core].mean() + 2
    # red + NIR does not see rows in the blue band
    red_nir = replace(spec, texture_base="red+nir")
    np.testing.assert_allclose(compute_features(rows, red_nir)[energy], compute_features(plain, red_nir)[energy])


def test_field_sized_texture_window_reaches_a_bare_headland():
    # rows on the left half, bare ground on the right: 16 px into the bare part, the 15 px window sees no
    # rows while the 63 px window still does (the bare headland of a field sees the field's rows)
    rows, cols = 96, 128
    xx = np.mgrid[:rows, :cols][1].astype(np.float32)
    noise = np.random.default_rng(1).normal(0, 0.002, (rows, cols)).astype(np.float32)
    image = 0.3 + np.where(xx < 64, 0.03 * np.cos(2 * np.pi * xx / 4.0), 0) + noise
    mask = np.ones((rows, cols), bool)
    e15, _, e63, _ = row_texture(image, mask, 4.0, windows=(15, 63))
    bare, far = (slice(40, 56), 80), (slice(40, 56), 120)
    assert e15[bare].mean() < e15[far].mean() + 1  # nothing of the rows in the small window
    assert e63[bare].mean() > e63[far].mean() + 2  # the rows are within the field-sized one


@pytest.mark.parametrize("preset, size", [("context", 50), ("texture", 110)])
@pytest.mark.parametrize("nodata", [False, True])
def test_cropped_features_equal_cropping_afterwards(nodata, preset, size):
    # crop = halo: what tiled prediction asks for; all-valid windows take the unnormalised path
    spec = FEATURE_PRESETS[preset]
    refl = _refl(size, size - 4, 3)
    if not nodata:
        refl[:, :3, :5] = 0.2
    h = spec.halo
    whole = compute_features(refl, spec)
    cropped = compute_features(refl, spec, crop=h)
    assert cropped.shape == (len(spec.names), size - 2 * h, size - 4 - 2 * h)
    np.testing.assert_allclose(cropped, whole[:, h:-h, h:-h], rtol=1e-5, atol=1e-6)
    valid = np.ones(refl.shape[1:], bool)
    valid[h - 5, h - 5] = False  # a masked pixel makes the window take the normalised path
    masked = compute_features(refl, spec, valid, crop=h)
    assert not np.allclose(masked, cropped, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(masked, compute_features(refl, spec, valid)[:, h:-h, h:-h], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="cannot crop"):
        compute_features(refl, spec, crop=(size - 4) // 2)
    # every step-th pixel only: the same values as those pixels of the full result (for the texture preset's
    # stride of 2, step 2 computes the Gabor energies on the lattice, in another order: the same to rounding)
    for step in (2, 3, 4):
        sparse = compute_features(refl, spec, valid, crop=h, step=step)
        assert sparse.shape == (len(spec.names), *lattice_shape(masked.shape[1:], step))
        np.testing.assert_allclose(sparse, masked[:, ::step, ::step], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="step"):
        compute_features(refl, spec, crop=h, step=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_to_samples_rows_with_and_without_mask(dtype):
    rng = np.random.default_rng(4)
    feats = rng.random((5, 70, 90)).astype(np.float32)  # 6300 pixels: several row blocks
    rows = to_samples(feats, dtype=dtype)
    assert rows.dtype == dtype and rows.flags.c_contiguous and rows.shape == (6300, 5)
    assert np.array_equal(rows, feats.reshape(5, -1).T.astype(dtype))
    mask = rng.random((70, 90)) > 0.4
    kept = to_samples(feats, mask, dtype)
    assert np.array_equal(kept, feats[:, mask].T.astype(dtype))
    assert to_samples(feats, np.zeros((70, 90), bool)).shape == (0, 5)


def test_names_match_output_and_round_trip():
    spec = FEATURE_PRESETS["context"]
    assert compute_features(_refl(), spec).shape[0] == len(spec.names)
    assert spec.halo == 15
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    old_card = {"bands": ["blue", "green", "red", "nir"], "reflectance": True}
    assert FeatureSpec.from_dict(old_card) == FeatureSpec()
    assert "std31_ndvi" in spec.names and "mean3_nir" in spec.names
    texture = FEATURE_PRESETS["texture"]
    assert texture.names[-4:] == ["rows4_energy", "rows4_anisotropy", "rows4_energy63", "rows4_anisotropy63"]
    assert texture.halo == 45  # 9 px high-pass, the 4 px period's Gabor radius of 10 px, the 63 px window
    assert FeatureSpec.from_dict(texture.to_dict()) == texture
    # model cards from before the texture stride, directions and base keep their features: every pixel of
    # the windows, four directions, red + NIR
    assert texture.texture_stride == 4
    card = texture.to_dict()
    for key in ("texture_stride", "texture_orientations", "texture_base"):
        del card[key]
    old = FeatureSpec.from_dict(card)
    assert (old.texture_stride, old.texture_orientations, old.texture_base) == (1, 4, "red+nir")
    assert FeatureSpec(texture=(4.0,), texture_orientations=6).texture_orientations == 6  # any even number 4 to 16
    # cards written before texture windows existed averaged over 15 px
    card = {**texture.to_dict(), "texture": [4.0]}
    del card["texture_windows"]
    assert FeatureSpec.from_dict(card).names[-2:] == ["rows4_energy", "rows4_anisotropy"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"indices": ("nope",)}, "unknown spectral index"),
        ({"context": ("nir",), "scales": (4,)}, "odd"),
        ({"context": ("nir",)}, "both"),
        ({"context": ("ndvi",), "scales": (3,)}, "neither bands nor selected"),
        ({"bands": ("a", "b"), "indices": ("ndvi",)}, "needs band"),
        ({"context": ("nir",), "scales": (3,), "stats": ("max",)}, "unknown statistic"),
        ({"texture": (1.0,)}, "texture periods"),
        ({"texture": (4.0,), "texture_windows": (16,)}, "texture windows"),
        ({"texture": (4.0,), "texture_windows": ()}, "texture windows"),
        ({"texture": (4.0,), "texture_stride": 0}, "texture stride"),
        ({"texture": (4.0,), "texture_orientations": 5}, "texture orientations"),
        ({"texture": (4.0,), "texture_orientations": 2}, "texture orientations"),
        ({"texture": (4.0,), "texture_orientations": 18}, "texture orientations"),
        ({"texture": (4.0,), "texture_base": "ndvi"}, "unknown texture base"),
        ({"bands": ("a", "b", "c", "d"), "texture": (4.0,)}, "red and nir"),
    ],
)
def test_bad_specs_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        FeatureSpec(**kwargs)
    with pytest.raises(ConfigError, match="unknown feature set"):
        feature_preset("fancy")
