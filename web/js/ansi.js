// SPDX-License-Identifier: Apache-2.0
// ANSI SGR escapes (colours, bold, …) -> text nodes and <span class>.
// Output is untrusted: it only ever becomes text nodes; the escapes only
// choose from a fixed set of class names (.f0-.f15, .g0-.g15, .b .d .i .u,
// styled by app.css). Every other escape sequence is dropped.

// CSI … final byte | OSC … BEL/ST | charset selection | other 2-byte escapes.
const ESCAPE = /\x1b\[([0-9;:?]*)([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[()][0-9A-Za-z]|\x1b[@-_]/g;

/** The SGR state carried from one piece of text to the next (per stream). */
export function newState() {
  return { fg: -1, bg: -1, b: false, d: false, i: false, u: false };
}

function plain(st) {
  return st.fg < 0 && st.bg < 0 && !st.b && !st.d && !st.i && !st.u;
}

function classes(st) {
  const c = [];
  if (st.fg >= 0) c.push(`f${st.fg}`);
  if (st.bg >= 0) c.push(`g${st.bg}`);
  if (st.b) c.push("b");
  if (st.d) c.push("d");
  if (st.i) c.push("i");
  if (st.u) c.push("u");
  return c.join(" ");
}

/** A 256-colour or RGB colour folded onto the 16 themed ones. */
function to16(r, g, b) {
  const max = Math.max(r, g, b);
  if (max < 64) return 0;
  if (max - Math.min(r, g, b) < 40) return max > 200 ? 15 : max > 140 ? 7 : 8;
  const t = max * 0.6;
  return (r >= t ? 1 : 0) + (g >= t ? 2 : 0) + (b >= t ? 4 : 0) + (max > 200 ? 8 : 0);
}

function from256(n) {
  if (n < 16) return n;
  if (n >= 232) {
    const v = 8 + (n - 232) * 10;
    return to16(v, v, v);
  }
  const i = n - 16;
  const level = (x) => (x ? 55 + x * 40 : 0);
  return to16(level(Math.floor(i / 36)), level(Math.floor(i / 6) % 6), level(i % 6));
}

function applySgr(st, paramText) {
  const p = paramText === "" ? [0] : paramText.split(/[;:]/).map((x) => (x === "" ? 0 : Number(x)));
  for (let k = 0; k < p.length; k++) {
    const n = p[k];
    if (n === 0) Object.assign(st, newState());
    else if (n === 1) st.b = true;
    else if (n === 2) st.d = true;
    else if (n === 3) st.i = true;
    else if (n === 4) st.u = true;
    else if (n === 22) { st.b = false; st.d = false; }
    else if (n === 23) st.i = false;
    else if (n === 24) st.u = false;
    else if (n >= 30 && n <= 37) st.fg = n - 30;
    else if (n >= 90 && n <= 97) st.fg = n - 90 + 8;
    else if (n === 39) st.fg = -1;
    else if (n >= 40 && n <= 47) st.bg = n - 40;
    else if (n >= 100 && n <= 107) st.bg = n - 100 + 8;
    else if (n === 49) st.bg = -1;
    else if (n === 38 || n === 48) {
      let colour = -1;
      if (p[k + 1] === 5) { colour = from256(p[k + 2] ?? 0); k += 2; }
      else if (p[k + 1] === 2) { colour = to16(p[k + 2] ?? 0, p[k + 3] ?? 0, p[k + 4] ?? 0); k += 4; }
      if (n === 38) st.fg = colour; else st.bg = colour;
    }
  }
}

function emit(parent, text, st) {
  if (!text) return;
  if (plain(st)) {
    parent.appendChild(document.createTextNode(text));
  } else {
    const span = document.createElement("span");
    span.className = classes(st);
    span.textContent = text;
    parent.appendChild(span);
  }
}

/**
 * Appends `text` (one line, without its newline) to `parent`, interpreting
 * SGR escapes with and updating `st`.
 */
export function appendAnsi(parent, text, st) {
  if (text.indexOf("\x1b") < 0) {
    emit(parent, text, st);
    return;
  }
  let last = 0;
  ESCAPE.lastIndex = 0;
  for (let m = ESCAPE.exec(text); m; m = ESCAPE.exec(text)) {
    emit(parent, text.slice(last, m.index), st);
    if (m[2] === "m") applySgr(st, m[1] || "");
    last = ESCAPE.lastIndex;
  }
  emit(parent, text.slice(last), st);
}
