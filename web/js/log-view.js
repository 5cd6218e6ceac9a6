// SPDX-License-Identifier: Apache-2.0
// The live log of an execution.
//
// Opens from the tail (a 100 MB log shows its end at once: `before` pages
// count their 2 MiB from the end), follows new output with the long-poll
// (`after` = the last seq seen, so nothing is missed or repeated), pages
// back on scroll up, and keeps the DOM bounded: at most `maxLines` lines
// are rendered. While following, the oldest lines are dropped (a "load
// earlier" button brings them back); when the reader is scrolled away, new
// output is not rendered ("detached") until they jump back to the end.
//
// Line elements carry expandos: _seq/_off (where the line starts: chunk seq
// and offset in its data), _key (server:stream) and _srv (server id).

import { get } from "./api.js";
import { appendAnsi, newState } from "./ansi.js";
import { h, replace } from "./dom.js";
import { FINISHED, statusLabel } from "./format.js";
import { sleep } from "./longpoll.js";

const TOP = 9007199254740991; // Number.MAX_SAFE_INTEGER: `before` this = the very end
const STREAM_CLASS = { stdout: "ln", stderr: "ln e", system: "ln s" };

export class LogView {
  /**
   * @param {{executionId: number, targets: {server_id: number|null, server_name: string}[], signal: AbortSignal,
   *          onStatus?: (status: string) => void, onSystem?: () => void, maxLines?: number}} o
   */
  constructor({ executionId, targets, signal, onStatus, onSystem, maxLines = 5000 }) {
    this.url = `/api/v1/executions/${executionId}/log`;
    this.signal = signal;
    this.onStatus = onStatus || (() => {});
    this.onSystem = onSystem || (() => {});
    this.maxLines = maxLines;
    this.names = new Map(targets.map((t) => [t.server_id, t.server_name]));
    this.multi = targets.length > 1;
    this.filter = "";
    this.follow = true;
    this.gen = 0;
    this.status = null;
    this.resetState();
    this.build(executionId, targets);
  }

  resetState() {
    this.ctx = { open: null, states: new Map() };
    this.topSeq = 0; // seq/offset where the first rendered line starts (0: nothing rendered)
    this.topOff = 0;
    this.liveSeq = 0; // `after` of the next poll
    this.detached = false;
    this.complete = false;
    this.loadingEarlier = false;
  }

  // ---------------------------------------------------------------- DOM

  build(executionId, targets) {
    const filter = h("select", { "aria-label": "Show output of", on: { change: () => this.setFilter(filter.value) } },
      h("option", { value: "", text: "All servers" }),
      targets.filter((t) => t.server_id !== null).map((t) => h("option", { value: t.server_id, text: t.server_name })));
    this.followBox = h("input", { type: "checkbox", id: `follow-${executionId}`, checked: true,
      on: { change: () => this.setFollow(this.followBox.checked) } });
    const wrapBox = h("input", { type: "checkbox", id: `wrap-${executionId}`,
      on: { change: () => this.log.classList.toggle("wrap", wrapBox.checked) } });
    this.log = h("div", { class: ["log", this.multi && "multi"], role: "log", "aria-label": "Execution output", "aria-live": "off" });
    this.earlier = h("button", { type: "button", class: "link", text: "Load earlier output", hidden: true,
      on: { click: () => this.loadEarlier() } });
    this.state = h("div", { class: "log-status", "aria-live": "polite" });
    this.scroller = h("div", { class: "log-scroll", tabindex: "0", "aria-label": "Log output, scrollable" },
      h("div", { class: "log-earlier" }, this.earlier), this.log, this.state);
    this.jump = h("button", { type: "button", class: "jump-latest primary small", hidden: true, text: "Jump to the latest output ↓",
      on: { click: () => this.setFollow(true) } });
    this.lastScrollTop = 0;
    this.scroller.addEventListener("scroll", () => this.onScroll(), { passive: true });
    this.node = h("div", null,
      h("div", { class: "log-toolbar" },
        (targets.length > 1 ? filter : null),
        h("label", { class: "check", for: this.followBox.id }, this.followBox, h("span", { text: "Follow output" })),
        h("label", { class: "check", for: wrapBox.id }, wrapBox, h("span", { text: "Wrap lines" })),
        h("a", { class: "button small", href: `/api/v1/executions/${executionId}/log.txt`, download: `execution-${executionId}.log.txt`, text: "Download log.txt" })),
      h("div", { class: "log-box" }, this.scroller, this.jump));
  }

