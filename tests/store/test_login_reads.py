"""The login path's reads for many at once (``get_accounts``,
``read_inboxes``, ``get_records``: fixed SQL through the DB-API) answer as
the one-at-a-time reads do, on every backend."""

from tests.support.repositories import CONV, A, B, C, accounts, fresh, msg


def test_accounts_read_together_answer_as_one_at_a_time(engine):  # noqa: F811
    r = fresh(engine)
    accounts(r, A, B)
    r.update_account(B, None, b"a new profile", True)
    got = r.get_accounts([B, C, A, B])
    assert got == [r.get_account(B), None, r.get_account(A), r.get_account(B)]
    assert got[0] is not None and got[0].profile == b"a new profile" and got[0].disabled and got[0].version == 1
    assert got[2] is not None and got[2].secret == b"secret" and not got[2].disabled
    assert r.get_accounts([]) == []


def test_inboxes_read_together_answer_as_one_at_a_time(engine):  # noqa: F811
    r = fresh(engine)
    accounts(r, A, B, C)
    r.append_messages([msg(i, body=f"body {i}".encode()) for i in range(6)])
    reads = [(B, 0, 10), (A, 2, 3), (C, 0, 10), (B, 4, 1), (B, 6, 5)]
    got = r.read_inboxes(reads)
    assert got == [r.read_inbox(*read) for read in reads]
    assert [e.pos for e in got[1]] == [3, 4, 5] and got[2] == [] and got[4] == []
    assert got[0][5].message.conv_id == CONV and got[0][5].message.content == b"body 5"


def test_records_read_together(engine):  # noqa: F811
    r = fresh(engine)
    r.put_record(A, "roster", b"of a", 0)
    r.put_record(B, "roster", b"of b", 0)
    r.put_record(B, "presence", b"status of b", 0)
    assert r.get_records([A, B, C], "roster") == {A: b"of a", B: b"of b"}
    assert r.get_records([A, B], "presence") == {B: b"status of b"}
    assert r.get_records([], "roster") == {}
