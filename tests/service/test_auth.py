"""API keys and the admin bearer token."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from service.auth import AdminToken, ApiKeys, token_id
from service.errors import AdminDisabled, Unauthorized
from tests.service.conftest import ClientFactory


def test_no_keys_means_open_scoring() -> None:
    keys = ApiKeys(())
    assert keys.required is False
    keys.check(None)
    keys.check(b"anything")


@pytest.mark.parametrize("presented", [None, b"", b"k1x", b"K1", b"k"])
def test_a_wrong_or_missing_key_is_refused(presented: bytes | None) -> None:
    with pytest.raises(Unauthorized):
        ApiKeys((SecretStr("k1"), SecretStr("k2"))).check(presented)


def test_any_configured_key_is_accepted() -> None:
    keys = ApiKeys((SecretStr("k1"), SecretStr("k2")))
    keys.check(b"k1")
    keys.check(b"k2")


def test_admin_routes_are_disabled_without_a_token() -> None:
    admin = AdminToken(None)
    assert admin.enabled is False
    with pytest.raises(AdminDisabled, match="FRAUDSCORE_ADMIN_TOKEN"):
        admin.check("Bearer whatever")


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Bearer ", "Basic s3cret", "Bearer s3cre", "Bearer s3cret2"]
)
def test_a_wrong_bearer_is_refused(header: str | None) -> None:
    with pytest.raises(Unauthorized):
        AdminToken(SecretStr("s3cret")).check(header)


def test_the_right_bearer_gives_a_token_id_that_is_not_the_token() -> None:
    caller = AdminToken(SecretStr("s3cret")).check("bearer s3cret")
    assert caller == token_id(b"s3cret")
    assert "s3cret" not in caller
    assert caller.startswith("sha256:")


def test_admin_routes_through_the_app(make_client: ClientFactory) -> None:
    with make_client() as c:
        off = c.get("/admin/models", headers={"authorization": "Bearer t0ken"})
        assert off.status_code == 403
        assert off.json()["error"] == "admin_disabled"
    with make_client(admin_token="t0ken") as c:  # noqa: S106 (a test token)
        missing = c.get("/admin/models")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert c.get("/admin/models", headers={"authorization": "Bearer nope"}).status_code == 401
        ok = c.get("/admin/models", headers={"authorization": "Bearer t0ken"})
        assert ok.status_code == 200
        (model,) = ok.json()["models"]
        assert model["active"] is True
        assert model["thresholds_versions"] == [1]
        assert model["active_thresholds_version"] == 1
        assert "test:msd" in model["metrics"]
