"""Locating a subject in a prompt: character offsets, any script, shared by tracing, knockout, editing, probes."""

from __future__ import annotations

import json

import pytest

from circuits.editing.context import subject_last_index
from circuits.knockout import knockout
from circuits.patching import patch
from circuits.tracing import prepare, trace
from interp.cli import main
from interp.errors import InterpError
from interp.tokens import answer_token, decoded_offsets, encode, find_span, span_of_chars, token_offsets

# (prompt, subject): non-Latin scripts, accents, a subject that occurs twice (the last one counts)
CASES = [
    ("Москва is the capital of", "Москва"),
    ("The composer Dvořák was born in", "Dvořák"),
    ("Łódź is a city in", "Łódź"),
    ("東京 is the capital of", "東京"),
    ("Paris is far from Paris in", "Paris"),
    ("The Eiffel Tower is in", "Eiffel Tower"),
]


def _bytes_before(text: str, chars: int) -> int:
    return len(text[:chars].encode())


def assert_tight_cover(model, prompt: str, subject: str, span: tuple[int, int]) -> None:
    """The span's tokens decode to text holding the subject; dropping either end token loses it."""
    ids = encode(model, prompt)[0].tolist()
    first, stop = span
    text = model.tokenizer.decode(ids[first:stop])
    assert subject in text, (text, subject)
    assert subject not in model.tokenizer.decode(ids[first + 1:stop])
    assert subject not in model.tokenizer.decode(ids[first:stop - 1])
    assert subject not in model.tokenizer.decode(ids[stop:])  # the last occurrence


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize("prompt,subject", CASES)
def test_byte_tokens_of_the_last_occurrence(fixture, prompt, subject, request):
    """The tiny models have one token per UTF-8 byte, so the span is the subject's byte range."""
    model = request.getfixturevalue(fixture)
    at = prompt.rfind(subject)
    expected = (_bytes_before(prompt, at), _bytes_before(prompt, at + len(subject)))
    assert find_span(model, prompt, subject, encode(model, prompt)) == expected
    assert find_span(model, prompt, " " + subject + " ") == expected  # surrounding spaces do not count
    assert_tight_cover(model, prompt, subject, expected)


@pytest.mark.parametrize("prompt,subject", CASES)
def test_decoding_prefixes_finds_the_same_spans_as_offsets(tiny_llama, prompt, subject):
    ids, offsets = token_offsets(tiny_llama, prompt)
    at = prompt.rfind(subject)
    assert (span_of_chars(decoded_offsets(tiny_llama.tokenizer, prompt, ids), at, at + len(subject))
            == span_of_chars(offsets, at, at + len(subject)))


def test_absent_or_empty_subject_is_a_one_line_error(tiny_llama):
    for subject, message in [("Berlin", "not in the prompt"), ("москва", "not in the prompt"), ("  ", "empty")]:
        with pytest.raises(InterpError, match=message) as err:
            find_span(tiny_llama, "Москва is the capital of", subject)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_tracing_knockout_and_editing_locate_the_same_tokens(fixture, request):
    model = request.getfixturevalue(fixture)
    prompt, subject = CASES[0]
    span = find_span(model, prompt, subject)
    assert span == (0, 12)  # six two-byte letters
    assert prepare(model, prompt, subject, None, samples=1, window=1)[1] == span
    assert trace(model, prompt, subject, samples=1, noise_std=1.0, kinds=("hidden",), progress=False).subject_range \
        == list(span)
    assert knockout(model, prompt, subject, window=1).subject_range == list(span)
    ids, last = subject_last_index(model, "{} is the capital of", subject)
    assert ids == encode(model, prompt)[0].tolist() and last == span[1] - 1


def test_cli_traces_a_cyrillic_subject(capsys):
    code = main(["trace", "Москва is the capital of", "--subject", "Москва", "--model", "tiny-llama",
                 "--samples", "1", "--noise-std", "1.0", "--kind", "hidden", "--json"])
    assert code == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["subject_range"] == [0, 12]


def test_an_empty_answer_names_its_option(tiny_llama, capsys):
    with pytest.raises(InterpError, match="--target is empty"):
        answer_token(tiny_llama, "")
    with pytest.raises(InterpError, match="--foil is empty"):
        patch(tiny_llama, "The cat sat on the", "The dog sat on the", foil="")
    code = main(["patch", "--clean", "The cat sat on the", "--corrupt", "The dog sat on the", "--model", "tiny-llama",
                 "--foil", ""])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--foil is empty" in err and "\n" not in err


@pytest.mark.real
def test_default_model_finds_subjects_in_any_script(smollm):
    mid_token = [("The Eiffel Tower is in", "ffel Tower"), ("The Eiffel Tower is in", "ower")]  # inside tokens
    for prompt, subject in [*CASES, *mid_token]:
        span = find_span(smollm, prompt, subject, encode(smollm, prompt))
        assert_tight_cover(smollm, prompt, subject, span)
        assert prepare(smollm, prompt, subject, None, samples=1, window=1)[1] == span
        if prompt.count(subject) == 1:
            template = prompt.replace(subject, "{}")
            ids, last = subject_last_index(smollm, template, subject)
            assert ids == encode(smollm, prompt)[0].tolist() and last == span[1] - 1
    assert find_span(smollm, "Москва is the capital of", "Москва") == (0, 6)  # "М" is two byte tokens
    assert find_span(smollm, "The Eiffel Tower is in", "ffel Tower") == (2, 4)  # "The", " E", "iffel", " Tower"
    assert find_span(smollm, "The Eiffel Tower is in", "ower") == (3, 4)
    with pytest.raises(InterpError, match="not in the prompt") as err:
        find_span(smollm, "東京 is the capital of", "京都")
    assert "\n" not in str(err.value)
