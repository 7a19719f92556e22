"""Feature tracks computed from the text itself, one value per character, to hold cells up against.

Every track is the value *after reading* character t, which is when the cell at step t holds it: a cell
that tracks quotes has flipped on the opening quote itself, a line-position cell is back to 0 on the
newline. Two tracks look ahead (`newline_ahead`, `word_boundary`): the paper's line-length cell counts down
towards a newline the model has to predict, and a cell can anticipate the end of a word the same way.

Strings and comments are lexed as the text's language has them: C ("…", '…', /* */, //) or Python-like
(' " and triple quotes, #). `sniff_language` picks it from the text when the caller does not say (the report
takes it from the corpus' metadata first).
"""
from __future__ import annotations

import numpy as np

TAB_WIDTH = 8  # tabs advance to the next multiple of 8 columns, as Python's tokenizer and the Linux kernel count
OPENING, CLOSING = "([{", ")]}"


def codes(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)  # (time,) one code point per character


def is_any_of(text: str, chars: str) -> np.ndarray:
    return np.isin(codes(text), [ord(c) for c in chars])


def inside_quotes(text: str) -> np.ndarray:
    """1 inside a "…" quotation (the opening quote included, the closing one not): an odd number of '"' read."""
    return (np.cumsum(is_any_of(text, '"')) % 2).astype(np.float32)


def last_newline_at_or_before(text: str) -> np.ndarray:
    index = np.arange(len(text))
    return np.maximum.accumulate(np.where(is_any_of(text, "\n"), index, -1))


def code_strings_and_comments(text: str) -> tuple[np.ndarray, np.ndarray]:
    """(inside a string literal, inside a # comment) for Python-like code, by a small lexer: ' and " strings,
    triple-quoted strings, backslash escapes, and single-quoted strings ending at the end of their line. The
    opening quote is inside; the closing quote (the last of a triple) is not, as with inside_quotes."""
    in_string = np.zeros(len(text), np.float32)
    in_comment = np.zeros(len(text), np.float32)
    t, n = 0, len(text)
    while t < n:
        char = text[t]
        if char == "#":
            end = text.find("\n", t)
            end = n if end < 0 else end
            in_comment[t:end] = 1  # the newline itself ends the comment
            t = end
        elif char in "'\"":
            quote = char * 3 if text.startswith(char * 3, t) else char
            u = t + len(quote)
            while u < n and not text.startswith(quote, u):
                if text[u] == "\n" and len(quote) == 1:
                    break  # an unterminated one-line string ends with its line
                u += 2 if text[u] == "\\" else 1  # an escaped character cannot close the string
            closed = u < n and text.startswith(quote, u)
            last = u + len(quote) - 1 if closed else u  # the closing quote's last character, or where it stopped
            in_string[t:min(last, n)] = 1
            t = last + 1 if closed else u
        else:
            t += 1
    return in_string, in_comment


def c_strings_and_comments(text: str) -> tuple[np.ndarray, np.ndarray]:
    """(inside a string or character literal, inside a comment) for C: "…" and '…' with backslash escapes,
    /* … */ and // to the end of the line. As for Python, the opener is inside and the last character of the
    closer is not: both characters of "/*" and the '*' of "*/" are inside, its '/' is not. A literal left open
    and a // comment end with their line (a backslash-newline continuing a line is not followed: rare)."""
    in_string = np.zeros(len(text), np.float32)
    in_comment = np.zeros(len(text), np.float32)
    t, n = 0, len(text)
    while t < n:
        if text.startswith("/*", t):
            end = text.find("*/", t + 2)
            last = n if end < 0 else end + 1  # the closing '/', outside
            in_comment[t:last] = 1
            t = last + 1
        elif text.startswith("//", t):
            end = text.find("\n", t)
            end = n if end < 0 else end
            in_comment[t:end] = 1  # the newline itself ends the comment
            t = end
        elif text[t] in "'\"":
            quote, u = text[t], t + 1
            while u < n and text[u] != quote and text[u] != "\n":
                u += 2 if text[u] == "\\" else 1  # an escaped character cannot close the literal
            in_string[t:min(u, n)] = 1  # the opening quote up to the closing one (or the newline), not it
            t = u + 1 if u < n and text[u] == quote else u
        else:
            t += 1
    return in_string, in_comment


# prose keeps the Python-like lexer these tracks always had: apostrophes trip it there, so ignore them on prose.
LEXERS = {"python": code_strings_and_comments, "c": c_strings_and_comments, "prose": code_strings_and_comments}
# Signs that are rare in prose (so no ";\n" or ":\n", which plays and novels are full of).
C_SIGNS = ("/*", "*/", "//", "#include", "#define", "#if", "{\n", "}\n", ");\n", "->")
PYTHON_SIGNS = ("def ", "import ", "(self", "):\n", '"""', "'''", "\n    ")
CODE_SIGNS_PER_1000 = 2.0  # below this many signs per 1,000 characters a text is prose


def sniff_language(text: str) -> str:
    """"c", "python" or "prose", from the text alone: code if it has at least 2 signs of C or Python per 1,000
    characters (C: comment markers, #include/#define/#if, lines ending in {, } or ');', '->'; Python: def,
    import, (self, lines ending in "):", triple quotes, 4-space indents), the language with more."""
    thousands = max(len(text), 1) / 1000
    c_rate = sum(text.count(sign) for sign in C_SIGNS) / thousands
    python_rate = sum(text.count(sign) for sign in PYTHON_SIGNS) / thousands
    if max(c_rate, python_rate) < CODE_SIGNS_PER_1000:
        return "prose"
    return "c" if c_rate > python_rate else "python"


