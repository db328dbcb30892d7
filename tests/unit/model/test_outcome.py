"""The Outcome record (bridge/model/outcome.py) and the final message built from it."""

from __future__ import annotations

from bridge.errors import BridgeError


def test_the_final_message_is_built_from_the_outcome() -> None:
    from bridge.errors import NothingChanged
    from bridge.model.outcome import Outcome, final_message

    boom = BridgeError("boom")
    assert final_message(boom, Outcome()) == "boom; nothing was changed"
    assert final_message(boom, Outcome(touched=True)) == \
        "boom; the cluster was restored as it was"
    assert final_message(boom, Outcome(touched=True, restored=False)) == \
        "boom; restoring was incomplete, see the messages above"
    # a failed step means something was changed, whatever was believed untouched
    assert final_message(boom, Outcome(failed_steps=["x: y"])) == \
        "boom; restoring was incomplete, see the messages above"
    assert final_message(boom, Outcome(repaired_stale=True)) == \
        "boom; the stale session was restored, nothing else was changed"
    said = NothingChanged("deployment/x not found; nothing was changed")
    assert final_message(said, Outcome()) == str(said)
    # the text alone decides nothing: a plain error that happens to say it still gets the truth
    plain = BridgeError("proxy said: nothing was changed")
    assert final_message(plain, Outcome(touched=True)).endswith("restored as it was")
