"""The light list of check ids (for instant argument errors) is the registry's."""

from proofs_check.ids import CHECK_IDS, unknown
from proofs_check.registry import all_checks


def test_check_ids_are_the_registered_ones_in_order():
    assert CHECK_IDS == tuple(c.id for c in all_checks())


def test_unknown_follows_the_selection_rule():
    assert unknown(["T7", "t1-sum", "T14"]) is None
    assert unknown(["T3", "T99"]) == "T99"
    assert unknown(["T1-"]) is None and unknown(["T15"]) == "T15"
