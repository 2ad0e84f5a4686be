import numpy as np
import pytest

from geogfm.data.transforms.temporal_sampling import (
    FixedStride,
    RandomK,
    Seasonal,
    make_sampler,
)

# two years of monthly frames, mid-month; frames 2 and 7 are cloudy
TIMES = np.array([f"{2021 + m // 12}-{m % 12 + 1:02d}-15" for m in range(24)], "datetime64[s]")
VF = np.ones(24)
VF[[2, 7]] = 0.2


def test_fixed_stride_steps_over_eligible_frames():
    s = FixedStride(3, stride=2, min_valid_fraction=0.5)
    ok = [i for i in range(24) if i not in (2, 7)]
    assert s.select(TIMES, VF).tolist() == [ok[0], ok[2], ok[4]]
    rng = np.random.default_rng(0)
    for _ in range(20):
        pick = s.select(TIMES, VF, rng)
        assert len(pick) == 3 and all(VF[pick] >= 0.5)
        positions = [ok.index(i) for i in pick]
        assert np.diff(positions).tolist() == [2, 2]
    assert s.select(TIMES[:4], VF[:4]) is None  # 3 eligible frames, 5 needed


def test_seasonal_picks_one_frame_per_meteorological_season():
    s = Seasonal(4, min_valid_fraction=0.5)
    vf = VF.copy()
    vf[[5, 17]] = [0.9, 0.95]  # the Junes are less clear than July
    pick = s.select(TIMES, vf)  # per season the clearest frame, the earliest on ties
    # DJF: Jan 2021; MAM: Apr 2021 (Mar 2021 is cloudy); JJA: Jul 2021; SON: Sep 2021
    assert pick.tolist() == [0, 3, 6, 8]
    rng = np.random.default_rng(1)
    for _ in range(20):
        m = TIMES[s.select(TIMES, vf, rng)].astype("datetime64[M]").astype(int) % 12 + 1
        assert m[0] in (12, 1, 2) and m[1] in (3, 4, 5) and m[2] in (6, 7, 8)
        assert m[3] in (9, 10, 11)
    summer_only = TIMES[5:8]
    assert s.select(summer_only, np.ones(3)) is None
    with pytest.raises(ValueError, match="dividing the 12 months"):
        Seasonal(5)


def test_random_k_draws_distinct_sorted_eligible_frames():
    s = RandomK(5, min_valid_fraction=0.5)
    rng = np.random.default_rng(0)
    picks = {tuple(s.select(TIMES, VF, rng)) for _ in range(30)}
    assert len(picks) > 20
    for p in picks:
        assert list(p) == sorted(set(p)) and not {2, 7} & set(p)
    even = s.select(TIMES, VF)  # deterministic: evenly spaced
    assert even.tolist() == s.select(TIMES, VF).tolist() and even[0] == 0 and even[-1] == 23
    assert RandomK(23, min_valid_fraction=0.5).select(TIMES, VF) is None


def test_make_sampler_by_name():
    assert isinstance(make_sampler("seasonal", 4), Seasonal)
    s = make_sampler("stride", 2, stride=3, min_valid_fraction=0.4)
    assert isinstance(s, FixedStride) and s.stride == 3 and s.min_valid_fraction == 0.4
    with pytest.raises(ValueError, match=r"unknown temporal sampling 'weekly'.*'random'"):
        make_sampler("weekly", 2)
    with pytest.raises(ValueError, match="num_frames must be >= 1"):
        RandomK(0)
