"""Admission at the shard's door (shard/core/admission.py), without a server: each rule with the
status, reason and outcome label its reply carries, the order the rules apply in, and the
table of ids seen. The reasons are the ones load/bench/bad_input.py's corpus checks live."""

from schemas.status import (
    CONTENT_JSON,
    CONTENT_MSGPACK,
    HEADER_CONTENT_TYPE,
    HEADER_DEADLINE,
    HEADER_REQUEST_ID,
    HEADER_SLO_MS,
    Status,
)
from shard.core.admission import (
    DUPLICATE,
    NO_HEADERS,
    AdmissionLimits,
    Admitted,
    Rejected,
    SeenIds,
    admit,
)

MS = 1_000_000
SLO_NS = 100 * MS
WALL_NS = 1_700_000_000_000 * MS  # wall clock now: Unix time in ns
NOW_NS = 5_000 * MS  # monotonic clock now
LIMITS = AdmissionLimits(body_bytes_max=1000, queue_len_max=10)


def decide(headers=NO_HEADERS, *, body_bytes=10, seen=None, queued=0, released=False,
           handed_back=False, slo_ns=SLO_NS):
    return admit(headers, body_bytes, slo_ns, WALL_NS, NOW_NS, seen or SeenIds(), LIMITS, queued=queued,
                 released=released, handed_back=handed_back)


def test_a_plain_request_is_admitted_with_the_model_slo_and_a_wall_clock_deadline() -> None:
    assert decide() == Admitted(CONTENT_JSON, "", SLO_NS, WALL_NS + SLO_NS)


def test_msgpack_bodies_and_client_ids_are_kept_for_the_reply() -> None:
    admitted = decide({HEADER_CONTENT_TYPE: CONTENT_MSGPACK, HEADER_REQUEST_ID: "abc"})
    assert admitted == Admitted(CONTENT_MSGPACK, "abc", SLO_NS, WALL_NS + SLO_NS)


def test_an_unsupported_content_type_is_a_400_that_names_the_accepted_ones() -> None:
    rejected = decide({HEADER_CONTENT_TYPE: "text/plain", HEADER_REQUEST_ID: "r1"})
    assert rejected == Rejected(Status.BAD_REQUEST, "unsupported Content-Type 'text/plain'; use application/json "
                                "or application/msgpack", "bad_request", "r1")


def test_a_request_id_over_128_characters_is_a_400_that_does_not_echo_the_id() -> None:
    assert decide({HEADER_REQUEST_ID: "x" * 128}).__class__ is Admitted
    rejected = decide({HEADER_REQUEST_ID: "x" * 129})
    assert rejected == Rejected(Status.BAD_REQUEST, "Symphony-Request-Id longer than 128 characters", "bad_request", "")


def test_an_slo_header_replaces_the_model_slo() -> None:
    admitted = decide({HEADER_SLO_MS: "30.5"})
    assert admitted.slo_ns == 30_500_000
    assert admitted.deadline_unix_ns == WALL_NS + 30_500_000


def test_an_slo_header_that_is_not_a_positive_number_under_an_hour_is_a_400() -> None:
    for value in ("soon", "0", "-5", "nan", "inf", "3600000"):
        rejected = decide({HEADER_SLO_MS: value, HEADER_REQUEST_ID: "r"})
        assert rejected == Rejected(Status.BAD_REQUEST, "Symphony-Slo-Ms must be a positive number of milliseconds",
                                    "bad_request", "r"), value


def deadline_in(ms: int) -> dict[str, str]:
    return {HEADER_DEADLINE: f"{WALL_NS // MS + ms}"}


def test_a_deadline_tighter_than_the_slo_wins() -> None:
    admitted = decide(deadline_in(30))
    assert abs(admitted.slo_ns - 30 * MS) < 1000  # a double carries Unix ns to within 256 ns
    assert admitted.deadline_unix_ns == WALL_NS + admitted.slo_ns


def test_a_deadline_looser_than_the_slo_leaves_the_slo() -> None:
    assert decide(deadline_in(500)).slo_ns == SLO_NS


def test_a_deadline_is_the_whole_budget_of_a_model_without_a_known_slo() -> None:
    assert abs(decide(deadline_in(500), slo_ns=0).slo_ns - 500 * MS) < 1000