  get lineCount() {
    return this.log.childElementCount;
  }

  newLine(chunk, off) {
    const el = document.createElement("div");
    el.className = STREAM_CLASS[chunk.stream] || "ln";
    el._seq = chunk.seq;
    el._off = off;
    el._srv = chunk.server_id;
    el._key = `${chunk.server_id}:${chunk.stream}`;
    if (this.multi) el.dataset.srv = this.names.get(chunk.server_id) ?? "";
    if (this.filter && chunk.server_id !== null && String(chunk.server_id) !== this.filter) el.hidden = true;
    return el;
  }

  /**
   * Renders chunks into `out` (a fragment), keeping only about the last `limit`
   * lines. Carries the open line and SGR states in ctx.
   */
  renderChunks(chunks, out, ctx, limit) {
    let [index, offset] = findStart(chunks, limit);
    if (index > 0 || offset > 0) ctx.open = null; // text was skipped: nothing to continue
    let created = 0;
    let system = false;
    for (let i = index; i < chunks.length; i++) {
      const c = chunks[i];
      const data = c.data;
      const key = `${c.server_id}:${c.stream}`;
      if (c.stream === "system") system = true;
      let st = ctx.states.get(key);
      if (!st) ctx.states.set(key, (st = newState()));
      const start = i === index ? offset : 0;
      let pos = start;
      for (;;) {
        const nl = data.indexOf("\n", pos);
        const end = nl < 0 ? data.length : nl;
        if (nl < 0 && pos === end) break;
        let el;
        if (pos === start && ctx.open && ctx.open.key === key) {
          el = ctx.open.el;
        } else {
          el = this.newLine(c, pos);
          out.appendChild(el);
          created++;
        }
        appendAnsi(el, carriage(data.slice(pos, end)), st);
        if (nl < 0) {
          ctx.open = { el, key };
          break;
        }
        ctx.open = null;
        pos = nl + 1;
      }
      offset = 0;
    }
    return { created, system };
  }

  /** Removes the first n lines (one range operation). */
  dropTop(n) {
    if (n <= 0) return;
    const range = document.createRange();
    range.setStartBefore(this.log.firstElementChild);
    range.setEndAfter(this.log.children[Math.min(n, this.lineCount) - 1]);
    range.deleteContents();
    this.syncTop();
  }

  dropBottom(n) {
    if (n <= 0) return;
    const range = document.createRange();
    range.setStartBefore(this.log.children[Math.max(0, this.lineCount - n)]);
    range.setEndAfter(this.log.lastElementChild);
    range.deleteContents();
    this.ctx.open = null;
  }

  syncTop() {
    const first = this.log.firstElementChild;
    if (first) {
      this.topSeq = first._seq;
      this.topOff = first._off;
    }
    this.earlier.hidden = !first || (this.topSeq <= 1 && this.topOff === 0);
  }

