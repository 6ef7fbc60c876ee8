// The anystream browser page: one click to talk over WebRTC, the conversation as it streams, uploads, and the
// latency of the last turn. Served by the gateway (deployments/gateway.py) with a Content-Security-Policy that lets it
// load only its own files and call only its own server. Wire protocol: assistant/protocol.py and the README.
//
// window.anystream is this page's state for people and tests (read-only for them): the connection, every event
// received (type, turn id, time), each turn's words, how many pictures are shown, what the answer audio measured
// (WebAudio on the remote stream), and the latency of the last turn.

import { FragmentError, Reassembler, sendLimit, splitMessage } from "./fragments.js";

const DATA_CHANNEL_LABEL = "events"; // assistant.protocol.DATA_CHANNEL_LABEL
const MAX_TEXT_CHARS = 4000; // assistant.protocol.MAX_TEXT_CHARS
const MAX_IMAGE_BYTES = 4 * 1024 * 1024; // assistant.protocol.MAX_IMAGE_BYTES
const MAX_MUSIC_BYTES = 4 * 1024 * 1024; // assistant.protocol.MAX_MUSIC_BYTES
const MAX_MUSIC_SECONDS = 30;
// Bounds on what the page keeps (a long conversation must not grow the page without end).
const MAX_EVENTS_KEPT = 1000;
const MAX_ERRORS_SHOWN = 20;
const MAX_TURNS_SHOWN = 100;
const METER_INTERVAL_MS = 20;
const ANALYSER_SIZE = 2048; // samples per look at a stream: 43 ms at 48 kHz, so 20 ms ticks overlap
const MIC_VOICE_RMS = 0.02; // the microphone meter calls a window voice above this level
const ANSWER_AUDIBLE_RMS = 0.005; // the answer is sounding above this level (the server's silence is digital zero)
const ANSWER_ONSET_SAMPLE = 0.005; // the first sample this loud marks where the answer starts to sound
const SOUND_HOLD_MS = 300;
// The server says speech stopped after its end-of-turn silence (under a second); voice the meter heard longer ago
// than this was not the end of this question.
const MAX_END_OF_TURN_MS = 3000; // pauses between words shorter than this do not switch the indicator off
// A music event arrives while the speech before the music is still queued: up to 25 frames (0.5 s) in the server's
// track and the browser's jitter buffer. The indicator switches to music after that much time.
const MUSIC_LEAD_MS = 600;
const ICE_GATHERING_TIMEOUT_MS = 5000;
const BYE_GRACE_MS = 1000;
const SEND_HIGH_WATER_BYTES = 1024 * 1024; // a large upload waits for the channel to drain below this

const state = {
  connection: "idle", // "idle", "starting", then the peer connection's connectionState, then "closed"
  dataChannel: "closed",
  ready: false,
  resumed: false, // the server continued the conversation of a dropped call
  sessionId: null,
  voice: null,
  voices: [],
  micMuted: false,
  events: [], // {type, call, turn_id, t}: what arrived (the last MAX_EVENTS_KEPT), t in ms since the page loaded
  eventCounts: {}, // type -> how many arrived
  turns: {}, // "call.turn" -> {call, turnId, user, transcript, text, images, music, end}
  imagesShown: 0,
  sent: { messages: 0, fragments: 0 }, // messages sent, and the fragments the large ones went as
  errors: [],
  // the answer's audio as WebAudio measured it: how long it sounded (in all, and while the indicator said speech or
  // music), its loudest window, how many times it started after a silence
  audio: { playing: "nothing", peakRms: 0, audibleMs: 0, speechMs: 0, musicMs: 0, onsets: 0, sampleRate: null },
  mic: { level: 0, lastVoiceAt: null },
  lastLatencyMs: null, // end of the user's question -> first audible sample of the answer
  latencies: [],
};
window.anystream = state;

