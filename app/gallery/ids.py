"""The rules for subject ids and names, one place for the API and the gallery import
(issue 25: `gallery import` stored ids the API refuses or cannot address: a Cyrillic
look-alike, full-width letters, a trailing newline, "..", an invisible U+3164).

The API normalises what it is sent (NFKC) before checking; a stored id must be one the
API can address, so :func:`check_stored_subject_id` also refuses an id that NFKC would
change.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from app.gallery.models import SUBJECT_ID_MAX, SUBJECT_ID_PATTERN

# "obаma" with a Cyrillic "а" looks like "obama" but is another id: ids whose letters mix
# Latin, Cyrillic and Greek, the scripts whose letters look alike, are refused (as
# browsers do for mixed-script domain names), so no look-alike subject can be created
# next to a real one (issue 9). Kanji with kana, or Hangul with Hanja, stay allowed.
CONFUSABLE_SCRIPTS = frozenset({"LATIN", "CYRILLIC", "GREEK"})
NAME_MAX = 256
# Matched whole (fullmatch): re's "$" would also match before a trailing newline.
_SUBJECT_ID = re.compile(SUBJECT_ID_PATTERN.removeprefix("^").removesuffix("$"))


def nfkc(value: Any) -> Any:
    """Compatibility forms are one id: fullwidth "ＡＢＣ" is "ABC", a ligature its letters."""
    return unicodedata.normalize("NFKC", value) if isinstance(value, str) else value


def not_only_dots(value: str) -> str:
    # "." and ".." are path segments that clients and proxies rewrite.
    if value.strip(".") == "":
        raise ValueError("a subject id cannot consist of dots only")
    return value


def one_script(value: str) -> str:
    scripts = {unicodedata.name(ch, "?").split(" ")[0] for ch in value if ch.isalpha()}
    scripts &= CONFUSABLE_SCRIPTS
    if len(scripts) > 1:
        raise ValueError(
            "a subject id cannot mix letters of several scripts ("
            + ", ".join(sorted(scripts))
            + ")"
        )
    return value


def check_stored_subject_id(value: object) -> str:
    """``value`` if it is a subject id the API would store as is; else ValueError."""
    if not isinstance(value, str):
        raise ValueError(f"a subject id is a string, not {type(value).__name__}")
    if nfkc(value) != value:
        raise ValueError(f"{value!r} is not in NFKC form (the API addresses it as {nfkc(value)!r})")
    if not 1 <= len(value) <= SUBJECT_ID_MAX:
        raise ValueError(f"a subject id has 1 to {SUBJECT_ID_MAX} characters")
    if not _SUBJECT_ID.fullmatch(value):
        raise ValueError(f"{value!r} has characters a subject id may not have")
    return one_script(not_only_dots(value))


def check_name(value: object) -> str | None:
    """A subject's display name as the API takes it: a string of at most NAME_MAX."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"a name is a string, not {type(value).__name__}")
    if len(value) > NAME_MAX:
        raise ValueError(f"a name has at most {NAME_MAX} characters ({len(value)} given)")
    return value