  atBottom() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 24;
  }

  scrollToEnd() {
    this.scroller.scrollTop = this.scroller.scrollHeight;
    this.lastScrollTop = this.scroller.scrollTop;
  }

  // ---------------------------------------------------------------- data

  /**
   * Shows the end of the log (the first view, and "jump to latest"): the last
   * two chunks at once, then, when they hold fewer than maxLines lines, the
   * page before them (at most 2 MiB) to fill the view.
   * @param {Promise<object>} [first] the answer of tailRequest(), when already asked
   */
  async loadTail(first) {
    this.resetState();
    replace(this.log);
    this.setState("Loading output…");
    const page = await (first || tailRequest(this.url, this.signal));
    const frag = document.createDocumentFragment();
    const { system } = this.renderChunks(page.chunks, frag, this.ctx, this.maxLines);
    this.log.appendChild(frag);
    this.liveSeq = page.next_seq;
    this.complete = page.complete;
    this.syncTop();
    this.scrollToEnd();
    this.jump.hidden = true;
    this.noteStatus(page.status, system);
    if (this.lineCount < this.maxLines && !this.earlier.hidden) await this.fillTop();
  }

  /** Prepends the output before the first line until the view holds maxLines lines (one request). */
  async fillTop() {
    const cut = this.topOff > 0;
    const page = await get(this.url, { before: cut ? this.topSeq + 1 : this.topSeq, limit: 5000 }, this.signal);
    const chunks = page.chunks.map((c) => (cut && c.seq === this.topSeq ? { ...c, data: c.data.slice(0, this.topOff) } : c));
    this.prepend(chunks, this.maxLines - this.lineCount);
    if (this.follow) this.scrollToEnd();
  }

  /** Renders older chunks above the first line (at most `limit` lines), keeping what the reader sees in place. */
  prepend(chunks, limit) {
    const ctx = { open: null, states: new Map() };
    const frag = document.createDocumentFragment();
    this.renderChunks(chunks, frag, ctx, Math.max(1, limit));
    const first = this.log.firstElementChild;
    if (ctx.open && first && ctx.open.key === first._key) {
      ctx.open.el.append(...first.childNodes); // the line continued across the page boundary
      first.remove();
    }
    const height = this.scroller.scrollHeight;
    this.log.insertBefore(frag, this.log.firstChild);
    this.scroller.scrollTop += this.scroller.scrollHeight - height;
    this.lastScrollTop = this.scroller.scrollTop;
    this.syncTop();
  }

  /** Starts: the tail, then the long-poll. */
  async start(first) {
    try {
      await this.loadTail(first);
    } catch (err) {
      if (this.signal.aborted) return;
      this.setState(`Could not load the output: ${err.message}`);
    }
    if (!this.complete) this.restart();
  }

  restart() {
    this.gen += 1;
    this.pollCtl?.abort();
    this.poll(this.gen);
  }

  async poll(gen) {
    let backoff = 0;
    while (!this.signal.aborted && gen === this.gen) {
      const ctl = new AbortController();
      this.pollCtl = ctl;
      const abort = () => ctl.abort();
      this.signal.addEventListener("abort", abort, { once: true });
      let page;
      try {
        // Detached: only the status matters (an `after` beyond the end parks until it changes).
        page = await get(this.url, { after: this.detached ? TOP : this.liveSeq, wait: 25 }, ctl.signal);
      } catch (err) {
        if (ctl.signal.aborted || gen !== this.gen || err.status === 401) return;
        backoff = Math.min(backoff ? backoff * 2 : 1000, 30000);
        this.setState(`Connection lost (${err.message}); retrying in ${Math.round(backoff / 1000)} s…`);
        await sleep(backoff, this.signal);
        continue;
      } finally {
        this.signal.removeEventListener("abort", abort);
      }
      if (gen !== this.gen) return;
      backoff = 0;
      if (this.detached) {
        this.noteStatus(page.status, false);
        if (FINISHED.has(page.status)) return;
        continue;
      }
      this.append(page);
      if (page.complete) {
        this.complete = true;
        this.noteStatus(page.status, false);
        return;
      }
    }
  }

  /** New output from the poll. */
  append(page) {
    const { chunks } = page;
    let system = false;
    if (chunks.length) {
      const incoming = countNewlines(chunks, this.maxLines + 1);
      if (!this.follow && this.lineCount + incoming > this.maxLines) {
        // The reader is looking at older lines: do not drop them under their eyes.
        this.detach();
        this.noteStatus(page.status, chunks.some((c) => c.stream === "system"));
        return;
      }
      const frag = document.createDocumentFragment();
      ({ system } = this.renderChunks(chunks, frag, this.ctx, this.maxLines));
      this.log.appendChild(frag);
      const over = this.lineCount - this.maxLines;
      if (over > 0) this.dropTop(over);
      else if (!this.topSeq) this.syncTop();
      if (this.follow) this.scrollToEnd();
    }
    this.liveSeq = page.next_seq;
    this.noteStatus(page.status, system);
  }

  detach() {
    if (this.detached) return;
    this.detached = true;
    this.jump.hidden = false;
    this.restart();
  }

  /** Pages back: the chunks before the first rendered line. */
  async loadEarlier() {
    if (this.loadingEarlier || this.earlier.hidden) return;
    this.loadingEarlier = true;
    this.earlier.textContent = "Loading earlier output…";
    try {
      const cut = this.topOff > 0;
      const page = await get(this.url, { before: cut ? this.topSeq + 1 : this.topSeq, limit: 2000 }, this.signal);
      const chunks = page.chunks.map((c) => (cut && c.seq === this.topSeq ? { ...c, data: c.data.slice(0, this.topOff) } : c));
      this.prepend(chunks, Math.max(500, Math.floor(this.maxLines / 2)));
      const over = this.lineCount - this.maxLines;
      if (over > 0) {
        this.setFollowBox(false);
        this.dropBottom(over);
        this.detach();
      }
    } catch (err) {
      if (!this.signal.aborted) this.setState(`Could not load earlier output: ${err.message}`);
    } finally {
      this.loadingEarlier = false;
      this.earlier.textContent = "Load earlier output";
    }
  }

  // ---------------------------------------------------------------- UI state

  setFollowBox(on) {
    this.follow = on;
    this.followBox.checked = on;
  }

  async setFollow(on) {
    this.setFollowBox(on);
    if (!on) return;
    if (this.detached) {
      try {
        await this.loadTail();
      } catch (err) {
        this.setState(`Could not load the output: ${err.message}`);
      }
      if (!this.complete) this.restart();
    } else {
      this.scrollToEnd();
    }
  }

  setFilter(value) {
    this.filter = value;
    for (const el of this.log.children) el.hidden = Boolean(value) && el._srv !== null && String(el._srv) !== value;
    if (this.follow) this.scrollToEnd();
  }

  onScroll() {
    const top = this.scroller.scrollTop;
    const movedUp = top < this.lastScrollTop - 2;
    this.lastScrollTop = top;
    if (movedUp && this.follow && !this.atBottom()) this.setFollowBox(false);
    else if (!this.follow && !this.detached && this.atBottom()) this.setFollowBox(true);
    if (top < 120 && !this.earlier.hidden) this.loadEarlier();
  }

  noteStatus(status, system) {
    const changed = status !== this.status;
    this.status = status;
    if (changed) this.onStatus(status);
    if (system) this.onSystem();
    const empty = this.lineCount === 0;
    if (FINISHED.has(status)) {
      this.setState(this.detached ? `${statusLabel(status)}. Jump to the end to see the last lines.`
        : `${empty ? "No output. " : ""}End of log: ${statusLabel(status).toLowerCase()}.`);
    } else if (status === "queued") {
      this.setState("Queued: waiting to start…");
    } else {
      this.setState(empty ? "Running: waiting for output…" : "Running…");
    }
  }

  setState(text) {
    this.state.textContent = text;
  }
}

