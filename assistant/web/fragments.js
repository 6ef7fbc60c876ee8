// Large data-channel messages as consecutive fragments, both ways (the same format as assistant/fragments.py).
//
// A message whose UTF-8 encoding is larger than the sender's limit travels as
//   {"type":"fragment","id":ID,"index":i,"count":n,"data":TEXT}
// ID: 1..32 of [A-Za-z0-9_-], fresh per message; index 0..n-1 in order; n >= 2, the same in every fragment; the data
// strings joined in index order are the message's JSON text. Each fragment's own UTF-8 JSON is within the limit.
// The limit is min(the peer's advertised max-message-size (pc.sctp.maxMessageSize; 0 or absent: 65536), 65536).
// A receiver holds one reassembly at a time: a fragment with a new id abandons an incomplete one.

export const MAX_FRAGMENT_BYTES = 65536;
// What this page accepts as one reassembled message (a picture from the server is far smaller).
export const MAX_REASSEMBLED_BYTES = 32 * 1024 * 1024;
// 32 MiB in fragments of at least 8 KiB; a peer's limit is never smaller than that in practice.
export const MAX_FRAGMENT_COUNT = 4096;
const FRAGMENT_ID = /^[A-Za-z0-9_-]{1,32}$/;

export class FragmentError extends Error {}

// The largest message this side may send on a channel whose peer advertised `maxMessageSize`.
export function sendLimit(maxMessageSize) {
  if (!Number.isFinite(maxMessageSize) || maxMessageSize <= 0) return MAX_FRAGMENT_BYTES;
  return Math.min(maxMessageSize, MAX_FRAGMENT_BYTES);
}

export function utf8Length(text) {
  let bytes = 0;
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code < 0x80) bytes += 1;
    else if (code < 0x800) bytes += 2;
    else if (isHighSurrogate(code) && i + 1 < text.length && isLowSurrogate(text.charCodeAt(i + 1))) {
      bytes += 4;
      i++;
    } else bytes += 3; // a lone surrogate would be sent as U+FFFD (3 bytes)
  }
  return bytes;
}

function isHighSurrogate(code) {
  return code >= 0xd800 && code <= 0xdbff;
}

function isLowSurrogate(code) {
  return code >= 0xdc00 && code <= 0xdfff;
}

// Bytes one UTF-16 code unit of `data` takes inside a JSON string, as JSON.stringify writes it.
function jsonCost(code) {
  if (code === 0x22 || code === 0x5c) return 2; // \" and \\
  if (code < 0x20) return code === 0x08 || code === 0x09 || code === 0x0a || code === 0x0c || code === 0x0d ? 2 : 6;
  if (code < 0x80) return 1;
  if (code < 0x800) return 2;
  if (code >= 0xd800 && code <= 0xdfff) return 6; // a lone surrogate: \udxxx
  return 3;
}

