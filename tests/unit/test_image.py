import numpy as np
import pytest
import torch
from PIL import Image

from mmfed.config import ImageSpec
from mmfed.data.image import ImageProcessor, load_image
from mmfed.data.scenarios.fsdd_mnist import read_idx
from mmfed.errors import DataError


@pytest.fixture(scope="module")
def mnist_png(shared_data, tmp_path_factory):
    images = read_idx(shared_data / "mnist" / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(shared_data / "mnist" / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and labels[:3].tolist() == [7, 2, 1]
    path = tmp_path_factory.mktemp("img") / "seven.png"
    Image.fromarray(images[0]).save(path)
    return path


def test_mnist_png_to_normalised_tensor(mnist_png):
    x = ImageProcessor(ImageSpec())(mnist_png)
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.min() < -0.9 and x.max() > 0.9  # black background, white ink


def test_grey_image_to_rgb_and_resize(mnist_png):
    x = ImageProcessor(ImageSpec(size=64, channels=3))(mnist_png)
    assert x.shape == (3, 64, 64)
    assert torch.allclose(x[0], x[1]) and torch.allclose(x[1], x[2])


def test_colour_xray_jpeg_to_grey(shared_data):
    xray = sorted((shared_data / "covid_chestxray_subset" / "images").glob("*.jpg"))[0]
    x = ImageProcessor(ImageSpec(size=96))(xray)
    assert x.shape == (1, 96, 96) and x.std() > 0.05


def test_16bit_and_rgba_images_are_rescaled_not_clipped(tmp_path):
    arr = (np.linspace(0, 4000, 32 * 32).reshape(32, 32)).astype(np.uint16)  # 12-bit detector range
    Image.fromarray(arr).save(tmp_path / "ct.png")
    grey = np.asarray(load_image(tmp_path / "ct.png", 1))
    assert grey.min() == 0 and grey.max() == 255  # clipping would give all-255 above 255
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:4, :, 3] = 255  # top half opaque red, bottom transparent
    Image.fromarray(rgba).save(tmp_path / "a.png")
    rgb = np.asarray(load_image(tmp_path / "a.png", 3))
    assert rgb[0, 0].tolist() == [200, 0, 0] and rgb[7, 0].tolist() == [0, 0, 0]


def test_augmentation_changes_pixels_but_not_shape(mnist_png):
    proc = ImageProcessor(ImageSpec())
    torch.manual_seed(0)
    a = proc(mnist_png, augment=True)
    b = proc(mnist_png, augment=True)
    assert a.shape == (1, 28, 28) and not torch.allclose(a, b)
    assert not torch.allclose(a, proc(mnist_png))


def test_corrupt_image_names_file(tmp_path):
    bad = tmp_path / "scan.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(DataError, match="scan.png"):
        ImageProcessor(ImageSpec())(bad)
