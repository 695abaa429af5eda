"""sandbox: a Python provider that tries to leave its sandbox, for the tests.

A componentize-py component imports WASI (files, environment, sockets, exit,
stdio); the host must grant none of it that matters. The setting `attempt`,
read in create-session, picks what this plugin tries:

  none    a trivial provider: session "sandbox-<call id>", api key "sandbox",
          tokens "token-<identity>"
  file    read /etc/passwd and list /
  env     read os.environ
  socket  connect over TCP to 127.0.0.1:5432
  loop    spin forever (the host's time budget must end it)
  exit    sys.exit(3) (the host must see a failed call, not exit)
  print   write 10 MiB to stdout and to stderr, then as `none`
  memory  allocate until allocation fails

For file, env and socket, an attempt that works returns ok with a session id
"ESCAPED:<what it got>"; one that fails returns rejected("blocked: <exception
type>: <message>"), so a test tells a closed door from a broken plugin.
"""

import os
import sys

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import settings
from wit_world.imports.types import (
    CallType,
    ProviderError_Misconfigured,
    ProviderError_Rejected,
    ProviderInfo,
    Role,
    Session,
)

# Imported here, at build time, because only modules imported then are in the
# component's snapshot; and the socket module may be missing from the build,
# which the `socket` attempt reports as blocked rather than failing the build.
try:
    import socket

    # Sockets spell host names through the idna codec, looked up on first use;
    # without it in the snapshot every connect fails with LookupError before
    # reaching the host's network check, and the test would prove nothing.
    import encodings.idna
except ImportError as e:
    socket = e

PRINT_BYTES = 10 * 1024 * 1024
# Short lines: a stdout that takes only part of a long write (jco's shim takes
# 16 KiB) would otherwise lose the rest, and the test would see less than asked.
PRINT_LINE = "x" * 1023  # with its newline, 1 KiB a print
MEMORY_BLOCK = 1024 * 1024
# Enough of what was read to recognise it, not the whole file.
MAX_REPORT = 512


def rejected(message):
    return Err(ProviderError_Rejected(message))


def blocked(error):
    return rejected(f"blocked: {type(error).__name__}: {error}")


def escaped(what):
    return Session(session_id=f"ESCAPED:{what}"[:MAX_REPORT], api_key="sandbox")


def trivial_session(request):
    return Session(session_id=f"sandbox-{request.call_id}", api_key="sandbox")


def try_file(request):
    # Either door open is an escape; both reported when both are closed.
    found, errors = [], []
    try:
        with open("/etc/passwd") as f:
            found.append("/etc/passwd=" + f.read(MAX_REPORT))
    except Exception as e:
        errors.append(e)
    try:
        found.append("/=" + ",".join(sorted(os.listdir("/"))))
    except Exception as e:
        errors.append(e)
    if found:
        return escaped(" ".join(found))
    raise rejected(
        "blocked: " + "; ".join(f"{type(e).__name__}: {e}" for e in errors)
    )


def try_env(request):
    # componentize-py fills os.environ from wasi:cli/environment when an
    # instance starts (not from the build machine's), so this is what the
    # host hands the plugin.
    found = dict(os.environ)
    if found:
        return escaped(",".join(f"{k}={v}" for k, v in sorted(found.items())))
    raise rejected("blocked: os.environ is empty")


def try_socket(request):
    if isinstance(socket, ImportError):
        raise blocked(socket)
    # A numeric address and a bare socket, not create_connection: no name
    # lookup first, so what is tested is the host's answer to a TCP connect.
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(("127.0.0.1", 5432))
            return escaped(f"connected {s.getsockname()} -> {s.getpeername()}")
    except Exception as e:
        raise blocked(e)


def try_loop(request):
    while True:
        pass


def try_exit(request):
    sys.exit(3)


def try_print(request):
    for stream in (sys.stdout, sys.stderr):
        for _ in range(PRINT_BYTES // (len(PRINT_LINE) + 1)):
            print(PRINT_LINE, file=stream)
        stream.flush()
    return trivial_session(request)


def try_memory(request):
    blocks = []
    try:
        while True:
            blocks.append(bytearray(MEMORY_BLOCK))
    except MemoryError:
        held = len(blocks)
        # Freed before building the answer, which needs memory too.
        blocks.clear()
        raise rejected(f"blocked: MemoryError: failed after {held} MiB")


ATTEMPTS = {
    "none": trivial_session,
    "file": try_file,
    "env": try_env,
    "socket": try_socket,
    "loop": try_loop,
    "exit": try_exit,
    "print": try_print,
    "memory": try_memory,
}


class Provider(exports.Provider):
    def describe(self):
        return ProviderInfo(
            name="sandbox",
            version="0.1.0",
            call_types=[CallType.AUDIO, CallType.AUDIO_VIDEO],
            roles=[Role.PUBLISHER, Role.SUBSCRIBER, Role.MODERATOR],
            verifies_tokens=False,
        )

    def create_session(self, request):
        attempt = settings.get("attempt") or "none"
        if attempt not in ATTEMPTS:
            raise Err(
                ProviderError_Misconfigured(
                    f"setting `attempt` must be one of {', '.join(ATTEMPTS)}"
                )
            )
        return ATTEMPTS[attempt](request)

    def issue_token(self, request):
        return f"token-{request.identity}"

    def verify_token(self, token, session_id):
        raise rejected("sandbox tokens are not verified")

    def end_session(self, session_id, channel):
        return None
