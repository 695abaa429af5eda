"""livekit, in Python: calls carried by a LiveKit server (self-hosted or Cloud).

The token issuance of the C plugin (plugins/livekit/livekit.c), claim for
claim, without its `create_room` feature: every call gets a room named "loop-"
+ 32 random hex digits, which LiveKit creates when the first side joins, and
each side gets an HS256 access token for it. The plugin makes no HTTP request.

Settings ([plugins.<name>.settings]): `url`, `api_key`, `api_secret`; see
README.md beside this file.
"""

import base64
import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import clock, crypto, settings
from wit_world.imports.types import (
    CallType,
    ProviderError_Misconfigured,
    ProviderError_Rejected,
    ProviderInfo,
    Role,
    Session,
)

ROOM_RANDOM_BYTES = 16
# Bounds as the C plugin has them, in UTF-8 bytes: the host and LiveKit see
# bytes, and a lenient Python plugin would accept what the C one refuses.
MAX_SESSION_ID_BYTES = 256
MAX_FIELD_BYTES = 1024
URL_SCHEMES = ("wss://", "ws://", "https://", "http://")

# Bytes, not a dict through json.dumps: the header is fixed, and this spelling
# is the one the C plugin and the livekit-api SDK sign.
JWT_HEADER = b'{"alg":"HS256","typ":"JWT"}'


def misconfigured(message):
    return Err(ProviderError_Misconfigured(message))


def rejected(message):
    return Err(ProviderError_Rejected(message))


def required_setting(key):
    """A setting that must be present and non-empty; an empty string in
    config.toml is as good as a missing one (the C plugin reads it so too)."""
    value = settings.get(key)
    if not value:
        raise misconfigured(f"setting `{key}` is not set")
    return value


class Config:
    """The plugin's settings, read afresh on each call: the host runs every
    call in a fresh instance, so there is nothing to cache across calls."""

    def __init__(self):
        self.url = required_setting("url")
        # A scheme followed by a host, not by the path of an empty authority.
        if not any(
            self.url.startswith(s) and self.url[len(s) : len(s) + 1] not in ("", "/")
            for s in URL_SCHEMES
        ):
            raise misconfigured(
                "setting `url` must be a ws://, wss://, http:// or https:// URL"
            )
        self.api_key = required_setting("api_key")
        self.api_secret = required_setting("api_secret")
        # An operator who sets create_room expects rooms to be created and
        # deleted; saying so beats silently handing out tokens without it.
        if settings.get("create_room") not in (None, "", "false"):
            raise misconfigured(
                "setting `create_room` is not supported by the Python livekit "
                "example; use plugins/livekit (the C plugin) for it"
            )


def b64url(data):
    """Unpadded base64url, as JWS (RFC 7515) wants it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def utf8_len(text):
    return len(text.encode("utf-8"))


def sign_hs256(payload, secret):
    """An HS256 JWT of `payload` (JSON bytes). The MAC is computed by the host
    (crypto.hmac-sha256): the component carries no crypto code of its own."""
    signing_input = b64url(JWT_HEADER) + b"." + b64url(payload)
    mac = crypto.hmac_sha256(secret.encode("utf-8"), signing_input)
    return (signing_input + b"." + b64url(mac)).decode("ascii")


class Provider(exports.Provider):
    def describe(self):
        return ProviderInfo(
            name="livekit",
            version="0.1.0",
            call_types=[CallType.AUDIO, CallType.AUDIO_VIDEO],
            roles=[Role.PUBLISHER, Role.SUBSCRIBER, Role.MODERATOR],
            verifies_tokens=False,
        )

    def create_session(self, request):
        config = Config()
        room = "loop-" + crypto.random_bytes(ROOM_RANDOM_BYTES).hex()
        # Clients receive the websocket URL as `apiKey`: it is what a LiveKit
        # client SDK needs besides the token.
        return Session(session_id=room, api_key=config.url)

    def issue_token(self, request):
        # Input is checked before the settings, as in the C plugin, so bad
        # input is `rejected` even on a misconfigured instance.
        if not 1 <= utf8_len(request.session_id) <= MAX_SESSION_ID_BYTES:
            raise rejected("session id must be 1 to 256 bytes")
        if (
            not 1 <= utf8_len(request.identity) <= MAX_FIELD_BYTES
            or utf8_len(request.display_name) > MAX_FIELD_BYTES
        ):
            raise rejected("identity must be 1 to 1024 bytes, display name at most 1024")
        if request.lifetime_seconds == 0:
            raise rejected("token lifetime must be at least 1 second")
        config = Config()

        # The claims in the order the livekit-api SDK's AccessToken.to_jwt()
        # writes them: its Claims dataclass without empty fields (so no "name"
        # for an empty display name), VideoGrants in its field order, then the
        # registered claims. Dicts keep insertion order, so this is the order
        # on the wire. LiveKit has no maximum lifetime: the host's is used as is.
        publishes = request.role != Role.SUBSCRIBER
        video = {}
        if request.role == Role.MODERATOR:
            video["roomAdmin"] = True
        video.update(
            roomJoin=True,
            room=request.session_id,
            canPublish=publishes,
            canSubscribe=True,
            canPublishData=publishes,
        )
        claims = {}
        if request.display_name:
            claims["name"] = request.display_name
        now = clock.now().seconds
        claims.update(
            video=video,
            sub=request.identity,
            iss=config.api_key,
            nbf=now,
            exp=now + request.lifetime_seconds,
        )
        # Compact and UTF-8 as the C plugin writes it. (The C plugin spells
        # control characters \u00XX where json writes \n, \t ...: the same
        # JSON, so the same claims, in a different spelling.)
        payload = json.dumps(claims, separators=(",", ":"), ensure_ascii=False)
        return sign_hs256(payload.encode("utf-8"), config.api_secret)

    def verify_token(self, token, session_id):
        raise rejected("LiveKit tokens are checked by the LiveKit server")

    def end_session(self, session_id, channel):
        # Without create_room there is no room to delete: LiveKit closes an
        # empty room after its own timeout.
        return None
