"""``SubjectPolicy``: who the subject is, and when it changes, with hysteresis (synthetic tracks, exact times)."""

from __future__ import annotations

import pytest

from vstmon.subjects.policy import SubjectPolicy
from vstmon.subjects.tracker import Track

STEP_S = 0.25  # four detection steps a second


def track(
    track_id: int, x0: float, size: float = 0.2, first_seen_s: float = 0.0, confirmed: bool = True
) -> Track:
    return Track(track_id, (x0, 0.3, x0 + size, 0.3 + size), 0.9, first_seen_s, 0.0, 5, confirmed)


def run(
    policy: SubjectPolicy, steps: list[list[Track]], start_s: float = 0.0
) -> list[tuple[float, str, str | None]]:
    """Feed one list of tracks per step; returns (time, event kind, subject) for each event."""
    events = []
    for i, tracks in enumerate(steps):
        ts_s = start_s + i * STEP_S
        event = policy.update(tracks, ts_s)
        if event is not None:
            events.append((ts_s, event.kind, event.subject))
    return events


def test_a_person_becomes_the_subject_after_confirm_s() -> None:
    policy = SubjectPolicy("cam", confirm_s=1.0, lost_s=1.5, absent_s=3.0)
    events = run(policy, [[track(7, 0.1)]] * 8)
    assert events == [(1.0, "enter", "cam-7")]  # the best choice since 0.0, for 1.0 s
    assert policy.subject_id == "cam-7" and policy.people == 1
    assert policy.subject_box == (0.1, 0.3, 0.30000000000000004, 0.5)


def test_two_people_of_about_the_same_size_do_not_hold_each_other_back() -> None:
    policy = SubjectPolicy("cam", select="largest", confirm_s=1.0)
    a, b = track(1, 0.1, size=0.20), track(2, 0.6, size=0.21)
    a2, b2 = track(1, 0.1, size=0.22), track(2, 0.6, size=0.19)
    steps = [[a, b], [a2, b2]] * 4  # the larger one flips at every step
    assert run(policy, steps) == [(1.0, "enter", "cam-2")]  # both count at 1.0 s; the larger then (b) wins


def test_an_unconfirmed_or_brief_track_never_becomes_the_subject() -> None:
    policy = SubjectPolicy("cam", confirm_s=1.0)
    assert run(policy, [[track(1, 0.1, confirmed=False)]] * 10) == []
    # a false box tracked for 0.75 s (less than confirm_s), then gone
    assert run(policy, [[track(2, 0.5, first_seen_s=10.0)]] * 4 + [[]] * 10, start_s=10.0) == []
    assert policy.subject_id is None


def test_an_occlusion_shorter_than_lost_s_changes_nothing() -> None:
    policy = SubjectPolicy("cam", confirm_s=0.5, lost_s=1.5, absent_s=3.0)
    subject, other = track(1, 0.1, size=0.3), track(2, 0.6, size=0.1)
    steps = [[subject, other]] * 4 + [[other]] * 5 + [[subject, other]] * 4  # hidden 1.25 s < lost_s
    assert run(policy, steps) == [(0.5, "enter", "cam-1")]
    assert policy.subject_id == "cam-1"


def test_the_subject_stays_while_its_track_lives_even_if_someone_larger_comes() -> None:
    policy = SubjectPolicy("cam", select="largest", confirm_s=0.5)
    small, large = track(1, 0.1, size=0.1), track(2, 0.5, size=0.4)
    events = run(policy, [[small]] * 4 + [[small, large]] * 20)
    assert events == [(0.5, "enter", "cam-1")]


def test_lost_for_lost_s_with_a_confirmed_candidate_changes_the_subject() -> None:
    policy = SubjectPolicy("cam", confirm_s=1.0, lost_s=1.5, absent_s=3.0)
    first, second = track(1, 0.1, size=0.3), track(2, 0.6, size=0.1)
    steps = [[first, second]] * 6 + [[second]] * 10  # first leaves at 1.5 s (last seen 1.25 s)
    events = run(policy, steps)
    # second has been the best other choice since 0.0; first is lost for 1.5 s at 2.75 s
    assert events == [(1.0, "enter", "cam-1"), (2.75, "change", "cam-2")]
    assert policy.subject_id == "cam-2"


def test_nobody_to_take_over_for_absent_s_is_a_leave() -> None:
    policy = SubjectPolicy("cam", confirm_s=0.5, lost_s=1.0, absent_s=2.0)
    events = run(policy, [[track(1, 0.1)]] * 4 + [[]] * 12)
    assert events == [(0.5, "enter", "cam-1"), (2.75, "leave", None)]  # last seen at 0.75 s
    assert policy.subject_id is None and policy.subject_box is None and policy.people == 0
    # the next person starts a new subject
    assert run(policy, [[track(5, 0.4, first_seen_s=10.0)]] * 4, start_s=10.0) == [(10.5, "enter", "cam-5")]


def test_select_rules() -> None:
    left_big_late = track(1, 0.0, size=0.4, first_seen_s=5.0)
    centre_small = track(2, 0.45, size=0.1, first_seen_s=3.0)
    right_early = track(3, 0.8, size=0.15, first_seen_s=1.0)
    tracks = [left_big_late, centre_small, right_early]
    chosen = {}
    for rule in ("largest", "central", "longest"):
        policy = SubjectPolicy("cam", select=rule, confirm_s=0.0)
        event = policy.update(tracks, 6.0)
        assert event is not None
        chosen[rule] = event.subject
    assert chosen == {"largest": "cam-1", "central": "cam-2", "longest": "cam-3"}


def test_a_control_name_holds_until_the_subject_changes() -> None:
    policy = SubjectPolicy("cam", confirm_s=0.5, lost_s=0.5, absent_s=1.0)
    first, second = track(1, 0.1, size=0.3), track(2, 0.6, size=0.1)
    run(policy, [[first, second]] * 3)
    policy.name_subject("p-43")
    assert policy.subject_id == "p-43"
    assert run(policy, [[first, second]] * 3, start_s=1.0) == []  # still p-43
    assert policy.subject_id == "p-43"
    events = run(policy, [[second]] * 4, start_s=2.0)
    assert events == [(2.0, "change", "cam-2")]  # last seen at 1.5 s, lost_s 0.5
    assert policy.subject_id == "cam-2"  # the name went with the subject it named


def test_events_carry_what_a_message_needs() -> None:
    policy = SubjectPolicy("cam", confirm_s=0.0, lost_s=0.0, absent_s=0.0)
    enter = policy.update([track(3, 0.2), track(4, 0.5, confirmed=False)], 1.0)
    assert enter is not None and enter.kind == "enter" and enter.previous is None and enter.people == 2
    assert enter.box == track(3, 0.2).box and enter.score == 0.9 and enter.reset_reason == "subject_change"
    leave = policy.update([], 2.0)
    assert leave is not None and leave.kind == "leave" and leave.previous == "cam-3" and leave.subject is None
    assert leave.box == track(3, 0.2).box and leave.reset_reason == "absent" and leave.people == 0


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="select"):
        SubjectPolicy("cam", select="tallest")
    with pytest.raises(ValueError, match="absent_s"):
        SubjectPolicy("cam", lost_s=5.0, absent_s=1.0)
