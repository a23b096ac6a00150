// Charts of usage over time: requests, tokens and cost per hour or UTC day, in total or by
// model or user, drawn by uPlot (vendor/, loaded once, when a page first shows a chart).
// Every name is set as text (the legend, the tooltip and the table are built with el());
// styles are set through the CSSOM only, as the page's policy requires.
import { PATHS, api, el, money, number, root, table } from "./core.js";

const RANGES = {
  "24h": { text: "Last 24 hours", per: "hour" },
  "7d": { text: "Last 7 days", per: "hour" },
  "30d": { text: "Last 30 days", per: "UTC day" },
};
const SPLITS = { total: "Total", model: "By model", user: "By user" };
const MEASURES = [
  { field: "requests", title: "Requests", show: number },
  { field: "tokens", title: "Tokens", show: number },
  { field: "cost", title: `Cost (${PATHS.currency})`, show: money, scale: 1e-6 },
];
const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
const COMPACT = new Intl.NumberFormat("en", { notation: "compact", maximumSignificantDigits: 3 });
const BARS_UP_TO = 31; // buckets drawn as bars; more (7 days of hours) as lines

// What each panel last showed (range and split), kept while the page is re-rendered.
const chosen = new Map();
// The panels on screen, drawn again when the theme changes (their colours are the theme's).
const panels = new Set();

let loading = null;

// uPlot and its stylesheet, once; a failed load can be tried again.
function library() {
  if (!loading) {
    loading = new Promise((resolve, reject) => {
      const base = `${PATHS.ui}/static/vendor`;
      document.head.append(el("link", { rel: "stylesheet", href: `${base}/uPlot.min.css` }));
      const script = el("script", { src: `${base}/uPlot.iife.min.js` });
      script.addEventListener("load", () => resolve(window.uPlot));
      script.addEventListener("error", () => {
        loading = null;
        script.remove();
        reject(new Error("The chart library did not load; reload the page to try again."));
      });
      document.head.append(script);
    });
  }
  return loading;
}

// A panel of three charts with its range and split buttons. `scope` is "gateway" (an
// admin's Overview) or "me" (the signed-in key); `splits` the splits offered.
export async function usageCharts(scope, splits) {
  const pick = chosen.get(scope) || { range: "24h", split: "total" };
  chosen.set(scope, pick);
  const error = el("p", { class: "error", role: "alert" });
  const body = el("div", { class: "chart-body" });
  const panel = { body, error, pick, scope, doc: null, plots: [] };
  const buttons = (name, options, current) =>
    el(
      "div",
      { class: "choice", role: "group", "aria-label": name === "range" ? "Range" : "Split" },
      Object.entries(options).map(([value, text]) =>
        el(
          "button",
          {
            type: "button",
            class: "quiet",
            [`data-${name}`]: value,
            "aria-pressed": String(value === current),
            onclick: (event) => choose(panel, name, value, event.currentTarget),
          },
          typeof text === "string" ? text : text.text,
        ),
      ),
    );
  const offered = Object.fromEntries(splits.map((s) => [s, SPLITS[s]]));
  const section = el(
    "section",
    { class: "usage-charts", "aria-label": "Usage over time" },
    el("div", { class: "chart-controls" }, buttons("range", RANGES, pick.range), buttons("split", offered, pick.split)),
    error,
    body,
  );
  panel.section = section;
  forgetGone();
  panels.add(panel);
  await load(panel);
  return section;
}

async function choose(panel, name, value, button) {
  panel.pick[name] = value;
  for (const other of button.parentElement.children) other.setAttribute("aria-pressed", String(other === button));
  await load(panel);
}

