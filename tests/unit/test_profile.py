"""Reference §2: profiles from sleep specs and tables, slowest merge, monotonicity."""

import msgspec
import pytest

from schemas.profile import ModelProfile, profile_from_sleep_spec, profile_from_table
from shard.core.latency import OUT_OF_RANGE_NS, LatencyModel

CURRENT_FORMAT = """tensorflow:resnet_0:1
TITAN_X_(Pascal)
GPU-1234
Forward latency
batch,latency(us),std(us),static memory(B),peak memory(B),repeat
1,6000,300,100,200,10
2,9000,100,100,200,10
3,8800,100,100,200,10
Preprocess latency (mean,std,repeat)
3310,1540,10
Postprocess latency (mean,std,repeat)
1,0,10
"""

OLD_FORMAT = """caffe:vgg16:1
TITAN_X_(Pascal)
Forward latency
batch,latency,std,memory
1,6300,10,5
2,14500,20,5
Preprocess latency
mean(us),std(us)
3310,1540
Postprocess latency
mean(us),std(us)
1,0
"""


def test_sleep_spec_is_linear_with_zero_std_up_to_499() -> None:
    profile = profile_from_sleep_spec("sleep:1082,5204")
    assert profile.batch_size_max == 499
    assert profile.forward_us(1) == 6286
    assert profile.forward_us(40) == 48484
    assert profile.pre_us == profile.post_us == 0


def test_sleep_spec_with_pre_and_post_and_the_reference_spelling() -> None:
    profile = profile_from_sleep_spec("sleep#10,20,30,40")
    assert (profile.pre_us, profile.post_us) == (30, 40)


@pytest.mark.parametrize("spec", ["sleep:1082", "sleep:1,2,3", "sleep:a,b", "relu:1,2", "sleep:-1,2"])
def test_bad_sleep_specs_are_rejected_with_a_clear_message(spec: str) -> None:
    with pytest.raises(ValueError, match="bad sleep profile"):
        profile_from_sleep_spec(spec)


def test_current_table_format_parses_mean_plus_std() -> None:
    profile = profile_from_table(CURRENT_FORMAT)
    assert profile.batch_size_max == 3
    assert profile.forward_us(1) == 6300
    assert profile.pre_us == 3310 + 1540


def test_old_table_format_parses_too() -> None:
    profile = profile_from_table(OLD_FORMAT)
    assert profile.batch_size_max == 2
    assert profile.forward_us(2) == 14520


def test_monotone_takes_the_running_maximum() -> None:
    profile = profile_from_table(CURRENT_FORMAT).monotone()
    assert profile.forward_us(3) == profile.forward_us(2) == 9100


def test_merge_slowest_keeps_the_slower_entry_per_batch_and_extends_the_range() -> None:
    fast = profile_from_sleep_spec("sleep:100,1000", 3)
    slow = profile_from_sleep_spec("sleep:200,500,7,0", 5)
    merged = fast.merge_slowest(slow)
    assert merged.batch_size_max == 5
    assert merged.forward_us(1) == 1100  # 1100 > 700
    assert merged.forward_us(5) == 1500
    assert merged.pre_us == 7


def test_latency_model_uses_the_3600_s_sentinel_beyond_range() -> None:
    latency = LatencyModel(profile_from_sleep_spec("sleep:1082,5204", 4))
    assert latency.exec(5) >= OUT_OF_RANGE_NS
    assert latency.exec_ns[5] == OUT_OF_RANGE_NS
    assert latency.exec(4) == (1082 * 4 + 5204) * 1000


def test_profile_round_trips_through_msgpack() -> None:
    profile = profile_from_sleep_spec("sleep:1,2", 3)
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(profile), type=ModelProfile) == profile