const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"),
  talk: $("talk"),
  mute: $("mute"),
  interrupt: $("interrupt"),
  hangup: $("hangup"),
  voice: $("voice"),
  micLevel: $("mic-level"),
  playing: $("playing"),
  latency: $("latency"),
  errors: $("errors"),
  turns: $("turns"),
  compose: $("compose"),
  message: $("message"),
  send: $("send"),
  picture: $("picture"),
  tune: $("tune"),
  attachmentQuestion: $("attachment-question"),
  sendPicture: $("send-picture"),
  sendTune: $("send-tune"),
  apiKey: $("api-key"),
  remoteAudio: $("remote-audio"),
};

let call = null; // the call in progress: {pc, dc, mic, reassembler, sendChain, meters, ...}
let audioContext = null; // made on the first click (browsers start audio only after a user gesture)
let resumeToken = null; // from `ready`: an unexpected drop may resume the conversation (not after a bye)
let resumeVoice = null;
let pendingUser = null; // what the user typed or attached, shown with the next turn that starts
let answerWait = null; // {since}: a question ended at `since`; the next onset of answer audio gives the latency
let music = null; // {turn, from, ending}: the music announced for a turn, and when it should be sounding
let callNumber = 0; // counts the calls of this page (turn ids start again with every call)
const turnItems = new Map(); // "call.turn" (or "call.start") -> its <li> in the conversation, oldest first
const audioMeter = { sounding: false, lastSoundAt: -Infinity, lastTickAt: null };

// ---------------------------------------------------------------------------------------------------------
// showing things

function setStatus(text) {
  ui.status.textContent = text;
}

function showError(text) {
  state.errors.push(text);
  if (state.errors.length > MAX_ERRORS_SHOWN) state.errors.shift();
  const item = document.createElement("li");
  item.textContent = text;
  ui.errors.prepend(item);
  while (ui.errors.children.length > MAX_ERRORS_SHOWN) ui.errors.lastElementChild.remove();
}

function setConnection(connection) {
  state.connection = connection;
  updateControls();
}

function updateControls() {
  const open = call !== null && state.dataChannel === "open";
  ui.talk.disabled = call !== null || state.connection === "starting";
  ui.hangup.disabled = call === null;
  for (const control of [ui.mute, ui.interrupt, ui.send, ui.sendPicture, ui.sendTune]) control.disabled = !open;
  ui.mute.setAttribute("aria-pressed", String(state.micMuted));
  ui.mute.textContent = state.micMuted ? "Unmute microphone" : "Mute microphone";
  const words = {
    idle: "Not connected. Click Talk to start.",
    starting: "Connecting…",
    new: "Connecting…",
    connecting: "Connecting…",
    connected: state.ready
      ? `${state.resumed ? "Reconnected, the conversation goes on" : "Connected"}${state.voice ? ` (voice ${state.voice})` : ""}: talk, or type below.`
      : "Connected, waiting for the server…",
    disconnected: "Connection interrupted; waiting for it to come back…",
    failed: "The connection failed. Click Talk to try again.",
    closed: resumeToken ? "Disconnected. Click Talk to continue the conversation." : "Call ended. Click Talk to start again.",
  };
  setStatus(words[state.connection] ?? `Connection: ${state.connection}`);
}

// Each call numbers its turns afresh, so a turn is known by its call and its id: key "call.turn".
function turnState(turnId) {
  const key = `${callNumber}.${turnId}`;
  let turn = state.turns[key];
  if (turn === undefined) {
    turn = {
      call: callNumber,
      turnId,
      user: null,
      transcript: "",
      text: "",
      images: 0,
      music: [],
      end: null,
      continuedBy: null, // a later turn that asks this turn's question again with what the user added after a pause
    };
    state.turns[key] = turn;
    const keys = Object.keys(state.turns); // in the order the turns began
    for (const old of keys.slice(0, Math.max(0, keys.length - MAX_TURNS_SHOWN))) delete state.turns[old];
  }
  return turn;
}

