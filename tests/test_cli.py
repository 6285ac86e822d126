"""The ``tconv3d`` command: every subcommand, every error path, NIfTI geometry.

Commands run in-process through ``tconv3d.cli.main`` (the interpreter and sklearn are
imported once); two tests run ``python -m tconv3d`` in a subprocess for the real exit
status. Errors must be one line on stderr with a non-zero status, and leave no file behind.
"""
import errno
import os
import re
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tconv3d.cli import _common, main, show, upsample
from tconv3d.io import upsampled_affine
from tconv3d.kernel_file import KernelFile, load_kernel, save_kernel
from tconv3d.upsampling import VolumeUpsampler, _trilinear_kernel

SPATIAL = (7, 11, 13)   # odd lengths, as elsewhere in the suite


# --- helpers -----------------------------------------------------------------------------

def run(capsys, *argv):
    """``(exit status, stdout, stderr)`` of ``tconv3d argv``."""
    try:
        status = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse: --help, --version, usage errors
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


def ok(capsys, *argv):
    status, out, err = run(capsys, *argv)
    assert status == 0, err
    return out, err


def fails(capsys, *argv, match, status=1):
    """Run ``argv``, expect ``status`` and exactly one stderr line matching ``match``."""
    got, out, err = run(capsys, *argv)
    lines = err.strip().splitlines()
    assert got == status, (got, err)
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert match.lower() in lines[0].lower(), lines[0]
    return lines[0]


def files(directory):
    return sorted(p.name for p in Path(directory).iterdir())


def repeat(x, factor):
    for axis, f in enumerate(factor):
        x = np.repeat(x, f, axis=axis)
    return x


def trilinear(volume, factor, dtype=None):
    x = np.asarray(volume, dtype=dtype or volume.dtype)[None]
    return VolumeUpsampler(factor=factor, num_threads=1).fit(x).transform(x)[0]


@pytest.fixture
def volume(rng):
    return rng.standard_normal(SPATIAL).astype(np.float32)


@pytest.fixture
def npy(tmp_path, volume):
    path = tmp_path / "in.npy"
    np.save(path, volume)
    return path


@pytest.fixture
def nib():
    return pytest.importorskip("nibabel")


@pytest.fixture
def data_path(nib):
    from nibabel.testing import data_path
    if not os.path.isfile(os.path.join(data_path, "example4d.nii.gz")):
        pytest.skip("nibabel's test data are not installed")
    return Path(data_path)


# --- upsample: arrays --------------------------------------------------------------------

@pytest.mark.parametrize("factor", ["2", "2,3,1", "3x1x2"])
def test_nearest_is_np_repeat(capsys, tmp_path, npy, volume, factor):
    out = tmp_path / "out.npy"
    stdout, _ = ok(capsys, "upsample", npy, out, "--factor", factor, "--kernel", "nearest")
    f = _common.parse_factor(factor)
    result = np.load(out)
    assert result.dtype == np.float32
    np.testing.assert_array_equal(result, repeat(volume, f))
    assert f"-> {out} {'x'.join(str(n * k) for n, k in zip(SPATIAL, f))} float32" in stdout


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_trilinear_keeps_float_dtype(capsys, tmp_path, rng, dtype):
    volume = rng.standard_normal(SPATIAL).astype(dtype)
    np.save(tmp_path / "in.npy", volume)
    ok(capsys, "upsample", tmp_path / "in.npy", tmp_path / "out.npy", "--threads", 1)
    result = np.load(tmp_path / "out.npy")
    assert result.dtype == dtype
    np.testing.assert_array_equal(result, trilinear(volume, (2, 2, 2)))


def test_summary_line(capsys, tmp_path, npy):
    out, err = ok(capsys, "upsample", npy, tmp_path / "o.npy", "--factor", "2,2,1")
    assert err == ""
    assert out.count("\n") == 1
    assert "7x11x13 float32 -> " in out and "14x22x13 float32" in out
    assert "voxel 1 x 1 x 1 -> 0.5 x 0.5 x 1" in out and "trilinear x2x2x1" in out
    assert re.search(r"; \d+\.\d\d s \(upsampling \d+\.\d\d s\)$", out.rstrip())
    out, err = ok(capsys, "upsample", npy, tmp_path / "q.npy", "-q")
    assert out == err == ""


def test_integer_input_is_written_as_float32(capsys, tmp_path, rng):
    volume = rng.integers(-300, 300, SPATIAL).astype(np.int16)
    np.save(tmp_path / "in.npy", volume)
    ok(capsys, "upsample", tmp_path / "in.npy", tmp_path / "out.npy")
    result = np.load(tmp_path / "out.npy")
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, trilinear(volume, (2, 2, 2), np.float32), rtol=1e-6)


def test_dtype_option(capsys, tmp_path, rng):
    volume = rng.integers(0, 1000, SPATIAL).astype(np.int16)
    np.save(tmp_path / "in.npy", volume)
    ok(capsys, "upsample", tmp_path / "in.npy", tmp_path / "same.npy", "--dtype", "input",
       "--kernel", "nearest")
    same = np.load(tmp_path / "same.npy")
    assert same.dtype == np.int16
    np.testing.assert_array_equal(same, repeat(volume, (2, 2, 2)))  # exact

    # values up to 999 do not fit uint8: refused, unless clipping is asked for
    fails(capsys, "upsample", tmp_path / "in.npy", tmp_path / "u8.npy", "--dtype", "uint8",
          match="voxels of OUT fall outside uint8's range [0, 255]; choose a wider --dtype, "
                "or pass --clip to clip them")
    assert not (tmp_path / "u8.npy").exists()
    out, err = ok(capsys, "upsample", tmp_path / "in.npy", tmp_path / "u8.npy", "--dtype",
                  "uint8", "--clip")
    expected = trilinear(volume, (2, 2, 2), np.float32)
    u8 = np.load(tmp_path / "u8.npy")
    assert u8.dtype == np.uint8
    np.testing.assert_array_equal(u8, np.clip(np.rint(expected), 0, 255))  # rounded, clipped
    clipped = int(np.count_nonzero(np.rint(expected) > 255))
    assert err == f"tconv3d: warning: clipped {clipped} of {u8.size} voxels to uint8's range " \
                  "[0, 255]\n"

    ok(capsys, "upsample", tmp_path / "in.npy", tmp_path / "f8.npy", "--dtype", "float64")
    f8 = np.load(tmp_path / "f8.npy")
    assert f8.dtype == np.float64
    np.testing.assert_allclose(f8, trilinear(volume, (2, 2, 2), np.float64), rtol=1e-12)


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_round_trip_keeps_key_and_compression(capsys, tmp_path, volume, compressed):
    save = np.savez_compressed if compressed else np.savez
    save(tmp_path / "in.npz", brain=volume)
    ok(capsys, "upsample", tmp_path / "in.npz", tmp_path / "out.npz", "--kernel", "nearest")
    with np.load(tmp_path / "out.npz") as archive:
        assert archive.files == ["brain"]
        np.testing.assert_array_equal(archive["brain"], repeat(volume, (2, 2, 2)))
    with zipfile.ZipFile(tmp_path / "out.npz") as archive:
        stored = {i.compress_type for i in archive.infolist()}
    assert stored == {zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED}


def test_npy_to_npz(capsys, tmp_path, npy, volume):
    ok(capsys, "upsample", npy, tmp_path / "out.npz", "--kernel", "nearest")
    with np.load(tmp_path / "out.npz") as archive:
        np.testing.assert_array_equal(archive["arr_0"], repeat(volume, (2, 2, 2)))


