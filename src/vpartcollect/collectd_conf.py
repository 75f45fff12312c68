"""collectd.conf read as collectd reads it: options, blocks, values, comments, Include.

The syntax of liboconfig (collectd 5.12): one option a line, ``Key value ...``;
blocks ``<Key value ...>`` ... ``</Key>``; values are double-quoted strings (with
backslash escapes), numbers (decimal, float, 0x hex, 0 octal), booleans
(``true yes on`` / ``false no off``, unquoted) or bare words; ``#`` starts a
comment; a backslash at the end of a line continues it. ``Include "path"``
(a file, a directory of files read in order, or a shell glob), and the block
form ``<Include "dir"> Filter "*.conf" </Include>``, are replaced by what they
read, at the top level of each file, up to 8 levels deep; a relative path is taken
from the current directory, as collectd takes it.
"""

from __future__ import annotations

import fnmatch
import glob
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

Value = str | float | bool
MAX_DEPTH = 8
# liboconfig's scanner: the longest match wins, the earlier rule on a tie (as flex does).
_IP_BYTE = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_RULES: list[tuple[str, re.Pattern[str]]] = [(kind, re.compile(rx)) for kind, rx in (
    ("space", r"[ \t\b]+"),
    ("comment", r"#[^\r\n]*"),
    ("cont", r"\\\r?\n"),
    ("eol", r"\r?\n"),
    ("slash", r"/"),
    ("open", r"<"),
    ("close", r">"),
    ("true", r"true|yes|on"),
    ("false", r"false|no|off"),
    ("word", rf"{_IP_BYTE}\.{_IP_BYTE}\.{_IP_BYTE}\.{_IP_BYTE}(?::[0-9]{{1,5}})?"),
    ("word", r"\[?[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}\]?(?::[0-9]{1,5})?"),
    ("number", r"[+-]?[0-9]*\.[0-9]+(?:[eE][+-][0-9]+)?|0[xX][0-9a-fA-F]+|[+-]?[0-9]+"),
    ("quoted", r'(?s)"(?:[^\\"]|\\.)*"'),
    ("word", r"[0-9A-Za-z_]+"),
)]


class CollectdConfError(ValueError):
    """A collectd.conf that cannot be read, worded as one line with file and line."""


@dataclass
class Item:
    """One option or block: its key, its values, the options inside it (blocks)."""

    key: str
    values: list[Value]
    children: list[Item] = field(default_factory=list)
    where: str = ""  # file:line, for messages

    def find(self, key: str) -> list[Item]:
        """The children whose key is ``key`` (case-insensitive, as collectd compares)."""
        return [c for c in self.children if c.key.lower() == key.lower()]


# In a quoted string: a backslash and a line end continue the string (the next line's
# leading blanks dropped); a backslash and any other character is that character.
_ESCAPE = re.compile(r"\\(?:(\r?\n)[ \t\b]*|(.))", re.DOTALL)


def _value(kind: str, text: str) -> Value:
    if kind == "quoted":  # one pass, left to right: an escaped backslash ends no line
        return _ESCAPE.sub(lambda m: "" if m[1] else m[2], text[1:-1])
    if kind in ("true", "false"):
        return kind == "true"
    if kind == "number":  # strtod: decimal, or hexadecimal after 0x; inf beyond a double
        try:
            return float(int(text, 16)) if text.lower().startswith("0x") else float(text)
        except OverflowError:
            return math.inf
    return text


def _tokens(text: str, name: str) -> list[tuple[int, list[tuple[str, str]]]]:
    """(line number, tokens) of each logical line."""
    out: list[tuple[int, list[tuple[str, str]]]] = []
    tokens: list[tuple[str, str]] = []
    line, start, pos = 1, 1, 0
    while pos < len(text):
        best: tuple[str, str] | None = None
        for kind, rule in _RULES:
            m = rule.match(text, pos)
            if m and m.end() > pos and (best is None or len(m.group()) > len(best[1])):
                best = (kind, m.group())
        if best is None:
            raise CollectdConfError(f"{name}:{line}: unexpected {text[pos:pos + 20]!r}")
        kind, token = best
        pos += len(token)
        if kind in ("cont", "eol"):
            line += 1
        if kind == "eol":
            if tokens:
                out.append((start, tokens))
            tokens, start = [], line
        elif kind not in ("space", "comment", "cont"):
            line += token.count("\n")
            tokens.append((kind, token))
    if tokens:
        out.append((start, tokens))
    return out


