"""Token ids -> text pieces as they arrive, for streaming output.

A piece is the text the new token adds to the decoded whole: `BertChineseTokenizer.decode`
joins a WordPiece continuation ("##ing") to the word before it and puts no space between Chinese
characters, and its output for a list of ids is always a prefix of its output for that list
extended, so emitting the difference is exact: the pieces concatenate to the decoded text.
Special tokens are dropped as `decode(..., skip_special_tokens=True)` drops them, except the
end-of-document token, which becomes a line break (a new document starts).

Only the last word can still change, so the ids before it are dropped as words complete: each
token costs O(1) however long the text grows.
"""

from __future__ import annotations

from collections.abc import Iterable

from megatron_zh.text.tokenizer import BertChineseTokenizer


class TextStream:
    """`push(token_id) -> str`: the text that token adds. `context_ids` (a prompt) set where the
    text continues from: a first token "##ing" after a prompt ending "play" adds "ing"."""

    def __init__(self, tokenizer: BertChineseTokenizer, context_ids: Iterable[int] = ()) -> None:
        self._tokenizer = tokenizer
        self._special = {tokenizer.pad, tokenizer.unk, tokenizer.cls, tokenizer.sep, tokenizer.mask}
        self._ids: list[int] = []  # the last complete word (context for spacing) and the word being built
        self._word_start = 0  # index in _ids where the word being built starts
        self._emitted = 0  # characters of decode(_ids) already handed out
        for token_id in context_ids:
            self.push(token_id)

    def push(self, token_id: int) -> str:
        token_id = int(token_id)
        if token_id == self._tokenizer.eod:
            self._ids, self._word_start, self._emitted = [], 0, 0
            return "\n"
        if token_id in self._special:
            return ""
        if not self._continues_word(token_id) and self._ids:
            # A new word: the one before it is complete and is all the context spacing needs.
            self._ids = self._ids[self._word_start :]
            self._word_start = len(self._ids)
            self._emitted = len(self._decode())
        self._ids.append(token_id)
        text = self._decode()
        piece = text[self._emitted :]
        self._emitted = len(text)
        return piece

    def _continues_word(self, token_id: int) -> bool:
        token = self._tokenizer.convert_ids_to_tokens([token_id])[0]
        return token.startswith("##") and len(token) > 2

    def _decode(self) -> str:
        return self._tokenizer.decode(self._ids)
