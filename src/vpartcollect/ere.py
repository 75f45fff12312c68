"""collectd's ``/regex/`` filters: POSIX extended regular expressions, as Python ``re``.

collectd compiles them with ``regcomp(REG_EXTENDED)`` and only asks whether they
match somewhere (``regexec`` without positions), in the C locale (collectd sets
only LC_NUMERIC): a character is a byte and the classes are ASCII. So the
translation is a bytes pattern, matched against the UTF-8 bytes of a name, and
only the set of names matched must agree, not which substring. Pure.

What glibc refuses is refused (a quantifier with nothing before it, ``{`` that
is no interval, an unclosed bracket ...); what cannot be translated is refused
too, in one line: collating elements ``[[.x.]]``, equivalence classes ``[[=e=]]``,
backreferences ``\\1``-``\\9`` (not in POSIX ERE) and a backslash before a letter
or digit other than glibc's ``\\w \\W \\s \\S`` (``\\d`` is a ``d`` to collectd,
a digit to Python: refused rather than read either way).
"""

from __future__ import annotations

import re
from functools import lru_cache

DUP_MAX = 0x7FFF  # glibc's RE_DUP_MAX: a larger count is refused by regcomp
MAX_NESTING = 100  # groups deeper than this: refused (sre's parser recurses)
_INTERVAL = re.compile(rb"\{([0-9]*)(,?)([0-9]*)\}")


def _span(a: str, b: str) -> frozenset[int]:
    return frozenset(range(ord(a), ord(b) + 1))


_DIGIT = _span("0", "9")
_UPPER = _span("A", "Z")
_LOWER = _span("a", "z")
# The C locale's classes (glibc's "C" LC_CTYPE): ASCII only.
CLASSES: dict[str, frozenset[int]] = {
    "alpha": _UPPER | _LOWER,
    "digit": _DIGIT,
    "alnum": _UPPER | _LOWER | _DIGIT,
    "upper": _UPPER,
    "lower": _LOWER,
    "space": frozenset(b" \t\n\v\f\r"),
    "blank": frozenset(b" \t"),
    "punct": _span("!", "/") | _span(":", "@") | _span("[", "`") | _span("{", "~"),
    "xdigit": _DIGIT | _span("A", "F") | _span("a", "f"),
    "cntrl": _span("\x00", "\x1f") | {0x7F},
    "print": _span(" ", "~"),
    "graph": _span("!", "~"),
}
_WORD = CLASSES["alnum"] | {ord("_")}
_ALL = frozenset(range(256))
_ESCAPES = {"w": _WORD, "W": _ALL - _WORD, "s": CLASSES["space"],
            "S": _ALL - CLASSES["space"]}


class EreError(ValueError):
    """A pattern collectd would refuse, or one that cannot be translated: one line."""


def _byte_set(members: frozenset[int]) -> bytes:
    """A Python bytes class for exactly these byte values (ranges, every one escaped)."""
    if not members:
        return b"[^\\x00-\\xff]"  # nothing, as [^\x00-\xff] in ERE
    out, values = [b"["], sorted(members)
    start = prev = values[0]
    for v in [*values[1:], -1]:
        if v == prev + 1:
            prev = v
            continue
        out.append(b"\\x%02x" % start if start == prev else b"\\x%02x-\\x%02x" % (start, prev))
        start = prev = v
    return b"".join(out) + b"]"


def _literal(byte: int) -> bytes:
    char = bytes([byte])
    return char if char.isalnum() and byte < 0x80 else b"\\x%02x" % byte