def _values(tokens: list[tuple[str, str]], where: str) -> list[Value]:
    bad = [t for k, t in tokens if k not in ("true", "false", "number", "quoted", "word")]
    if bad:
        raise CollectdConfError(f"{where}: unexpected {bad[0]!r} among the values")
    return [_value(k, t) for k, t in tokens]


def parse(text: str, name: str = "collectd.conf") -> Item:
    """The tree of one file (its Include lines not followed yet)."""
    if "\0" in text:  # collectd's strings end there: refuse rather than guess
        line = text.count("\n", 0, text.index("\0")) + 1
        raise CollectdConfError(f"{name}:{line}: a NUL byte")
    root = Item("", [], where=name)
    stack = [root]
    for line, tokens in _tokens(text, name):
        where = f"{name}:{line}"
        kinds = [k for k, _ in tokens]
        if kinds[:2] == ["open", "slash"]:
            if kinds[2:] != ["word", "close"]:
                raise CollectdConfError(f"{where}: a block ends as </Key>")
            key = tokens[2][1]
            if len(stack) == 1 or stack[-1].key != key:
                expected = f"<{stack[-1].key}>" if len(stack) > 1 else "no block"
                raise CollectdConfError(f"{where}: </{key}> closes {expected}")
            stack.pop()
        elif kinds[0] == "open":
            if len(tokens) < 3 or kinds[1] != "word" or kinds[-1] != "close":
                raise CollectdConfError(f"{where}: a block starts as <Key value ...>")
            item = Item(tokens[1][1], _values(tokens[2:-1], where), where=where)
            stack[-1].children.append(item)
            stack.append(item)
        elif kinds[0] == "word" and len(tokens) >= 2:
            stack[-1].children.append(Item(tokens[0][1], _values(tokens[1:], where),
                                           where=where))
        else:
            raise CollectdConfError(f"{where}: expected Key value ..., got "
                                    f"{' '.join(t for _, t in tokens)[:60]!r}")
    if len(stack) > 1:
        raise CollectdConfError(f"{stack[-1].where}: <{stack[-1].key}> is never closed")
    return root


def read(path: str | Path, depth: int = 0) -> Item:
    """A whole configuration: ``path`` with every Include followed, as collectd does."""
    path = Path(path)
    try:  # newline="": a carriage return inside a quoted string is kept, as collectd does
        with open(path, encoding="utf-8", newline="") as fh:
            text = fh.read()
    except OSError as exc:
        raise CollectdConfError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise CollectdConfError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    root = parse(text, str(path))
    children: list[Item] = []
    for item in root.children:
        if item.key.lower() != "include":
            children.append(item)
            continue
        if depth + 1 >= MAX_DEPTH:
            raise CollectdConfError(f"{item.where}: Include nested more than {MAX_DEPTH} deep")
        if len(item.values) != 1 or not isinstance(item.values[0], str):
            raise CollectdConfError(f"{item.where}: Include needs exactly one string")
        pattern = None
        for child in item.children:
            if child.key.lower() != "filter" or len(child.values) != 1 \
                    or not isinstance(child.values[0], str):
                raise CollectdConfError(f"{child.where}: only Filter \"pattern\" may be in "
                                        "an <Include> block")
            pattern = child.values[0]
        for included in _included(item.values[0], Path.cwd(), item.where):
            if pattern is None or fnmatch.fnmatch(included.name, pattern):
                children.extend(read(included, depth + 1).children)
    root.children = children
    return root


def _included(spec: str, base: Path, where: str) -> list[Path]:
    """The files an Include names: a file, a directory's files (sorted, dotfiles left
    out, recursively) or a glob; a relative path from the current directory, as
    collectd's wordexp and stat take it (not from the including file's directory)."""
    spec_given = spec = os.path.expanduser(spec)
    if not os.path.isabs(spec):
        spec = str(base / spec)
    found = sorted(glob.glob(spec)) if glob.has_magic(spec) else [spec]
    if not found:
        return []  # a glob matching nothing includes nothing, as wordexp leaves it
    files: list[Path] = []
    for name in found:
        entry = Path(name)
        if entry.is_dir():
            for child in sorted(p for p in entry.iterdir() if not p.name.startswith(".")):
                files.extend(_included(str(child), base, where))
        elif entry.exists():
            files.append(entry)
        else:
            relative = "" if os.path.isabs(spec_given) else \
                " (a relative path is read from the current directory, as collectd does)"
            raise CollectdConfError(f"{where}: Include {name}: no such file or "
                                    f"directory{relative}")
    return files
