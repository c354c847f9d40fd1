import pytest

from autopeft.errors import BadInputError
from autopeft.sizes import format_size, parse_size


@pytest.mark.parametrize("text, expected", [
    ("12GB", 12 * 10**9), ("12GiB", 12 * 2**30), ("512MiB", 512 * 2**20), ("1.5gb", 1_500_000_000),
    ("300 MB", 300 * 10**6), ("1024", 1024), ("2TB", 2 * 10**12),
])
def test_parse_size_accepts_decimal_and_binary_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["-3GB", "12XB", "GB", "", "0GB", "twelve", "1..2GB"])
def test_parse_size_rejects_nonsense_with_the_value_in_the_message(text):
    with pytest.raises(BadInputError) as info:
        parse_size(text, what="--max-vram")
    assert "--max-vram" in str(info.value)


def test_format_size_is_human_readable():
    assert format_size(22_290_000_000) == "22.3 GB"
    assert format_size(512) == "512 B"
