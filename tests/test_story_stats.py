"""Word statistics of stories, on hand-made texts with values worked out by hand."""

from __future__ import annotations

import math

import pytest

from model_training.judge.story_stats import (
    distinct_2,
    pooled_word_entropy,
    repeated_4grams,
    story_distinct_2,
    story_statistics,
    story_words,
    word_entropy,
)


def test_words_are_lower_case_without_punctuation():
    assert story_words("Lily's cat, Tom, ran! 3 times.") == ["lily's", "cat", "tom", "ran", "3", "times"]


def test_word_entropy_of_a_story_and_of_pooled_stories():
    assert word_entropy("a b a b") == pytest.approx(1.0)
    assert word_entropy("Lily, lily!") == 0.0
    assert word_entropy("a b c c") == pytest.approx(1.5)  # 1/4, 1/4, 1/2
    assert pooled_word_entropy(["a b", "c d"]) == pytest.approx(2.0)  # four words equally often
    assert pooled_word_entropy(["a b", "a b"]) == pytest.approx(1.0)  # two stories, the same two words
    assert word_entropy("") == 0.0 and not math.isnan(pooled_word_entropy([""]))


def test_distinct_2_within_a_story_and_across_stories():
    assert story_distinct_2("a b a b") == pytest.approx(2 / 3)  # (a b) (b a) (a b)
    assert story_distinct_2("one") == 0.0
    assert distinct_2(["a b a b", "a b"]) == pytest.approx(2 / 4)  # (a b) (b a) (a b) | (a b)


def test_repeated_4grams_count_grams_seen_before_in_the_same_text():
    assert repeated_4grams("x y z w x y z w") == pytest.approx(1 / 5)  # xyzw yzwx zwxy wxyz xyzw
    assert repeated_4grams("the cat sat on the mat") == 0.0
    assert repeated_4grams("a a a a a a") == pytest.approx(2 / 3)  # three grams, all (a a a a)
    assert repeated_4grams("too short") == 0.0


def test_story_statistics_means_over_stories():
    stats = story_statistics(["a b a b", "x y z w x y z w " + "v " * 52])
    assert stats["stories"] == 2
    assert stats["words"] == pytest.approx((4 + 60) / 2)
    assert stats["short"] == 0.5  # 4 words is short, 60 is not
    assert stats["distinct2_story"] == pytest.approx((2 / 3 + story_distinct_2("x y z w x y z w " + "v " * 52)) / 2)
    assert stats["rep4"] == pytest.approx(repeated_4grams("x y z w x y z w " + "v " * 52) / 2)
    with pytest.raises(ValueError, match="no stories"):
        story_statistics([])
