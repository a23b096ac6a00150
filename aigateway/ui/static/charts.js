// Charts of usage over time.
import { PATHS, el, money } from "./core.js";

// An SVG bar chart of requests per hour (errors on top), built with DOM calls.
// One chart per measure, side by side; a period with no request says so instead.
export function charts(series, hours, title) {
  if (!series.length) return el("p", { class: "empty" }, `No requests in the ${title}.`);
  return el(
    "div",
    { class: "grid charts" },
    el("div", { class: "card" }, chart(series, hours, `Requests per hour, ${title}`)),
    el("div", { class: "card" }, chart(series, hours, `Tokens per hour, ${title}`, "tokens")),
    el("div", { class: "card" }, chart(series, hours, `Cost per hour (${PATHS.currency}), ${title}`, "cost", money)),
  );
}

export function chart(series, hours, label, field = "requests", show = String) {
  const NS = "http://www.w3.org/2000/svg";
  const width = 400;
  const height = 140;
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", label);
  const now = Date.now() / 1000;
  const first = Math.floor((now - hours * 3600) / 3600) * 3600;
  const byStart = new Map(series.map((b) => [b.start, b]));
  const max = Math.max(1, ...series.map((b) => b[field]));
  const slot = width / (hours + 1);
  for (let i = 0; i <= hours; i++) {
    const bucket = byStart.get(first + i * 3600);
    if (!bucket) continue;
    const h = ((height - 14) * bucket[field]) / max;
    const e = field === "requests" ? ((height - 14) * bucket.errors) / max : 0;
    for (const [cls, top, size] of [["bar", height - 14 - h, h - e], ["err", height - 14 - e, e]]) {
      if (size <= 0) continue;
      const rect = document.createElementNS(NS, "rect");
      rect.setAttribute("class", cls);
      rect.setAttribute("x", String(i * slot + 1));
      rect.setAttribute("y", String(top));
      rect.setAttribute("width", String(Math.max(1, slot - 2)));
      rect.setAttribute("height", String(size));
      const tip = document.createElementNS(NS, "title");
      tip.textContent = `${new Date(bucket.start * 1000).toISOString().slice(0, 13)}:00 UTC: ${bucket.requests} requests, ${bucket.errors} errors, ${bucket.tokens} tokens, cost ${money(bucket.cost)}`;
      rect.append(tip);
      svg.append(rect);
    }
  }
  const caption = document.createElementNS(NS, "text");
  caption.setAttribute("x", "2");
  caption.setAttribute("y", String(height - 2));
  caption.textContent = `${label} (highest ${show(max)})`;
  svg.append(caption);
  return svg;
}