def test_series_upsamples_each_volume_with_a_progress_bar(capsys, tmp_path, rng):
    series = rng.standard_normal((*SPATIAL, 3)).astype(np.float32)
    np.save(tmp_path / "in.npy", series)
    out, err = ok(capsys, "upsample", tmp_path / "in.npy", tmp_path / "out.npy",
                  "--threads", 1)
    result = np.load(tmp_path / "out.npy")
    assert result.shape == (14, 22, 26, 3)
    for k in range(3):
        np.testing.assert_array_equal(result[..., k], trilinear(series[..., k], (2, 2, 2)))
    assert "3/3 volumes" in err and "\r" not in err  # not a terminal: drawn once
    assert "x 3 volumes" in out
    _, err = ok(capsys, "upsample", tmp_path / "in.npy", tmp_path / "q.npy", "--quiet")
    assert err == ""


def test_five_dimensional_input(capsys, tmp_path, rng):
    data = rng.standard_normal((3, 4, 5, 2, 3))
    np.save(tmp_path / "in.npy", data)
    ok(capsys, "upsample", tmp_path / "in.npy", tmp_path / "out.npy", "--kernel", "nearest",
       "-q")
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), repeat(data, (2, 2, 2)))


def test_progress_bar_redraws_on_a_terminal():
    class Terminal:
        text = ""

        def write(self, s):
            self.text += s

        def flush(self):
            pass

        def isatty(self):
            return True

    stream = Terminal()
    progress = upsample.Progress(4, "upsampling", stream=stream, width=8)
    for done in range(1, 5):
        progress.update(done)
    assert stream.text.count("\r") == 4 and stream.text.endswith("\n")
    assert "[########] 4/4 volumes" in stream.text


def test_threads_do_not_change_the_result(capsys, tmp_path, rng):
    volume = rng.standard_normal((13, 11, 7, 2)).astype(np.float32)
    np.save(tmp_path / "in.npy", volume)
    for threads in (1, 2):
        ok(capsys, "upsample", tmp_path / "in.npy", tmp_path / f"t{threads}.npy",
           "--factor", 3, "--threads", threads)
    assert (tmp_path / "t1.npy").read_bytes() == (tmp_path / "t2.npy").read_bytes()


def test_overwrite(capsys, tmp_path, npy, volume):
    out = tmp_path / "out.npy"
    out.write_bytes(b"old")
    ok(capsys, "upsample", npy, out, "--overwrite", "--kernel", "nearest")
    np.testing.assert_array_equal(np.load(out), repeat(volume, (2, 2, 2)))
    assert oct(out.stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode


def test_in_place_with_overwrite(capsys, tmp_path, npy, volume):
    ok(capsys, "upsample", npy, npy, "--overwrite", "--kernel", "nearest")
    np.testing.assert_array_equal(np.load(npy), repeat(volume, (2, 2, 2)))
    assert files(tmp_path) == ["in.npy"]


# --- kernel files and fit ----------------------------------------------------------------

def test_kernel_file_round_trip(tmp_path):
    kernel = np.arange(27.0).reshape(3, 3, 3)
    save_kernel(tmp_path / "k.npz", KernelFile(kernel, (2, 3, 1), bias=1.5,
                                               relative_bias=-0.25))
    spec = load_kernel(tmp_path / "k.npz")
    np.testing.assert_array_equal(spec.kernel, kernel)
    assert (spec.factor, spec.bias, spec.relative_bias) == ((2, 3, 1), 1.5, -0.25)
    with np.load(tmp_path / "k.npz", allow_pickle=False) as archive:
        assert str(archive["format"]) == "tconv3d-kernel" and int(archive["version"]) == 1


def test_hand_made_kernel_file(capsys, tmp_path, npy, volume):
    """A file holding the trilinear kernel reproduces --kernel trilinear, plus its bias;
    its factor is used when --factor is not given."""
    np.savez(tmp_path / "tri.npz", kernel=_trilinear_kernel((3, 3, 3)), factor=3, bias=2.0)
    out, _ = ok(capsys, "upsample", npy, tmp_path / "out.npy", "--kernel", tmp_path / "tri.npz",
                "--threads", 1)
    assert "kernel tri.npz (5x5x5) x3" in out  # 2f - 1 taps for odd f
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), trilinear(volume, (3, 3, 3)) + 2,
                               rtol=1e-6, atol=1e-6)


def test_kernel_file_without_factor_uses_the_option(capsys, tmp_path, npy, volume):
    np.savez(tmp_path / "box.npz", kernel=np.ones((2, 2, 1)))
    ok(capsys, "upsample", npy, tmp_path / "out.npy", "--kernel", tmp_path / "box.npz",
       "--factor", "2,2,1")
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), repeat(volume, (2, 2, 1)))


def test_relative_bias_scales_with_the_volume(capsys, tmp_path, volume):
    """relative_bias is added times the 99th percentile of |volume|: a unit-free kernel."""
    np.savez(tmp_path / "k.npz", kernel=np.ones((2, 2, 2)), factor=2, relative_bias=0.5)
    for scale in (1, 100):
        np.save(tmp_path / "in.npy", volume * scale)
        ok(capsys, "upsample", tmp_path / "in.npy", tmp_path / f"o{scale}.npy", "--kernel",
           tmp_path / "k.npz")
    np.testing.assert_allclose(np.load(tmp_path / "o100.npy"), 100 * np.load(tmp_path / "o1.npy"),
                               rtol=1e-5, atol=1e-4)
    expected = repeat(volume, (2, 2, 2)) + 0.5 * np.percentile(np.abs(volume), 99)
    np.testing.assert_allclose(np.load(tmp_path / "o1.npy"), expected, rtol=1e-5, atol=1e-5)


def smooth_volumes(rng, n, shape):
    """Band-limited random volumes: something a kernel can learn to upsample."""
    from scipy import ndimage
    return np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), 1.5) * 100 + 500
                     for _ in range(n)])


def test_fit_then_upsample(capsys, tmp_path, rng):
    """Fit on a series of two volumes, score on a third: the kernel file beats trilinear.

    The volumes sit on an offset of 500 (as MRI intensities do), which once stopped the
    fit after one iteration (see ``fit_learned``).
    """
    high = smooth_volumes(rng, 3, (12, 14, 10))
    np.save(tmp_path / "a.npy", np.moveaxis(high[:2], 0, -1))
    out, _ = ok(capsys, "fit", tmp_path / "a.npy", "--out", tmp_path / "k.npz",
                "--kernel-size", 4, "--max-iter", 30, "--threads", 1)
    assert out.startswith(f"{tmp_path / 'k.npz'}: 4x4x4 kernel for factor 2, fitted on 2 "
                          "volume(s) (12x14x10); ")
    assert int(out.split(" L-BFGS")[0].split()[-1]) > 10
    assert "over trilinear" in out
    spec = load_kernel(tmp_path / "k.npz")
    assert spec.kernel.shape == (4, 4, 4) and spec.factor == (2, 2, 2) and spec.bias == 0

    low = _common.block_average(high[2][None], (2, 2, 2))[0]
    np.save(tmp_path / "low.npy", low)
    ok(capsys, "upsample", tmp_path / "low.npy", tmp_path / "up.npy", "--kernel",
       tmp_path / "k.npz")
    up = np.load(tmp_path / "up.npy")
    expected = VolumeUpsampler(kernel=spec.kernel).fit(low[None]).transform(low[None])[0]
    expected += spec.relative_bias * np.percentile(np.abs(low), 99)
    np.testing.assert_allclose(up, expected, rtol=1e-6, atol=1e-6)
    assert _common.psnr(high[2], up) > _common.psnr(high[2], trilinear(low, (2, 2, 2))) + 0.5


