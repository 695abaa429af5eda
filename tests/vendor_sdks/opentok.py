"""Checks an OpenTok client token against the `opentok` server SDK.

Reads JSON on stdin:
  {"token": "...", "api_key": "...", "api_secret": "...", "session_id": "...",
   "role": "publisher", "format": "t1" | "jwt"}
and prints JSON on stdout:
  {"format", "session_id", "role", "connection_data", "lifetime", "fields"}
(`fields`: the token's fields in order; `lifetime`: expiry minus issue time).

T1 tokens are decoded and their HMAC recomputed the way the SDK's own tests
check them (split at ":", `sig` from the metadata, HMAC-SHA1 of the data with
the secret). JWT tokens are verified with pyjwt and the secret. Either way the
SDK then makes its own token for the same session, role, expiry and
connection data, and both must agree field by field (order included) except
the nonce and the times. Exits non-zero with a message on any mismatch.
"""

import base64
import hashlib
import hmac
import json
import os
import sys
import warnings
from urllib.parse import parse_qsl

# This file is named like the SDK's package: import the package, not this file.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
# Short test secrets make pyjwt warn; the checks below are what matter.
warnings.filterwarnings("ignore")

import jwt  # noqa: E402
from opentok import Client, Roles  # noqa: E402

# Fields that differ between two tokens made for the same inputs (the T1 `sig`
# covers the nonce and times; it is checked against the secret on its own).
VOLATILE = {"nonce", "create_time", "expire_time", "iat", "exp", "sig"}


def fail(message):
    print(f"opentok token check failed: {message}", file=sys.stderr)
    sys.exit(1)


def decode_t1(token, secret):
    """(metadata pairs, data pairs), after checking the signature."""
    if not token.startswith("T1=="):
        fail(f"a T1 token starts with T1==, not {token[:4]!r}")
    try:
        decoded = base64.b64decode(token[4:].encode("utf-8"), validate=True).decode("utf-8")
    except Exception as err:  # noqa: BLE001 - any decoding error is a mismatch
        fail(f"the T1 payload is not base64 of UTF-8: {err}")
    # As the SDK's tests do: metadata and data are separated by the one ":".
    parts = decoded.split(":")
    if len(parts) != 2:
        fail(f"a T1 payload has exactly one ':', found {len(parts) - 1}")
    metadata, data = parts
    meta = parse_qsl(metadata, keep_blank_values=True, strict_parsing=True)
    sig = dict(meta).get("sig")
    expected = hmac.new(secret.encode("utf-8"), data.encode("utf-8"), hashlib.sha1).hexdigest()
    if not sig or not hmac.compare_digest(sig, expected):
        fail("the T1 signature is not HMAC-SHA1(api_secret, data)")
    fields = parse_qsl(data, keep_blank_values=True, strict_parsing=True)
    return meta, fields, data


def compare(ours, theirs, what):
    """Both lists of (name, value) pairs agree in order, and in value except VOLATILE."""
    our_names = [name for name, _ in ours]
    their_names = [name for name, _ in theirs]
    if our_names != their_names:
        fail(f"{what}: fields {our_names} differ from the SDK's {their_names}")
    for (name, ours_value), (_, theirs_value) in zip(ours, theirs):
        if name not in VOLATILE and ours_value != theirs_value:
            fail(f"{what}: {name} = {ours_value!r}, the SDK says {theirs_value!r}")


def check_t1(request, sdk):
    meta, fields, data = decode_t1(request["token"], request["api_secret"])
    if dict(meta).get("partner_id") != request["api_key"]:
        fail(f"partner_id {dict(meta).get('partner_id')!r} is not the API key")
    values = dict(fields)
    for name in ("create_time", "expire_time", "nonce"):
        if not values.get(name, "").isdigit():
            fail(f"{name} is not a whole number: {values.get(name)!r}")
    if int(values["nonce"]) > 999999:
        fail(f"nonce {values['nonce']} is out of the SDK's range")
    expire_time = int(values["expire_time"])
    theirs = sdk.generate_token(
        values.get("session_id", ""),
        role=Roles(values.get("role")),
        expire_time=expire_time,
        data=values.get("connection_data"),
        use_jwt=False,
    )
    their_meta, their_fields, _ = decode_t1(theirs, request["api_secret"])
    compare(meta, their_meta, "T1 metadata")
    compare(fields, their_fields, "T1 data")
    # The data string itself, still URL-encoded: the same encoding as the SDK's urlencode.
    _, _, their_data = decode_t1(theirs, request["api_secret"])
    raw = [piece.split("=", 1) for piece in data.split("&")]
    their_raw = [piece.split("=", 1) for piece in their_data.split("&")]
    compare(raw, their_raw, "T1 data as encoded")
    return fields, int(values["expire_time"]) - int(values["create_time"])


def check_jwt(request, sdk):
    token = request["token"]
    header = jwt.get_unverified_header(token)
    if header != {"alg": "HS256", "typ": "JWT"}:
        fail(f"JWT header {header}")
    try:
        claims = jwt.decode(token, request["api_secret"], algorithms=["HS256"],
                            options={"require": ["exp", "iat"]})
    except jwt.PyJWTError as err:
        fail(f"the JWT does not verify with api_secret: {err}")
    if claims.get("iss") != request["api_key"]:
        fail(f"iss {claims.get('iss')!r} is not the API key")
    if not isinstance(claims.get("nonce"), int):
        fail(f"nonce is not an integer: {claims.get('nonce')!r}")
    theirs = sdk.generate_token(
        claims.get("session_id", ""),
        role=Roles(claims.get("role")),
        expire_time=claims["exp"],
        data=claims.get("connection_data"),
        use_jwt=True,
    )
    if jwt.get_unverified_header(theirs) != header:
        fail(f"JWT header {header} differs from the SDK's {jwt.get_unverified_header(theirs)}")
    their_claims = jwt.decode(theirs, request["api_secret"], algorithms=["HS256"])
    compare(list(claims.items()), list(their_claims.items()), "JWT claims")
    return list(claims.items()), claims["exp"] - claims["iat"]


def main():
    request = json.load(sys.stdin)
    sdk = Client(request["api_key"], request["api_secret"])
    fmt = request.get("format", "t1")
    if fmt == "t1":
        fields, lifetime = check_t1(request, sdk)
    elif fmt == "jwt":
        fields, lifetime = check_jwt(request, sdk)
    else:
        fail(f"unknown format {fmt!r}")
    values = dict(fields)
    if values.get("session_id") != request["session_id"]:
        fail(f"session_id {values.get('session_id')!r} is not {request['session_id']!r}")
    if "role" in request and values.get("role") != request["role"]:
        fail(f"role {values.get('role')!r} is not {request['role']!r}")
    print(json.dumps({
        "format": fmt,
        "session_id": values.get("session_id"),
        "role": values.get("role"),
        "connection_data": values.get("connection_data"),
        "lifetime": lifetime,
        "fields": [name for name, _ in fields],
    }))


if __name__ == "__main__":
    main()
