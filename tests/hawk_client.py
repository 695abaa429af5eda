#!/usr/bin/env python3
"""Drives a Loop server with third-party Hawk libraries, as an existing Loop
client would: `requests-hawk` derives the credentials from the session token
and signs requests, `mohawk` signs and checks the server's
Server-Authorization.

Usage: hawk_client.py BASE_URL PUSH_ORIGIN
Prints a JSON report as its last line; exits non-zero on any failure.
Needs: python3 -m pip install mohawk requests-hawk
"""

import json
import sys

try:
    import mohawk
    import requests
    from requests_hawk import HawkAuth
except ImportError as err:  # pragma: no cover
    sys.exit(f"missing Python module ({err}); run: python3 -m pip install mohawk requests-hawk")


def fail(message):
    sys.exit(f"FAIL: {message}")


def expect(response, status, what):
    if response.status_code != status:
        fail(f"{what}: expected {status}, got {response.status_code}: {response.text}")


def main():
    base, push_origin = sys.argv[1].rstrip("/"), sys.argv[2].rstrip("/")
    checks = []

    # 1. Anonymous registration gives a session token.
    response = requests.post(f"{base}/registration", json={"simplePushURL": f"{push_origin}/py/1"}, timeout=30)
    expect(response, 200, "anonymous registration")
    token = response.headers.get("Hawk-Session-Token")
    if not token:
        fail("no Hawk-Session-Token header")
    exposed = response.headers.get("Access-Control-Expose-Headers", "")
    checks.append("registered")

    # 2. requests-hawk derives the credentials and signs (hashing the body).
    auth = HawkAuth(hawk_session=token)
    credentials = auth.credentials
    response = requests.post(
        f"{base}/v0/registration",
        json={"simplePushURLs": {"calls": f"{push_origin}/py/2", "rooms": f"{push_origin}/py/3"}},
        auth=auth,
        timeout=30,
    )
    expect(response, 200, "requests-hawk registration update")
    if "Hawk-Session-Token" in response.headers:
        fail("an authenticated registration must not create a session")
    checks.append("requests-hawk")

    # 3. mohawk signs, and accepts the signed response (MAC and payload hash).
    url = f"{base}/registration"
    body = json.dumps({"simplePushURL": f"{push_origin}/py/4"})
    sender = mohawk.Sender(credentials, url, "POST", content=body, content_type="application/json")
    response = requests.post(
        url,
        data=body,
        headers={"Authorization": sender.request_header, "Content-Type": "application/json"},
        timeout=30,
    )
    expect(response, 200, "mohawk-signed registration")
    server_authorization = response.headers.get("Server-Authorization")
    if not server_authorization:
        fail("no Server-Authorization on an authenticated response")
    content_type = response.headers.get("Content-Type", "")
    sender.accept_response(server_authorization, content=response.content, content_type=content_type)
    checks.append("mohawk response accepted")

    # 4. mohawk refuses the same header over a tampered body: the check is real.
    try:
        sender.accept_response(server_authorization, content=response.content + b" ", content_type=content_type)
    except mohawk.exc.HawkFail:
        checks.append("tampered response refused")
    else:
        fail("mohawk accepted a tampered response")

    # 5. A body signed without its payload hash is refused: the MAC would not
    #    cover it, so the body could have been swapped on the way.
    unhashed = mohawk.Sender(
        credentials,
        url,
        "POST",
        content=mohawk.base.EmptyValue,
        content_type=mohawk.base.EmptyValue,
        always_hash_content=False,
    )
    if 'hash="' in unhashed.request_header:
        fail("mohawk hashed a payload it was told not to")
    response = requests.post(
        url,
        data=json.dumps({"simplePushURL": f"{push_origin}/py/evil"}),
        headers={"Authorization": unhashed.request_header, "Content-Type": "application/json"},
        timeout=30,
    )
    expect(response, 401, "a body without a payload hash")
    refusal = response.json()
    if refusal.get("errno") != 110 or "payload hash is required" not in refusal.get("message", ""):
        fail(f"unexpected refusal of an unhashed body: {refusal}")
    if response.headers.get("WWW-Authenticate", "").split(" ")[0] != "Hawk":
        fail(f"no WWW-Authenticate: Hawk on the refusal: {response.headers}")
    checks.append("unhashed body refused")

    # 6. A bodyless authenticated DELETE, response checked too.
    sender = mohawk.Sender(credentials, url, "DELETE", content="", content_type="")
    response = requests.delete(url, headers={"Authorization": sender.request_header}, timeout=30)
    expect(response, 204, "mohawk-signed DELETE /registration")
    sender.accept_response(
        response.headers["Server-Authorization"],
        content=response.content,
        content_type=response.headers.get("Content-Type", ""),
    )
    checks.append("delete")

    def text(value):
        return value.decode() if isinstance(value, bytes) else value

    print(json.dumps({
        "token": token,
        "id": text(credentials["id"]),
        "key": text(credentials["key"]),
        "exposed": exposed,
        "checks": checks,
    }))


if __name__ == "__main__":
    main()