def test_fit_crops_volumes_to_a_common_shape(capsys, tmp_path, rng):
    np.save(tmp_path / "a.npy", smooth_volumes(rng, 1, (12, 14, 10))[0])
    np.save(tmp_path / "b.npy", smooth_volumes(rng, 1, (9, 16, 10))[0])
    out, _ = ok(capsys, "fit", tmp_path / "a.npy", tmp_path / "b.npy", "--out",
                tmp_path / "k.npz", "--max-iter", 2, "--threads", 1)
    assert "centre-cropped to a common 8x14x10" in out
    assert "2 L-BFGS iterations (stopped at --max-iter 2)" in out


def test_fit_refuses_an_existing_kernel_file(capsys, tmp_path, npy):
    (tmp_path / "k.npz").write_bytes(b"keep")
    fails(capsys, "fit", npy, "--out", tmp_path / "k.npz", match="exists; pass --overwrite")
    assert (tmp_path / "k.npz").read_bytes() == b"keep"
    fails(capsys, "fit", npy, "--out", tmp_path / "k.txt", match="must end in .npz")
    fails(capsys, "fit", npy, "--out", tmp_path / "k.npz", "--factor", 20, "--overwrite",
          match="smaller than the factor")


# --- NIfTI -------------------------------------------------------------------------------

def oblique_affine(rng):
    rotation, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    affine = np.eye(4)
    affine[:3, :3] = rotation * rng.uniform(0.5, 3, 3)   # column j: voxel axis j
    affine[:3, 3] = rng.uniform(-100, 100, 3)
    return affine


@pytest.mark.parametrize("factor", [(1, 1, 1), (2, 2, 2), (3, 3, 3), (2, 3, 1), (4, 1, 5)])
def test_upsampled_affine_keeps_every_voxel_in_place(rng, factor):
    """The derivation of ``upsampled_affine``, checked on oblique affines.

    align_corners=False: output voxel j samples input coordinate i = (j + 0.5)/f - 0.5,
    so (a) every output voxel's world position is the input affine at that coordinate,
    and (b) the centre of the block of f output voxels replacing input voxel i (mean
    index i*f + (f - 1)/2) is input voxel i's centre; voxel sizes are divided by f.
    """
    f = np.array(factor, float)
    for _ in range(5):
        affine = oblique_affine(rng)
        new = upsampled_affine(affine, factor)
        assert np.array_equal(new[3], [0, 0, 0, 1])
        world = lambda a, ijk: a[:3, :3] @ ijk + a[:3, 3]  # noqa: E731
        j = rng.integers(0, 40, 3).astype(float)
        np.testing.assert_allclose(world(new, j), world(affine, (j + 0.5) / f - 0.5),
                                   atol=1e-9)
        i = rng.integers(0, 20, 3).astype(float)
        block = [world(new, i * f + r) for r in np.ndindex(*factor)]
        np.testing.assert_allclose(np.mean(block, axis=0), world(affine, i), atol=1e-9)
        np.testing.assert_allclose(np.linalg.norm(new[:3, :3], axis=0),
                                   np.linalg.norm(affine[:3, :3], axis=0) / f)
    np.testing.assert_allclose(upsampled_affine(np.eye(4), (2, 2, 2))[:3, 3], -0.25)


def test_nifti_4d_oblique(capsys, tmp_path, nib, data_path):
    """example4d.nii.gz: oblique, qform and sform code 1, slice timing, int16, 2 volumes."""
    source = data_path / "example4d.nii.gz"
    image = nib.load(source)
    out = tmp_path / "up.nii.gz"
    stdout, err = ok(capsys, "upsample", source, out, "--threads", 1)
    assert "2/2 volumes" in err
    assert "voxel 2 x 2 x 2.2 mm -> 1 x 1 x 1.1 mm" in stdout
    result = nib.load(out)
    header, old = result.header, image.header
    assert type(result) is type(image)
    assert result.shape == (256, 192, 48, 2)
    assert result.get_data_dtype() == np.float32
    expected_affine = upsampled_affine(image.affine, (2, 2, 2))
    np.testing.assert_allclose(result.affine, expected_affine, atol=1e-4)
    np.testing.assert_allclose(header.get_sform(), expected_affine, atol=1e-4)
    np.testing.assert_allclose(header.get_qform(), expected_affine, atol=1e-4)
    assert (int(header["qform_code"]), int(header["sform_code"])) == \
        (int(old["qform_code"]), int(old["sform_code"]))
    np.testing.assert_allclose(header.get_zooms(), (1.0, 1.0, 1.1, 2000.0), rtol=1e-6)
    assert header.get_xyzt_units() == old.get_xyzt_units()
    assert int(header["slice_end"]) == 0 and int(old["slice_end"]) == 23  # slices changed
    data = np.asanyarray(image.dataobj)
    up = np.asanyarray(result.dataobj)
    for k in range(2):
        np.testing.assert_array_equal(up[..., k], trilinear(data[..., k], (2, 2, 2),
                                                            np.float32))
    # world position of each voxel block's centre: the original voxel's centre
    from nibabel.affines import apply_affine
    ijk = np.array([[0, 0, 0], [127, 95, 23], [40, 50, 10]])
    np.testing.assert_allclose(apply_affine(result.affine, ijk * 2 + 0.5),
                               apply_affine(image.affine, ijk), atol=1e-3)


def test_nifti_matches_resampling_in_world_coordinates(capsys, tmp_path, nib, data_path):
    """Independent check of the affine: scipy's linear interpolation of the original onto
    the output's grid (nibabel.processing, driven by the affines alone) gives our numbers
    away from the borders. Half a voxel off would not."""
    pytest.importorskip("scipy")
    from nibabel.processing import resample_from_to
    source = data_path / "anatomical.nii"
    out = tmp_path / "up.nii"
    ok(capsys, "upsample", source, out, "--factor", "2,3,1", "--dtype", "float64")
    result = nib.load(out)
    assert result.get_data_dtype().type is np.float64   # big-endian, as the input
    np.testing.assert_allclose(result.header.get_zooms(), (1.0, 2 / 3, 2.0), rtol=1e-6)
    reference = nib.Nifti1Image(np.asarray(nib.load(source).dataobj, np.float64),
                                nib.load(source).affine)
    inner = (slice(2, -2), slice(3, -3), slice(1, -1))
    ours = result.get_fdata()[inner]
    atol = 1e-5 * np.ptp(ours)  # the header stores the affine in float32
    resampled = resample_from_to(reference, result, order=1).get_fdata()[inner]
    np.testing.assert_allclose(ours, resampled, rtol=0, atol=atol)
    # the naive affine (voxel sizes divided, origin kept) is half an input voxel off
    naive = result.affine.copy()
    naive[:3, 3] = reference.affine[:3, 3]
    shifted = resample_from_to(reference, (result.shape, naive), order=1).get_fdata()[inner]
    assert np.abs(ours - shifted).max() > 1000 * atol


def test_nifti_keeps_codes_class_and_integer_dtype(capsys, tmp_path, nib, data_path):
    for name in ("standard.nii.gz", "example_nifti2.nii.gz", "anatomical.nii"):
        image = nib.load(data_path / name)
        out = tmp_path / name
        ok(capsys, "upsample", data_path / name, out, "--kernel", "nearest", "--dtype", "input",
           "-q")
        result = nib.load(out)
        assert type(result) is type(image)
        assert result.get_data_dtype() == image.get_data_dtype()
        assert (int(result.header["qform_code"]), int(result.header["sform_code"])) == \
            (int(image.header["qform_code"]), int(image.header["sform_code"]))
        np.testing.assert_allclose(result.affine, upsampled_affine(image.affine, (2, 2, 2)),
                                   atol=1e-4)
        np.testing.assert_array_equal(np.asanyarray(result.dataobj),
                                      repeat(np.asanyarray(image.dataobj), (2, 2, 2)))


