// Alice's page, /c/{token}: "Do you want to call Bob?", then the call.
"use strict";

import { $, Call, say } from "./call.js";

const app = $("app");
const start = $("start-view");
const buttons = [$("call-video"), $("call-audio")];
const callee = app.dataset.callee;

function ready() {
  start.hidden = false;
  for (const button of buttons) {
    button.disabled = false;
  }
}

function hooks() {
  return {
    shown() {
      start.hidden = true;
    },
    done() {
      say("");
      ready();
      $("call-video").focus();
    },
  };
}

async function placeCall(callType) {
  for (const button of buttons) {
    button.disabled = true;
  }
  if (!window.isSecureContext || !navigator.mediaDevices) {
    say("Calls need a secure connection: open this link with https.");
    ready();
    return;
  }
  say(callType === "audio" ? "Starting your microphone…" : "Starting your camera and microphone…");
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: callType !== "audio" });
  } catch (err) {
    say(`Loop could not use your ${callType === "audio" ? "microphone" : "camera or microphone"} (${err.name}). Allow it and try again.`);
    ready();
    return;
  }
  say(`Calling ${callee}…`);
  let response;
  let body = null;
  try {
    response = await fetch(app.dataset.callPath, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ callType }),
    });
    body = await response.json().catch(() => null);
  } catch (err) {
    body = { message: "the server cannot be reached" };
  }
  if (!response || !response.ok || !body || !body.callId) {
    for (const track of stream.getTracks()) {
      track.stop();
    }
    const why = body && body.message ? body.message : `HTTP ${response ? response.status : "error"}`;
    say(`The call could not be placed: ${why}.`);
    ready();
    return;
  }
  const call = new Call(
    {
      callId: body.callId,
      websocketToken: body.websocketToken,
      sessionId: body.sessionId,
      sessionToken: body.sessionToken,
      iceServers: body.iceServers || [],
      progressURL: body.progressURL,
      role: "caller",
      callType,
      peerName: callee,
    },
    hooks(),
  );
  call.localStream = stream;
  call.showLocal();
  await call.start();
}

$("call-video").addEventListener("click", () => placeCall("audio-video"));
$("call-audio").addEventListener("click", () => placeCall("audio"));

const saved = Call.saved();
if (saved) {
  start.hidden = true;
  new Call(saved, hooks()).rejoin();
} else {
  ready();
}
