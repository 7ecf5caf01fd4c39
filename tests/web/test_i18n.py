"""The workbench's catalogue: every key in English and Japanese with the same placeholders; language choice."""

from __future__ import annotations

import re

import pytest

from lbw.interfaces.web.i18n import LANGUAGES, MESSAGES, catalogue, pick_language, placeholders, text

JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")


def test_every_key_has_both_languages_and_the_same_placeholders():
    assert len(MESSAGES) > 100
    for key, (en, ja) in MESSAGES.items():
        assert en.strip() and ja.strip(), key
        assert placeholders(en) == placeholders(ja), key
    # the Japanese side is Japanese (a few labels are the same in both: WEIGHT, URL, ID, LoRA, ...)
    translated = [key for key, (en, ja) in MESSAGES.items() if JAPANESE.search(ja)]
    assert len(translated) > 0.85 * len(MESSAGES)
    assert set(catalogue("ja")) == set(catalogue("en")) == set(MESSAGES)


def test_tutorial_vocabulary():
    assert text("ja", "sheet.col.fix") == "固定"
    assert text("ja", "sheet.col.weight") == "重み"
    assert [text("ja", f"class.{c}") for c in ("important", "unneeded", "unclear")] == ["重要", "不要", "不明"]
    assert "階層" in text("ja", "app.subtitle")


def test_text_fills_values_and_tolerates_missing_ones():
    assert text("en", "msg.fixed", block="IN05", value="0.5") == "IN05 fixed at 0.5"
    assert text("ja", "msg.fixed", block="IN05", value="0.5") == "IN05 を 0.5 で固定しました"
    assert text("en", "msg.fixed", block="IN05") == "IN05 fixed at {value}"
    assert text("fr", "tab.sheet") == "Sheet"  # unknown language: English
    assert text("en", "no.such.key") == "no.such.key"
    assert text("en", "msg.error", message="{oops}") == "Error: {oops}"  # values are not formatted again


@pytest.mark.parametrize(
    ("header", "forced", "expected"),
    [
        ("ja,en-US;q=0.8,en;q=0.6", None, "ja"),
        ("en-US,en;q=0.9,ja;q=0.8", None, "en"),
        ("ja-JP", None, "ja"),
        ("fr-CH, fr;q=0.9, ja;q=0.8, en;q=0.7", None, "ja"),
        ("de-DE", None, "en"),
        ("", None, "en"),
        (None, None, "en"),
        ("ja;q=0, en;q=0.1", None, "en"),
        ("ja;q=abc", None, "en"),
        ("ja", "en", "en"),
        ("en", "ja", "ja"),
        ("en", "xx", "en"),
        ("," * 100000 + "ja", None, "en"),  # huge headers: only the start is read
    ],
)
def test_pick_language(header, forced, expected):
    assert pick_language(header, forced) == expected
    assert expected in LANGUAGES
