"""Checks Daily meeting tokens issued by Loop's `daily` plugin with pyjwt.

Daily's server SDKs do not sign meeting tokens (Daily's REST API makes them,
or a server signs them itself as Daily documents for self-signed tokens); pyjwt
with the API key is the reference, and Daily's documented claims are checked
one by one, with their JSON types.

Reads JSON on stdin:
  {"api_key", "domain_id", "room", "room_exp",
   "tokens": [{"token", "identity", "name", "owner", "lifetime"}]}
Each token must verify with pyjwt (HS256, the API key, exp checked), have the
header {"alg": "HS256", "typ": "JWT"} and exactly the claims
  r   = room (string)          d  = domain_id (string)
  ud  = identity (string)      u  = name (string)
  o   = owner (a JSON boolean: true for the call URL's owner only)
  iat = now (integer)          exp = min(iat + min(lifetime, 86400), room_exp) (integer)
Prints {"claims": [...]}; exits non-zero with the reason on any mismatch.
"""

import json
import sys
import time

import jwt

MAX_LIFETIME = 86400
HEADER = {"alg": "HS256", "typ": "JWT"}
CLAIMS = {"r", "iat", "exp", "d", "ud", "u", "o"}


def fail(message):
    print(f"daily.py: {message}", file=sys.stderr)
    sys.exit(1)


def is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def check(given, case):
    token, who = case["token"], case["identity"]
    header = jwt.get_unverified_header(token)
    if header != HEADER:
        fail(f"{who}: JWT header is {header}, expected {HEADER}")
    try:
        claims = jwt.decode(
            token,
            given["api_key"],
            algorithms=["HS256"],
            options={"require": sorted(CLAIMS)},
        )
    except jwt.PyJWTError as err:
        fail(f"{who}: pyjwt refused the token: {err!r}")
    if set(claims) != CLAIMS:
        fail(f"{who}: claims are {sorted(claims)}, expected exactly {sorted(CLAIMS)}")
    expected = {
        "r": given["room"],
        "d": given["domain_id"],
        "ud": case["identity"],
        "u": case["name"],
    }
    for key, value in expected.items():
        if not isinstance(claims[key], str) or claims[key] != value:
            fail(f"{who}: claim {key} is {claims[key]!r}, expected the string {value!r}")
    if not isinstance(claims["o"], bool):
        fail(f"{who}: claim o is {claims['o']!r}, expected a JSON boolean")
    if claims["o"] is not case["owner"]:
        fail(f"{who}: claim o is {claims['o']}, expected {case['owner']} "
             "(true only for the call URL's owner)")
    for key in ("iat", "exp"):
        if not is_int(claims[key]):
            fail(f"{who}: claim {key} is {claims[key]!r}, expected an integer")
    now = time.time()
    if abs(claims["iat"] - now) > 120:
        fail(f"{who}: iat {claims['iat']} is not now ({int(now)})")
    lifetime = min(case["lifetime"], MAX_LIFETIME)
    want_exp = min(claims["iat"] + lifetime, given["room_exp"])
    if claims["exp"] != want_exp:
        fail(f"{who}: exp is {claims['exp']}, expected {want_exp} "
             f"(iat + {lifetime} s, at most the room's exp {given['room_exp']})")
    return claims


def main():
    given = json.load(sys.stdin)
    print(json.dumps({"claims": [check(given, case) for case in given["tokens"]]}))


if __name__ == "__main__":
    main()