def test_a_deadline_that_is_not_unix_milliseconds_is_a_400() -> None:
    for value in ("soon", "-1", "nan", "1e400", "0"):
        rejected = decide({HEADER_DEADLINE: value})
        assert rejected == Rejected(Status.BAD_REQUEST, "Symphony-Deadline must be Unix time in milliseconds",
                                    "bad_request", ""), value


def test_a_request_past_its_deadline_is_answered_504_expired_and_never_queued() -> None:
    for ms in (0, -5):
        rejected = decide({**deadline_in(ms), HEADER_REQUEST_ID: "late"})
        assert rejected == Rejected(Status.DROPPED, "dropped: expired before it was scheduled", "expired", "late")


def test_a_repeated_id_within_its_deadline_is_a_duplicate_with_no_reply() -> None:
    seen = SeenIds()
    seen.remember("same", NOW_NS + 1, NOW_NS)
    assert decide({HEADER_REQUEST_ID: "same"}, seen=seen) is DUPLICATE
    assert decide({HEADER_REQUEST_ID: "other"}, seen=seen).__class__ is Admitted


def test_an_id_is_free_again_once_its_deadline_has_passed() -> None:
    seen = SeenIds()
    seen.remember("same", NOW_NS, NOW_NS - SLO_NS)
    assert decide({HEADER_REQUEST_ID: "same"}, seen=seen).__class__ is Admitted


def test_a_hand_back_of_a_seen_id_is_not_a_duplicate() -> None:
    seen = SeenIds()
    seen.remember("moved", NOW_NS + SLO_NS, NOW_NS)
    assert decide({HEADER_REQUEST_ID: "moved"}, seen=seen, handed_back=True).__class__ is Admitted


def test_a_request_for_a_model_being_given_up_is_handed_back_even_when_full_or_large() -> None:
    admitted = decide({HEADER_REQUEST_ID: "r"}, released=True, body_bytes=10_000, queued=10)
    assert admitted == Admitted(CONTENT_JSON, "r", SLO_NS, WALL_NS + SLO_NS, hand_back=True)


def test_a_duplicate_of_a_model_being_given_up_is_not_handed_back() -> None:
    seen = SeenIds()
    seen.remember("same", NOW_NS + 1, NOW_NS)
    assert decide({HEADER_REQUEST_ID: "same"}, seen=seen, released=True) is DUPLICATE


def test_a_body_over_the_limit_is_a_413_that_names_both_sizes() -> None:
    assert decide(body_bytes=1000).__class__ is Admitted
    rejected = decide({HEADER_REQUEST_ID: "big"}, body_bytes=1001)
    assert rejected == Rejected(Status.TOO_LARGE, "body of 1001 bytes exceeds 1000", "rejected", "big")


def test_a_full_shard_queue_is_a_429() -> None:
    assert decide(queued=9).__class__ is Admitted
    rejected = decide(queued=10)
    assert rejected == Rejected(Status.OVERLOADED, "overloaded: the shard's queue is full", "rejected", "")


def test_the_first_failing_rule_decides() -> None:
    everything_wrong = {HEADER_CONTENT_TYPE: "text/plain", HEADER_REQUEST_ID: "x" * 200, HEADER_SLO_MS: "-1",
                        HEADER_DEADLINE: "soon"}
    assert "Content-Type" in decide(everything_wrong, body_bytes=10_000).reason
    del everything_wrong[HEADER_CONTENT_TYPE]
    assert "Request-Id" in decide(everything_wrong).reason
    everything_wrong[HEADER_REQUEST_ID] = "ok"
    assert "Slo-Ms" in decide(everything_wrong).reason
    everything_wrong[HEADER_SLO_MS] = "50"
    assert "Deadline" in decide(everything_wrong).reason
    assert decide({}, body_bytes=10_000, queued=10).status is Status.TOO_LARGE


def test_seen_ids_are_pruned_of_passed_deadlines_when_the_table_doubles() -> None:
    seen = SeenIds(size_min=4)
    for k in range(3):
        seen.remember(f"old-{k}", 10, 0)
    seen.remember("open", 1_000, 0)  # the fourth id fills the table: nothing has passed yet
    assert len(seen) == 4
    for k in range(4):
        seen.remember(f"new-{k}", 1_000, 100)  # the eighth prunes the three that passed at 10
    assert len(seen) == 5
    assert seen.is_open("open", 100) and not seen.is_open("old-0", 5)


def test_a_request_without_an_id_is_not_remembered() -> None:
    seen = SeenIds()
    seen.remember("", NOW_NS + SLO_NS, NOW_NS)
    assert len(seen) == 0