function turnElement(turn) {
  const key = `${turn.call}.${turn.turnId}`;
  let item = turnItems.get(key);
  if (item !== undefined) return item;
  item = document.createElement("li");
  item.className = "turn";
  item.innerHTML = `
    <p class="you"><span class="who">You</span> <span class="words"></span></p>
    <p class="assistant"><span class="who">Assistant</span> <span class="words"></span></p>
    <div class="media"></div>
    <p class="end"></p>`;
  appendItem(key, item);
  return item;
}

// A line between calls: a new call is a new conversation (the assistant remembers nothing of the last one) unless
// the server resumed it.
function showCallStart(resumed, voice) {
  const item = document.createElement("li");
  item.className = "call-start";
  item.textContent = `${resumed ? "Call resumed" : "New call"}${voice ? ` (voice ${voice})` : ""}`;
  appendItem(`${callNumber}.start`, item);
}

function appendItem(key, item) {
  ui.turns.append(item);
  turnItems.set(key, item);
  for (const [oldKey, oldItem] of turnItems) {
    if (turnItems.size <= MAX_TURNS_SHOWN) break;
    for (const img of oldItem.querySelectorAll("img")) URL.revokeObjectURL(img.src);
    oldItem.remove();
    turnItems.delete(oldKey);
  }
  item.scrollIntoView({ block: "nearest" });
}

function renderTurn(turn) {
  const item = turnElement(turn);
  const said = turn.transcript.trim();
  const typed = turn.user ?? "";
  // A typed question shows as typed; a spoken one as the assistant heard it (its transcript).
  const you = typed && said ? `${typed} (heard: ${said})` : typed || said;
  item.querySelector(".you .words").textContent = you || "…";
  item.querySelector(".assistant .words").textContent = turn.text.trim() || "…";
  const notes = [];
  if (turn.music.length) notes.push(`music: ${turn.music.map((s) => `${s.toFixed(1)} s`).join(", ")}`);
  if (turn.end) notes.push(turn.end === "complete" ? "done" : turn.end);
  if (turn.continuedBy !== null) notes.push("you had only paused: asked again in full below");
  item.querySelector(".end").textContent = notes.join(" · ");
}

function showImage(turn, event) {
  const where = `picture ${event.index} of turn ${turn.turnId}`;
  let bytes;
  try {
    bytes = Uint8Array.from(atob(event.png_base64), (c) => c.charCodeAt(0));
  } catch {
    showError(`${where} was not valid base64`);
    return;
  }
  const url = URL.createObjectURL(new Blob([bytes], { type: "image/png" }));
  const img = document.createElement("img");
  img.src = url;
  img.alt = `Picture ${event.index + 1} of turn ${turn.turnId}`;
  if (Number.isInteger(event.width) && Number.isInteger(event.height)) {
    img.width = event.width;
    img.height = event.height;
  }
  img.addEventListener("error", () => showError(`${where} could not be shown`));
  turnElement(turn).querySelector(".media").append(img);
  turn.images += 1;
  state.imagesShown += 1;
}

function showLatency(ms) {
  state.lastLatencyMs = Math.round(ms);
  state.latencies.push(state.lastLatencyMs);
  if (state.latencies.length > MAX_EVENTS_KEPT) state.latencies.shift();
  ui.latency.textContent = `Last turn: first answer audio ${state.lastLatencyMs} ms after your question ended`;
}

// ---------------------------------------------------------------------------------------------------------
// server events

function record(message) {
  const type = typeof message.type === "string" ? message.type : "?";
  state.events.push({ type, call: callNumber, turn_id: message.turn_id ?? null, t: Math.round(performance.now()) });
  if (state.events.length > MAX_EVENTS_KEPT) state.events.shift();
  state.eventCounts[type] = (state.eventCounts[type] ?? 0) + 1;
}

