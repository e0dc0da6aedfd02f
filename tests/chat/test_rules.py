"""The pure parts of chat actions: unified diffs parsed and applied exactly (a round trip
through difflib for any pair of texts), and commands split into segments for grants."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autopilotd.chat import approvals, patch

LINES = st.lists(st.sampled_from(["a", "b", "c", "", "x y", "\tz"]), max_size=8)


def _text(lines: list[str], newline: bool) -> bytes:
    text = "\n".join(lines)
    return (text + "\n" if newline and text else text).encode()


@settings(max_examples=400, deadline=None)
@given(LINES, st.booleans(), LINES, st.booleans(), st.booleans(), st.booleans())
def test_a_diff_applies_to_give_the_new_text_and_its_reverse_gives_back_the_old(
    old: list[str], old_nl: bool, new: list[str], new_nl: bool, created: bool, deleted: bool
) -> None:
    before = None if created else _text(old, old_nl)
    after = None if deleted and not created else _text(new, new_nl)
    diff = patch.unified("f.txt", before, after)
    if not diff:  # nothing a diff can say (equal, or empty against absent)
        assert (before or b"") == (after or b"")
        return
    (file,) = patch.parse(diff)
    assert patch.apply(file, before) == after
    (back,) = patch.parse(patch.unified("f.txt", after, before))
    assert patch.apply(back, after) == before


def test_a_patch_that_does_not_match_says_where_and_changes_nothing() -> None:
    (file,) = patch.parse(patch.unified("f.txt", b"a\nb\nc\n", b"a\nB\nc\n"))
    with pytest.raises(patch.PatchError, match="hunk 1 does not match at line 2"):
        patch.apply(file, b"a\nX\nc\n")
    with pytest.raises(patch.PatchError, match="no such file"):
        patch.apply(file, None)
    with pytest.raises(patch.PatchError, match="not UTF-8"):
        patch.apply(file, b"\xff\xfe")
    (created,) = patch.parse(patch.unified("f.txt", None, b"new\n"))
    with pytest.raises(patch.PatchError, match="already exists"):
        patch.apply(created, b"old\n")


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "no file in the patch"),
        ("--- a/x\n", "not followed by a '\\+\\+\\+' line"),
        ("--- /dev/null\n+++ /dev/null\n@@ -0,0 +1 @@\n+a\n", "both sides are /dev/null"),
        ("--- a/x\n+++ b/y\n@@ -1 +1 @@\n-a\n+b\n", "renames are not patched"),
        ("--- a/x\n+++ b/x\n", "has no hunk"),
        ("--- a/x\n+++ b/x\n@@ -1,2 +1,2 @@\n-a\n+b\n", "the hunk says -2 \\+2"),
        ("--- a/x\n+++ b/x\n@@ -1 +1 @@\n*a\n+b\n", "not a context"),
    ],
)
def test_a_malformed_patch_is_refused_with_the_reason(text: str, why: str) -> None:
    with pytest.raises(patch.PatchError, match=why):
        patch.parse(text)


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("ls -la", [["ls", "-la"]]),
        ("make && make test | tee log", [["make"], ["make", "test"], ["tee", "log"]]),
        ('echo "a;b"; rm -rf x', [["echo", "a;b"], ["rm", "-rf", "x"]]),
        ("a || b & c\nd", [["a"], ["b"], ["c"], ["d"]]),
        ("echo $(id)", None),
        ("echo `id`", None),
        ("(cd x; rm y)", None),
        ("cat <<EOF", None),
        ('echo "open', None),
    ],
)
def test_commands_split_into_segments_or_are_unknowable(
    command: str, expected: list[list[str]] | None
) -> None:
    found = approvals.segments(command)
    assert (None if found is None else [list(s) for s in found]) == expected


def test_grants_match_exact_prefixes_and_deny_wins() -> None:
    grants = [("allow", json.dumps(["pytest", "-q"])), ("allow", json.dumps(["echo"]))]
    assert approvals.decide("pytest -q tests/x.py", grants) == "allow"
    assert approvals.decide("pytest", grants) is None  # shorter than the prefix
    assert approvals.decide("pytest -x", grants) is None
    assert approvals.decide("pytest -q && echo ok", grants) == "allow"
    assert approvals.decide("pytest -q && rm -rf /", grants) is None  # one segment not granted
    assert approvals.decide("echo $(rm -rf /)", grants) is None  # unknowable: asks
    denied = [*grants, ("deny", json.dumps(["echo", "secret"]))]
    assert approvals.decide("echo secret now", denied) == "deny"
    assert approvals.decide("pytest -q; echo secret", denied) == "deny"
    assert approvals.read_only("git status && git diff HEAD")
    assert not approvals.read_only("git status > out.txt")
    assert not approvals.read_only("git push")
