// Bob's page, /: a device session kept in this browser, his call links, and
// his incoming calls, found by long-polling GET /calls?version=N with
// "Prefer: wait=25" (browsers have no Simple Push).
"use strict";

import { HawkSession } from "./hawk.js";
import { $, Call, say } from "./call.js";

const TOKEN_KEY = "loop.sessionToken";
const LINKS_KEY = "loop.callUrls";
const ISSUER_KEY = "loop.issuer";
const POLL_WAIT_SECONDS = 25;

const home = $("home-view");
const list = $("links");
let hawk = null;
let current = null;
// Calls this tab has already looked at.
const seen = new Set();

function delay(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// --- the device session ------------------------------------------------------

async function register() {
  const response = await fetch("registration", {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: "{}",
    cache: "no-store",
  });
  const token = response.headers.get("Hawk-Session-Token");
  if (!response.ok || !token) {
    throw new Error(`registration failed (HTTP ${response.status})`);
  }
  localStorage.setItem(TOKEN_KEY, token);
  hawk = await HawkSession.fromToken(token);
}

async function session() {
  const token = localStorage.getItem(TOKEN_KEY);
  if (token) {
    try {
      hawk = await HawkSession.fromToken(token);
      return;
    } catch (_) {
      localStorage.removeItem(TOKEN_KEY);
    }
  }
  await register();
}

// A Hawk-signed request; a session the server no longer knows (expired,
// deleted) is replaced by a new one and the request is made again.
async function api(path, options = {}) {
  const response = await hawk.fetch(path, options);
  if (response.status === 401) {
    const body = await response.clone().json().catch(() => null);
    if (body && /unknown or expired session/.test(body.message || "")) {
      localStorage.removeItem(TOKEN_KEY);
      await register();
      return hawk.fetch(path, options);
    }
  }
  return response;
}

async function errorText(response) {
  const body = await response.json().catch(() => null);
  return body && body.message ? body.message : `HTTP ${response.status}`;
}

// --- call links ----------------------------------------------------------------

function savedLinks() {
  try {
    return JSON.parse(localStorage.getItem(LINKS_KEY) || "{}") || {};
  } catch (_) {
    return {};
  }
}

function linkFor(token) {
  return savedLinks()[token] || new URL(`c/${encodeURIComponent(token)}`, document.baseURI).href;
}

function formatDate(seconds) {
  return new Date(seconds * 1000).toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
}

function linkItem(url) {
  const item = $("link-template").content.firstElementChild.cloneNode(true);
  item.dataset.token = url.callToken;
  item.querySelector(".link-caller").textContent = `For ${url.callerId}`;
  item.querySelector(".link-expiry").textContent = `· expires ${formatDate(url.expiresAt)}`;
  const input = item.querySelector(".link-url");
  input.value = linkFor(url.callToken);
  input.setAttribute("aria-label", `Call link for ${url.callerId}`);
  input.addEventListener("focus", () => input.select());
  const copy = item.querySelector(".copy");
  copy.setAttribute("aria-label", `Copy the link for ${url.callerId}`);
  copy.addEventListener("click", async () => {
    let copied = true;
    try {
      await navigator.clipboard.writeText(input.value);
    } catch (_) {
      input.focus();
      input.select();
      copied = document.execCommand("copy");
    }
    say(
      copied
        ? `Link for ${url.callerId} copied.`
        : `The link for ${url.callerId} is selected: copy it with your keyboard.`,
    );
  });
  const revoke = item.querySelector(".revoke");
  revoke.setAttribute("aria-label", `Revoke the link for ${url.callerId}`);
  revoke.addEventListener("click", async () => {
    revoke.disabled = true;
    const response = await api(`call-url/${encodeURIComponent(url.callToken)}`, { method: "DELETE" });
    if (response.ok || response.status === 404 || response.status === 410) {
      const links = savedLinks();
      delete links[url.callToken];
      localStorage.setItem(LINKS_KEY, JSON.stringify(links));
      say(`Link for ${url.callerId} revoked: it no longer works.`);
      await loadLinks();
      $("caller-id").focus();
    } else {
      revoke.disabled = false;
      say(`The link could not be revoked: ${await errorText(response)}.`);
    }
  });
  return item;
}

// Shows Bob's links; returns the server's clock (its Timestamp header).
async function loadLinks(created) {
  const response = await api("call-url");
  const serverNow = Number(response.headers.get("Timestamp")) || 0;
  if (!response.ok) {
    say(`Your links could not be loaded: ${await errorText(response)}.`);
    return serverNow;
  }
  const urls = (await response.json()).sort(
    (a, b) =>
      b.timestamp - a.timestamp ||
      b.expiresAt - a.expiresAt ||
      String(a.callerId).localeCompare(String(b.callerId)),
  );
  list.replaceChildren(...urls.map(linkItem));
  $("links-empty").hidden = urls.length > 0;
  if (created) {
    const item = list.querySelector(`[data-token="${CSS.escape(created)}"]`);
    if (item) {
      item.classList.add("new");
      item.querySelector(".link-url").focus();
    }
  }
  return serverNow;
}

$("create-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const button = $("create");
  const callerId = $("caller-id").value.trim();
  const issuer = $("issuer").value.trim();
  if (!callerId) {
    say("Say who the link is for.");
    $("caller-id").focus();
    return;
  }
  button.disabled = true;
  const body = { callerId, expiresIn: Number($("expiry").value) };
  if (issuer) {
    body.issuer = issuer;
    localStorage.setItem(ISSUER_KEY, issuer);
  }
  try {
    const response = await api("call-url", { method: "POST", json: body });
    if (!response.ok) {
      say(`The link could not be created: ${await errorText(response)}.`);
      return;
    }
    const created = await response.json();
    const links = savedLinks();
    links[created.callToken] = created.callUrl;
    localStorage.setItem(LINKS_KEY, JSON.stringify(links));
    $("caller-id").value = "";
    await loadLinks(created.callToken);
    say(`Link for ${callerId} created. Copy it and send it to them.`);
  } catch (err) {
    say(`The link could not be created: ${err.message}.`);
  } finally {
    button.disabled = false;
  }
});

