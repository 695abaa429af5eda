// One call, for both pages: the progress websocket (Loop's call-progress
// protocol), the signaling relay, the RTCPeerConnection, the local media, the
// verification code and the in-call view.
//
// What the tests (and curious people) can read from the page:
// #call-view[data-state]      idle | ringing | connecting | connected |
//                             reconnecting | ended
// #call-view[data-progress]   the progress states received, in order, each
//                             once in a row ("terminated:<reason>" at the end)
// #call-view[data-end-reason] the reason the call ended with
// #call-view[data-peer-state] the RTCPeerConnection's connectionState
// window.loopPeerConnection   the current RTCPeerConnection
//
// Test hook: localStorage "loop.test.iceTransportPolicy" = "relay" makes the
// peer connection use TURN relays only.
"use strict";

const STORAGE_KEY = "loop.call";
const RELAY_POLICY_KEY = "loop.test.iceTransportPolicy";
// How long the other side may be away (a reload) before the call is over.
const PEER_GRACE_MS = 20000;
// How long after the other side left the progress socket is asked whether
// the call is over.
const PEER_CHECK_MS = 1500;

export function $(id) {
  return document.getElementById(id);
}

// The page's one live region: what is happening, in words.
export function say(text) {
  const status = $("status");
  if (status.textContent !== text) {
    status.textContent = text;
  }
}