export function newFragmentId() {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// The messages to send for `text` (a message's JSON text): [text] when it fits `maxBytes`, else its fragments.
export function splitMessage(text, maxBytes, id = newFragmentId()) {
  if (utf8Length(text) <= maxBytes) return [text];
  if (!FRAGMENT_ID.test(id)) throw new FragmentError(`bad fragment id ${JSON.stringify(id)}`);
  // The envelope with the widest index and count a message can have here: every fragment fits whatever its numbers.
  const widest = MAX_FRAGMENT_COUNT * 1000;
  const envelope = JSON.stringify({ type: "fragment", id, index: widest, count: widest, data: "" });
  const budget = maxBytes - utf8Length(envelope);
  if (budget < 12) throw new FragmentError(`a limit of ${maxBytes} bytes leaves no room for fragment data`);
  const pieces = [];
  let start = 0;
  let used = 0;
  for (let i = 0; i < text.length; ) {
    const code = text.charCodeAt(i);
    // A surrogate pair stays in one piece: split, each half would become a lone surrogate on the other side.
    const pair = isHighSurrogate(code) && i + 1 < text.length && isLowSurrogate(text.charCodeAt(i + 1));
    const cost = pair ? 4 : jsonCost(code);
    if (used + cost > budget) {
      pieces.push(text.slice(start, i));
      start = i;
      used = 0;
    }
    used += cost;
    i += pair ? 2 : 1;
  }
  pieces.push(text.slice(start));
  if (pieces.length > MAX_FRAGMENT_COUNT) {
    throw new FragmentError(`a message of ${utf8Length(text)} bytes needs more than ${MAX_FRAGMENT_COUNT} fragments`);
  }
  const count = pieces.length;
  return pieces.map((data, index) => JSON.stringify({ type: "fragment", id, index, count, data }));
}

// Turns the raw messages of a channel back into parsed messages. push(raw) returns the parsed message, or null while
// a fragmented one is incomplete (and for the later fragments of a message already dropped: one error per message).
// It throws FragmentError for a fragment out of the format or over the bounds (the message it belongs to is dropped)
// and SyntaxError for text that is not JSON. onAbandon(reason) hears of a message dropped because another one began
// before it was complete.
export class Reassembler {
  constructor({ maxBytes = MAX_REASSEMBLED_BYTES, maxCount = MAX_FRAGMENT_COUNT, onAbandon = () => {} } = {}) {
    this.maxBytes = maxBytes;
    this.maxCount = maxCount;
    this.onAbandon = onAbandon;
    this.current = null; // {id, count, next, parts, bytes}
    this.droppedIds = []; // the last few messages dropped: their stragglers go quietly
  }

  get pending() {
    return this.current !== null;
  }

  push(raw) {
    const message = JSON.parse(raw);
    if (message === null || typeof message !== "object" || message.type !== "fragment") return message;
    const { id, index, count, data } = message;
    if (typeof id !== "string" || !FRAGMENT_ID.test(id)) {
      throw new FragmentError("a fragment's id must be 1 to 32 of A-Z a-z 0-9 _ -");
    }
    if (!Number.isInteger(count) || count < 2 || count > this.maxCount) {
      this.refuse(id, `message ${id}: a fragment count must be 2 to ${this.maxCount}`);
    }
    if (!Number.isInteger(index) || index < 0 || index >= count) this.refuse(id, `message ${id}: index out of range`);
    if (typeof data !== "string") this.refuse(id, `message ${id}: a fragment's data must be text`);
    const current = this.current;
    if (current !== null && current.id === id) {
      if (count !== current.count) this.refuse(id, `message ${id} changed its fragment count`);
      if (index !== current.next) this.refuse(id, `message ${id}: fragment ${index} came where ${current.next} was due`);
    } else {
      if (this.droppedIds.includes(id)) return null;
      if (index !== 0) {
        this.remember(id); // the message in progress, if any, goes on
        throw new FragmentError(`fragment ${index} of message ${id} came without the ones before it`);
      }
      if (current !== null) {
        this.remember(current.id);
        this.onAbandon(`message ${current.id} abandoned after ${current.next} of its ${current.count} fragments`);
      }
      this.current = { id, count, next: 0, parts: [], bytes: 0 };
    }
    const partial = this.current;
    partial.bytes += utf8Length(data);
    if (partial.bytes > this.maxBytes) this.refuse(id, `message ${id} is larger than ${this.maxBytes} bytes`);
    partial.parts.push(data);
    partial.next += 1;
    if (partial.next < partial.count) return null;
    this.current = null;
    return JSON.parse(partial.parts.join(""));
  }

  // Drops message `id` (the one in progress, if it is that one) and throws.
  refuse(id, reason) {
    if (this.current !== null && this.current.id === id) this.current = null;
    this.remember(id);
    throw new FragmentError(reason);
  }

  remember(id) {
    this.droppedIds.push(id);
    if (this.droppedIds.length > 4) this.droppedIds.shift();
  }
}