async function load(panel) {
  const { range, split } = panel.pick;
  const asked = (panel.asked = (panel.asked || 0) + 1); // (only the last click's answer shows)
  panel.section?.setAttribute("aria-busy", "true");
  try {
    const [doc, uPlot] = await Promise.all([
      api("GET", `${PATHS.admin}/series?range=${range}&split=${split}&scope=${panel.scope}`),
      library(),
    ]);
    if (asked !== panel.asked) return;
    panel.doc = doc;
    panel.uPlot = uPlot;
    panel.error.textContent = "";
    show(panel);
  } catch (err) {
    if (asked !== panel.asked) return;
    // (no charts of another range or split under buttons that name this one)
    for (const plot of panel.plots) plot.destroy();
    panel.plots = [];
    panel.doc = null;
    panel.body.replaceChildren();
    panel.error.textContent = `Could not show the charts: ${err.message}`;
  } finally {
    if (asked === panel.asked) panel.section?.removeAttribute("aria-busy");
  }
}

// The panel's legend and charts for its last answer (drawn once their boxes have a size).
function show(panel) {
  for (const plot of panel.plots) plot.destroy();
  panel.plots = [];
  const { doc } = panel;
  const range = RANGES[doc.range];
  if (!doc.groups.length) {
    panel.body.replaceChildren(el("p", { class: "empty" }, `No requests in the ${range.text.toLowerCase()}.`));
    return;
  }
  const lines = seriesOf(doc);
  const hidden = new Set();
  const legend = el(
    "ul",
    { class: "chart-legend", "aria-label": "Series (a button shows or hides one)" },
    lines.map((line, i) => {
      const swatch = el("span", { class: "swatch" });
      swatch.style.background = colour(line.colour);
      return el(
        "li",
        {},
        el(
          "button",
          {
            type: "button",
            class: "quiet",
            title: line.name, // (whole, when its text is cut)
            "aria-pressed": "true",
            onclick: (event) => {
              const on = hidden.has(i);
              if (on) hidden.delete(i);
              else hidden.add(i);
              event.currentTarget.setAttribute("aria-pressed", String(on));
              for (const plot of panel.plots) plot.toggle(line, on);
            },
          },
          swatch,
          el("span", { class: "clip" }, line.name),
        ),
      );
    }),
  );
  const note = el("p", { class: "muted chart-note" }, `${range.text}, per ${range.per}; times in UTC.`);
  const figures = MEASURES.map((measure) => figure(panel, doc, lines, measure));
  panel.body.replaceChildren(legend, note, el("div", { class: "grid charts" }, figures));
}

// The lines the answer holds: one per group, and the errors of all of them.
function seriesOf(doc) {
  const lines = doc.groups.map((g, i) => ({
    name: groupName(g, doc),
    group: g,
    colour: doc.split === "total" ? "--bar" : `--c${(i % 6) + 1}`,
  }));
  const errors = doc.starts.map((_, i) => doc.groups.reduce((sum, g) => sum + g.errors[i], 0));
  lines.push({ name: "Errors", errors: true, group: { requests: errors }, colour: "--bad" });
  return lines;
}

function groupName(group, doc) {
  if (group.other) return `Other ${doc.split === "user" ? "users" : "models"}`;
  if (doc.split === "total") return doc.scope === "me" ? "This key" : "All keys";
  if (doc.split === "model" && group.name === "") return "(no model)";
  return group.name;
}

function figure(panel, doc, lines, measure) {
  const range = RANGES[doc.range];
  const title = `${measure.title} per ${range.per === "hour" ? "hour" : "day"}`;
  // (errors are requests: they are drawn on the requests chart only)
  const shown = lines.filter((line) => !line.errors || measure.field === "requests");
  const values = shown.map((line) => line.group[line.errors ? "requests" : measure.field]);
  const box = el("div", { class: "chart-box", role: "img", "aria-label": summary(doc, shown, values, measure, title) });
  const fig = el(
    "figure",
    { class: "card chart-card" },
    el("figcaption", {}, `${title} (UTC)`),
    box,
    el("details", {}, el("summary", {}, "As a table"), figureTable(doc, shown, values, measure)),
  );
  let plot = null;
  const draw = () => {
    const width = box.clientWidth;
    if (!width) return;
    if (plot) return plot.setSize({ width, height: chartHeight() });
    plot = makePlot(panel.uPlot, doc, shown, values, measure, box, width);
    box.dataset.drawn = "true";
  };
  const watcher = new ResizeObserver(draw);
  watcher.observe(box);
  panel.plots.push({
    destroy: () => {
      watcher.disconnect();
      plot?.destroy();
    },
    toggle: (line, on) => {
      const i = shown.indexOf(line);
      if (plot && i >= 0) plot.setSeries(i + 1, { show: on });
    },
  });
  return fig;
}

