"""The PeterRec / NextItNet CSV (``"peterrec"`` format): one user per line, items comma-separated, oldest first."""

from __future__ import annotations

from typing import TYPE_CHECKING

from peterrec.data.formats.lines import check_token, iter_lines
from peterrec.errors import DataError

if TYPE_CHECKING:
    from peterrec.data.readers import Grouper

PETERREC_PAD = "0"
FINETUNE_SEPARATOR = ",,"


def _split_peterrec_tokens(part: str, what: str, where: str) -> list[str]:
    """Splits a comma-separated PeterRec token list, validating each token."""
    tokens = part.split(",")
    for token in tokens:
        check_token(token, what, where)
        if any(char.isspace() for char in token):
            raise DataError(f"{where}: {what} {token!r} contains whitespace")
    return tokens


def _strip_padding(tokens: list[str]) -> list[str]:
    """Drops the leading ``"0"`` padding tokens of a PeterRec sequence."""
    start = 0
    while start < len(tokens) and tokens[start] == PETERREC_PAD:
        start += 1
    return tokens[start:]


def _mixed_lines_message(where: str, first_line: int, finetune: bool) -> str:
    """Message for a line whose ",," presence differs from the first line's."""
    if finetune:
        return (
            f"{where}: finetuning line without {FINETUNE_SEPARATOR!r} (line {first_line} is "
            "'<source items>,,<target items>', so every line must be)"
        )
    return f"{where}: {FINETUNE_SEPARATOR!r} in a pretraining file (line {first_line} has none; a finetuning file needs it on every line)"


def read_peterrec(path: str, grouper: Grouper) -> None:
    """Reads a PeterRec pretraining or finetuning CSV into ``grouper``."""
    grouper.set_columns(has_timestamps=False, has_ratings=False, where="the PeterRec format")
    finetune_line: int | None = None  # the first line; finetune: whether it has ",,"
    finetune = False
    for number, text in iter_lines(path):
        where = f"{path}:{number}"
        parts = text.split(FINETUNE_SEPARATOR)
        if len(parts) > 2:
            raise DataError(f"{where}: more than one {FINETUNE_SEPARATOR!r} (expected '<source items>,,<target items>')")
        if finetune_line is None:
            finetune_line, finetune = number, len(parts) == 2
        elif finetune != (len(parts) == 2):
            raise DataError(_mixed_lines_message(where, finetune_line, finetune))
        items = _strip_padding(_split_peterrec_tokens(parts[0], "item", where))
        targets = _split_peterrec_tokens(parts[1], "target", where) if finetune else None
        grouper.lines_read += 1
        grouper.add_sequence(f"line-{number}", items, targets)
    if grouper.lines_read == 0:
        raise DataError(f"{path}: empty file (expected one comma-separated item sequence per line)")