function onServerMessage(message) {
  if (message === null || typeof message !== "object") {
    showError("the server sent a message that is not a JSON object");
    return;
  }
  record(message);
  const hasTurn = Number.isInteger(message.turn_id);
  const turn = hasTurn ? turnState(message.turn_id) : null;
  switch (message.type) {
    case "ready":
      state.ready = true;
      state.sessionId = message.session_id ?? state.sessionId;
      state.voice = message.voice ?? null;
      state.resumed = message.resumed === true;
      resumeToken = typeof message.resume_token === "string" ? message.resume_token : null;
      resumeVoice = ui.voice.value;
      if (callNumber > 1 || state.resumed) showCallStart(state.resumed, state.voice);
      updateControls();
      break;
    case "speech_started":
      setStatus("Hearing you…");
      break;
    case "speech_stopped": {
      // The question ended when the page's own meter last heard voice (the server decides only after a silence);
      // a meter that heard nothing lately (a quiet microphone under its threshold) leaves the server's moment.
      const now = performance.now();
      const heard = state.mic.lastVoiceAt;
      questionEnded(heard !== null && now - heard < MAX_END_OF_TURN_MS ? heard : now);
      setStatus("Thinking…");
      break;
    }
    case "turn_started":
      if (turn !== null && pendingUser !== null) {
        turn.user = pendingUser;
        pendingUser = null;
      }
      if (turn !== null && Number.isInteger(message.continues)) {
        // The server took a pause in the middle of the question for its end; that turn's answer was cut off.
        const earlier = state.turns[`${callNumber}.${message.continues}`];
        if (earlier !== undefined) {
          earlier.continuedBy = turn.turnId;
          renderTurn(earlier);
        }
      }
      break;
    case "transcript":
      if (turn !== null && typeof message.delta === "string") turn.transcript += message.delta;
      break;
    case "text":
      if (turn !== null && typeof message.delta === "string") turn.text += message.delta;
      break;
    case "image":
      if (turn !== null && typeof message.png_base64 === "string") showImage(turn, message);
      break;
    case "music":
      if (turn !== null) {
        turn.music.push(Number(message.duration_s) || 0);
        music = { turn, from: performance.now() + MUSIC_LEAD_MS, ending: false };
      }
      break;
    case "interrupted":
    case "turn_end":
      if (turn !== null) turn.end = message.type === "interrupted" ? "interrupted" : message.reason ?? "complete";
      if (music !== null && music.turn === turn) music.ending = true;
      if (message.type === "turn_end") updateControls();
      break;
    case "error":
      showError(`${message.code ?? "error"}${hasTurn ? ` (turn ${message.turn_id})` : ""}: ${message.message ?? ""}`);
      break;
    default:
      break; // a newer server's event: recorded, nothing to show
  }
  if (turn !== null) renderTurn(turn);
}

function questionEnded(at) {
  answerWait = { since: at };
}

// ---------------------------------------------------------------------------------------------------------
// audio: the microphone meter and the answer's measurements

function ensureAudioContext() {
  if (audioContext === null) audioContext = new AudioContext();
  if (audioContext.state === "suspended") audioContext.resume().catch(() => {});
  state.audio.sampleRate = audioContext.sampleRate;
  return audioContext;
}

// An analyser on `stream`, pulled by the context through a silent gain (so it runs whether or not it is heard).
function tap(stream) {
  const context = ensureAudioContext();
  const source = context.createMediaStreamSource(stream);
  const analyser = context.createAnalyser();
  analyser.fftSize = ANALYSER_SIZE;
  const silent = context.createGain();
  silent.gain.value = 0;
  source.connect(analyser);
  analyser.connect(silent);
  silent.connect(context.destination);
  const buffer = new Float32Array(analyser.fftSize);
  return {
    analyser,
    buffer,
    read() {
      analyser.getFloatTimeDomainData(buffer);
      let sum = 0;
      for (const x of buffer) sum += x * x;
      return Math.sqrt(sum / buffer.length);
    },
    disconnect() {
      source.disconnect();
      analyser.disconnect();
      silent.disconnect();
    },
  };
}

