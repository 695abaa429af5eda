"""Checks Jitsi tokens issued by Loop's `jitsi` plugin with pyjwt.

No official Python SDK issues these tokens: prosody's token authentication
(self-hosted Jitsi Meet) and 8x8's Jitsi as a Service check them as plain JWTs,
so pyjwt with the app secret (HS256) or the JaaS public key (RS256) is the
reference, and the documented claims are checked one by one, with their JSON
types.

Reads JSON on stdin:
  {"mode": "hs256" | "jaas", "app_id", "domain",
   "app_secret" (hs256) | "public_key_pem" + "kid" + "features" (jaas),
   "tokens": [{"token", "identity", "name", "moderator", "room", "lifetime"}]}
hs256: header {"alg": "HS256", "typ": "JWT"}; claims exactly iss = app_id,
  aud = "jitsi", sub = domain, room, exp, nbf,
  context = {"user": {"id", "name", "moderator": <JSON boolean>}}.
jaas: header {"alg": "RS256", "kid": kid, "typ": "JWT"}; claims exactly
  iss = "chat", aud = "jitsi", sub = app_id, room, exp, nbf,
  context = {"user": {"id", "name", "moderator": "true"|"false"},
             "features": {livestreaming, recording, transcription,
                          outbound-call: "true"|"false"}}  (strings, as JaaS documents)
Both: nbf <= now < exp, exp - nbf = min(lifetime, 86400) + 10 (nbf is set 10 s
early for clock skew).
Prints {"claims": [...]}; exits non-zero with the reason on any mismatch.
"""

import json
import sys
import time

import jwt

MAX_LIFETIME = 86400
NBF_SKEW = 10
CLAIMS = {"iss", "aud", "sub", "room", "exp", "nbf", "context"}
FEATURES = ("livestreaming", "recording", "transcription", "outbound-call")


def fail(message):
    print(f"jitsi.py: {message}", file=sys.stderr)
    sys.exit(1)


def is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def check(given, case):
    token, who = case["token"], case["identity"]
    jaas = given["mode"] == "jaas"
    if jaas:
        want_header = {"alg": "RS256", "kid": given["kid"], "typ": "JWT"}
        with open(given["public_key_pem"], "rb") as f:
            key = f.read()
        algorithm, issuer, subject = "RS256", "chat", given["app_id"]
    else:
        want_header = {"alg": "HS256", "typ": "JWT"}
        key = given["app_secret"]
        algorithm, issuer, subject = "HS256", given["app_id"], given["domain"]
    header = jwt.get_unverified_header(token)
    if header != want_header:
        fail(f"{who}: JWT header is {header}, expected {want_header}")
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            audience="jitsi",
            issuer=issuer,
            options={"require": sorted(CLAIMS)},
        )
    except jwt.PyJWTError as err:
        fail(f"{who}: pyjwt refused the token: {err!r}")
    if set(claims) != CLAIMS:
        fail(f"{who}: claims are {sorted(claims)}, expected exactly {sorted(CLAIMS)}")
    for claim, value in (("iss", issuer), ("aud", "jitsi"), ("sub", subject), ("room", case["room"])):
        if not isinstance(claims[claim], str) or claims[claim] != value:
            fail(f"{who}: claim {claim} is {claims[claim]!r}, expected the string {value!r}")

    moderator = case["moderator"]
    user = {
        "id": case["identity"],
        "name": case["name"],
        "moderator": ("true" if moderator else "false") if jaas else moderator,
    }
    want_context = {"user": user}
    if jaas:
        want_context["features"] = {
            name: "true" if given["features"].get(name, False) else "false" for name in FEATURES
        }
    context = claims["context"]
    # Compare with types: in Python True == 1, and "true" is not True.
    if json.dumps(context, sort_keys=True) != json.dumps(want_context, sort_keys=True):
        fail(f"{who}: context is {context}, expected {want_context}")
    got_moderator = context["user"]["moderator"]
    if jaas and not isinstance(got_moderator, str):
        fail(f"{who}: JaaS wants moderator as a \"true\"/\"false\" string, got {got_moderator!r}")
    if not jaas and not isinstance(got_moderator, bool):
        fail(f"{who}: moderator must be a JSON boolean, got {got_moderator!r}")

    for claim in ("exp", "nbf"):
        if not is_int(claims[claim]):
            fail(f"{who}: claim {claim} is {claims[claim]!r}, expected an integer")
    now = time.time()
    if not claims["nbf"] <= now < claims["exp"]:
        fail(f"{who}: not valid now ({int(now)}): nbf {claims['nbf']}, exp {claims['exp']}")
    if now - claims["nbf"] > 120:
        fail(f"{who}: nbf {claims['nbf']} is long before now ({int(now)})")
    lifetime = min(case["lifetime"], MAX_LIFETIME)
    if claims["exp"] - claims["nbf"] != lifetime + NBF_SKEW:
        fail(f"{who}: exp - nbf is {claims['exp'] - claims['nbf']} s, "
             f"expected {lifetime} + {NBF_SKEW}")
    return claims


def main():
    given = json.load(sys.stdin)
    print(json.dumps({"claims": [check(given, case) for case in given["tokens"]]}))


if __name__ == "__main__":
    main()
