"""Camera state machine: the transition table is the only way to move, one status per move."""

from __future__ import annotations

import random
import threading

import pytest

from pipeline.camera import TERMINAL, TRANSITIONS, Backoff, CameraStateMachine, IllegalTransition
from pipeline.messages import CameraState, CameraStatus, Picture

S = CameraState


def machine(initial: S = S.CONNECTING) -> tuple[CameraStateMachine, list[CameraStatus]]:
    seen: list[CameraStatus] = []
    return CameraStateMachine(camera_id="cam", emit=seen.append, initial=initial), seen


def test_reconnect_cycle_emits_one_status_per_move() -> None:
    m, seen = machine()
    for state in (S.LIVE, S.STALLED, S.LIVE, S.RECONNECTING, S.CONNECTING, S.LIVE, S.ENDED):
        m.transition(state, detail=state.value)
    assert [s.state for s in seen] == [S.CONNECTING, S.LIVE, S.STALLED, S.LIVE, S.RECONNECTING, S.CONNECTING,
                                       S.LIVE, S.ENDED]
    assert all(s.camera_id == "cam" for s in seen) and seen[0].detail == "start"
    assert [s.ts for s in seen] == sorted(s.ts for s in seen)


@pytest.mark.parametrize("path, illegal", [
    ((), S.STALLED),  # connecting cannot stall: it has never been live
    ((S.LIVE,), S.CONNECTING),  # a live camera reconnects through RECONNECTING
    ((S.RECONNECTING,), S.LIVE),  # it must connect first
    ((S.RECONNECTING,), S.ENDED),
    ((S.LIVE, S.ENDED), S.LIVE),  # final states are final
    ((S.FAILED,), S.RECONNECTING),
    ((S.STOPPED,), S.STOPPED),
    ((S.LIVE,), S.LIVE),  # no self-loops: a status per change, not per frame
])
def test_illegal_transitions_raise_and_change_nothing(path: tuple[S, ...], illegal: S) -> None:
    m, seen = machine()
    for state in path:
        m.transition(state)
    before = (m.state, len(seen))
    with pytest.raises(IllegalTransition, match=f"{m.state.value} -> {illegal.value}"):
        m.transition(illegal)
    assert (m.state, len(seen)) == before
    assert m.transition_if(illegal) is None and (m.state, len(seen)) == before


def test_table_covers_every_state_and_terminal_states_have_no_exit() -> None:
    assert set(TRANSITIONS) == set(CameraState)
    assert TERMINAL == {S.ENDED, S.FAILED, S.STOPPED}
    for state in TERMINAL:
        assert TRANSITIONS[state] == frozenset()
    for state in set(CameraState) - TERMINAL:
        assert S.STOPPED in TRANSITIONS[state] and S.FAILED in TRANSITIONS[state]


def test_concurrent_moves_emit_in_the_order_they_happened() -> None:
    # The read loop (STALLED -> LIVE) and the stall watchdog (LIVE -> STALLED) race; the statuses must
    # still form a valid path, i.e. the emitted order equals the order of the moves.
    m, seen = machine()
    m.transition(S.LIVE)

    def flip(target: S) -> None:
        for _ in range(2000):
            m.transition_if(target)

    threads = [threading.Thread(target=flip, args=(s,)) for s in (S.STALLED, S.LIVE)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    states = [s.state for s in seen]
    for a, b in zip(states, states[1:], strict=False):
        assert b in TRANSITIONS[a], (a, b)
    assert states[-1] is m.state


def test_a_picture_change_is_a_status_with_the_state_as_it_was() -> None:
    m, seen = machine()
    m.transition(S.LIVE, "640x360")
    assert m.set_picture(Picture.FROZEN, "picture frozen for 30 s") == seen[-1]
    assert (seen[-1].state, seen[-1].picture, seen[-1].detail) == (S.LIVE, Picture.FROZEN, "picture frozen for 30 s")
    assert m.set_picture(Picture.FROZEN, "again") is None and len(seen) == 3  # one status per change
    m.transition(S.STALLED, "no frame for 2.0s")  # every status carries the verdict
    assert (seen[-1].state, seen[-1].picture) == (S.STALLED, Picture.FROZEN) and m.state is S.STALLED
    mirror, _ = machine()  # the supervisor's copy adopts both
    mirror.follow(seen[-1])
    assert (mirror.state, mirror.picture) == (S.STALLED, Picture.FROZEN)
    restarted = CameraStateMachine(camera_id="cam", emit=seen.append, initial=S.RECONNECTING, announce=False,
                                   picture=Picture.BLANK)
    assert restarted.transition(S.CONNECTING).picture is Picture.BLANK


def test_backoff_grows_to_the_cap_with_bounded_jitter() -> None:
    b = Backoff(initial_s=0.5, max_s=4.0, jitter=0.2)
    rng = random.Random(0)
    for attempt, base in enumerate([0.5, 1.0, 2.0, 4.0, 4.0, 4.0]):
        for _ in range(20):
            assert base * 0.8 <= b.delay(attempt, rng) <= base * 1.2
    assert Backoff(initial_s=1, max_s=1, jitter=0).delay(10_000, rng) == 1.0
