"""The small-number suppression rule at its boundaries (issue 23): 0 stays 0, every count from 1 to 7 is
redacted, 8 and above are rounded to the nearest 5."""

import pytest

from gpdata.share.publish import REDACTED, suppress


@pytest.mark.parametrize("n", range(1, 8))
def test_every_count_from_one_to_seven_is_redacted(n):
    assert suppress(n) == REDACTED


@pytest.mark.parametrize("n, shown", [(0, 0), (8, 10), (9, 10), (12, 10), (13, 15), (22, 20), (23, 25), (100, 100)])
def test_zero_stays_and_the_rest_is_rounded_to_the_nearest_five(n, shown):
    assert suppress(n) == shown
