"""Sections → chunks: token budget, sentence overlap, page boundaries, whole words, CJK, locators, headings."""

from __future__ import annotations

import random

import pytest

from rag.chunking import ChunkDraft, split_sections, split_sentences, whitespace_token_counter
from rag.parsing import Section

count = whitespace_token_counter


def chunk(
    sections: list[Section], max_tokens: int, overlap: int, title: str | None = None
) -> list[ChunkDraft]:
    return split_sections(
        sections, count_tokens=count, max_tokens=max_tokens, overlap_tokens=overlap, title=title
    )


def tokens(text: str) -> int:
    return count([text])[0]


def numbered_sentences(n: int, seed: int, prefix: str = "s") -> list[str]:
    """``n`` distinct English sentences of 2-9 words; word ``{prefix}{i}`` makes sentence ``i`` recognisable."""
    rng = random.Random(seed)
    vocabulary = [
        "engine",
        "fuel",
        "pilot",
        "runway",
        "weather",
        "report",
        "wing",
        "tower",
        "landing",
        "crew",
    ]
    out = []
    for i in range(n):
        words = [f"{prefix}{i}"] + rng.choices(vocabulary, k=rng.randint(1, 8))
        out.append(" ".join(words).capitalize() + rng.choice([".", "!", "?"]))
    return out


@pytest.mark.parametrize("max_tokens,overlap", [(8, 0), (12, 4), (30, 10), (64, 16)])
@pytest.mark.parametrize("seed", range(4))
def test_every_chunk_fits_the_token_budget(max_tokens: int, overlap: int, seed: int):
    text = " ".join(numbered_sentences(60, seed))
    drafts = chunk([Section(text=text, page=1)], max_tokens, overlap)
    assert len(drafts) > 1
    for draft in drafts:
        assert tokens(draft.text) <= max_tokens, draft
        assert draft.token_count == tokens(draft.text)


@pytest.mark.parametrize("seed", range(6))
def test_overlap_repeats_the_last_whole_sentences_within_budget(seed: int):
    sentences = numbered_sentences(50, seed)
    max_tokens, overlap = 30, 12
    drafts = chunk([Section(text=" ".join(sentences), page=1)], max_tokens, overlap)
    assert len(drafts) > 2
    carried_any = False
    for previous, following in zip(drafts, drafts[1:], strict=False):
        before, after = split_sentences(previous.text), split_sentences(following.text)
        assert set(before) <= set(sentences) and set(after) <= set(sentences)  # whole sentences only
        carried = next(k for k in range(len(before), -1, -1) if before[len(before) - k :] == after[:k])
        assert carried < len(before), "the window must move forward"
        carried_tokens = sum(tokens(s) for s in before[len(before) - carried :])
        assert carried_tokens <= overlap
        if carried + 1 < len(before):  # it carries as many as fit
            assert carried_tokens + tokens(before[-carried - 1]) > overlap
        carried_any = carried_any or carried > 0
        # No sentence is skipped: the next chunk continues right after what it carried.
        assert sentences.index(after[carried]) == sentences.index(before[-1]) + 1
    assert carried_any


@pytest.mark.parametrize("max_tokens", [5, 9, 20])
def test_without_overlap_every_word_appears_once_in_order(max_tokens: int):
    sentences = numbered_sentences(40, seed=max_tokens)  # some longer than 5 tokens: those are cut
    drafts = chunk([Section(text=" ".join(sentences), page=1)], max_tokens, 0)
    assert " ".join(d.text for d in drafts).split() == " ".join(sentences).split()


def test_chunks_never_cross_a_page_and_keep_its_number():
    pages = {n: " ".join(numbered_sentences(25, seed=n, prefix=f"p{n}w")) for n in (1, 2, 5)}
    drafts = chunk([Section(text=t, page=n) for n, t in pages.items()], 20, 6)
    assert {d.page for d in drafts} == {1, 2, 5}
    for draft in drafts:
        assert draft.locator == f"p. {draft.page}"
        assert set(draft.text.split()) <= set(pages[draft.page].split()), draft
    # Each page's text is covered by its own chunks.
    for number, text in pages.items():
        covered = " ".join(d.text for d in drafts if d.page == number).split()
        assert set(covered) == set(text.split())


def test_ordinals_run_across_pages_without_gaps():
    sections = [Section(text=" ".join(numbered_sentences(15, seed=n)), page=n) for n in (1, 2, 3)]
    drafts = chunk(sections, 16, 4)
    assert [d.ordinal for d in drafts] == list(range(len(drafts)))
    assert [d.page for d in drafts] == sorted(d.page for d in drafts)
    assert len({d.page for d in drafts}) == 3


def random_words(seed: int, n: int) -> str:
    """Words of 1-25 letters, some with hyphens, digits and punctuation, in sentences of very uneven length."""
    rng = random.Random(seed)
    words = []
    for _ in range(n):
        word = "".join(rng.choices("abcdefghijklmnopqrstuvwxyzäöüé", k=rng.randint(1, 25)))
        word = rng.choice([word, word + "-" + word[:3], word + "42", "(" + word + ")", word + ","])
        words.append(word + (rng.choice([".", "!", "?"]) if rng.random() < 0.04 else ""))
    return " ".join(words)


