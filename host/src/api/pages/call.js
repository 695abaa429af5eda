// The call page's only script: places the call and shows what happened.
// Served from our own origin so the page's CSP can forbid inline script.
"use strict";

(function () {
  const form = document.getElementById("call-form");
  if (!form) {
    return;
  }
  const button = document.getElementById("call");
  const audioOnly = document.getElementById("audio-only");
  const status = document.getElementById("status");

  function show(text, kind) {
    status.textContent = text;
    status.className = kind;
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    button.disabled = true;
    show("Calling\u2026", "pending");
    try {
      const response = await fetch(form.dataset.callPath, {
        method: "POST",
        headers: { "Content-Type": "application/json", "Accept": "application/json" },
        body: JSON.stringify({ callType: audioOnly.checked ? "audio" : "audio-video" }),
      });
      let body = null;
      try {
        body = await response.json();
      } catch (_) {
        body = null;
      }
      if (response.ok && body && body.callId) {
        show("Call placed. Waiting for " + form.dataset.callee + " to answer.", "ok");
        status.dataset.callId = body.callId;
        status.dataset.sessionId = body.sessionId;
        return;
      }
      const message = body && body.message ? body.message : "HTTP " + response.status;
      show("The call could not be placed: " + message, "error");
    } catch (err) {
      show("The call could not be placed: " + err.message, "error");
    }
    button.disabled = false;
  });
})();
