"""Property tests of the HTTP API from its own OpenAPI schema (schemathesis 4 + hypothesis), in process.

For every operation in /openapi.json, schemathesis generates requests (valid and invalid parameters and bodies) and
each is sent three ways: with no credentials, with the admin bearer token, and in a signed-in admin staff session
(session cookie + CSRF header; an admin may use every staff page). Checks: no 5xx (`not_a_server_error`) and, for
successful answers, the body matches its documented schema (`response_schema_conformance`). Error answers are not
checked against the schema: they use the app's one error shape (telephony/web/errors.py), while the generated schema
still documents FastAPI's default 422 body (docs/fuzzing.md).

Bounded and repeatable: MAX_EXAMPLES per operation, derandomized (the same examples on every run), no deadline.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from hypothesis import HealthCheck, Phase, given, settings, strategies

schemathesis = pytest.importorskip("schemathesis")
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.python import asgi  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance  # noqa: E402

from telephony.handoff.accounts import Accounts  # noqa: E402
from telephony.settings import EmbeddingBackend, Settings  # noqa: E402
from telephony.store.models import UserRole  # noqa: E402
from telephony.web.app import create_app  # noqa: E402

# Examples per operation (valid and invalid requests mixed); generating them is most of the time. CI keeps it small;
# HOTLINE_OPENAPI_EXAMPLES=50 runs the long version (docs/fuzzing.md).
MAX_EXAMPLES = int(os.environ.get("HOTLINE_OPENAPI_EXAMPLES", "4"))
# Deliberate 503s of an app started without voice engines (`create_app(voice=False)`): "not ready", not a bug.
NOT_READY = {("GET", "/api/phone/session")}
# Rebuilds the whole answer stack (seconds each): covered by tests/test_api.py, not worth a dozen rebuilds here.
SKIPPED = {("POST", "/api/admin/kb/reload")}
ADMIN_TOKEN = "admin-token-for-property-tests"
RECEIPT_TOKEN = "receipt-token-for-property-tests"
USERNAME, PASSWORD = "boss", "correct-horse-9"
CSRF_IN_PAGE = re.compile(r'name="csrf_token" value="([^"]+)"')
CSRF_META = re.compile(r'name="csrf-token" content="([^"]+)"')


@dataclass
class Api:
    schema: object
    client: asgi.ASGIClient
    accounts: Accounts
    session_headers: dict[str, str] = field(default_factory=dict)
    session_cookies: dict[str, str] = field(default_factory=dict)

    def sign_in(self) -> None:
        """(Again) the admin's account as created, and a fresh session: a generated request may have changed its
        password, role or active flag."""
        self.accounts.reset_password(USERNAME, PASSWORD)
        self.accounts.set_role(USERNAME, UserRole.ADMIN)
        self.accounts.reactivate(USERNAME)
        self.client.cookies.clear()
        token = CSRF_IN_PAGE.search(self.client.get("/desk/login").text).group(1)
        response = self.client.post("/desk/login", data={"username": USERNAME, "password": PASSWORD,
                                                         "csrf_token": token}, allow_redirects=False)
        assert response.status_code == 303, response.text
        csrf = CSRF_META.search(self.client.get("/admin").text).group(1)
        self.session_headers = {"X-CSRF-Token": csrf}
        self.session_cookies = dict(self.client.cookies)
        assert self.session_cookies

    def signed_in(self) -> bool:
        response = self.client.get("/desk/api/me", cookies=self.session_cookies)
        return response.status_code == 200 and response.json().get("role") == UserRole.ADMIN

    def credentials(self) -> Iterator[tuple[str, dict[str, str], dict[str, str]]]:
        yield "anonymous", {}, {}
        yield "admin token", {"Authorization": f"Bearer {ADMIN_TOKEN}"}, {}
        yield "admin session", self.session_headers, self.session_cookies


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    root: Path = tmp_path_factory.mktemp("openapi")
    app_settings = Settings(_env_file=None, data_dir=root / "var", centre_phone="0773-0000000",
                            sms_signature="测试社保", asr_model=str(root / "no-asr-model"), tts_prerender=False,
                            tts_engine="espeak", embedding_backend=EmbeddingBackend.NONE, admin_token=ADMIN_TOKEN,
                            sms_receipt_token=RECEIPT_TOKEN)
    app = create_app(app_settings, voice=False)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)  # starts the app's lifespan (kept for the module)
    try:
        with asgi.get_client(app) as client:
            hotline = app.state.hotline_state.hotline
            accounts = Accounts(hotline.database, PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
            accounts.create(USERNAME, "陈主任", UserRole.ADMIN, PASSWORD)
            api = Api(schema, client, accounts)
            api.sign_in()
            yield api
    finally:
        asgi.shutdown_lifespans()  # the app's background tasks end with the module


def _operations() -> list[tuple[str, str]]:
    """(method, path) of every operation, read from the schema of an app that is not started (no lifespan)."""
    paths = create_app(Settings(_env_file=None), voice=False).openapi()["paths"]
    # Sorted: every xdist worker must collect the same tests in the same order.
    return sorted((method.upper(), path) for path, operations in paths.items() for method in operations
                  if (method.upper(), path) not in SKIPPED)


OPERATIONS = _operations()


def test_the_schema_lists_the_api() -> None:
    assert len(OPERATIONS) >= 40
    assert {("POST", "/api/ask"), ("POST", "/admin/api/users"), ("GET", "/review/api/calls"),
            ("POST", "/api/sms/receipts/{gateway}")} <= set(OPERATIONS)


@pytest.mark.parametrize("path", ["/api/sms/9223372036854775808", "/desk/api/tickets/9223372036854775808",
                                  "/review/api/kb-changes/-9223372036854775809"])
def test_a_row_id_past_64_bits_is_a_422_not_a_500(path: str, api: Api) -> None:
    """Found by the property test: SQLite's driver raised OverflowError for such an id (a 500)."""
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", **api.session_headers}
    response = api.client.get(path, headers=headers, cookies=api.session_cookies)
    assert response.status_code == 422, response.text
    assert "error" in response.json()
    in_range = api.client.get(path.replace("922337203685477580", "1"), headers=headers, cookies=api.session_cookies)
    assert in_range.status_code == 404, in_range.text


# schemathesis.pytest.from_fixture reads pytest internals that pytest 9 no longer has (`Function._nodeid`), so each
# operation is a parametrized test that runs hypothesis over the operation's own strategy.
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{method} {path}" for method, path in OPERATIONS])
def test_no_operation_answers_a_server_error(method: str, path: str, api: Api) -> None:
    operation = api.schema[path][method]
    cases = strategies.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                              operation.as_strategy(GenerationMode.NEGATIVE))

    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck))
    @given(case=cases)
    def property_holds(case) -> None:
        for _who, headers, cookies in api.credentials():
            response = case.call(headers=headers, cookies=cookies)
            if (method, path) in NOT_READY and response.status_code == 503:
                assert response.json() == {"error": "voice engines are not ready yet"}
                continue
            checks = [not_a_server_error] + ([response_schema_conformance] if response.status_code < 400 else [])
            case.validate_response(response, checks=checks)
        if path.startswith("/admin/api/users") and not api.signed_in():
            api.sign_in()  # the request changed the admin's own account: sign in again for the next one

    property_holds()