def test_nifti_scaled_integers(capsys, tmp_path, nib, rng):
    """int16 on disk with scl_slope/scl_inter: upsampled in physical values, float32."""
    values = rng.uniform(-3.5, 7.25, SPATIAL)
    image = nib.Nifti1Image(values, np.diag([1.5, 1.5, 3.0, 1.0]))
    image.set_data_dtype(np.int16)   # nibabel stores int16 with a slope and an intercept
    image.to_filename(tmp_path / "scaled.nii")
    stored = nib.load(tmp_path / "scaled.nii")
    assert stored.get_data_dtype() == np.int16 and stored.dataobj.slope != 1
    ok(capsys, "upsample", tmp_path / "scaled.nii", tmp_path / "up.nii")
    result = nib.load(tmp_path / "up.nii")
    assert result.get_data_dtype() == np.float32
    assert np.isnan(result.header["scl_slope"]) or result.dataobj.slope == 1
    physical = np.asarray(stored.dataobj, np.float32)
    np.testing.assert_allclose(np.asanyarray(result.dataobj), trilinear(physical, (2, 2, 2)),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(result.header.get_zooms(), (0.75, 0.75, 1.5))


def test_nifti_to_npy_and_back(capsys, tmp_path, nib, npy, volume):
    ok(capsys, "upsample", npy, tmp_path / "up.nii", "--kernel", "nearest")
    image = nib.load(tmp_path / "up.nii")
    np.testing.assert_array_equal(image.get_fdata(), repeat(volume, (2, 2, 2)))
    np.testing.assert_allclose(image.affine, upsampled_affine(np.eye(4), (2, 2, 2)))
    ok(capsys, "upsample", tmp_path / "up.nii", tmp_path / "up2.npy", "--kernel", "nearest")
    np.testing.assert_array_equal(np.load(tmp_path / "up2.npy"), repeat(volume, (4, 4, 4)))


def test_nibabel_missing(capsys, tmp_path, monkeypatch, npy):
    monkeypatch.setitem(sys.modules, "nibabel", None)  # import nibabel -> ImportError
    (tmp_path / "in.nii").write_bytes(b"x" * 400)
    for source, target in [(tmp_path / "in.nii", tmp_path / "out.npy"),
                           (npy, tmp_path / "out.nii.gz")]:
        fails(capsys, "upsample", source, target, match="pip install 'tconv3d[nifti]'")
    assert files(tmp_path) == ["in.nii", "in.npy"]


# --- show --------------------------------------------------------------------------------

def png_shape(path):
    from matplotlib.image import imread
    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return imread(path).shape


def test_show_array(capsys, tmp_path, npy, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    out, _ = ok(capsys, "show", npy)
    assert out.startswith("in_slices.png: middle slices of")
    height, width, _ = png_shape(tmp_path / "in_slices.png")
    assert width > 2 * height
    fails(capsys, "show", npy, match="exists; pass --overwrite")
    ok(capsys, "show", npy, "--overwrite")


def test_show_nifti_series(capsys, tmp_path, data_path):
    pytest.importorskip("matplotlib")
    out, _ = ok(capsys, "show", data_path / "example4d.nii.gz", "--volume", 1, "--out",
                tmp_path / "s.png")
    assert "volume 1 of 2" in out
    png_shape(tmp_path / "s.png")
    fails(capsys, "show", data_path / "example4d.nii.gz", "--volume", 2, "--out",
          tmp_path / "t.png", match="--volume 2 is out of range")


def test_middle_slices_orientation():
    volume = np.zeros((4, 6, 8))
    panels = show._middle_slices(volume, (1.0, 2.0, 3.0), ("x (R)", "y (A)", "z (S)"),
                                ("sagittal", "coronal", "axial"))
    shapes = [image.shape for _, image, *_ in panels]
    assert shapes == [(8, 6), (8, 4), (6, 4)]           # rows: the later axis, upward
    assert [p[2] for p in panels] == [1.5, 3.0, 2.0]    # aspect = row zoom / column zoom
    assert panels[2][0] == "axial, z = 4"


def test_middle_slices_of_an_array_name_their_axes():
    panels = show._middle_slices(np.zeros((4, 6, 8)), (1.0, 1.0, 1.0),
                                 ("axis 0", "axis 1", "axis 2"), ("slice",) * 3)
    assert [p[0] for p in panels] == ["slice, axis 0 = 2", "slice, axis 1 = 3",
                                      "slice, axis 2 = 4"]


def test_show_writes_the_format_of_the_extension(capsys, tmp_path, npy):
    pytest.importorskip("matplotlib")
    ok(capsys, "show", npy, "--out", tmp_path / "s.svg")
    assert b"<svg" in (tmp_path / "s.svg").read_bytes()[:500]
    ok(capsys, "show", npy, "--out", tmp_path / "s.pdf")
    assert (tmp_path / "s.pdf").read_bytes()[:5] == b"%PDF-"
    fails(capsys, "show", npy, "--out", tmp_path / "s.txt",
          match=f"--out {str(tmp_path / 's.txt')!r}: matplotlib cannot write .txt; use one of")
    assert not (tmp_path / "s.txt").exists()
    fails(capsys, "demo", "--phantom", "--out", tmp_path / "d.txt",
          match="matplotlib cannot write .txt")


def test_show_without_matplotlib(capsys, tmp_path, npy, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    fails(capsys, "show", npy, "--out", tmp_path / "s.png",
          match="needs matplotlib (not installed): pip install 'tconv3d[plot]'")
    assert not (tmp_path / "s.png").exists()


# --- demo --------------------------------------------------------------------------------

def demo_table(out):
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] in ("nearest", "trilinear", "learned"):
            rows[parts[0]] = (float(parts[1]), float(parts[2]))
    assert list(rows) == ["nearest", "trilinear", "learned"], out
    return rows


def test_demo_real_mri(capsys, tmp_path, data_path):
    pytest.importorskip("matplotlib")
    out, _ = ok(capsys, "demo", "--threads", 1, "--max-iter", 15, "--out", tmp_path / "d.png")
    assert out.startswith("nibabel's T1 scan anatomical.nii: 33x41x25 voxels of 2 x 2 x 2 mm")
    assert "fitted on nibabel's EPI scan example4d.nii.gz" in out  # not the scored scan
    rows = demo_table(out)
    assert rows["learned"][0] > rows["trilinear"][0] > 25
    assert f"picture: {tmp_path / 'd.png'}" in out
    png_shape(tmp_path / "d.png")


def test_readme_shows_what_the_demo_prints(capsys, tmp_path, data_path):
    pytest.importorskip("matplotlib")
    readme = Path(__file__).resolve().parent.parent / "README.md"
    if not readme.is_file():
        pytest.skip("tests shipped without the repository's README")
    out, _ = ok(capsys, "demo", "--out", tmp_path / "d.png")
    shown = readme.read_text().split("`tconv3d demo` prints", 1)[1].split("```")[1]
    scores = {method: psnr for method, (psnr, _) in demo_table(out).items()}
    assert scores == {method: psnr for method, (psnr, _) in demo_table(shown).items()}
    difference = "learned - trilinear: "
    assert out.split(difference)[1].split()[0] == shown.split(difference)[1].split()[0]


def test_demo_finds_nibabels_scans_without_pytest(run_python, data_path):
    """A user's environment need not have pytest (``nibabel.testing`` imports it)."""
    done = run_python("-c", "import sys; sys.modules['pytest'] = None\n"
                            "from tconv3d.cli import main\n"
                            "sys.exit(main(['demo', '--threads', '1', '--max-iter', '3']))",
                      env={"MPLBACKEND": "Agg"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("nibabel's T1 scan anatomical.nii"), done.stdout
    assert "phantom" not in done.stdout


def test_demo_phantom_and_rewrites_its_picture(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "d.png"
    png.write_bytes(b"old picture")
    out, _ = ok(capsys, "demo", "--phantom", "--threads", 1, "--max-iter", 3, "--out", png)
    assert out.startswith("a synthetic phantom: 48x56x40")
    assert "fitted on a different synthetic phantom" in out
    assert all(np.isfinite(v).all() for v in demo_table(out).values())
    png_shape(png)


def test_demo_without_nibabel_or_matplotlib(capsys, tmp_path, monkeypatch):
    for name in ("nibabel", "matplotlib", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.chdir(tmp_path)
    out, err = ok(capsys, "demo", "--threads", 1, "--max-iter", 2)
    assert out.startswith("nibabel is not installed: synthetic phantom")
    assert "no picture: the demo's picture needs matplotlib" in out
    demo_table(out)
    assert files(tmp_path) == [] and err == ""


def test_demo_on_a_given_volume(capsys, tmp_path, rng):
    np.save(tmp_path / "mine.npy", smooth_volumes(rng, 1, (16, 18, 14))[0])
    out, _ = ok(capsys, "demo", tmp_path / "mine.npy", "--phantom", "--threads", 1,
                "--max-iter", 2, "--out", tmp_path / "d.png")
    assert out.startswith("mine.npy: 16x18x14 voxels")
    demo_table(out)


# --- bench -------------------------------------------------------------------------------

def test_bench_forwards_its_arguments(capsys, monkeypatch):
    from tconv3d import bench
    seen = []
    monkeypatch.setattr(bench, "main", lambda argv, prog=None: seen.append(argv) or [{"case": 1}])
    assert run(capsys, "bench", "--cases", "unet_up", "--threads", "1")[0] == 0
    assert run(capsys, "bench")[0] == 0
    assert seen == [["--cases", "unet_up", "--threads", "1"], []]


def test_the_rates_benchmark_times_every_pass():
    """`python -m tconv3d.bench`'s compute-rate lines: one per shape, each pass's GFLOP/s
    and its ratio to the run's sgemm rate."""
    import io

    from tconv3d.bench import run_compute_rates
    printed = io.StringIO()
    rates = run_compute_rates({"tiny": (1, 4, 3, 3, 2, 2, "same")}, 1, 50.0, 5, out=printed)
    assert sorted(rates["tiny"]) == ["fwd", "input", "kernel"]
    assert all(gflops > 0 for gflops in rates["tiny"].values())
    line, = printed.getvalue().splitlines()
    assert line.startswith("rates tiny (1 thr, float32) GFLOP/s fwd / grad_input / grad_kernel")
    assert line.endswith(f"x sgemm (50) {rates['tiny']['fwd'] / 50:.2f} / "
                         f"{rates['tiny']['input'] / 50:.2f} / {rates['tiny']['kernel'] / 50:.2f}")


def test_bench_help_and_errors_are_its_own(capsys, monkeypatch):
    status, out, _ = run(capsys, "bench", "--help")
    assert status == 0 and "--cases" in out and "--peers" in out
    status, _, err = run(capsys, "bench", "--cases", "nope")
    assert status == 2 and "invalid choice: 'nope'" in err

    from tconv3d import bench

    def broken(argv, prog=None):
        raise RuntimeError("peer crashed\nwith details")
    monkeypatch.setattr(bench, "main", broken)
    fails(capsys, "bench", match="RuntimeError: peer crashed (unexpected")


# --- errors ------------------------------------------------------------------------------

def _write(path, content):
    path.write_bytes(content)


ERRORS = {
    # name: (setup(tmp_path), argv after "upsample"/..., expected message, status)
    "missing input": (None, ["upsample", "nope.npy", "o.npy"], "IN 'nope.npy' does not exist",
                      1),
    "input is a directory": (lambda d: (d / "dir.npy").mkdir(),
                             ["upsample", "dir.npy", "o.npy"], "is a directory, not a file", 1),
    "unsupported input": (lambda d: _write(d / "v.mgz", b"x"), ["upsample", "v.mgz", "o.npy"],
                          "unsupported format (.mgz); expected .npy, .npz, .nii or .nii.gz", 1),
    "unsupported output": (None, ["upsample", "in.npy", "o.tif"],
                           "OUT 'o.tif': unsupported format (.tif)", 1),
    "output without extension": (None, ["upsample", "in.npy", "out"],
                                 "unsupported format (no extension)", 1),
    "output directory missing": (None, ["upsample", "in.npy", "no/o.npy"],
                                 "does not exist", 1),
    "output is a directory": (lambda d: (d / "o.npy").mkdir(), ["upsample", "in.npy", "o.npy"],
                              "OUT 'o.npy' is a directory", 1),
    "not a npy file": (lambda d: _write(d / "bad.npy", b"garbage" * 20),
                       ["upsample", "bad.npy", "o.npy"], "is not a NumPy .npy file", 1),
    "empty npy file": (lambda d: _write(d / "bad.npy", b""), ["upsample", "bad.npy", "o.npy"],
                       "is not a NumPy .npy file", 1),
    "truncated npy": (lambda d: _write(d / "t.npy", (d / "in.npy").read_bytes()[:300]),
                      ["upsample", "t.npy", "o.npy"], "cannot read 't.npy' as a NumPy .npy", 1),
    "object array": (lambda d: np.save(d / "obj.npy", np.empty((2, 2, 2), object)),
                     ["upsample", "obj.npy", "o.npy"], "holds Python objects", 1),
    "not a zip": (lambda d: _write(d / "bad.npz", b"garbage"), ["upsample", "bad.npz", "o.npy"],
                  "cannot read 'bad.npz' as a NumPy .npz archive", 1),
    "two arrays in npz": (lambda d: np.savez(d / "two.npz", a=np.zeros((2, 2, 2)), b=[1]),
                          ["upsample", "two.npz", "o.npz"],
                          "holds 2 arrays (a, b); expected exactly one", 1),
    "empty npz": (lambda d: np.savez(d / "none.npz"), ["upsample", "none.npz", "o.npz"],
                  "holds 0 arrays", 1),
    "2-D array": (lambda d: np.save(d / "flat.npy", np.zeros((4, 5))),
                  ["upsample", "flat.npy", "o.npy"], "shape (4, 5); expected a 3-D volume", 1),
    "complex data": (lambda d: np.save(d / "c.npy", np.zeros((2, 2, 2), complex)),
                     ["upsample", "c.npy", "o.npy"], "holds complex128 data", 1),
    "empty array": (lambda d: np.save(d / "e.npy", np.zeros((0, 3, 3))),
                    ["upsample", "e.npy", "o.npy"], "empty array of shape (0, 3, 3)", 1),
    "nan": (lambda d: np.save(d / "n.npy", np.full((2, 2, 2), np.nan)),
            ["upsample", "n.npy", "o.npy", "--nan", "error"], "holds 8 NaN or infinite values",
            1),
    "too large": (None, ["upsample", "in.npy", "o.npy", "--factor", "1000"],
                  "not enough memory", 1),
    "kernel file missing": (None, ["upsample", "in.npy", "o.npy", "--kernel", "k.npz"],
                            "--kernel 'k.npz' does not exist", 1),
    "kernel file corrupt": (lambda d: _write(d / "k.npz", b"junk"),
                            ["upsample", "in.npy", "o.npy", "--kernel", "k.npz"],
                            "cannot read --kernel 'k.npz' as a .npz kernel file", 1),
    "kernel entry missing": (lambda d: np.savez(d / "k.npz", weights=np.ones((2, 2, 2))),
                             ["upsample", "in.npy", "o.npy", "--kernel", "k.npz"],
                             "has no 'kernel' entry (it has: weights)", 1),
    "kernel not 3-D": (lambda d: np.savez(d / "k.npz", kernel=np.ones((2, 2))),
                       ["upsample", "in.npy", "o.npy", "--kernel", "k.npz"],
                       "'kernel' must be a 3-D array of finite numbers", 1),
    "kernel not finite": (lambda d: np.savez(d / "k.npz", kernel=np.full((2, 2, 2), np.inf)),
                          ["upsample", "in.npy", "o.npy", "--kernel", "k.npz"],
                          "'kernel' must be a 3-D array of finite numbers", 1),
    "kernel factor invalid": (lambda d: np.savez(d / "k.npz", kernel=np.ones((2, 2, 2)),
                                                 factor=[2, 0, 1]),
                              ["upsample", "in.npy", "o.npy", "--kernel", "k.npz"],
                              "'factor' must be 1 or 3 integers >= 1", 1),
    "kernel bias invalid": (lambda d: np.savez(d / "k.npz", kernel=np.ones((2, 2, 2)),
                                               bias=[1.0, 2.0]),
                            ["upsample", "in.npy", "o.npy", "--kernel", "k.npz"],
                            "'bias' must be one finite number", 1),
    "kernel factor differs": (lambda d: np.savez(d / "k.npz", kernel=np.ones((2, 2, 2)),
                                                 factor=2),
                              ["upsample", "in.npy", "o.npy", "--kernel", "k.npz", "--factor",
                               "3"], "--factor 3x3x3 differs from the factor 2x2x2", 1),
    "show missing": (None, ["show", "nope.nii"], "IN 'nope.nii' does not exist", 1),
    "show 2-D": (lambda d: np.save(d / "flat.npy", np.zeros((4, 5))), ["show", "flat.npy"],
                 "expected a 3-D volume", 1),
    "fit missing": (None, ["fit", "nope.npy", "--out", "k.npz"],
                    "HIGH 'nope.npy' does not exist", 1),
    "demo missing": (None, ["demo", "nope.npy"], "IN 'nope.npy' does not exist", 1),
    "demo too small": (lambda d: np.save(d / "s.npy", np.ones((1, 4, 4))),
                       ["demo", "s.npy", "--phantom", "--max-iter", "1"],
                       "smaller than the factor 2", 1),
    # usage errors: exit status 2, still one line
    "factor zero": (None, ["upsample", "in.npy", "o.npy", "--factor", "0"],
                    "argument --factor: expected an integer >= 1", 2),
    "factor negative": (None, ["upsample", "in.npy", "o.npy", "--factor=-2"],
                        "argument --factor", 2),
    "factor not integer": (None, ["upsample", "in.npy", "o.npy", "--factor", "1.5"],
                           "argument --factor", 2),
    "factor text": (None, ["upsample", "in.npy", "o.npy", "--factor", "two"],
                    "argument --factor", 2),
    "factor two values": (None, ["upsample", "in.npy", "o.npy", "--factor", "2,2"],
                          "three of them as 2,2,1, got '2,2'", 2),
    "threads zero": (None, ["upsample", "in.npy", "o.npy", "--threads", "0"],
                     "argument --threads: expected an integer >= 1", 2),
    "kernel name": (None, ["upsample", "in.npy", "o.npy", "--kernel", "cubic"],
                    "expected trilinear, nearest, label or a kernel file ending in .npz", 2),
    "learned without a file": (None, ["upsample", "in.npy", "o.npy", "--kernel", "learned"],
                               "learn one with `tconv3d fit`", 2),
    "bad dtype": (None, ["upsample", "in.npy", "o.npy", "--dtype", "float16"],
                  "argument --dtype: invalid choice", 2),
    "missing OUT": (None, ["upsample", "in.npy"], "required: OUT", 2),
    "no command": (None, [], "choose a command", 2),
    "unknown command": (None, ["frobnicate"], "invalid choice: 'frobnicate'", 2),
    "fit without --out": (None, ["fit", "in.npy"], "required: --out", 2),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_errors_are_one_line_and_write_nothing(capsys, tmp_path, monkeypatch, npy, name):
    setup, argv, message, status = ERRORS[name]
    monkeypatch.chdir(tmp_path)
    if setup is not None:
        setup(tmp_path)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    line = fails(capsys, *argv, match=message, status=status)
    assert line.startswith("tconv3d")
    after = {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert after == before   # nothing created, nothing touched


def test_existing_output_is_kept(capsys, tmp_path, npy):
    out = tmp_path / "o.npy"
    out.write_bytes(b"precious")
    fails(capsys, "upsample", npy, out, match="OUT '" + str(out) + "' exists; pass --overwrite")
    assert out.read_bytes() == b"precious"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="permissions do not bind root")
def test_unreadable_input_and_unwritable_directory(capsys, tmp_path, npy):
    npy.chmod(0)
    fails(capsys, "upsample", npy, tmp_path / "o.npy", match="is not readable")
    npy.chmod(0o644)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    fails(capsys, "upsample", npy, locked / "o.npy", match="is not writable")


def test_truncated_nifti(capsys, tmp_path, data_path):
    import gzip
    raw = gzip.decompress((data_path / "example4d.nii.gz").read_bytes())
    (tmp_path / "t.nii").write_bytes(raw[:len(raw) // 2])
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    (tmp_path / "junk.nii").write_bytes(b"junk" * 200)
    fails(capsys, "upsample", tmp_path / "t.nii", tmp_path / "o.nii", match="cannot read")
    fails(capsys, "upsample", tmp_path / "empty.nii.gz", tmp_path / "o.nii",
          match="as a NIfTI image")
    fails(capsys, "upsample", tmp_path / "junk.nii", tmp_path / "o.nii",
          match="as a NIfTI image")
    assert files(tmp_path) == ["empty.nii.gz", "junk.nii", "t.nii"]


def _failing_save(exc):
    real = np.save

    def save(file, arr, **kwargs):
        real(file, arr[:1], **kwargs)  # some bytes reach the disk first
        raise exc
    return save


@pytest.mark.parametrize("overwrite", [False, True])
def test_failed_write_leaves_nothing_half_written(capsys, tmp_path, npy, monkeypatch,
                                                  overwrite):
    out = tmp_path / "o.npy"
    if overwrite:
        out.write_bytes(b"previous")
    monkeypatch.setattr(np, "save", _failing_save(OSError(errno.ENOSPC, "No space left on "
                                                                        "device")))
    args = ["--overwrite"] if overwrite else []
    fails(capsys, "upsample", npy, out, *args, match="No space left on device")
    assert files(tmp_path) == (["in.npy", "o.npy"] if overwrite else ["in.npy"])
    if overwrite:
        assert out.read_bytes() == b"previous"


def test_interrupted_write_leaves_nothing(capsys, tmp_path, npy, monkeypatch):
    monkeypatch.setattr(np, "save", _failing_save(KeyboardInterrupt()))
    fails(capsys, "upsample", npy, tmp_path / "o.npy", match="interrupted", status=130)
    assert files(tmp_path) == ["in.npy"]


def test_sigterm_during_a_write_leaves_nothing(capsys, tmp_path, npy, monkeypatch):
    import signal
    real = np.save

    def save(file, arr, **kwargs):
        real(file, arr, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)   # the handler runs here, inside the write
        real(file, arr, **kwargs)
    monkeypatch.setattr(np, "save", save)
    previous = signal.getsignal(signal.SIGTERM)
    fails(capsys, "upsample", npy, tmp_path / "o.npy", match="terminated", status=143)
    assert files(tmp_path) == ["in.npy"]
    assert signal.getsignal(signal.SIGTERM) is previous   # restored


def test_failed_nifti_write_leaves_nothing(capsys, tmp_path, npy, nib, monkeypatch):
    real = nib.save

    def save(image, filename):
        real(image, filename)
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(nib, "save", save)
    fails(capsys, "upsample", npy, tmp_path / "o.nii.gz", match="Input/output error")
    assert files(tmp_path) == ["in.npy"]


def test_unexpected_errors_are_one_line_unless_debugging(capsys, monkeypatch, npy, tmp_path):
    def broken(args):
        raise ZeroDivisionError("division by zero")
    monkeypatch.setattr(upsample, "cmd_upsample", broken)
    fails(capsys, "upsample", npy, tmp_path / "o.npy",
          match="ZeroDivisionError: division by zero (unexpected; TCONV3D_DEBUG=1")
    monkeypatch.setenv("TCONV3D_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        main(["upsample", str(npy), str(tmp_path / "o.npy")])


def test_warnings_are_one_line(capsys, monkeypatch, npy, tmp_path):
    import warnings

    def noisy(args):
        warnings.warn("first line\n   second line", UserWarning, stacklevel=1)
        return 0
    monkeypatch.setattr(upsample, "cmd_upsample", noisy)
    status, _, err = run(capsys, "upsample", npy, tmp_path / "o.npy")
    assert status == 0 and err == "tconv3d: warning: first line second line\n"


# --- the installed command ---------------------------------------------------------------

def test_python_m_tconv3d(run_python, tmp_path, npy):
    def _command(*argv):
        return run_python("-m", "tconv3d", *argv, env={"TCONV3D_DEBUG": None})
    version = _command("--version")
    assert version.returncode == 0 and version.stdout.startswith("tconv3d ")
    done = _command("upsample", npy, "o.npy", "--kernel", "nearest")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "o.npy").exists()
    again = _command("upsample", npy, "o.npy")
    assert again.returncode == 1
    assert again.stderr == "tconv3d upsample: error: OUT 'o.npy' exists; pass --overwrite to " \
                           "replace it\n"


@pytest.mark.skipif(os.environ.get("TCONV3D_TEST_INSTALLED", "0") in ("", "0"),
                    reason="set TCONV3D_TEST_INSTALLED=1 to check (CI tests the wheel)")
def test_console_script(run_python):
    """The ``tconv3d`` entry point the wheel installs."""
    import shutil
    script = shutil.which("tconv3d")
    assert script is not None, "no tconv3d on PATH"
    done = run_python("--version", program=[script])
    assert done.returncode == 0 and done.stdout.startswith("tconv3d "), done.stderr
    done = run_python("upsample", "missing.npy", "out.npy", program=[script])
    assert done.returncode == 1
    assert done.stderr == "tconv3d upsample: error: IN 'missing.npy' does not exist\n"


@pytest.mark.parametrize("command", ["", "upsample", "show", "fit", "demo"])
def test_help(capsys, command):
    status, out, _ = run(capsys, *([command] if command else []), "--help")
    assert status == 0
    assert out.startswith(f"usage: tconv3d {command}".rstrip())
    if command in ("upsample", "fit"):
        assert "relative_bias" in out and "kernel files (.npz)" in out


def test_permission_checks_without_root_privileges(capsys, tmp_path, npy, monkeypatch):
    """The same messages as test_unreadable_input_and_unwritable_directory, for runs as
    root (where chmod does not bind): os.access says no."""
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if mode == os.R_OK else
                        real(p, mode))
    fails(capsys, "upsample", npy, tmp_path / "o.npy", match="is not readable")
    monkeypatch.setattr(os, "access", lambda p, mode: False if mode == os.W_OK else
                        real(p, mode))
    fails(capsys, "upsample", npy, tmp_path / "o.npy", match="is not writable")
    assert files(tmp_path) == ["in.npy"]


# --- integer output keeps the physical values ------------------------------------------------

SCALED = [  # stored dtype, slope, intercept
    ("int8", 0.5, -3.0), ("uint8", 10.0, 0.0), ("int16", 10.0, 0.0), ("int16", 0.25, -100.0),
    ("uint16", 3.0, -500.0), ("int32", 0.1, 7.5),
]


def _scaled_nifti(nib, path, rng, dtype, slope, inter, shape=(6, 7, 5)):
    """A NIfTI file storing ``dtype`` with ``scl_slope``/``scl_inter``, values over the
    type's whole range; returns its physical values as nibabel reads them."""
    info = np.iinfo(dtype)
    stored = rng.integers(max(info.min, -2**20), min(info.max, 2**20), shape, endpoint=True)
    stored.flat[:2] = max(info.min, -2**20), min(info.max, 2**20)
    image = nib.Nifti1Image(stored.astype(dtype), np.diag([2.0, 2.0, 3.0, 1.0]))
    image.header.set_slope_inter(slope, inter)
    nib.save(image, path)
    return nib.load(path).get_fdata()


@pytest.mark.parametrize("dtype, slope, inter", SCALED)
def test_scaled_nifti_nearest_is_lossless(capsys, tmp_path, nib, rng, dtype, slope, inter):
    physical = _scaled_nifti(nib, tmp_path / "in.nii", rng, dtype, slope, inter)
    out, _ = ok(capsys, "upsample", tmp_path / "in.nii", tmp_path / "o.nii", "--kernel",
                "nearest", "--dtype", "input")
    image = nib.load(tmp_path / "o.nii")
    assert image.get_data_dtype() == np.dtype(dtype)
    np.testing.assert_array_equal(image.get_fdata(), repeat(physical, (2, 2, 2)))
    assert f" {dtype} (slope {np.float32(slope):g}, intercept {np.float32(inter):g});" in out


@pytest.mark.parametrize("dtype, slope, inter", SCALED)
def test_scaled_nifti_trilinear_within_half_a_step(capsys, tmp_path, nib, rng, dtype, slope,
                                                    inter):
    physical = _scaled_nifti(nib, tmp_path / "in.nii", rng, dtype, slope, inter)
    ok(capsys, "upsample", tmp_path / "in.nii", tmp_path / "o.nii", "--dtype", "input")
    image = nib.load(tmp_path / "o.nii")
    assert image.get_data_dtype() == np.dtype(dtype)
    exact = trilinear(physical, (2, 2, 2), np.float64)
    got = image.get_fdata()
    step = float(np.float32(slope))
    # trilinear stays within the input's range, so the input's grid holds every value
    assert np.abs(got - exact).max() <= step / 2 + 1e-6 * np.abs(exact).max()


def test_narrow_nifti_dtype_rescales_instead_of_clipping(capsys, tmp_path, nib, data_path):
    """``--dtype uint8`` on the T1 scan (values up to several hundred): the slope spans the
    values' range, every voxel within half a step (not 255 everywhere)."""
    ok(capsys, "upsample", data_path / "anatomical.nii", tmp_path / "o.nii", "--dtype",
       "uint8", "--kernel", "nearest")
    physical = nib.load(data_path / "anatomical.nii").get_fdata()
    image = nib.load(tmp_path / "o.nii")
    assert image.get_data_dtype() == np.uint8
    got, want = image.get_fdata(), repeat(physical, (2, 2, 2))
    slope = (want.max() - want.min()) / 255
    assert np.abs(got - want).max() <= slope / 2 * (1 + 1e-6)
    assert len(np.unique(got)) > 100


def test_anatomical_resaved_with_slope_10_survives(capsys, tmp_path, nib, data_path):
    source = nib.load(data_path / "anatomical.nii")
    stored = np.asarray(source.dataobj).astype(np.int16)
    image = nib.Nifti1Image(stored, source.affine)
    image.header.set_slope_inter(10.0, 0.0)
    nib.save(image, tmp_path / "slope10.nii")
    physical = nib.load(tmp_path / "slope10.nii").get_fdata()
    assert physical.max() > 32767          # past int16 in physical units
    ok(capsys, "upsample", tmp_path / "slope10.nii", tmp_path / "o.nii", "--kernel",
       "nearest", "--dtype", "input")
    np.testing.assert_array_equal(nib.load(tmp_path / "o.nii").get_fdata(),
                                  repeat(physical, (2, 2, 2)))


def test_encode_integers():
    from tconv3d.io import FileError, encode_integers
    values = np.array([-3.0, 0.5, 7.0, 60.0])
    q, scaling, clipped = encode_integers(values, np.int8, grid=(0.5, -3.0))
    assert scaling == (0.5, -3.0) and clipped == 0
    np.testing.assert_array_equal(q * 0.5 - 3.0, values)              # on the grid: exact
    with pytest.raises(FileError, match=r"2 voxels of OUT fall outside uint8's range"):
        encode_integers(np.array([-1.0, 3.0, 256.0]), np.uint8)
    q, scaling, clipped = encode_integers(np.array([-1.0, 3.0, 256.0]), np.uint8, clip=True)
    assert q.tolist() == [0, 3, 255] and clipped == 2
    q, (slope, inter), clipped = encode_integers(values, np.uint8, can_scale=True)
    assert clipped == 0 and np.abs(q * slope + inter - values).max() <= slope / 2 * (1 + 1e-6)
    with pytest.raises(FileError, match="1 NaN or infinite values, which int16 cannot store"):
        encode_integers(np.array([1.0, np.nan]), np.int16, can_scale=True)


def test_symbolic_link_loop_and_dangling_link(capsys, tmp_path):
    (tmp_path / "a.npy").symlink_to(tmp_path / "b.npy")
    (tmp_path / "b.npy").symlink_to(tmp_path / "a.npy")
    fails(capsys, "upsample", tmp_path / "a.npy", tmp_path / "o.npy",
          match="is a symbolic link loop")
    (tmp_path / "c.npy").symlink_to(tmp_path / "gone.npy")
    fails(capsys, "upsample", tmp_path / "c.npy", tmp_path / "o.npy",
          match=f"is a symbolic link to {str(tmp_path / 'gone.npy')!r}, which does not exist")


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_unwritable_output_is_named_as_given(capsys, tmp_path, npy):
    """/proc passes the directory checks for root, but no file can be created there: the
    message names OUT, not the temporary file."""
    line = fails(capsys, "upsample", npy, "/proc/o.npy", match="cannot write OUT '/proc/o.npy'")
    assert ".part" not in line


# --- fit: degenerate training data ------------------------------------------------------------

def test_fit_refuses_volumes_too_small_for_the_kernel(capsys, tmp_path, rng):
    np.save(tmp_path / "tiny.npy", rng.random((3, 3, 3)))
    fails(capsys, "fit", tmp_path / "tiny.npy", "--out", tmp_path / "k.npz",
          match="are too small to fit a 6x6x6 kernel for factor 2x2x2: each axis needs at "
                "least 8x8x8 voxels")
    assert not (tmp_path / "k.npz").exists()


def test_fit_on_constant_volumes_warns_and_prints_no_nan(capsys, tmp_path):
    np.save(tmp_path / "flat.npy", np.full((12, 12, 12), 7.0))
    out, err = ok(capsys, "fit", tmp_path / "flat.npy", "--out", tmp_path / "k.npz",
                  "--max-iter", 3, "--threads", 1)
    assert "1 of 1 training volumes are constant" in err
    assert "nan" not in out.lower() and "inf" not in out.lower()
    assert "training PSNR over trilinear not defined" in out


def test_fit_warns_when_the_common_crop_discards_most_voxels(capsys, tmp_path, rng):
    np.save(tmp_path / "big.npy", smooth_volumes(rng, 1, (24, 24, 24))[0])
    np.save(tmp_path / "thin.npy", smooth_volumes(rng, 1, (24, 24, 8))[0])
    out, err = ok(capsys, "fit", tmp_path / "big.npy", tmp_path / "thin.npy", "--out",
                  tmp_path / "k.npz", "--max-iter", 3, "--threads", 1)
    assert f"keeps only 33% of the voxels of {str(tmp_path / 'big.npy')!r}" in err
    assert "thin.npy" not in err
    assert "centre-cropped to a common 24x24x8" in out


def test_huge_factor_is_a_clear_error(capsys, tmp_path, npy):
    fails(capsys, "upsample", npy, tmp_path / "o.npy", "--factor", 10**9,
          match="--factor 1000000000: `OUT` of shape")
    fails(capsys, "upsample", npy, tmp_path / "o.npy", "--factor", 10**4,
          match="not enough memory: `OUT` of shape")


# --- NaN policy and label maps ------------------------------------------------------------------

def test_nan_policies(capsys, tmp_path):
    volume = np.arange(np.prod(SPATIAL), dtype=np.float32).reshape(SPATIAL)
    volume[3, 5, 6] = np.nan
    np.save(tmp_path / "in.npy", volume)
    ok(capsys, "upsample", tmp_path / "in.npy", tmp_path / "near.npy", "--kernel", "nearest")
    np.testing.assert_array_equal(np.load(tmp_path / "near.npy"), repeat(volume, (2, 2, 2)))
    ok(capsys, "upsample", tmp_path / "in.npy", tmp_path / "prop.npy")   # propagate: default
    propagated = np.load(tmp_path / "prop.npy")
    # the trilinear taps of one input voxel reach 4 outputs per axis at factor 2
    assert np.isnan(propagated).sum() == 4 ** 3
    ok(capsys, "upsample", tmp_path / "in.npy", tmp_path / "ign.npy", "--nan", "ignore")
    ignored = np.load(tmp_path / "ign.npy")
    assert np.isfinite(ignored).all()                # every output reaches a finite input
    finite = np.isfinite(propagated)
    np.testing.assert_array_equal(ignored[finite], propagated[finite])   # others unchanged
    fails(capsys, "upsample", tmp_path / "in.npy", tmp_path / "err.npy", "--nan", "error",
          match="holds 1 NaN or infinite values")


def test_nibabels_resampled_scan_with_nan(capsys, tmp_path, nib, data_path):
    source = data_path / "resampled_anat_moved.nii"
    if not source.is_file():
        pytest.skip("nibabel's resampled_anat_moved.nii is not installed")
    physical = nib.load(source).get_fdata()
    assert np.isnan(physical).any()
    ok(capsys, "upsample", source, tmp_path / "o.nii", "--kernel", "nearest")
    np.testing.assert_array_equal(nib.load(tmp_path / "o.nii").get_fdata(),
                                  repeat(physical, (2, 2, 2)))


def test_label_maps_keep_their_labels_and_dtype(capsys, tmp_path, rng):
    labels = rng.integers(0, 5, SPATIAL).astype(np.uint16) * 1000
    np.save(tmp_path / "seg.npy", labels)
    ok(capsys, "upsample", tmp_path / "seg.npy", tmp_path / "o.npy", "--kernel", "label")
    out = np.load(tmp_path / "o.npy")
    assert out.dtype == np.uint16 and out.shape == tuple(2 * n for n in SPATIAL)
    assert set(np.unique(out)) <= set(np.unique(labels))
    from tconv3d.upsampling import VolumeUpsampler    # (its own tests: tests/test_labels.py)
    np.testing.assert_array_equal(
        out, VolumeUpsampler(kernel="label").fit_transform(labels[None])[0])