class _Translator:
    """A recursive-descent reader of glibc's ERE (RE_SYNTAX_POSIX_EXTENDED)."""

    def __init__(self, pattern: bytes) -> None:
        self.p = pattern
        self.i = 0

    def fail(self, what: str, at: int | None = None) -> EreError:
        return EreError(f"at offset {self.i if at is None else at}: {what}")

    def peek(self) -> int | None:
        return self.p[self.i] if self.i < len(self.p) else None

    def regex(self, depth: int) -> bytes:
        branches = [self.branch(depth)]
        while self.peek() == ord("|"):
            self.i += 1
            branches.append(self.branch(depth))
        return b"|".join(branches)

    def branch(self, depth: int) -> bytes:
        pieces: list[bytes] = []
        while (c := self.peek()) is not None and c != ord("|") \
                and not (c == ord(")") and depth > 0):
            pieces.append(self.piece(depth))
        return b"".join(pieces)

    def piece(self, depth: int) -> bytes:
        start = self.i
        atom, repeatable = self.atom(depth)
        quantified = False
        while (quant := self.quantifier()) is not None:
            if not repeatable:  # glibc: "Invalid preceding regular expression"
                self.i = start
                raise self.fail("a repetition with nothing to repeat")
            # ERE applies each one to what precedes: a+? is (a+)?, not Python's lazy +?
            atom = (b"(?:" + atom + b")" if quantified else atom) + quant
            quantified = True
        return atom

    def quantifier(self) -> bytes | None:
        c = self.peek()
        if c in (ord("*"), ord("+"), ord("?")):
            self.i += 1
            return bytes([c])
        if c != ord("{"):
            return None
        m = _INTERVAL.match(self.p, self.i)
        if not m or (not m[1] and not m[2]):
            raise self.fail("'{' that is no interval {m}, {m,}, {m,n} or {,n}")
        low = int(m[1] or b"0")
        high = low if not m[2] else (int(m[3]) if m[3] else None)
        if low > DUP_MAX or (high is not None and (high > DUP_MAX or high < low)):
            raise self.fail(f"interval {m[0].decode()} (at most {DUP_MAX}, low <= high)")
        self.i = m.end()
        return b"{%d}" % low if high == low else b"{%d,%s}" % (low, b"" if high is None
                                                               else b"%d" % high)

    def atom(self, depth: int) -> tuple[bytes, bool]:
        """(Python for the next atom, whether a quantifier may follow it)."""
        c = self.p[self.i]
        self.i += 1
        if c in (ord("*"), ord("+"), ord("?"), ord("{")):
            self.i -= 1
            if self.p[self.i - 1:self.i + 1] == b"(?":
                raise self.fail("(?...) is Python's syntax, not POSIX (collectd refuses it)")
            raise self.fail("a repetition with nothing to repeat")
        if c == ord("("):
            if depth >= MAX_NESTING:
                raise self.fail(f"groups nested more than {MAX_NESTING} deep")
            inner = self.regex(depth + 1)
            if self.peek() != ord(")"):
                raise self.fail("'(' never closed")
            self.i += 1
            return b"(?:" + inner + b")", True
        if c == ord("^"):
            return b"^", False
        if c == ord("$"):
            return b"\\Z", False  # Python's $ matches before a final newline too
        if c == ord("."):
            return b"[\\x00-\\xff]", True
        if c == ord("["):
            return _byte_set(self.bracket()), True
        if c == ord("\\"):
            return self.escape(), True
        return _literal(c), True  # ")" unmatched, "]" and "}" are ordinary in ERE

    def escape(self) -> bytes:
        c = self.peek()
        if c is None:
            raise self.fail("a trailing backslash")
        self.i += 1
        char = chr(c)
        if char in _ESCAPES:
            return _byte_set(_ESCAPES[char])
        at = self.i - 2
        if char in "bB<>`'":
            raise self.fail(f"\\{char} (a GNU anchor) is not translated", at)
        if "1" <= char <= "9":
            raise self.fail(f"\\{char} (a backreference, not in POSIX extended regular "
                            "expressions) is not translated", at)
        if char.isascii() and char.isalnum():
            hint = " ([0-9] for a digit)" if char == "d" else ""
            raise self.fail(f"\\{char} is a plain {char!r} to collectd but not to Python; "
                            f"write what is meant{hint}", at)
        return _literal(c)

    def bracket(self) -> frozenset[int]:
        negated = self.peek() == ord("^")
        self.i += negated
        members: set[int] = set()
        first = True
        while True:
            c = self.peek()
            if c is None:
                raise self.fail("'[' never closed")
            if c == ord("]") and not first:
                self.i += 1
                break
            first = False
            if self.p.startswith(b"[:", self.i):
                members |= self.char_class()
                if self.peek() == ord("-") and self.p[self.i + 1:self.i + 2] not in (b"]", b""):
                    raise self.fail("a range starting at a character class")
                continue
            low = self.bracket_char()
            if self.peek() == ord("-") and self.p[self.i + 1:self.i + 2] not in (b"]", b""):
                self.i += 1
                if self.p.startswith(b"[:", self.i):
                    raise self.fail("a range ending in a character class")
                high = self.bracket_char()
                if high < low:
                    raise self.fail(f"range {chr(low)}-{chr(high)} runs backwards")
                members.update(range(low, high + 1))
                if self.peek() == ord("-") and self.p[self.i + 1:self.i + 2] != b"]":
                    raise self.fail("a range followed by '-'")
            else:
                members.add(low)
        return frozenset(_ALL - members if negated else members)

    def bracket_char(self) -> int:
        if self.p.startswith((b"[.", b"[="), self.i):
            kind = "a collating element [.x.]" if self.p[self.i + 1] == ord(".") \
                else "an equivalence class [=x=]"
            raise self.fail(f"{kind} is not translated")
        c = self.p[self.i]
        self.i += 1
        return c  # a backslash is an ordinary character in a bracket

    def char_class(self) -> frozenset[int]:
        end = self.p.find(b":]", self.i + 2)
        name = self.p[self.i + 2:end].decode("ascii", "replace") if end >= 0 else ""
        if name not in CLASSES:
            raise self.fail(f"unknown character class [:{name}:]; use "
                            f"{', '.join(CLASSES)}")
        self.i = end + 2
        return CLASSES[name]


def translate(pattern: str) -> bytes:
    """The Python bytes pattern matching the UTF-8 names collectd's ERE ``pattern``
    matches (searched, in the C locale), or EreError."""
    raw = pattern.encode("utf-8", "surrogateescape")
    reader = _Translator(raw)
    try:
        out = reader.regex(0)
    except IndexError:  # pragma: no cover - every index is checked before
        raise reader.fail("an unexpected end") from None
    if reader.i != len(raw):  # pragma: no cover - ")" at depth 0 is ordinary
        raise reader.fail("unexpected text")
    return out


@lru_cache(maxsize=1024)
def compile_ere(pattern: str) -> re.Pattern[bytes]:
    """``pattern`` translated and compiled; EreError (one line) if either cannot be."""
    try:
        return re.compile(translate(pattern), re.DOTALL)
    except EreError as exc:
        raise EreError(f"POSIX regular expression {_short(pattern)} {exc}") from None
    except (re.error, RecursionError, OverflowError) as exc:
        raise EreError(f"POSIX regular expression {_short(pattern)}: "
                       f"{str(exc).splitlines()[0]}") from None


def ere_search(pattern: re.Pattern[bytes], text: str) -> bool:
    """Whether a compiled ERE matches somewhere in ``text`` (its UTF-8 bytes)."""
    return pattern.search(text.encode("utf-8", "surrogateescape")) is not None


def _short(text: str) -> str:
    shown = repr(text)
    return shown if len(shown) <= 60 else f"{shown[:40]}... ({len(text)} characters)"
