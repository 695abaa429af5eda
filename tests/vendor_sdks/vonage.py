"""Checks a Vonage Video client token against the `vonage-video` server SDK.

Reads JSON on stdin:
  {"token": "...", "application_id": "...", "public_key": "<PEM>",
   "private_key": "<PKCS#8 PEM>", "session_id": "...", "role": "publisher"}
and prints JSON on stdout:
  {"session_id", "role", "connection_data", "lifetime", "claims"}
(`claims`: the token's claim names in order; `lifetime`: exp minus iat).

The token is verified with pyjwt (RS256) and the public key. The SDK
(vonage_video.Video.generate_client_token, through vonage_jwt) then makes its
own token for the same session, role, expiry and connection data with the
private key, and both must agree claim by claim except jti, iat and exp.
Exits non-zero with a message on any mismatch.
"""

import json
import os
import sys
import uuid
import warnings

# Run from tests/vendor_sdks/: import the SDK's packages, never this folder's files.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
warnings.filterwarnings("ignore")

import jwt  # noqa: E402
from vonage_http_client import Auth, HttpClient  # noqa: E402
from vonage_video import Video  # noqa: E402
from vonage_video.models.token import TokenOptions  # noqa: E402

VOLATILE = {"jti", "iat", "exp"}


def fail(message):
    print(f"vonage token check failed: {message}", file=sys.stderr)
    sys.exit(1)


def main():
    request = json.load(sys.stdin)
    token = request["token"]
    header = jwt.get_unverified_header(token)
    if header != {"alg": "RS256", "typ": "JWT"}:
        fail(f"JWT header {header}")
    try:
        claims = jwt.decode(token, request["public_key"], algorithms=["RS256"],
                            options={"require": ["exp", "iat", "jti"]})
    except jwt.PyJWTError as err:
        fail(f"the JWT does not verify with the application's public key: {err}")
    try:
        uuid.UUID(claims["jti"])
    except (ValueError, TypeError, AttributeError):
        fail(f"jti is not a UUID: {claims['jti']!r}")

    options = {"session_id": claims.get("session_id", ""), "role": claims.get("role"),
               "exp": claims["exp"]}
    if "connection_data" in claims:
        options["connection_data"] = claims["connection_data"]
    if "initial_layout_class_list" in claims:
        options["initial_layout_class_list"] = claims["initial_layout_class_list"]
    video = Video(HttpClient(Auth(application_id=request["application_id"],
                                  private_key=request["private_key"])))
    theirs = video.generate_client_token(TokenOptions(**options))
    if isinstance(theirs, bytes):
        theirs = theirs.decode()
    if jwt.get_unverified_header(theirs) != header:
        fail(f"JWT header {header} differs from the SDK's {jwt.get_unverified_header(theirs)}")
    their_claims = jwt.decode(theirs, request["public_key"], algorithms=["RS256"])

    if sorted(claims) != sorted(their_claims):
        fail(f"claims {list(claims)} differ from the SDK's {list(their_claims)}")
    for name, value in claims.items():
        if name not in VOLATILE and value != their_claims[name]:
            fail(f"{name} = {value!r}, the SDK says {their_claims[name]!r}")
    if claims.get("application_id") != request["application_id"]:
        fail(f"application_id {claims.get('application_id')!r} is not the configured one")
    if claims.get("session_id") != request["session_id"]:
        fail(f"session_id {claims.get('session_id')!r} is not {request['session_id']!r}")
    if "role" in request and claims.get("role") != request["role"]:
        fail(f"role {claims.get('role')!r} is not {request['role']!r}")

    print(json.dumps({
        "session_id": claims["session_id"],
        "role": claims["role"],
        "connection_data": claims.get("connection_data"),
        "lifetime": claims["exp"] - claims["iat"],
        "claims": list(claims),
    }))


if __name__ == "__main__":
    main()