function chartHeight() {
  return innerWidth < 600 ? 160 : 190;
}

function makePlot(uPlot, doc, shown, values, measure, box, width) {
  const scale = measure.scale || 1;
  const bars = doc.starts.length <= BARS_UP_TO;
  // (the total and the errors as bars; a split's groups as lines, easier told apart)
  const barred = (line) => bars && (doc.split === "total" || line.errors);
  const pad = bars ? doc.bucket_seconds / 2 : 0;
  const muted = colour("--muted");
  // (an hour's count holds for the hour: a step, not a slope to the next one)
  const steps = uPlot.paths.stepped({ align: 1 });
  const grid = { stroke: colour("--line"), width: 1 };
  const series = shown.map((line) => {
    const stroke = colour(line.colour);
    const one = { label: line.name, stroke, width: 2, points: { show: false } };
    if (barred(line)) {
      one.fill = stroke;
      one.paths = uPlot.paths.bars({ size: [line.errors ? 0.5 : 0.8, 48] });
    } else if (line.errors) {
      one.dash = [4, 3]; // (a line of errors, dashed, over the lines of requests)
    } else if (bars) {
      one.points = { show: true, size: 5, fill: stroke }; // (a point a day: each one seen)
    } else {
      one.paths = steps;
      if (doc.split === "total") one.fill = translucent(stroke);
    }
    return one;
  });
  const opts = {
    width,
    height: chartHeight(),
    tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),
    legend: { show: false },
    cursor: { drag: { x: false, y: false }, points: { size: 6 } },
    scales: {
      // (bars: half a bucket of room either side, so the first and last show whole)
      x: { time: true, range: () => [doc.starts[0] - pad, doc.starts[doc.starts.length - 1] + pad] },
      y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] }, // (from zero, always)
    },
    axes: [
      { stroke: muted, grid, ticks: grid, space: 56, values: (u, splits) => splits.map((t) => tick(t, doc.bucket_seconds)) },
      { stroke: muted, grid, ticks: grid, size: labelRoom, values: (u, splits) => splits.map((v) => COMPACT.format(v)) },
    ],
    series: [{}, ...series],
    plugins: [tooltip(doc, shown, values, measure)],
  };
  // (a bar of nothing is left out, rather than drawn as a line along the axis)
  const data = [
    doc.starts,
    ...values.map((column, n) => column.map((v) => (v ? v * scale : barred(shown[n]) ? null : 0))),
  ];
  return new uPlot(opts, data, box);
}

// The y axis as wide as its longest label (about 7 px a character at its 12 px font).
function labelRoom(u, values) {
  const longest = Math.max(1, ...(values || []).map((v) => String(v).length));
  return 18 + 7 * longest;
}

