"""Settings from FRAUDSCORE_* variables, and how `serve` hands them to its workers."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from service.serve import environment_for
from service.settings import Settings


def test_defaults_are_the_embedded_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REGISTRY", "HOST", "PORT", "API_KEYS", "ADMIN_TOKEN", "WORKERS"):
        monkeypatch.delenv(f"FRAUDSCORE_{name}", raising=False)
    s = Settings()
    assert (s.registry, s.host, s.port, s.workers) == ("var/registry", "127.0.0.1", 8000, 1)
    assert s.api_keys == ()
    assert s.admin_token is None
    assert s.max_batch == 1000


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUDSCORE_PORT", "9100")
    monkeypatch.setenv("FRAUDSCORE_API_KEYS", " a1 ,b2,, ")
    monkeypatch.setenv("FRAUDSCORE_ADMIN_TOKEN", "  ")
    monkeypatch.setenv("FRAUDSCORE_POLL_INTERVAL_S", "0.5")
    s = Settings()
    assert s.port == 9100
    assert [k.get_secret_value() for k in s.api_keys] == ["a1", "b2"]
    assert s.admin_token is None
    assert s.retry_after_s == 1
    # Arguments beat the environment.
    assert Settings(port=9200).port == 9200


@pytest.mark.parametrize(
    ("name", "value"),
    [("PORT", "70000"), ("WORKERS", "0"), ("POLL_INTERVAL_S", "0"), ("BACKEND", "gpu")],
)
def test_bad_values_name_the_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(f"FRAUDSCORE_{name}", value)
    with pytest.raises(ValidationError, match=name.lower()):
        Settings()


def test_secrets_do_not_show_in_the_settings_repr() -> None:
    s = Settings(api_keys=[SecretStr("key-123")], admin_token=SecretStr("tok-456"))
    assert "key-123" not in repr(s)
    assert "tok-456" not in repr(s)


def test_workers_get_the_same_settings_through_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = Settings(
        port=9300,
        workers=2,
        api_keys=[SecretStr("k1"), SecretStr("k2")],
        admin_token=SecretStr("t"),
        max_batch=50,
        registry="/data/registry",
    )
    for key, value in environment_for(original).items():
        monkeypatch.setenv(key, value)
    assert Settings() == original
    unset = environment_for(Settings(admin_token=None))["FRAUDSCORE_ADMIN_TOKEN"]
    monkeypatch.setenv("FRAUDSCORE_ADMIN_TOKEN", unset)
    assert Settings().admin_token is None
