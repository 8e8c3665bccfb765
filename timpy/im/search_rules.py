"""Search over sealed messages: the words a body is found by, and their blind tokens (pure).

A body is normalized (NFKC, casefolded) and split on every character that is
not a word character. Each word gives *terms*: its prefixes of ``MIN_PREFIX``
to ``MAX_PREFIX`` characters (a shorter word: the word itself), and, when
longer than ``MAX_PREFIX``, the whole word. A query word of up to
``MAX_PREFIX`` characters then finds every word that starts with it; a longer
query word finds that whole word; a one-character query word finds that
one-character word. A message matches a query when it matches every query word.

Terms never reach storage: each becomes a token, keyed BLAKE2b under a key
of its conversation's own (derived from the cluster's blind-index key and the
conversation id), so equal words in two conversations give unrelated tokens.
``matches`` is the same rule on plaintext: the model the index is checked
against.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable

MIN_PREFIX = 2
MAX_PREFIX = 8
MAX_WORD = 64  # longer words are cut (a query word too, the same way)
MAX_QUERY_WORDS = 8
TOKEN_SIZE = 8  # bytes; within one conversation a collision is a 2^-64 event
_PERSON = b"timpy-search-v1"
_WORD = re.compile(r"\w+")


def normalize(text: str) -> str:
    """NFKC, casefolded (and NFKC again: casefolding can leave a non-normal form)."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def words(text: str) -> list[str]:
    """The normalized words of ``text``, in order, cut to ``MAX_WORD``."""
    return [w[:MAX_WORD] for w in _WORD.findall(normalize(text))]


def _word_terms(word: str) -> set[str]:
    if len(word) < MIN_PREFIX:
        return {"p:" + word}
    terms = {"p:" + word[:n] for n in range(MIN_PREFIX, min(len(word), MAX_PREFIX) + 1)}
    if len(word) > MAX_PREFIX:
        terms.add("w:" + word)
    return terms


def body_terms(text: str) -> set[str]:
    """Every term a body is found by."""
    out: set[str] = set()
    for word in set(words(text)):
        out |= _word_terms(word)
    return out


def query_terms(text: str) -> list[str]:
    """The terms a query needs (each must be in a message); sorted, distinct.
    Raises ValueError for a query with no word or too many."""
    found = sorted(set(words(text)))
    if not found:
        raise ValueError("a search needs at least one word (letters or digits)")
    if len(found) > MAX_QUERY_WORDS:
        raise ValueError(f"a search has at most {MAX_QUERY_WORDS} words")
    return sorted({("w:" + w) if len(w) > MAX_PREFIX else ("p:" + w) for w in found})


def word_matches(query_word: str, word: str) -> bool:
    if len(query_word) < MIN_PREFIX:
        return word == query_word
    if len(query_word) > MAX_PREFIX:
        return word == query_word
    return word.startswith(query_word)


def matches(query: str, body: str) -> bool:
    """The search rule on plaintext: every query word matches a word of the body."""
    body_words = set(words(body))
    return all(any(word_matches(q, w) for w in body_words) for q in set(words(query)))


def token(conversation_key: bytes, term: str) -> bytes:
    """A term's blind token in one conversation."""
    return hashlib.blake2b(term.encode(), key=conversation_key, digest_size=TOKEN_SIZE, person=_PERSON).digest()


def tokens(conversation_key: bytes, terms: Iterable[str]) -> list[bytes]:
    return sorted({token(conversation_key, t) for t in terms})


def body_text(body: bytes) -> str | None:
    """The text of a message body, or None when it is not UTF-8 text."""
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return None