@pytest.mark.parametrize("seed", range(8))
def test_no_word_is_ever_split(seed: int):
    text = random_words(seed, 600)
    source = set(text.split())
    drafts = chunk([Section(text=text, page=1)], max_tokens=12, overlap=3)
    for draft in drafts:
        assert set(draft.text.split()) <= source, draft.text
        assert tokens(draft.text) <= 12


def test_a_sentence_longer_than_a_chunk_is_cut_between_words():
    words = [f"word{i}" for i in range(25)]
    drafts = chunk([Section(text=" ".join(words) + ".", page=3)], max_tokens=10, overlap=2)
    assert [d.text.split() for d in drafts] == [words[:10], words[10:20], words[20:24] + ["word24."]]
    assert all(d.page == 3 and d.token_count <= 10 for d in drafts)


CHINESE = "今天天气很好。我们去公园散步吧！你想一起来吗？公园里有很多花。孩子们在草地上玩耍。"


def test_chinese_splits_into_sentences_at_full_width_punctuation():
    assert split_sentences(CHINESE) == [
        "今天天气很好。",
        "我们去公园散步吧！",
        "你想一起来吗？",
        "公园里有很多花。",
        "孩子们在草地上玩耍。",
    ]


@pytest.mark.parametrize("max_tokens", [12, 20, 40])
def test_chinese_chunks_get_no_spaces_and_lose_nothing(max_tokens: int):
    text = CHINESE * 4
    drafts = chunk([Section(text=text, page=1)], max_tokens, 0)
    assert len(drafts) > 1
    for draft in drafts:
        assert " " not in draft.text, draft.text
        assert draft.text.endswith(("。", "！", "？"))  # every sentence fits, so chunks end at sentence ends
        assert draft.token_count <= max_tokens
    assert "".join(d.text for d in drafts) == text


def test_chinese_overlap_carries_whole_sentences():
    drafts = chunk([Section(text=CHINESE * 3, page=1)], max_tokens=30, overlap=12)
    sentences = set(split_sentences(CHINESE))
    for previous, following in zip(drafts, drafts[1:], strict=False):
        assert " " not in following.text
        assert set(split_sentences(following.text)) <= sentences
        assert following.text.startswith(split_sentences(previous.text)[-1])


def test_a_long_chinese_sentence_is_cut_between_characters_but_keeps_latin_words_whole():
    sentence = "我们使用PostgreSQL数据库和Redis队列来构建这个系统并且它运行得非常快速稳定可靠。"
    drafts = chunk([Section(text=sentence, page=1)], max_tokens=10, overlap=0)
    assert len(drafts) > 2
    assert "".join(d.text for d in drafts) == sentence
    assert any("PostgreSQL" in d.text for d in drafts) and any("Redis" in d.text for d in drafts)
    assert all(d.token_count <= 10 for d in drafts)


def test_text_sections_get_line_locators():
    text = "First line here.\nSecond line is a bit longer.\n\nFourth line after a blank.\nFifth line."
    drafts = chunk([Section(text=text, first_line=10)], max_tokens=6, overlap=0)
    assert [(d.text, d.locator) for d in drafts] == [
        ("First line here.", "line 10"),
        ("Second line is a bit longer.", "line 11"),
        ("Fourth line after a blank.", "line 13"),
        ("Fifth line.", "line 14"),
    ]
    wide = chunk([Section(text=text, first_line=10)], max_tokens=50, overlap=0)
    assert [d.locator for d in wide] == ["lines 10-14"]
    assert all(d.page is None for d in drafts + wide)


def test_other_units_name_themselves():
    section = Section(text="One para.\nTwo para.", first_line=3, unit="paragraphs")
    assert [d.locator for d in chunk([section], 50, 0)] == ["paragraphs 3-4"]
    assert [d.locator for d in chunk([Section(text="Row.", first_line=7, unit="rows")], 50, 0)] == ["row 7"]


@pytest.mark.parametrize(
    "title,heading,expected",
    [
        ("Manual", "Install > Linux", "Manual > Install > Linux"),
        ("Manual", "Manual > Install", "Manual > Install"),  # a title that is also the first heading: once
        ("Manual", None, "Manual"),
        (None, "Install", "Install"),
        (None, None, None),
    ],
)
def test_title_and_heading_path_become_the_chunk_heading(title, heading, expected):
    drafts = chunk([Section(text="Some text. More text.", first_line=1, heading=heading)], 50, 0, title=title)
    assert [d.heading for d in drafts] == [expected]


@pytest.mark.parametrize("max_tokens,overlap", [(10, 10), (10, 11), (1, 5)])
def test_overlap_must_be_smaller_than_the_chunk(max_tokens: int, overlap: int):
    with pytest.raises(ValueError, match="overlap"):
        chunk([Section(text="Text.", page=1)], max_tokens, overlap)


def test_blank_sections_give_no_chunks():
    assert chunk([Section(text="  \n\n \t", page=1), Section(text="", first_line=1)], 10, 2) == []


def test_sentences_are_whitespace_normalised():
    assert split_sentences("  Hello\n  world.   Next\tone!\n\nNew paragraph  ") == [
        "Hello world.",
        "Next one!",
        "New paragraph",
    ]