/**
 * The last two chunks of a log: the first thing an execution page asks for
 * (exported so the page can ask while it loads the execution itself).
 */
export function tailRequest(url, signal) {
  return get(url, { before: TOP, limit: 2 }, signal);
}

/** "a\rb" (a progress bar redrawn) -> "b"; a trailing \r (CRLF) is dropped. */
function carriage(text) {
  if (text.indexOf("\r") < 0) return text;
  const t = text.endsWith("\r") ? text.slice(0, -1) : text;
  const i = t.lastIndexOf("\r");
  return i < 0 ? t : t.slice(i + 1);
}

/** Newlines in chunks, counting no further than `cap`. */
function countNewlines(chunks, cap) {
  let n = 0;
  for (const c of chunks) {
    for (let p = c.data.indexOf("\n"); p >= 0 && n < cap; p = c.data.indexOf("\n", p + 1)) n++;
    if (n >= cap) break;
  }
  return n;
}

/**
 * Where to start rendering so that about `limit` lines remain: [chunk index,
 * offset in its data] just after the limit-th newline from the end.
 */
function findStart(chunks, limit) {
  let need = limit;
  for (let i = chunks.length - 1; i >= 0; i--) {
    const d = chunks[i].data;
    let p = d.length;
    if (i === chunks.length - 1 && d.endsWith("\n")) p -= 1; // the last line's own newline
    while (p > 0) {
      p = d.lastIndexOf("\n", p - 1);
      if (p < 0) break;
      need -= 1;
      if (need === 0) return p + 1 < d.length ? [i, p + 1] : [i + 1, 0];
    }
  }
  return [0, 0];
}
