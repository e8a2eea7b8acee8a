import pytest

from coapdev import keys
from coapdev.errors import InvalidKeyText


def test_minted_factory_key_is_canonical_and_checks_out():
    assert keys.FACTORY_KEY_BITS >= 80
    for _ in range(200):
        key = keys.mint_factory_key()
        assert len(key) == 20
        assert set(key) <= set(keys.ALPHABET)
        assert keys.canonical_factory_key(key) == key
        assert keys.factory_psk(key) == key.encode("ascii")


def test_keys_are_not_repeated():
    assert len({keys.mint_factory_key() for _ in range(1000)}) == 1000


def test_label_form_round_trips_with_separators_case_and_lookalikes():
    key = "7QJ2M4KX9TZC8RNW3HF" + keys.luhn_check_char("7QJ2M4KX9TZC8RNW3HF")
    label = keys.format_factory_key(key)
    assert label.count("-") == 4 and len(label) == 24
    assert keys.canonical_factory_key(label) == key
    assert keys.canonical_factory_key(label.lower().replace("-", " ")) == key
    with_zero = "1" + key[1:]
    if keys.luhn_check_char(with_zero[:-1]) == with_zero[-1]:
        assert keys.canonical_factory_key("l" + key[1:]) == with_zero


def test_every_single_character_typo_is_caught():
    key = keys.mint_factory_key()
    for i in range(len(key)):
        for c in keys.ALPHABET:
            if c == key[i]:
                continue
            typo = key[:i] + c + key[i + 1 :]
            with pytest.raises(InvalidKeyText, match="mistyped"):
                keys.canonical_factory_key(typo)


def test_most_neighbour_swaps_are_caught():
    caught = total = 0
    for _ in range(50):
        key = keys.mint_factory_key()
        for i in range(len(key) - 1):
            if key[i] == key[i + 1]:
                continue
            swapped = key[:i] + key[i + 1] + key[i] + key[i + 2 :]
            total += 1
            try:
                keys.canonical_factory_key(swapped)
            except InvalidKeyText:
                caught += 1
    assert caught / total > 0.95


@pytest.mark.parametrize(
    "text, message",
    [
        ("ABCD-EFGH-JKMN-PQR", "15 characters"),
        ("ABCD-EFGH-JKMN-PQRST", "17 characters, expected 20"),
        ("ABCD-EFGH-JKMN-PQRS-TVW", "19 characters"),
        ("ABCD-EFGH-JKMN-PQRS-TVWXY", "21 characters"),
        ("ABCD-EFGH-JKMN-PQRU", "never used"),
        ("ABCD-EFGH-JKMN-PQR!", "never used"),
        ("", "0 characters"),
    ],
)
def test_malformed_keys_say_what_is_wrong(text, message):
    with pytest.raises(InvalidKeyText, match=message):
        keys.canonical_factory_key(text)


def test_legacy_16_character_factory_keys_still_check_out():
    """Labels printed before keys grew (and the devices that carry them) keep working."""
    old = "7QJ2M4KX9TZC8RN" + keys.luhn_check_char("7QJ2M4KX9TZC8RN")
    assert keys.canonical_factory_key("7qj2-m4kx-9tzc-8rn" + old[-1].lower()) == old
    assert keys.format_factory_key(old).count("-") == 3
    with pytest.raises(InvalidKeyText, match="mistyped"):
        keys.canonical_factory_key(old[:3] + ("0" if old[3] != "0" else "1") + old[4:])


def test_client_keys_fit_tinydtls_and_have_full_entropy():
    raw = keys.mint_client_key()
    assert isinstance(raw, bytes) and len(raw) == 32  # 256 bits
    text = keys.mint_client_key(text=True)
    assert len(text) == 16 and set(text.decode()) <= set(keys.TEXT_KEY_ALPHABET)
    assert len({keys.mint_client_key() for _ in range(500)}) == 500


def test_identities_are_short_ascii():
    ident = keys.mint_identity()
    assert (len(ident.encode()) <= 64 and ident.isascii() and ident.islower()) or ident.isdigit()
