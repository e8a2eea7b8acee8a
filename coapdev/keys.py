"""Keys and identities: minting, and the factory key's human text form.

The factory key is printed on a label and typed by people, so it uses
Crockford's base32 alphabet (no I, L, O, U), is shown in groups of four and
ends in a check character that catches any single mistyped character and
almost every swap of two neighbours before a packet is sent.  Its canonical
text, 16 ASCII characters without separators, *is* the PSK on the wire (as
with a Tradfri security code), so any CoAP client handed that text can use it.

Entropy: 19 random characters of 32 symbols = 95 bits; the 20th is the check
character (shown as five groups of four).  Labels printed before keys grew
carry 16 characters (75 bits): they are still accepted, and a device keeps
the key it was provisioned with.
"""

from __future__ import annotations

import secrets

from .const import MAX_PSK_BYTES
from .errors import InvalidKeyText

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_VALUE = {c: i for i, c in enumerate(ALPHABET)}
# Characters a person may type for one in the alphabet (Crockford's rules).
_ALIASES = {"O": "0", "I": "1", "L": "1"}
_SEPARATORS = " -\t"

FACTORY_KEY_CHARS = 20
FACTORY_KEY_RANDOM_CHARS = FACTORY_KEY_CHARS - 1
FACTORY_KEY_BITS = FACTORY_KEY_RANDOM_CHARS * 5  # 95
#: Factory keys minted before keys grew (15 random characters, 75 bits).
LEGACY_FACTORY_KEY_CHARS = 16
#: Lengths a factory key may have, as typed or stored.
FACTORY_KEY_LENGTHS = (FACTORY_KEY_CHARS, LEGACY_FACTORY_KEY_CHARS)

CLIENT_KEY_BYTES = MAX_PSK_BYTES  # 256 bits
TEXT_KEY_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
#: Text keys stay at 16 characters (96 bits): Tradfri clients expect that size.
TEXT_KEY_CHARS = 16

IDENTITY_CHARS = 12  # 60 bits: unique per device, and short enough to type
DEVICE_ID_CHARS = 10


def luhn_check_char(data: str) -> str:
    """Luhn mod 32 check character over ``data`` (canonical characters)."""
    n = len(ALPHABET)
    factor = 2
    total = 0
    for char in reversed(data):
        addend = factor * _VALUE[char]
        factor = 1 if factor == 2 else 2
        total += addend // n + addend % n
    return ALPHABET[(n - total % n) % n]


def _random_chars(alphabet: str, count: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(count))


def mint_factory_key() -> str:
    """A new factory key in canonical form (20 characters, last one the check)."""
    data = _random_chars(ALPHABET, FACTORY_KEY_RANDOM_CHARS)
    return data + luhn_check_char(data)


def canonical_factory_key(text: str) -> str:
    """Canonical form of a factory key as typed or scanned.

    Accepts lower case, group separators and Crockford's look-alikes
    (O for 0, I and L for 1).  Raises :class:`InvalidKeyText` saying what is
    wrong, so a typo is caught before any packet is sent.
    """
    cleaned = "".join(c for c in text.strip() if c not in _SEPARATORS).upper()
    cleaned = "".join(_ALIASES.get(c, c) for c in cleaned)
    bad = sorted({c for c in cleaned if c not in _VALUE})
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        raise InvalidKeyText(
            f"factory key contains characters that are never used in keys: {shown}"
        )
    if len(cleaned) not in FACTORY_KEY_LENGTHS:
        raise InvalidKeyText(
            f"factory key has {len(cleaned)} characters, expected {FACTORY_KEY_CHARS} "
            f"(five groups of four; {LEGACY_FACTORY_KEY_CHARS} on older labels)"
        )
    if luhn_check_char(cleaned[:-1]) != cleaned[-1]:
        raise InvalidKeyText("factory key does not check out: a character is mistyped")
    return cleaned


def format_factory_key(canonical: str) -> str:
    """Label form: ``ABCD-EFGH-JKMN-PQRS-TVWX``."""
    return "-".join(canonical[i : i + 4] for i in range(0, len(canonical), 4))


def factory_psk(canonical: str) -> bytes:
    """The PSK on the wire: the ASCII of the canonical text."""
    return canonical.encode("ascii")


def mint_client_key(text: bool = False) -> bytes:
    """A fresh client PSK: 32 random bytes, or 16 ASCII characters if ``text``."""
    if text:
        return _random_chars(TEXT_KEY_ALPHABET, TEXT_KEY_CHARS).encode("ascii")
    return secrets.token_bytes(CLIENT_KEY_BYTES)


def mint_identity() -> str:
    """A fresh client identity (also the client's stable id when minted natively)."""
    return _random_chars(ALPHABET, IDENTITY_CHARS).lower()


def mint_device_id() -> str:
    return _random_chars(ALPHABET, DEVICE_ID_CHARS)
