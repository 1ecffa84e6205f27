import pytest

from engines.errors import ConfigError
from engines.limits import MAX_IMGSZ, imgsz_hw


@pytest.mark.parametrize("imgsz, stride, hw", [(640, 32, (640, 640)), ((384, 640), 32, (384, 640)),
                                               ([128, 64], 64, (128, 64))])
def test_a_side_or_a_pair_is_height_and_width(imgsz, stride, hw):
    assert imgsz_hw(imgsz, stride) == hw


@pytest.mark.parametrize("imgsz, stride, message", [
    (100, 32, "--imgsz: must be a positive multiple of 32, got 100"),
    ((384, 0), 32, "--imgsz: must be a positive multiple of 32, got 384,0"),
    (96, 64, "--imgsz: must be a positive multiple of 64, got 96"),
    ((32, 32, 32), 32, "--imgsz: must be a positive multiple of 32, got 32,32,32"),
    ((320.0, 320), 32, "--imgsz: must be a positive multiple of 32, got 320.0,320"),
    ((320, MAX_IMGSZ + 32), 32, f"--imgsz: at most {MAX_IMGSZ}, got 320,{MAX_IMGSZ + 32}"),
])
def test_bad_sizes_are_one_line_errors_with_the_value_as_given(imgsz, stride, message):
    with pytest.raises(ConfigError) as e:
        imgsz_hw(imgsz, stride)
    assert str(e.value) == message

