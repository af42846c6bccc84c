import hashlib

import pytest

from core import keys


def test_generated_key_verifies_and_only_hash_is_needed():
    plaintext, prefix, key_hash = keys.generate_key()
    assert plaintext.startswith(f"fcb_{prefix}_")
    assert key_hash == hashlib.sha256(plaintext.encode()).hexdigest()
    assert plaintext not in key_hash
    assert keys.verify_key(plaintext, key_hash)
    assert keys.split_key(plaintext) == prefix


def test_keys_are_unique_and_high_entropy():
    generated = {keys.generate_key()[0] for _ in range(200)}
    assert len(generated) == 200
    assert all(len(k.split("_", 2)[2]) >= 43 for k in generated)


@pytest.mark.parametrize("tamper", [
    lambda k: k[:-1] + ("A" if k[-1] != "A" else "B"),   # last secret char changed
    lambda k: k.replace("fcb_", "fcb_0", 1)[:len(k)],    # prefix shifted
    lambda k: k + "x",                                    # extra char
    lambda k: "",                                         # empty
])
def test_tampered_key_fails(tamper):
    plaintext, _prefix, key_hash = keys.generate_key()
    assert not keys.verify_key(tamper(plaintext), key_hash)


def test_verify_rejects_missing_hash():
    plaintext, _prefix, _hash = keys.generate_key()
    assert not keys.verify_key(plaintext, None)
    assert not keys.verify_key(plaintext, "")


@pytest.mark.parametrize("token", [None, 42, "", "abc", "fcb_short_x", "xyz_12345678_secret", "fcb_12345678_",
                                   # only the key alphabet (a NUL reached the prefix lookup: a 500)
                                   "fcb_1234567\x00_secret", "fcb_123\ud8005678_secret", "fcb_ABCDEF12_secret",
                                   "fcb_1234567g_secret", "fcb_12345678_sec\x00ret", "fcb_12345678_s\u00e9cret",
                                   "fcb_12345678_sec ret"])
def test_split_key_rejects_malformed(token):
    with pytest.raises(keys.MalformedKey):
        keys.split_key(token)


@pytest.mark.parametrize("header, token", [
    ("Bearer abc", "abc"),
    ("bearer   abc", "abc"),
    ("Bearer", None),
    ("Basic abc", None),
    ("Bearer a b", None),
    ("", None),
    (None, None),
])
def test_bearer_token(header, token):
    assert keys.bearer_token(header) == token
