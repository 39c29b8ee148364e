"""Character tables of ESC/POS customer displays, by Python codec name.

A VFD pole display shows one byte per cell, from the character table chosen with `ESC t n`. The
numbers `n` below are Epson's (DM-D customer displays and TM printers share them); displays of other
makers mostly follow them, and `[display] code_page_number` overrides the number for those that do not.
Only single-byte, ASCII-compatible tables are usable: the commands themselves are ASCII control bytes.
"""

from __future__ import annotations

import codecs

# Python codec name -> Epson `ESC t n` table number.
EPSON_TABLES: dict[str, int] = {
    "cp437": 0,  # USA, standard Europe
    "cp850": 2,  # multilingual Latin-1
    "cp860": 3,  # Portuguese
    "cp863": 4,  # Canadian French
    "cp865": 5,  # Nordic
    "cp857": 13,  # Turkish
    "cp737": 14,  # Greek
    "iso8859-7": 15,  # Greek
    "cp1252": 16,  # Windows Latin-1
    "cp866": 17,  # Cyrillic (DOS)
    "cp852": 18,  # Latin-2 (Central Europe)
    "cp858": 19,  # Latin-1 with the euro sign
    "cp720": 32,  # Arabic
    "cp775": 33,  # Baltic
    "cp855": 34,  # Cyrillic
    "cp861": 35,  # Icelandic
    "cp862": 36,  # Hebrew
    "cp869": 38,  # Greek
    "iso8859-2": 39,  # Latin-2
    "iso8859-15": 40,  # Latin-9
    "cp1125": 44,  # Ukrainian
    "cp1250": 45,  # Windows Latin-2
    "cp1251": 46,  # Windows Cyrillic
    "cp1253": 47,  # Windows Greek
    "cp1254": 48,  # Windows Turkish
    "cp1255": 49,  # Windows Hebrew
    "cp1256": 50,  # Windows Arabic
    "cp1257": 51,  # Windows Baltic
    "cp1258": 52,  # Windows Vietnamese
    "kz1048": 53,  # Kazakh
}


def canonical_codec(name: str) -> str:
    """The codec's canonical name (`CP866` and `ibm866` give `cp866`); ValueError if it is unknown or
    not a single-byte ASCII-compatible table."""
    try:
        info = codecs.lookup(name)
    except LookupError:
        raise ValueError(f"unknown code page {name!r} (a Python codec name such as 'cp866')") from None
    printable = bytes(range(0x20, 0x7F))
    try:
        ascii_ok = printable.decode(info.name) == printable.decode("ascii")
    except UnicodeError:
        ascii_ok = False
    # A one-byte table maps each upper byte it defines to one character and back (UTF-8 maps none).
    upper = 0
    for byte in range(0x80, 0x100):
        try:
            char = bytes([byte]).decode(info.name)
            upper += len(char) == 1 and char.encode(info.name) == bytes([byte])
        except UnicodeError:
            continue
    if not ascii_ok or upper < 64:
        raise ValueError(f"code page {name!r} is not a single-byte ASCII-compatible table")
    return info.name


def table_number(codec: str, override: int | None = None) -> int:
    """The `ESC t n` number for `codec`: the override if given, else Epson's number."""
    if override is not None:
        return override
    name = canonical_codec(codec)
    if name not in EPSON_TABLES:
        raise ValueError(f"no Epson table number known for {name!r}: set code_page_number")
    return EPSON_TABLES[name]