// --- incoming calls ------------------------------------------------------------

function showHome() {
  home.hidden = false;
  document.title = "Loop";
  say("Ready. This page rings when someone calls you through one of your links.");
}

function callHooks() {
  return {
    ring(call) {
      if (current && current !== call && !current.ended) {
        return false;
      }
      current = call;
      return true;
    },
    shown(call) {
      current = call;
      home.hidden = true;
      document.title = "Incoming call · Loop";
    },
    ended() {
      document.title = "Loop";
    },
    done(call) {
      if (current === call) {
        current = null;
      }
      showHome();
      $("caller-id").focus();
    },
  };
}

function incoming(listed) {
  const call = new Call(
    {
      callId: listed.callId,
      websocketToken: listed.websocketToken,
      sessionId: listed.sessionId,
      sessionToken: listed.sessionToken,
      iceServers: listed.iceServers || [],
      progressURL: listed.progressURL,
      role: "callee",
      callType: listed.callType,
      peerName: listed.callerId,
    },
    callHooks(),
  );
  call.listen();
}

// Long-polls for calls placed since `version`: the server's clock when the
// page opened, then from the Timestamp header of the last answer that had
// calls. Calls placed before the page opened are not this page's to take.
async function poll(since) {
  let version = since;
  let failures = 0;
  for (;;) {
    let response = null;
    try {
      response = await api(`calls?version=${version}`, {
        headers: { Prefer: `wait=${POLL_WAIT_SECONDS}` },
      });
    } catch (_) {
      response = null;
    }
    if (!response || !response.ok) {
      failures += 1;
      if (!current && failures > 1) {
        say(
          response
            ? `Incoming calls cannot be checked: ${await errorText(response)}. Trying again…`
            : "The server cannot be reached. Trying again…",
        );
      }
      await delay(Math.min(30000, 1000 * 2 ** failures));
      continue;
    }
    if (failures > 0 && !current) {
      showHome();
    }
    failures = 0;
    const body = await response.json().catch(() => ({ calls: [] }));
    const calls = Array.isArray(body.calls) ? body.calls : [];
    let fresh = 0;
    for (const call of calls) {
      if (!seen.has(call.callId)) {
        seen.add(call.callId);
        fresh += 1;
        incoming(call);
      }
    }
    // Past the calls answered, to the server's clock; an empty answer
    // leaves the version as it was, so nothing placed meanwhile is skipped.
    const now = Number(response.headers.get("Timestamp"));
    if (calls.length > 0 && Number.isFinite(now) && now > 0) {
      version = now;
    }
    if (calls.length > 0 && fresh === 0) {
      // Calls already seen, placed in this very second: do not spin.
      await delay(1000);
    }
  }
}

async function main() {
  if (!window.isSecureContext || !window.crypto || !crypto.subtle) {
    say("Loop needs a secure connection: open this page with https.");
    return;
  }
  $("issuer").value = localStorage.getItem(ISSUER_KEY) || "";
  const saved = Call.saved();
  if (saved) {
    seen.add(saved.callId);
    current = new Call(saved, callHooks());
    current.rejoin();
  }
  let since = 0;
  try {
    await session();
    since = await loadLinks();
  } catch (err) {
    say(`Loop could not start: ${err.message}. Reload the page to try again.`);
    return;
  }
  if (!current) {
    showHome();
  }
  poll(since);
}

main();