function meterTick() {
  const current = call;
  if (current === null) return;
  const now = performance.now();
  if (current.micTap) {
    const level = current.micTap.read();
    state.mic.level = level;
    ui.micLevel.value = Math.min(1, level * 5);
    if (level > MIC_VOICE_RMS && !state.micMuted) state.mic.lastVoiceAt = now;
  }
  if (current.answerTap) measureAnswer(current.answerTap, now);
}

function measureAnswer(answerTap, now) {
  const level = answerTap.read();
  const sounding = level > ANSWER_AUDIBLE_RMS;
  const elapsed = audioMeter.lastTickAt === null ? 0 : Math.min(now - audioMeter.lastTickAt, 100);
  audioMeter.lastTickAt = now;
  if (sounding) {
    state.audio.audibleMs += elapsed;
    state.audio.peakRms = Math.max(state.audio.peakRms, level);
    audioMeter.lastSoundAt = now;
    if (!audioMeter.sounding) {
      state.audio.onsets += 1;
      const onset = onsetTime(answerTap.buffer, now);
      if (answerWait !== null) {
        showLatency(Math.max(0, onset - answerWait.since));
        answerWait = null;
      }
    }
  }
  audioMeter.sounding = sounding;
  const heard = now - audioMeter.lastSoundAt < SOUND_HOLD_MS;
  if (music !== null && music.ending && !heard) music = null;
  const playing = !heard ? "nothing" : music !== null && now >= music.from ? "music" : "speech";
  if (sounding) state.audio[`${playing}Ms`] += elapsed;
  if (playing !== state.audio.playing) {
    state.audio.playing = playing;
    ui.playing.textContent = `Playing: ${playing}`;
    ui.playing.dataset.playing = playing;
  }
}

// When, in page time, the first loud sample of the analyser's window sounded (its last sample is `now`).
function onsetTime(buffer, now) {
  const rate = audioContext.sampleRate;
  for (let i = 0; i < buffer.length; i++) {
    if (Math.abs(buffer[i]) >= ANSWER_ONSET_SAMPLE) return now - ((buffer.length - i) * 1000) / rate;
  }
  return now;
}

// ---------------------------------------------------------------------------------------------------------
// HTTP

function requestHeaders(json) {
  const headers = {};
  if (json) headers["Content-Type"] = "application/json";
  const key = ui.apiKey.value.trim();
  if (key) headers.Authorization = `Bearer ${key}`;
  return headers;
}

async function readJson(response) {
  try {
    return await response.json();
  } catch {
    return null;
  }
}

function httpError(what, response, body) {
  const detail = body && typeof body.error === "string" ? body.error : response.statusText;
  return `${what}: HTTP ${response.status}${detail ? `: ${detail}` : ""}`;
}

async function loadVoices() {
  let response;
  let body;
  try {
    response = await fetch("/voices", { headers: requestHeaders(false), cache: "no-store" });
    body = await readJson(response);
  } catch (err) {
    showError(`cannot list the voices: ${err.message}`);
    return;
  }
  if (!response.ok) {
    showError(httpError("cannot list the voices", response, body));
    return;
  }
  const voices = Array.isArray(body?.voices) ? body.voices.filter((v) => typeof v === "string") : [];
  state.voices = voices;
  const chosen = ui.voice.value;
  ui.voice.replaceChildren();
  const fallback = document.createElement("option");
  fallback.value = "";
  fallback.textContent = voices.length ? `Server default${body.default ? ` (${body.default})` : ""}` : "The server's only voice";
  ui.voice.append(fallback);
  for (const name of voices) {
    const option = document.createElement("option");
    option.value = name;
    option.textContent = name;
    ui.voice.append(option);
  }
  ui.voice.value = voices.includes(chosen) ? chosen : "";
  ui.voice.disabled = voices.length === 0;
}

