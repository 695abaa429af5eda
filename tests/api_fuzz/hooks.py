"""Schemathesis hooks for Loop (loaded by scripts/api-fuzz via SCHEMATHESIS_HOOKS).

Hawk device sessions: the auth provider registers a device (an unauthenticated
POST /registration answers a Hawk-Session-Token), derives the Hawk id and key
from the token with HKDF as Loop clients do, and signs every request with
mohawk, over the exact bytes sent (URL with query, content type, payload hash).
Responses to signed requests must carry a Server-Authorization that mohawk
accepts. A 401 makes schemathesis fetch a new session (after DELETE /account,
say).
"""

import hashlib
import hmac
import logging
import os

import mohawk
import requests
import schemathesis

SESSION_TOKEN_INFO = b"identity.mozilla.com/picl/v1/sessionToken"

# mohawk warns on every response that it checks no nonce: a client need not.
logging.getLogger("mohawk").setLevel(logging.ERROR)


def hkdf_sha256(secret, info, length):
    """RFC 5869 with no salt: what every Loop client uses on the session token."""
    prk = hmac.new(b"\0" * 32, secret, hashlib.sha256).digest()
    okm, block, counter = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
        counter += 1
    return okm[:length]


def credentials_from_token(token_hex):
    okm = hkdf_sha256(bytes.fromhex(token_hex), SESSION_TOKEN_INFO, 64)
    return {"id": okm[:32].hex(), "key": okm[32:].hex(), "algorithm": "sha256"}


class HawkSigner(requests.auth.AuthBase):
    """Signs a prepared request (its final URL and body bytes) and checks the
    server's signature on the response."""

    def __init__(self, credentials):
        self.credentials = credentials

    def __call__(self, request):
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode()
        content_type = request.headers.get("Content-Type", "")
        sender = mohawk.Sender(
            self.credentials,
            request.url,
            request.method,
            content=body,
            content_type=content_type,
        )
        request.headers["Authorization"] = sender.request_header
        # OPTIONS is answered by the CORS layer, before authentication.
        if request.method != "OPTIONS":
            request.register_hook("response", lambda response, **_: self.check(sender, response))
        return request

    @staticmethod
    def check(sender, response):
        server_authorization = response.headers.get("Server-Authorization")
        if response.status_code < 400 or server_authorization:
            if not server_authorization:
                raise AssertionError(f"no Server-Authorization on a {response.status_code} to a Hawk request")
            sender.accept_response(
                server_authorization,
                content=response.content,
                content_type=response.headers.get("Content-Type", ""),
            )
        return response


@schemathesis.auth()
class LoopHawkSession:
    """A device session from POST /registration, used for every operation
    (the routes that do not need one accept a signed request too)."""

    def get(self, case, context):
        base_url = os.environ["LOOP_API_FUZZ_URL"].rstrip("/")
        response = requests.post(f"{base_url}/registration", timeout=30)
        response.raise_for_status()
        return credentials_from_token(response.headers["Hawk-Session-Token"])

    def set(self, case, data, context):
        # schemathesis hands `case._auth` to requests as its `auth`, which
        # runs on the prepared request: the bytes actually sent get signed.
        case._auth = HawkSigner(data)


@schemathesis.hook
def map_headers(context, headers):
    """`Prefer: wait=S` long-polls GET /calls for S seconds when no call
    waits; one second keeps the long-poll path tested without idling."""
    if headers and "Prefer" in headers:
        headers["Prefer"] = "wait=1"
    return headers
