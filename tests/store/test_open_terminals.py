"""Terminals opened together (``open_terminals``, one transaction) end as
they would one at a time (``open_terminal``), on every backend."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.repositories import A, B, C, accounts, fresh, msg, repo

DEVICES = [b"phone".ljust(16), b"laptop".ljust(16), b"tablet".ljust(16)]


def test_a_batch_opens_new_and_known_terminals_at_their_cursors(engine):
    r = fresh(engine)
    accounts(r, A, B, C)
    r.append_messages([msg(i) for i in range(5)])
    assert r.open_terminal(B, DEVICES[0], 1) == 0
    r.append_messages([], {(B, DEVICES[0]): 3})
    got = r.open_terminals([(B, DEVICES[0], 2), (B, DEVICES[1], 2), (C, DEVICES[0], 2), (B, DEVICES[1], 3)])
    # known: its cursor; new: the account's furthest-behind terminal; none yet: 0
    assert got == [3, 3, 0, 3]
    assert r.open_terminal(B, DEVICES[1], 4) == 3
    assert r.count_terminals(B) == 2 and r.count_terminals(C) == 1


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    before=st.lists(st.tuples(st.sampled_from([A, B]), st.sampled_from(DEVICES), st.integers(0, 5)), max_size=4),
    batch=st.lists(st.tuples(st.sampled_from([A, B, C]), st.sampled_from(DEVICES)), min_size=1, max_size=8),
)
def test_a_batch_answers_as_one_at_a_time_would(tmp_path_factory, before, batch):
    one, many = repo(), repo()
    for r in (one, many):
        accounts(r, A, B, C)
        r.append_messages([msg(i) for i in range(5)])
        for user, device, cursor in before:
            r.open_terminal(user, device, 1)
            r.append_messages([], {(user, device): cursor})
    items = [(u, d, 7) for u, d in batch]
    assert many.open_terminals(items) == [one.open_terminal(*item) for item in items]
    for user in (A, B, C):
        assert many.count_terminals(user) == one.count_terminals(user)