// ---------------------------------------------------------------------------------------------------------
// the call

function iceGatheringDone(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const finish = () => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    };
    const check = () => {
      if (pc.iceGatheringState === "complete") finish();
    };
    // The server takes no trickled candidates: the offer goes with what was gathered by then.
    const timer = setTimeout(finish, ICE_GATHERING_TIMEOUT_MS);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

async function connect() {
  if (call !== null || state.connection === "starting") return; // a second click while the first one starts
  setConnection("starting");
  ensureAudioContext();
  let mic;
  try {
    mic = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
      video: false,
    });
  } catch (err) {
    showError(`no microphone: ${err.name}: ${err.message}`);
    setConnection("idle");
    return;
  }
  const pc = new RTCPeerConnection();
  callNumber += 1;
  const current = {
    pc,
    dc: null,
    mic,
    micTap: tap(mic),
    answerTap: null,
    reassembler: null,
    sendChain: Promise.resolve(),
    ending: false,
    meterTimer: null,
  };
  current.reassembler = new Reassembler({ onAbandon: (reason) => showError(`a message from the server was lost: ${reason}`) });
  call = current;
  for (const track of mic.getAudioTracks()) {
    track.enabled = !state.micMuted;
    pc.addTrack(track, mic);
  }
  const dc = pc.createDataChannel(DATA_CHANNEL_LABEL);
  dc.binaryType = "arraybuffer";
  current.dc = dc;
  dc.addEventListener("open", () => {
    if (call !== current) return;
    state.dataChannel = "open";
    send({ type: "hello", client: "browser" });
    updateControls();
  });
  dc.addEventListener("close", () => {
    if (call !== current) return;
    state.dataChannel = "closed";
    endCall(current, current.ending ? null : "the server ended the session");
  });
  dc.addEventListener("message", (event) => receive(current, event.data));
  pc.addEventListener("track", (event) => attachAnswerAudio(current, event));
  pc.addEventListener("connectionstatechange", () => {
    if (call !== current) return;
    setConnection(pc.connectionState);
    if (pc.connectionState === "failed") endCall(current, "the connection failed");
  });
  current.meterTimer = setInterval(meterTick, METER_INTERVAL_MS);

  try {
    await pc.setLocalDescription(await pc.createOffer());
    await iceGatheringDone(pc);
    if (call !== current) return;
    const body = { sdp: pc.localDescription.sdp, type: "offer" };
    if (ui.voice.value) body.voice = ui.voice.value;
    if (resumeToken !== null && resumeVoice === ui.voice.value) body.resume = resumeToken;
    const response = await fetch("/offer", { method: "POST", headers: requestHeaders(true), body: JSON.stringify(body) });
    const answer = await readJson(response);
    if (!response.ok) throw new Error(httpError("the server refused the call", response, answer));
    if (answer === null || typeof answer.sdp !== "string") throw new Error("the server's answer holds no SDP");
    if (call !== current) return;
    state.sessionId = answer.session_id ?? null;
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
  } catch (err) {
    if (call === current) {
      showError(err.message);
      endCall(current, null);
    }
  }
}

function attachAnswerAudio(current, event) {
  if (call !== current) return;
  const stream = event.streams[0] ?? new MediaStream([event.track]);
  // The element plays the answer (with echo cancellation on, Chromium takes what it plays as the far end); WebAudio
  // only listens, to measure when the answer sounds.
  ui.remoteAudio.srcObject = stream;
  ui.remoteAudio.play().catch((err) => showError(`cannot play the answer: ${err.message}`));
  if (current.answerTap) current.answerTap.disconnect();
  current.answerTap = tap(stream);
}

function receive(current, data) {
  if (call !== current) return;
  const text = typeof data === "string" ? data : new TextDecoder().decode(data);
  let message;
  try {
    message = current.reassembler.push(text);
  } catch (err) {
    const why = err instanceof FragmentError ? err.message : `not JSON (${err.message})`;
    showError(`a message from the server was dropped: ${why}`);
    return;
  }
  if (message !== null) onServerMessage(message);
}