// A hover tip: the bucket's time in UTC and each shown line's exact figure, as text.
function tooltip(doc, shown, values, measure) {
  let tip = null;
  return {
    hooks: {
      init: (u) => {
        tip = el("div", { class: "chart-tip", hidden: true });
        u.over.append(tip);
      },
      setCursor: (u) => {
        const i = u.cursor.idx;
        if (i === null || i === undefined || u.cursor.left < 0) {
          tip.hidden = true;
          return;
        }
        const rows = shown
          .map((line, n) => [line, values[n][i], u.series[n + 1].show])
          .filter(([, , on]) => on)
          .map(([line, v]) => el("div", {}, el("span", { class: "clip" }, line.name), `: ${measure.field === "requests" || line.errors ? number(v) : measure.show(v)}`));
        tip.replaceChildren(el("strong", {}, when(doc.starts[i], doc.bucket_seconds)), ...rows);
        tip.hidden = false;
        const room = u.over.clientWidth - tip.offsetWidth;
        const left = u.cursor.left + 12 > room ? u.cursor.left - tip.offsetWidth - 12 : u.cursor.left + 12;
        tip.style.left = `${Math.max(0, Math.min(room, left))}px`;
        tip.style.top = `${Math.max(0, u.cursor.top - tip.offsetHeight - 8)}px`;
      },
    },
  };
}

// The figures as a table, for screen readers and for anyone who wants the numbers:
// the buckets with any request (the rest are zeros).
function figureTable(doc, shown, values, measure) {
  const rows = doc.starts.map((start, i) => ({ start, i })).filter(({ i }) => values.some((column) => column[i]));
  const columns = [
    { title: "Time (UTC)", keep: true, cell: (r) => when(r.start, doc.bucket_seconds) },
    ...shown.map((line, n) => ({
      title: el("span", { class: "clip", title: line.name }, line.name),
      num: true,
      cell: (r) => (measure.field === "requests" || line.errors ? number(values[n][r.i]) : measure.show(values[n][r.i])),
    })),
  ];
  return table(columns, rows, "No requests.");
}

// "Requests per hour: 42 in the last 24 hours, the most (9) at 2026-12-07 14:00 UTC."
function summary(doc, shown, values, measure, title) {
  const range = RANGES[doc.range].text.toLowerCase();
  const total = (column) => column.reduce((a, b) => a + b, 0);
  const show = (line, v) => (measure.field === "requests" || line.errors ? number(v) : measure.show(v));
  const parts = shown.map((line, n) => `${line.name} ${show(line, total(values[n]))}`);
  return `${title}, ${range}, times in UTC: ${parts.join("; ")}. The table below gives each ${RANGES[doc.range].per}.`;
}

// A time axis label: "14:00", the day ("7 Dec") at midnight and on a chart of days.
function tick(t, bucket) {
  const d = new Date(t * 1000);
  const day = `${d.getUTCDate()} ${MONTHS[d.getUTCMonth()]}`;
  if (bucket >= 86400 || d.getUTCHours() === 0) return day;
  return `${String(d.getUTCHours()).padStart(2, "0")}:00`;
}

// A bucket in full: "2026-12-07 14:00 UTC" or "2026-12-07 (UTC)".
function when(t, bucket) {
  const iso = new Date(t * 1000).toISOString();
  return bucket >= 86400 ? `${iso.slice(0, 10)} (UTC)` : `${iso.slice(0, 10)} ${iso.slice(11, 16)} UTC`;
}

// A colour of the current theme, from app.css's variables.
function colour(name) {
  return getComputedStyle(root).getPropertyValue(name).trim() || "#888";
}

function translucent(hex) {
  return /^#[0-9a-f]{6}$/i.test(hex) ? `${hex}33` : hex;
}

// The theme changed (the header's button, or the system's): every chart takes its colours.
function redrawAll() {
  forgetGone();
  for (const panel of panels) if (panel.doc) show(panel);
}

// Panels of pages no longer shown: their charts let go (observers, canvases).
function forgetGone() {
  for (const panel of panels) {
    if (panel.section.isConnected) continue;
    for (const plot of panel.plots) plot.destroy();
    panels.delete(panel);
  }
}

new MutationObserver(redrawAll).observe(root, { attributes: true, attributeFilter: ["data-theme"] });
matchMedia("(prefers-color-scheme: dark)").addEventListener("change", redrawAll);
