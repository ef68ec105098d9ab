"""Stop sequences: only text that cannot begin one is released; the answer ends before it."""

import pytest

from textgen.engine.stop import StopMatcher


def feed(stops, pieces):
    matcher = StopMatcher(stops)
    released = []
    for piece in pieces:
        text, stopped = matcher.push(piece)
        released.append(text)
        if stopped:
            return released, matcher.text, True
    released.append(matcher.flush())
    return released, matcher.text, False


def test_text_that_may_begin_a_stop_sequence_waits_until_it_cannot():
    released, text, stopped = feed(["###"], ["Hello ", "#", "# world"])
    assert released == ["Hello ", "", "## world", ""] and text == "Hello ## world" and not stopped


def test_the_stop_sequence_and_what_follows_it_are_cut():
    released, text, stopped = feed(["END", "###"], ["a", "bE", "N", "Dxyz", "more"])
    assert stopped and text == "ab" and "".join(released) == "ab"


def test_a_stop_sequence_spread_over_many_tokens_is_found():
    released, text, stopped = feed(["stop here"], list("we stop here now"))
    assert stopped and text == "we " and "".join(released) == "we "


def test_only_the_part_that_matches_a_prefix_is_held():
    matcher = StopMatcher(["\n\nQ:"])
    assert matcher.push("answer.\n") == ("answer.", False)  # "\n" may begin "\n\nQ:"
    assert matcher.push("\nA") == ("\n\nA", False)  # "\n\nA" cannot


@pytest.mark.parametrize("stops", [["ab"], ["ab", "b"], ["xyz", "yz!"], ["é!"]])
def test_released_text_is_always_the_answer_so_far(stops):
    pieces = ["x", "a", "yé", "z", "!", "b", "ab", "c"]
    released, text, stopped = feed(stops, pieces)
    whole = "".join(pieces)
    cut = min((whole.find(s) for s in stops if s in whole), default=len(whole))
    assert text == whole[:cut] and "".join(released) == text and stopped == (cut < len(whole))


def test_the_matcher_names_the_stop_sequence_found_first():
    matcher = StopMatcher(["xyz", "b"])
    assert matcher.push("a") == ("a", False) and matcher.matched is None
    assert matcher.push("bxyz") == ("", True)  # "b" begins before "xyz": it is the one that ended the text
    assert matcher.matched == "b" and matcher.text == "a"