// Sends one message, in fragments when it is larger than the peer accepts; false when it cannot go.
function send(message) {
  const current = call;
  if (current === null || current.dc === null || current.dc.readyState !== "open") {
    showError("not connected: click Talk first");
    return false;
  }
  const text = JSON.stringify(message);
  let parts;
  try {
    parts = splitMessage(text, sendLimit(current.pc.sctp?.maxMessageSize));
  } catch (err) {
    showError(`cannot send: ${err.message}`);
    return false;
  }
  state.sent.messages += 1;
  if (parts.length === 1) {
    current.dc.send(text);
    return true;
  }
  // One fragmented message after another, never interleaved (the receiver reassembles one at a time).
  current.sendChain = current.sendChain
    .then(() => sendParts(current.dc, parts))
    .catch((err) => showError(`sending failed: ${err.message}`));
  return true;
}

async function sendParts(dc, parts) {
  for (const part of parts) {
    if (dc.readyState !== "open") throw new Error("the connection closed during an upload");
    if (dc.bufferedAmount > SEND_HIGH_WATER_BYTES) await drained(dc);
    dc.send(part);
    state.sent.fragments += 1;
  }
}

function drained(dc) {
  return new Promise((resolve) => {
    dc.bufferedAmountLowThreshold = SEND_HIGH_WATER_BYTES / 4;
    const done = () => {
      dc.removeEventListener("bufferedamountlow", done);
      dc.removeEventListener("close", done);
      resolve();
    };
    dc.addEventListener("bufferedamountlow", done);
    dc.addEventListener("close", done);
  });
}

function endCall(current, reason) {
  if (current.closed) return;
  current.closed = true;
  clearInterval(current.meterTimer);
  current.micTap.disconnect();
  if (current.answerTap) current.answerTap.disconnect();
  for (const track of current.mic.getTracks()) track.stop();
  current.pc.close();
  if (call === current) call = null;
  ui.remoteAudio.srcObject = null;
  state.ready = false;
  state.dataChannel = "closed";
  answerWait = null;
  pendingUser = null;
  music = null;
  audioMeter.sounding = false;
  audioMeter.lastTickAt = null;
  state.audio.playing = "nothing";
  ui.playing.textContent = "Playing: nothing";
  ui.micLevel.value = 0;
  if (reason) showError(reason);
  setConnection(current.ending || reason ? "closed" : "idle");
}

