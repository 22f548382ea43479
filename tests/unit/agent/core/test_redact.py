"""Secret masking: remembered values, URL passwords and secret-named keys; ordinary text untouched."""

from __future__ import annotations

from pydantic import SecretStr

from agent.core.redact import MASK, redact, redact_obj, remember


def test_url_passwords_and_secret_keys_are_masked() -> None:
    assert redact("http://alice:hunter22@host:80/v1") == f"http://alice:{MASK}@host:80/v1"
    assert redact("--backend-arg api_key=sk-abc123") == f"--backend-arg api_key={MASK}"
    assert redact("Authorization: Bearer abcdef") == f"Authorization: {MASK}"
    assert redact('{"hf_token": "xyz987"}') == f'{{"hf_token": "{MASK}"}}'


def test_ordinary_text_is_left_alone() -> None:
    for text in ("max_tokens=5", "output_tokens: 12", "http://host:8080/v1", "user@example.org", "a: b"):
        assert redact(text) == text
    assert redact_obj({"j_per_token": 0.2, "per_token": "x", "tokens": 3}) == {
        "j_per_token": 0.2,
        "per_token": "x",
        "tokens": 3,
    }
    assert redact("token=abcd1234 j_per_token=0.2") == f"token={MASK} j_per_token=0.2"


def test_remembered_values_are_masked_anywhere() -> None:
    remember(SecretStr("s3cr3t-value-42"))
    assert redact("error near s3cr3t-value-42 here") == f"error near {MASK} here"
    assert redact_obj({"command": ["x", "s3cr3t-value-42"], "api_key": "other", "n": 3}) == {
        "command": ["x", MASK],
        "api_key": MASK,
        "n": 3,
    }
