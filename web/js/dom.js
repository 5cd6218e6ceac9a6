// SPDX-License-Identifier: Apache-2.0
// The only DOM-building helpers of the UI. Text always goes in as text
// (text nodes, textContent): nothing here parses HTML, and the CSP's
// Trusted Types would refuse it anyway.

const SVG_NS = "http://www.w3.org/2000/svg";

/**
 * Creates an element. `props`: class, text, dataset {…}, on {event: fn},
 * any other key is set as an attribute (booleans toggle it; null/undefined/false skip it).
 * Children: strings become text nodes; arrays are flattened; null is skipped.
 * @returns {HTMLElement}
 */
export function h(tag, props = null, ...children) {
  return build(document.createElement(tag), props, children);
}

/** Same as h() for SVG elements. */
export function s(tag, props = null, ...children) {
  return build(document.createElementNS(SVG_NS, tag), props, children);
}

function build(node, props, children) {
  if (props) {
    for (const [key, value] of Object.entries(props)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.setAttribute("class", Array.isArray(value) ? value.filter(Boolean).join(" ") : value);
      else if (key === "text") node.textContent = String(value);
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key === "on") for (const [ev, fn] of Object.entries(value)) node.addEventListener(ev, fn);
      else if (key === "value" && "value" in node) node.value = value;
      else if (key === "checked" || key === "selected" || key === "disabled") node[key] = Boolean(value);
      else if (/^on/i.test(key) || key === "innerHTML" || key === "outerHTML") throw new Error(`h(): ${key} is not allowed`);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(node, children);
  return node;
}

/** Appends children (strings as text) to a node. */
export function append(node, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else if (child instanceof Node) node.appendChild(child);
    else node.appendChild(document.createTextNode(String(child)));
  }
  return node;
}

/** Replaces every child of a node. */
export function replace(node, ...children) {
  node.replaceChildren();
  return append(node, children);
}

/** A deep copy of the first element of <template id="…">. */
export function template(id) {
  const tpl = document.getElementById(id);
  return tpl.content.firstElementChild.cloneNode(true);
}

/** The element marked data-ref="name" inside root. */
export function ref(root, name) {
  return root.querySelector(`[data-ref="${name}"]`);
}

let uid = 0;
/** A document-unique id for label/aria wiring. */
export function nextId(prefix = "f") {
  uid += 1;
  return `${prefix}-${uid}`;
}
