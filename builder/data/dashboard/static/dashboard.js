// The fleet page: polls /api/nodes every 2 s and redraws one table row per node (a card on narrow screens, by CSS).
// Everything from a row is put into the page with textContent: node names and error texts are never parsed as HTML.
"use strict";

const POLL_MS = 2000;
const openTimelines = new Set(); // nodes whose phase list the reader unfolded: kept open across redraws

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function clock(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString([], {hour: "2-digit", minute: "2-digit", second: "2-digit"});
}

function ago(seconds) {
  if (seconds < 0) seconds = 0;
  if (seconds < 90) return Math.round(seconds) + " s ago";
  if (seconds < 5400) return Math.round(seconds / 60) + " min ago";
  if (seconds < 129600) return Math.round(seconds / 3600) + " h ago";
  return Math.round(seconds / 86400) + " d ago";
}

function duration(seconds) {
  return seconds < 90 ? Math.round(seconds) + " s" : Math.round(seconds / 60) + " min";
}

// "ready", "failed", "waiting" (never seen) or "booting": drives the row's colour only
function stateOf(node) {
  if (node.phase === "ready") return "ready";
  if (node.last_error) return "failed";
  if (!node.phase) return "waiting";
  return "booting";
}

function cell(label, className) {
  const td = element("td", null, "cell-" + className);
  td.dataset.label = label; // shown before the value on narrow screens (a static label, never row data)
  return td;
}

function nodeCell(node) {
  const td = cell("Node", "node");
  td.append(element("strong", node.node || "?"));
  return td;
}

function phaseCell(node) {
  const td = cell("Phase", "phase");
  const progress = node.progress || {done: 0, total: 0, steps: []};
  td.append(element("span", node.phase || "not seen yet", "phase-name"));
  const bar = element("progress");
  bar.max = progress.total || 1;
  bar.value = progress.done;
  td.append(bar, element("small", progress.done + " of " + progress.total + " phases", "phase-count"));
  const reached = progress.steps.filter((step) => step.at !== null);
  if (reached.length) {
    const details = element("details");
    details.open = openTimelines.has(node.node);
    details.addEventListener("toggle", () => {
      if (details.open) openTimelines.add(node.node); else openTimelines.delete(node.node);
    });
    details.append(element("summary", "when"));
    const list = element("ol", null, "timeline");
    let previous = null;
    for (const step of reached) {
      const took = previous === null ? "" : " (+" + duration(step.at - previous) + ")";
      list.append(element("li", step.phase + " " + clock(step.at) + took));
      previous = step.at;
    }
    details.append(list);
    td.append(details);
  }
  return td;
}

function cardCell(node) {
  const td = cell("Card", "card");
  if (node.card_generation === null && node.generation === null) {
    td.textContent = "–";
    return td;
  }
  if (node.card_generation === null) {
    td.textContent = "none reported yet (newest: " + node.generation + ")";
    return td;
  }
  const line = element("span", "generation " + node.card_generation);
  if (node.newest_card === true) {
    line.append(" ", element("span", "newest", "badge newest"));
  } else if (node.newest_card === false) {
    const newest = node.generation !== null ? " (newest " + node.generation + ")" : "";
    line.append(" ", element("span", "old" + newest + ": reflash", "badge old"));
  }
  td.append(line);
  return td;
}

function errorCell(node) {
  const td = cell("Last error", "error");
  if (!node.last_error) {
    td.textContent = "–";
    return td;
  }
  td.append(element("span", node.last_error, "error-text"));
  if (node.fix) td.append(element("span", "Fix: " + node.fix, "fix-text"));
  return td;
}

function updatedCell(node, now) {
  const td = cell("Updated", "updated");
  if (typeof node.updated === "number") {
    td.textContent = ago(now - node.updated);
    td.title = new Date(node.updated * 1000).toLocaleString();
  } else {
    td.textContent = node.updated || "–";
  }
  if (node.source) td.append(element("small", node.source, "source"));
  return td;
}

function textCell(label, className, value) {
  const td = cell(label, className);
  td.textContent = value === null || value === undefined || value === "" ? "–" : value;
  return td;
}

function row(node, now) {
  const tr = element("tr");
  tr.dataset.state = stateOf(node);
  tr.append(nodeCell(node), textCell("Role", "role", node.role), phaseCell(node),
    textCell("Address", "address", node.address), textCell("Arch", "arch", node.arch),
    textCell("OS", "os", node.os), cardCell(node), errorCell(node), updatedCell(node, now));
  return tr;
}

function summary(nodes) {
  const count = (state) => nodes.filter((node) => stateOf(node) === state).length;
  const parts = [nodes.length + (nodes.length === 1 ? " node" : " nodes"), count("ready") + " ready"];
  if (count("failed")) parts.push(count("failed") + " with an error");
  if (count("booting")) parts.push(count("booting") + " on their way");
  if (count("waiting")) parts.push(count("waiting") + " not seen yet");
  return parts.join(" · ");
}

function showBanner(text) {
  const banner = document.getElementById("banner");
  banner.textContent = text || "";
  banner.hidden = !text;
}

function render(answer) {
  const nodes = Array.isArray(answer.nodes) ? answer.nodes : [];
  document.getElementById("cluster").textContent = answer.cluster || "";
  document.title = "Fleet " + (answer.cluster || "") + " · pi-image";
  document.getElementById("summary").textContent = summary(nodes);
  document.getElementById("rows").replaceChildren(...nodes.map((node) => row(node, answer.now)));
  document.getElementById("empty").hidden = nodes.length > 0;
  document.getElementById("nodes").hidden = nodes.length === 0;
  const known = answer.fetched ? " (showing what was known at " + clock(answer.fetched) + ")" : "";
  showBanner(answer.error ? answer.error + known : "");
  document.getElementById("refreshed").textContent = answer.fetched
    ? "Updated " + clock(answer.fetched) + " · refreshes every " + POLL_MS / 1000 + " s"
    : "";
}

async function poll() {
  try {
    const reply = await fetch("/api/nodes", {cache: "no-store"});
    if (!reply.ok) throw new Error("HTTP " + reply.status);
    render(await reply.json());
  } catch (err) {
    showBanner("The dashboard does not answer (was `pi-image dashboard` stopped?); showing the last known state. "
      + "Retrying every " + POLL_MS / 1000 + " s.");
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