async function hangUp() {
  const current = call;
  if (current === null) return;
  current.ending = true;
  resumeToken = null; // a bye ends the conversation on the server: nothing to resume
  if (current.dc !== null && current.dc.readyState === "open") {
    current.dc.send(JSON.stringify({ type: "bye" }));
    // The server closes the connection after a bye; give the bye time to leave before closing it here.
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, BYE_GRACE_MS);
      current.dc.addEventListener("close", () => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
  endCall(current, null);
}

// ---------------------------------------------------------------------------------------------------------
// what the user sends

function sendText(event) {
  event.preventDefault();
  const text = ui.message.value.trim();
  if (!text) return;
  if (text.length > MAX_TEXT_CHARS) {
    showError(`a message may hold at most ${MAX_TEXT_CHARS} characters`);
    return;
  }
  if (send({ type: "text", text })) {
    pendingUser = text;
    questionEnded(performance.now());
    ui.message.value = "";
  }
}

function toBase64(bytes) {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

function startsWith(bytes, signature) {
  return signature.every((b, i) => bytes[i] === b);
}

function ascii(bytes, start, end) {
  return String.fromCharCode(...bytes.subarray(start, end));
}

// The length in seconds of a WAV file's audio, or null when it is not a WAV file this page can read.
function wavSeconds(bytes) {
  if (bytes.length < 12 || ascii(bytes, 0, 4) !== "RIFF" || ascii(bytes, 8, 12) !== "WAVE") return null;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let byteRate = null;
  for (let offset = 12; offset + 8 <= bytes.length; ) {
    const id = ascii(bytes, offset, offset + 4);
    const size = view.getUint32(offset + 4, true);
    if (id === "fmt " && size >= 16 && offset + 20 <= bytes.length) byteRate = view.getUint32(offset + 16, true);
    if (id === "data") return byteRate ? Math.min(size, bytes.length - offset - 8) / byteRate : null;
    offset += 8 + size + (size % 2);
  }
  return null;
}

async function sendAttachment(kind) {
  const input = kind === "picture" ? ui.picture : ui.tune;
  const file = input.files[0];
  if (!file) {
    showError(`choose a ${kind} file first`);
    return;
  }
  const limit = kind === "picture" ? MAX_IMAGE_BYTES : MAX_MUSIC_BYTES;
  if (file.size > limit) {
    showError(`${file.name}: ${file.size} bytes, over the limit of ${limit} bytes for a ${kind}`);
    return;
  }
  const bytes = new Uint8Array(await file.arrayBuffer());
  const question = ui.attachmentQuestion.value.trim();
  if (question.length > MAX_TEXT_CHARS) {
    showError(`a question may hold at most ${MAX_TEXT_CHARS} characters`);
    return;
  }
  let message;
  if (kind === "picture") {
    const isPng = startsWith(bytes, [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
    if (!isPng && !startsWith(bytes, [0xff, 0xd8, 0xff])) {
      showError(`${file.name} is not a PNG or JPEG picture`);
      return;
    }
    message = { type: "image", png_base64: toBase64(bytes) };
  } else {
    const seconds = wavSeconds(bytes);
    if (seconds === null) {
      showError(`${file.name} is not a WAV file`);
      return;
    }
    if (seconds > MAX_MUSIC_SECONDS) {
      showError(`${file.name} lasts ${seconds.toFixed(1)} s, over the limit of ${MAX_MUSIC_SECONDS} s`);
      return;
    }
    message = { type: "music", wav_base64: toBase64(bytes) };
  }
  if (question) message.text = question;
  if (!send(message)) return;
  const note = `[${kind} ${file.name}]`;
  pendingUser = question ? `${note} ${question}` : pendingUser ?? note;
  if (question) questionEnded(performance.now());
  input.value = "";
  ui.attachmentQuestion.value = "";
  setStatus(question ? "Sent; thinking…" : `The ${kind} goes with your next question.`);
}

function toggleMute() {
  state.micMuted = !state.micMuted;
  if (call !== null) for (const track of call.mic.getAudioTracks()) track.enabled = !state.micMuted;
  updateControls();
}

async function changeVoice() {
  if (call === null) return;
  await hangUp(); // a voice is chosen per call: the new one needs a new call
  await connect();
}

// ---------------------------------------------------------------------------------------------------------

ui.talk.addEventListener("click", () => connect());
ui.hangup.addEventListener("click", () => hangUp());
ui.mute.addEventListener("click", toggleMute);
ui.interrupt.addEventListener("click", () => {
  if (send({ type: "interrupt" })) answerWait = null;
});
ui.compose.addEventListener("submit", sendText);
ui.sendPicture.addEventListener("click", () => sendAttachment("picture"));
ui.sendTune.addEventListener("click", () => sendAttachment("tune"));
ui.voice.addEventListener("change", () => changeVoice());
ui.apiKey.addEventListener("change", () => loadVoices());
for (const form of ["attach", "settings"]) $(form).addEventListener("submit", (event) => event.preventDefault());
window.addEventListener("pagehide", () => {
  if (call !== null && call.dc !== null && call.dc.readyState === "open") call.dc.send(JSON.stringify({ type: "bye" }));
});

updateControls();
loadVoices();
