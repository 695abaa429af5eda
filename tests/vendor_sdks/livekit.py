"""Checks LiveKit access tokens issued by Loop's `livekit` plugin with the
`livekit-api` SDK itself.

Reads JSON on stdin:
  {"api_key", "api_secret",
   "tokens": [{"token", "identity", "name", "room", "lifetime"}],
   "service_tokens": [token, ...]}   (optional: Authorization bearers the fake
                                      room API received)
Each client token must pass the SDK's TokenVerifier with the secret, carry
exactly the identity, name, room and publisher grants asked for, and agree
claim by claim (except nbf and exp) with the token the SDK's own AccessToken
issues for the same inputs; its lifetime must be `lifetime`. Each service token
must pass TokenVerifier and agree with what the SDK's RoomService sends
(an AccessToken with VideoGrants(room_create=True)).
Prints {"claims": [...], "service_claims": [...]}; exits non-zero with the
reason on any mismatch.
"""

import os
import sys

# This file's name is the SDK's package name: keep its folder off the import
# path so `import livekit` finds the SDK, not this script.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import datetime  # noqa: E402
import json  # noqa: E402

import jwt  # noqa: E402
from livekit import api  # noqa: E402

TIMES = {"nbf", "exp"}


def fail(message):
    print(f"livekit.py: {message}", file=sys.stderr)
    sys.exit(1)


def compare(what, ours, sdk):
    ours = {k: v for k, v in ours.items() if k not in TIMES}
    sdk = {k: v for k, v in sdk.items() if k not in TIMES}
    if ours != sdk:
        fail(f"{what}: claims differ from the SDK's\n  ours: {ours}\n  sdk:  {sdk}")


def raw_claims(token, key, secret):
    header = jwt.get_unverified_header(token)
    if header != {"alg": "HS256", "typ": "JWT"}:
        fail(f"unexpected JWT header {header}")
    return jwt.decode(token, secret, algorithms=["HS256"], issuer=key)


def main():
    given = json.load(sys.stdin)
    key, secret = given["api_key"], given["api_secret"]
    verifier = api.TokenVerifier(key, secret)
    out = {"claims": [], "service_claims": []}

    for case in given["tokens"]:
        token = case["token"]
        try:
            verified = verifier.verify(token)
        except Exception as err:  # noqa: BLE001 - the reason is the message
            fail(f"TokenVerifier refused the token for {case['identity']!r}: {err!r}")
        video = verified.video
        expected = {
            "identity": case["identity"],
            "name": case["name"],
            "room": case["room"],
            "room_join": True,
            "can_publish": True,
            "can_subscribe": True,
            "can_publish_data": True,
        }
        seen = {
            "identity": verified.identity,
            "name": verified.name,
            "room": video.room,
            "room_join": video.room_join,
            "can_publish": video.can_publish,
            "can_subscribe": video.can_subscribe,
            "can_publish_data": video.can_publish_data,
        }
        if seen != expected:
            fail(f"the verified grant is {seen}, expected {expected}")

        ours = raw_claims(token, key, secret)
        lifetime = ours["exp"] - ours["nbf"]
        if lifetime != case["lifetime"]:
            fail(f"token lifetime is {lifetime} s, expected {case['lifetime']}")
        sdk_token = (
            api.AccessToken(key, secret)
            .with_identity(case["identity"])
            .with_name(case["name"])
            .with_grants(
                api.VideoGrants(
                    room_join=True,
                    room=case["room"],
                    can_publish=True,
                    can_subscribe=True,
                    can_publish_data=True,
                )
            )
            .with_ttl(datetime.timedelta(seconds=case["lifetime"]))
            .to_jwt()
        )
        compare(f"token for {case['identity']!r}", ours, raw_claims(sdk_token, key, secret))
        out["claims"].append(ours)

    for token in given.get("service_tokens", []):
        try:
            verified = verifier.verify(token)
        except Exception as err:  # noqa: BLE001
            fail(f"TokenVerifier refused a room API token: {err!r}")
        if not verified.video.room_create:
            fail("a room API token lacks the roomCreate grant")
        ours = raw_claims(token, key, secret)
        sdk_token = api.AccessToken(key, secret).with_grants(api.VideoGrants(room_create=True)).to_jwt()
        compare("room API token", ours, raw_claims(sdk_token, key, secret))
        out["service_claims"].append(ours)

    print(json.dumps(out))


if __name__ == "__main__":
    main()
