"""Checks Twilio Video access tokens issued by Loop's `twilio` plugin with
pyjwt and the `twilio` SDK itself.

Reads JSON on stdin:
  {"account_sid", "api_key_sid", "api_key_secret",
   "tokens": [{"token", "identity", "room", "lifetime"}]}
Each token must verify with pyjwt (HS256, the secret, nbf and exp checked) and
with the SDK's own decoder (AccessToken.from_jwt), have the header
{"cty": "twilio-fpa;v=1", "typ": "JWT", "alg": "HS256"}, a lifetime of
min(`lifetime`, 86400) s, a jti "<key sid>-<issue time>", and agree claim by
claim (except the jti's time, nbf and exp) with the token the SDK's
AccessToken + VideoGrant issue for the same inputs.
Prints {"claims": [...]}; exits non-zero with the reason on any mismatch.
"""

import os
import sys

# This file's name is the SDK's package name: keep its folder off the import
# path so `import twilio` finds the SDK, not this script.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import json  # noqa: E402
import re  # noqa: E402

import jwt  # noqa: E402
from twilio.jwt.access_token import AccessToken  # noqa: E402
from twilio.jwt.access_token.grants import VideoGrant  # noqa: E402

MAX_LIFETIME = 86400
HEADER = {"cty": "twilio-fpa;v=1", "typ": "JWT", "alg": "HS256"}


def fail(message):
    print(f"twilio.py: {message}", file=sys.stderr)
    sys.exit(1)


def decode(token, secret):
    header = jwt.get_unverified_header(token)
    if header != HEADER:
        fail(f"JWT header is {header}, expected {HEADER}")
    return jwt.decode(
        token,
        secret,
        algorithms=["HS256"],
        options={"require": ["exp", "nbf", "iss", "sub", "jti"]},
    )


def comparable(claims, key_sid):
    """The claims without times; the jti reduced to its key sid part."""
    match = re.fullmatch(re.escape(key_sid) + r"-(\d+)", claims.get("jti", ""))
    if not match:
        fail(f"jti {claims.get('jti')!r} is not '<key sid>-<seconds>'")
    rest = {k: v for k, v in claims.items() if k not in ("nbf", "exp", "iat")}
    rest["jti"] = key_sid + "-<time>"
    return rest, int(match.group(1))


def main():
    given = json.load(sys.stdin)
    account, key_sid, secret = given["account_sid"], given["api_key_sid"], given["api_key_secret"]
    out = {"claims": []}
    for case in given["tokens"]:
        token = case["token"]
        try:
            ours = decode(token, secret)
        except jwt.PyJWTError as err:
            fail(f"pyjwt refused the token for {case['identity']!r}: {err!r}")
        try:
            AccessToken.from_jwt(token, key=secret)
        except Exception as err:  # noqa: BLE001 - the reason is the message
            fail(f"the SDK's decoder refused the token for {case['identity']!r}: {err!r}")

        lifetime = min(case["lifetime"], MAX_LIFETIME)
        if ours["exp"] - ours["nbf"] != lifetime:
            fail(f"token lifetime is {ours['exp'] - ours['nbf']} s, expected {lifetime}")
        grants = ours.get("grants", {})
        if grants.get("identity") != case["identity"] or grants.get("video") != {"room": case["room"]}:
            fail(f"grants are {grants}, expected identity {case['identity']!r} and room {case['room']!r}")

        sdk = AccessToken(account, key_sid, secret, identity=case["identity"], ttl=lifetime)
        sdk.add_grant(VideoGrant(room=case["room"]))
        theirs = decode(sdk.to_jwt(), secret)

        ours_cmp, issued = comparable(ours, key_sid)
        theirs_cmp, _ = comparable(theirs, key_sid)
        if issued != ours["nbf"]:
            fail(f"jti time {issued} is not the issue time {ours['nbf']}")
        if ours_cmp != theirs_cmp:
            fail(f"claims differ from the SDK's\n  ours: {ours_cmp}\n  sdk:  {theirs_cmp}")
        out["claims"].append(ours)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