def strings_and_comments(text: str, language: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    language = language or sniff_language(text)
    if language not in LEXERS:
        raise ValueError(f"unknown language {language!r}; known: {', '.join(LEXERS)}")
    return LEXERS[language](text)


def inside_string(text: str, language: str | None = None) -> np.ndarray:
    """1 inside a string literal: Python-like (either quote, triple quotes, escapes) or C ("…" and '…')."""
    return strings_and_comments(text, language)[0]


def inside_comment(text: str, language: str | None = None) -> np.ndarray:
    """1 inside a comment, Python's # or C's /* */ and // (not the newline that ends a line comment)."""
    return strings_and_comments(text, language)[1]


def line_position(text: str) -> np.ndarray:
    """Characters read since the last newline: 0 on the newline itself, 1 on a line's first character."""
    return (np.arange(len(text)) - last_newline_at_or_before(text)).astype(np.float32)


def newline_ahead(text: str) -> np.ndarray:
    """Characters still to read up to and including the next newline (1 when the next character is one);
    past the last newline, up to the end of the text."""
    n = len(text)
    index = np.arange(n)
    newline_at = np.where(is_any_of(text, "\n"), index, n)
    # The first newline strictly after t: a running minimum from the right, shifted by one.
    next_newline = np.append(np.minimum.accumulate(newline_at[::-1])[::-1][1:], n)[:n]
    return (next_newline - index).astype(np.float32)


def bracket_depth(text: str) -> np.ndarray:
    """Brackets ( [ { opened and not yet closed; a stray closer cannot take the depth below 0."""
    step = is_any_of(text, OPENING).astype(np.int64) - is_any_of(text, CLOSING)
    running = np.cumsum(step)
    # Clamping a running sum at 0 (depth = max(0, depth + step)) is the sum minus its lowest point so far.
    return (running - np.minimum(np.minimum.accumulate(running), 0)).astype(np.float32)


def indentation(text: str) -> np.ndarray:
    """Width of the current line's leading spaces and tabs read so far (tabs to the next multiple of 8);
    0 on a newline, which starts a line with none yet."""
    values = np.zeros(len(text), np.float32)
    line_start = 0
    for line in text.split("\n"):
        width = 0
        for offset, char in enumerate(line):
            if char == " ":
                width += 1
            elif char == "\t":
                width += TAB_WIDTH - width % TAB_WIDTH
            else:
                values[line_start + offset:line_start + len(line)] = width
                break
            values[line_start + offset] = width
        line_start += len(line) + 1  # the newline's own value stays 0
    return values


def word_characters(text: str) -> np.ndarray:
    return np.fromiter((c.isalnum() or c == "_" for c in text), dtype=bool, count=len(text))


def inside_word(text: str) -> np.ndarray:
    """1 on a letter, digit or underscore."""
    return word_characters(text).astype(np.float32)


def word_position(text: str) -> np.ndarray:
    """Characters read of the current word (1 on its first character), 0 outside words."""
    in_word = word_characters(text)
    index = np.arange(len(text))
    last_non_word = np.maximum.accumulate(np.where(in_word, -1, index))
    return np.where(in_word, index - last_non_word, 0).astype(np.float32)


def word_boundary(text: str) -> np.ndarray:
    """1 on a word's last character: the next character (a space, punctuation, a newline) ends the word."""
    in_word = word_characters(text)
    return (in_word & ~np.append(in_word[1:], False)).astype(np.float32)


# name -> (track, what it means); the report and the live page list them in this order.
FEATURES = {
    "inside_quotes": (inside_quotes, 'inside a "…" quotation'),
    "inside_string": (inside_string, "inside a string literal (code: Python ' \" and triple quotes; C \"…\" '…')"),
    "inside_comment": (inside_comment, "inside a comment (code: Python #; C /* */ and //)"),
    "line_position": (line_position, "characters since the last newline"),
    "newline_ahead": (newline_ahead, "characters until the next newline"),
    "bracket_depth": (bracket_depth, "open ( [ { brackets"),
    "indentation": (indentation, "leading whitespace of the current line"),
    "inside_word": (inside_word, "on a letter, digit or underscore"),
    "word_position": (word_position, "characters into the current word"),
    "word_boundary": (word_boundary, "on a word's last character"),
}


def feature_tracks(text: str, names=None, language: str | None = None) -> dict[str, np.ndarray]:
    """{name: (time,) float32} for every feature (or the named ones); strings and comments lexed as `language`
    ("c", "python" or "prose"; by default the one `sniff_language` finds), once for both tracks."""
    unknown = set(names or ()) - FEATURES.keys()
    if unknown:
        raise ValueError(f"unknown feature(s) {sorted(unknown)}; known: {', '.join(FEATURES)}")
    names = list(names or FEATURES)
    lexed = {}
    if {"inside_string", "inside_comment"} & set(names):
        lexed = dict(zip(("inside_string", "inside_comment"), strings_and_comments(text, language)))
    return {name: lexed[name] if name in lexed else FEATURES[name][0](text) for name in names}