function delay(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function withTimeout(promise, ms) {
  return Promise.race([promise, delay(ms).then(() => null)]);
}

// The server's socket `name` ("websocket", "signaling") at the path of
// `progressURL`, on this page's own origin: the page came from this server,
// and behind a load balancer or under another host name than the public URL
// the page's origin is the one that reaches it (and the CSP's 'self').
function socketURL(progressURL, name) {
  let path = "/websocket";
  try {
    path = new URL(progressURL).pathname;
  } catch (_) {
    // Not a URL: the default path.
  }
  const url = new URL(path.replace(/websocket$/, name), location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

// The first DTLS fingerprint of an SDP ("sha-256 AB:CD:…").
function fingerprint(sdp) {
  const match = /^a=fingerprint:(.+)$/m.exec(sdp || "");
  return match ? match[1].trim() : null;
}

// Six digits from SHA-256 over both fingerprints, sorted and joined with a
// newline: the same on both sides, different if anyone sits in between.
export async function verificationCode(localSdp, remoteSdp) {
  const local = fingerprint(localSdp);
  const remote = fingerprint(remoteSdp);
  if (!local || !remote) {
    return null;
  }
  const text = [local, remote].sort().join("\n");
  const digest = new Uint8Array(
    await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text)),
  );
  const number = new DataView(digest.buffer).getUint32(0) % 1000000;
  const digits = String(number).padStart(6, "0");
  return `${digits.slice(0, 3)} ${digits.slice(3)}`;
}

export class Call {
  // details: callId, websocketToken, sessionId, sessionToken, iceServers,
  // progressURL, role ("caller" | "callee"), callType, peerName.
  // hooks: ring(call) -> bool (callee: may this call ring?), ended(call),
  // done(call) (the person dismissed the ended view), quiet(call) (a callee
  // call that never rang is gone).
  constructor(details, hooks = {}) {
    this.d = details;
    this.hooks = hooks;
    this.view = $("call-view");
    this.progressState = null;
    this.progressLog = [];
    this.ws = null;
    this.wsReady = null;
    this.sig = null;
    this.sigJoined = false;
    this.sigError = null;
    this.sigRetries = 0;
    this.pc = null;
    this.pendingCandidates = [];
    this.signals = Promise.resolve();
    this.localStream = null;
    this.peerPresent = false;
    this.peerTimer = null;
    this.everConnected = false;
    this.mediaUpSent = false;
    this.accepted = details.role === "caller" || Boolean(details.accepted);
    this.shown = false;
    this.ended = false;
    this.progressRetries = 0;
    // Resolved when the server says the call is terminated.
    this.terminatedWaiters = [];
  }

  get peer() {
    return this.d.peerName || (this.d.role === "caller" ? "them" : "someone");
  }

  get video() {
    return this.d.callType !== "audio";
  }

  // --- persistence: a reload rejoins a live call -------------------------

  persist() {
    sessionStorage.setItem(
      STORAGE_KEY,
      JSON.stringify({ ...this.d, accepted: this.accepted, page: location.pathname }),
    );
  }

  static saved() {
    try {
      const details = JSON.parse(sessionStorage.getItem(STORAGE_KEY) || "null");
      if (details && details.page === location.pathname && details.callId) {
        return details;
      }
    } catch (_) {
      // Unreadable: forget it.
    }
    sessionStorage.removeItem(STORAGE_KEY);
    return null;
  }

  forget() {
    const saved = sessionStorage.getItem(STORAGE_KEY);
    if (saved && saved.includes(JSON.stringify(this.d.callId))) {
      sessionStorage.removeItem(STORAGE_KEY);
    }
  }

  // --- starting ------------------------------------------------------------

  // Caller: the call was just placed; media is already on.
  async start() {
    this.persist();
    this.show();
    this.refresh();
    await this.openProgress();
    if (!this.ended) {
      this.joinSignaling();
    }
  }

  // Callee: a call was listed; say hello and ring if it is ringing.
  listen() {
    this.openProgress();
  }

  // Either side, after a reload: hello again; its answer says whether the
  // call is still live.
  async rejoin() {
    this.rejoining = true;
    this.show();
    this.setView("connecting", "Rejoining the call…");
    const ws = await this.openProgress();
    if (this.ended) {
      return false;
    }
    if (!ws) {
      this.finish("closed", false);
      return false;
    }
    if (!(await this.startMedia())) {
      return false;
    }
    this.joinSignaling();
    this.refresh();
    return true;
  }

  // Callee: Bob answers. Media first (a permission prompt may take a
  // while), then accept, then signaling.
  async accept() {
    if (this.accepted || this.ended) {
      return;
    }
    this.accepted = true;
    this.setView("connecting", "Answering…");
    if (!(await this.startMedia())) {
      return;
    }
    await this.sendAction("accept");
    this.persist();
    if (!this.ended) {
      this.joinSignaling();
    }
  }

  async startMedia() {
    if (this.localStream) {
      return true;
    }
    try {
      this.localStream = await navigator.mediaDevices.getUserMedia({
        audio: true,
        video: this.video,
      });
    } catch (err) {
      say(`Loop could not use your ${this.video ? "camera or microphone" : "microphone"} (${err.name}).`);
      await this.hangUp("media-fail");
      return false;
    }
    if (this.ended) {
      this.stopMedia();
      return false;
    }
    this.showLocal();
    this.refresh();
    return true;
  }

  // --- the progress websocket ---------------------------------------------

  // Opens a progress socket and says hello; resolves with the socket once
  // the hello is answered, or null if it closed first.
  openProgress() {
    const ws = new WebSocket(socketURL(this.d.progressURL, "websocket"));
    this.ws = ws;
    this.wsReady = new Promise((resolve) => {
      let answered = false;
      ws.addEventListener("open", () => {
        ws.send(
          JSON.stringify({ messageType: "hello", callId: this.d.callId, auth: this.d.websocketToken }),
        );
      });
      ws.addEventListener("message", (event) => {
        let message;
        try {
          message = JSON.parse(event.data);
        } catch (_) {
          return;
        }
        if (message.messageType === "hello") {
          answered = true;
          this.onProgress(message.state, message.reason);
          resolve(ws);
        } else if (message.messageType === "progress") {
          this.onProgress(message.state, message.reason);
        } else if (message.messageType === "error") {
          console.warn("progress error:", message.reason);
        }
      });
      ws.addEventListener("close", () => {
        if (this.ws === ws) {
          this.ws = null;
        }
        resolve(answered ? ws : null);
        this.onProgressClosed(answered);
      });
    });
    return this.wsReady;
  }

  // The server closes the socket after `connected` and `terminated`. Any
  // other close is unexpected: hello again, which tells how the call is.
  async onProgressClosed(answered) {
    if (this.ended || this.ws || this.progressState === "connected") {
      return;
    }
    if (!this.shown && !this.accepted) {
      this.dispose();
      return;
    }
    if (this.progressRetries >= 3) {
      this.finish("closed", false);
      return;
    }
    this.progressRetries += 1;
    await delay(answered ? 500 : 1500);
    if (!this.ended && !this.ws) {
      await this.openProgress();
    }
  }

  // Sends an action, opening a socket (and saying hello) first if the
  // server has closed ours. Resolves once it is sent, or not.
  async sendAction(event, reason) {
    let ws = this.ws;
    if (ws && ws.readyState === WebSocket.CONNECTING) {
      ws = await withTimeout(this.wsReady, 5000);
    }
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      ws = await withTimeout(this.openProgress(), 5000);
    }
    if (!ws || ws.readyState !== WebSocket.OPEN || this.progressState === "terminated") {
      return false;
    }
    const message = { messageType: "action", event };
    if (reason) {
      message.reason = reason;
    }
    ws.send(JSON.stringify(message));
    return true;
  }

  onProgress(state, reason) {
    const entry = state === "terminated" ? `terminated:${reason || ""}` : state;
    if (this.progressLog[this.progressLog.length - 1] !== entry) {
      this.progressLog.push(entry);
      this.view.dataset.progress = this.progressLog.join(" ");
    }
    this.progressState = state;
    if (state === "terminated") {
      for (const resolve of this.terminatedWaiters.splice(0)) {
        resolve();
      }
    }
    if (this.ended) {
      return;
    }
    if (state === "terminated") {
      if (!this.shown && !this.accepted) {
        this.dispose();
      } else {
        this.finish(reason || "closed", false);
      }
      return;
    }
    if (!this.accepted && !this.shown) {
      // A callee device: ring while the call is alerting, else it is not ours.
      if (state === "alerting") {
        if (this.hooks.ring && !this.hooks.ring(this)) {
          this.sendAction("terminate", "busy").then(() => this.dispose());
          return;
        }
        this.show();
      } else if (state !== "init") {
        this.dispose();
        return;
      }
    }
    this.refresh();
  }

  // --- the signaling relay -------------------------------------------------

  joinSignaling() {
    const ws = new WebSocket(socketURL(this.d.progressURL, "signaling"));
    this.sig = ws;
    this.sigJoined = false;
    this.sigError = null;
    ws.addEventListener("open", () => {
      ws.send(JSON.stringify({ type: "join", sessionId: this.d.sessionId, token: this.d.sessionToken }));
    });
    ws.addEventListener("message", (event) => {
      if (this.sig !== ws) {
        return;
      }
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (_) {
        return;
      }
      switch (message.type) {
        case "joined":
          this.sigJoined = true;
          this.sigRetries = 0;
          this.peerPresent = Boolean(message.peer);
          if (this.peerPresent) {
            this.peerArrived();
          } else if (this.everConnected) {
            this.peerGone();
          } else if (this.rejoining) {
            // Back after a reload and the other side is not: it may be
            // reloading too, or gone for good.
            this.expectPeer();
          }
          break;
        case "peer-joined":
          this.peerPresent = true;
          this.peerArrived();
          break;
        case "peer-left":
          this.peerPresent = false;
          this.peerGone();
          break;
        case "signal":
          this.signals = this.signals
            .then(() => this.onSignal(message.data))
            .catch((err) => console.warn("signal:", err));
          break;
        case "error":
          this.sigError = message.reason;
          break;
      }
    });
    ws.addEventListener("close", () => {
      if (this.sig === ws) {
        this.sig = null;
        this.sigJoined = false;
        this.onSignalingClosed(this.sigError);
      }
    });
  }

  async onSignalingClosed(reason) {
    if (this.ended) {
      return;
    }
    if (reason === "replaced") {
      // The same side joined from another tab: the call goes on there.
      this.finish("replaced", true, "This call continues in another tab.");
      return;
    }
    if (reason === "token expired" || this.sigRetries >= 5) {
      // The media flows peer to peer without it; only a rejoin needs it.
      return;
    }
    this.sigRetries += 1;
    await delay(1000 * this.sigRetries);
    if (!this.ended && !this.sig) {
      this.joinSignaling();
    }
  }

  sendSignal(data) {
    if (this.sig && this.sigJoined && this.sig.readyState === WebSocket.OPEN) {
      this.sig.send(JSON.stringify({ type: "signal", data }));
    }
  }

  // The caller offers, with a fresh peer connection, whenever the other
  // side is present; the callee waits for the offer.
  peerArrived() {
    clearTimeout(this.peerTimer);
    this.peerTimer = null;
    if (this.d.role === "caller") {
      this.signals = this.signals.then(() => this.offer()).catch((err) => console.warn("offer:", err));
    }
    this.refresh();
  }

  // The other side left (hung up, reloaded, lost its network): reset and
  // wait. If it hung up, the progress socket says so; if it does not come
  // back in time, the call is over.
  peerGone() {
    this.closePeer();
    this.refresh();
    if (this.peerTimer || !this.accepted) {
      return;
    }
    this.expectPeer();
    // A side that hangs up has ended the call before it leaves; one that
    // reloads is usually back within this.
    delay(PEER_CHECK_MS).then(() => {
      if (!this.ended && !this.peerPresent && !this.ws) {
        this.openProgress();
      }
    });
  }

  // The other side has PEER_GRACE_MS to be (back) in the call.
  expectPeer() {
    if (this.peerTimer) {
      return;
    }
    this.peerTimer = setTimeout(() => {
      this.peerTimer = null;
      if (!this.ended && !this.peerPresent) {
        this.hangUp("closed", "The call has ended: the connection was lost.");
      }
    }, PEER_GRACE_MS);
  }

  newPeer() {
    this.closePeer();
    const config = { iceServers: this.d.iceServers || [] };
    if (localStorage.getItem(RELAY_POLICY_KEY) === "relay") {
      config.iceTransportPolicy = "relay";
    }
    const pc = new RTCPeerConnection(config);
    this.pc = pc;
    window.loopPeerConnection = pc;
    this.pendingCandidates = [];
    for (const track of this.localStream ? this.localStream.getTracks() : []) {
      pc.addTrack(track, this.localStream);
    }
    pc.addEventListener("icecandidate", (event) => {
      if (this.pc === pc) {
        this.sendSignal({ candidate: event.candidate ? event.candidate.toJSON() : null });
      }
    });
    pc.addEventListener("track", (event) => {
      if (this.pc !== pc) {
        return;
      }
      const remote = $("remote-video");
      const stream = event.streams[0] || new MediaStream([event.track]);
      if (remote.srcObject !== stream) {
        remote.srcObject = stream;
        remote.play().catch((err) => {
          if (err.name !== "NotAllowedError") {
            return;
          }
          // No autoplay with sound without a gesture (after a reload).
          say(`Press any key or click to hear ${this.peer}.`);
          const resume = () => {
            remote.play().then(() => this.refresh(), () => {});
          };
          document.addEventListener("click", resume, { once: true });
          document.addEventListener("keydown", resume, { once: true });
        });
      }
    });
    pc.addEventListener("connectionstatechange", () => this.onPeerState(pc));
    this.view.dataset.peerState = pc.connectionState;
    return pc;
  }

  closePeer() {
    if (this.pc) {
      const pc = this.pc;
      this.pc = null;
      pc.close();
    }
    this.view.dataset.peerState = "closed";
    $("remote-video").srcObject = null;
    $("verification").hidden = true;
  }

  async offer() {
    if (this.ended || !this.peerPresent) {
      return;
    }
    const pc = this.newPeer();
    const offer = await pc.createOffer();
    if (this.pc !== pc) {
      return;
    }
    await pc.setLocalDescription(offer);
    this.sendSignal({ description: { type: "offer", sdp: pc.localDescription.sdp } });
  }

  async onSignal(data) {
    if (this.ended || !data) {
      return;
    }
    if (data.description) {
      const description = data.description;
      if (description.type === "offer" && this.d.role === "callee") {
        const pc = this.newPeer();
        await pc.setRemoteDescription(description);
        const answer = await pc.createAnswer();
        if (this.pc !== pc) {
          return;
        }
        await pc.setLocalDescription(answer);
        this.sendSignal({ description: { type: "answer", sdp: pc.localDescription.sdp } });
        await this.addPendingCandidates(pc);
      } else if (
        description.type === "answer" &&
        this.d.role === "caller" &&
        this.pc &&
        this.pc.signalingState === "have-local-offer"
      ) {
        const pc = this.pc;
        await pc.setRemoteDescription(description);
        await this.addPendingCandidates(pc);
      }
    } else if (data.candidate && data.candidate.candidate) {
      if (this.pc && this.pc.remoteDescription) {
        await this.pc.addIceCandidate(data.candidate).catch((err) => console.warn("candidate:", err));
      } else {
        this.pendingCandidates.push(data.candidate);
      }
    }
  }

  async addPendingCandidates(pc) {
    const pending = this.pendingCandidates;
    this.pendingCandidates = [];
    for (const candidate of pending) {
      await pc.addIceCandidate(candidate).catch((err) => console.warn("candidate:", err));
    }
  }

  async onPeerState(pc) {
    if (this.pc !== pc || this.ended) {
      return;
    }
    this.view.dataset.peerState = pc.connectionState;
    if (pc.connectionState === "connected") {
      this.everConnected = true;
      this.showCode(pc);
      if (
        !this.mediaUpSent &&
        (this.progressState === "connecting" || this.progressState === "half-connected")
      ) {
        this.mediaUpSent = true;
        this.sendAction("media-up");
      }
    } else if (pc.connectionState === "failed" && this.peerPresent) {
      this.hangUp("media-fail");
      return;
    }
    this.refresh();
  }

  async showCode(pc) {
    const code = await verificationCode(
      pc.localDescription && pc.localDescription.sdp,
      pc.remoteDescription && pc.remoteDescription.sdp,
    );
    if (code && this.pc === pc) {
      $("code").textContent = code;
      $("verification").hidden = false;
    }
  }

  // --- ending ----------------------------------------------------------------

  // This side ends the call: cancel while it rings (reject for the callee),
  // closed once answered, or the given reason.
  async hangUp(reason, words) {
    if (this.ended) {
      return;
    }
    const ringing = this.progressState === "init" || this.progressState === "alerting";
    if (!reason) {
      reason = ringing && !this.everConnected ? (this.d.role === "caller" ? "cancel" : "reject") : "closed";
    }
    this.finish(reason, true, words, true);
    // Tell the server (and through it the other side) before leaving the
    // signaling session, so that the other side learns why it was left.
    const terminated = new Promise((resolve) => this.terminatedWaiters.push(resolve));
    if (await withTimeout(this.sendAction("terminate", reason), 5000)) {
      await withTimeout(terminated, 2000);
    }
    this.closeSockets(0);
  }

  // The call is over: stop everything and say why.
  finish(reason, local, words, keepSockets) {
    if (this.ended) {
      return;
    }
    this.ended = true;
    clearTimeout(this.peerTimer);
    this.closePeer();
    this.stopMedia();
    this.forget();
    this.view.dataset.endReason = reason;
    this.show();
    this.setView("ended", words || this.endWords(reason, local));
    if (!keepSockets) {
      this.closeSockets(0);
    }
    if (this.hooks.ended) {
      this.hooks.ended(this);
    }
  }

  // A callee call that never rang here (answered elsewhere, over, busy).
  dispose() {
    if (this.ended) {
      return;
    }
    this.ended = true;
    this.closeSockets(0);
    if (this.hooks.quiet) {
      this.hooks.quiet(this);
    }
  }

  closeSockets(afterMs) {
    const sig = this.sig;
    this.sig = null;
    if (sig) {
      sig.close(1000);
    }
    const ws = this.ws;
    if (ws) {
      // Let the server answer the last action (it closes the socket itself).
      setTimeout(() => ws.close(1000), afterMs);
    }
  }

  stopMedia() {
    if (this.localStream) {
      for (const track of this.localStream.getTracks()) {
        track.stop();
      }
      this.localStream = null;
    }
    $("local-video").srcObject = null;
    $("local-video").classList.remove("live");
  }

  showLocal() {
    $("local-video").srcObject = this.localStream;
    $("local-video").classList.toggle("live", Boolean(this.localStream));
  }

  endWords(reason, local) {
    const peer = this.peer;
    const wasRinging = !this.everConnected && this.progressLog.every((s) => s === "init" || s === "alerting" || s.startsWith("terminated"));
    if (local) {
      switch (reason) {
        case "cancel":
          return "You cancelled the call.";
        case "reject":
          return "You declined the call.";
        case "closed":
          return "You hung up.";
        case "media-fail":
          return "The call failed: the media connection could not be established.";
        default:
          return "The call has ended.";
      }
    }
    switch (reason) {
      case "cancel":
        return `${peer} cancelled the call.`;
      case "reject":
        return `${peer} declined the call.`;
      case "timeout":
        if (wasRinging) {
          return this.d.role === "caller" ? `No answer: ${peer} did not pick up.` : `Missed call from ${peer}.`;
        }
        return "The call could not be connected in time.";
      case "busy":
        return `${peer} is busy.`;
      case "answered-elsewhere":
        return "The call was answered on another device.";
      case "closed":
        return "The call has ended: the connection was closed.";
      case "media-fail":
        return "The call failed: the media connection could not be established.";
      default:
        return `The call has ended (${reason}).`;
    }
  }

  // --- the view --------------------------------------------------------------

  show() {
    if (this.shown) {
      return;
    }
    this.shown = true;
    this.view.hidden = false;
    this.view.dataset.progress = this.progressLog.join(" ");
    delete this.view.dataset.endReason;
    this.view.classList.toggle("audio-only", !this.video);
    $("remote-placeholder").textContent = this.peer.slice(0, 1).toUpperCase() || "?";
    $("code").textContent = "";
    $("verification").hidden = true;
    this.bindControls();
    if (this.hooks.shown) {
      this.hooks.shown(this);
    }
  }

  bindControls() {
    const bind = (id, handler) => {
      $(id).onclick = handler;
    };
    bind("accept", () => this.accept());
    bind("reject", () => this.hangUp("reject"));
    bind("hangup", () => this.hangUp());
    bind("done", () => {
      this.view.hidden = true;
      this.view.dataset.state = "idle";
      if (this.hooks.done) {
        this.hooks.done(this);
      }
    });
    bind("mute", () => this.toggle("audio", "mute", "Mute", "Unmute", "Microphone muted.", "Microphone on."));
    bind("camera", () =>
      this.toggle("video", "camera", "Camera off", "Camera on", "Camera off.", "Camera on."),
    );
    for (const [id, label] of [["mute", "Mute"], ["camera", "Camera off"]]) {
      $(id).setAttribute("aria-pressed", "false");
      $(id).textContent = label;
    }
    $("local-video").classList.remove("off");
  }

  toggle(kind, id, onLabel, offLabel, offWords, onWords) {
    const tracks = this.localStream
      ? kind === "audio"
        ? this.localStream.getAudioTracks()
        : this.localStream.getVideoTracks()
      : [];
    const pressed = $(id).getAttribute("aria-pressed") !== "true";
    for (const track of tracks) {
      track.enabled = !pressed;
    }
    $(id).setAttribute("aria-pressed", String(pressed));
    $(id).textContent = pressed ? offLabel : onLabel;
    if (kind === "video") {
      $("local-video").classList.toggle("off", pressed);
    }
    say(pressed ? offWords : onWords);
  }

  // The view follows the progress state and the peer connection.
  refresh() {
    if (this.ended || !this.shown) {
      return;
    }
    const peer = this.peer;
    const kind = this.video ? "video call" : "audio call";
    const pcState = this.pc ? this.pc.connectionState : "new";
    switch (this.progressState) {
      case null:
      case "init":
      case "alerting":
        if (this.d.role === "caller") {
          this.setView("ringing", this.progressState === "alerting" ? `Ringing ${peer}…` : `Calling ${peer}…`);
        } else if (!this.accepted) {
          this.setView("ringing", `Incoming ${kind} from ${peer}.`);
        } else {
          this.setView("connecting", "Answering…");
        }
        break;
      case "connecting":
      case "half-connected":
        this.setView("connecting", `Connecting to ${peer}…`);
        break;
      case "connected":
        if (pcState === "connected") {
          this.setView("connected", `Connected with ${peer}.`);
        } else if (this.everConnected && !this.peerPresent) {
          this.setView("reconnecting", `${peer} left the call. Waiting for them to come back…`);
        } else {
          this.setView(this.everConnected ? "reconnecting" : "connecting", `Connecting to ${peer}…`);
        }
        break;
    }
  }

  setView(state, words) {
    const view = this.view;
    view.dataset.state = state;
    let title = `Call with ${this.peer}`;
    if (state === "ringing" && this.d.role === "callee") {
      title = `Incoming ${this.video ? "video" : "audio"} call`;
    } else if (state === "ended") {
      title = "Call ended";
    }
    $("call-title").textContent = title;
    say(words);
    const ringingCallee = state === "ringing" && this.d.role === "callee" && !this.accepted;
    const inCall = !ringingCallee && state !== "ended";
    $("accept").hidden = !ringingCallee;
    $("reject").hidden = !ringingCallee;
    $("mute").hidden = !inCall;
    $("camera").hidden = !inCall || !this.video;
    $("hangup").hidden = !inCall;
    $("hangup").textContent = state === "ringing" ? "Cancel" : "Hang up";
    $("done").hidden = state !== "ended";
    view.classList.toggle("ringing", state === "ringing");
    if (state === "ended") {
      $("done").focus();
    } else if (ringingCallee && document.activeElement !== $("reject")) {
      $("accept").focus();
    }
  }
}
