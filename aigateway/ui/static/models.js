// The Models page: the models a key may use with their prices; admins set and remove prices.
import { PATHS, api, el, money, named, number, openBelow, stacked, state, table, refresh } from "./core.js";
import { field, toMicro } from "./forms.js";

export async function modelsView(view) {
  const isAdmin = state.me.key.role === "admin";
  const doc = await api("GET", `${PATHS.admin}/models`);
  const priceCell = (m) => {
    const p = m.price;
    const text = priceText(p);
    if (!isAdmin) return el("span", {}, text);
    const edit = el("button", { type: "button", class: "quiet", "data-action": "price", "aria-label": `Set price of ${m.name}` }, "Set price");
    edit.addEventListener("click", () => priceForm(m, edit.closest("tr")));
    // (the pattern that priced it, cut like any name when long)
    return el("div", {}, el("span", { class: "wrap" }, text), p ? stacked(`by ${p.pattern}`) : null, edit);
  };
  view.append(
    el("h1", {}, "Models"),
    el("p", { class: "muted" }, `Prices in ${doc.currency}. A model no price matches is free.`),
    table(
      [
        { title: "Model", wide: true, cell: (m) => m.name },
        { title: "Family", cell: (m) => m.family ?? "" },
        { title: "Parameters", cell: (m) => m.parameter_size ?? "" },
        { title: "Quantisation", cell: (m) => m.quantization_level ?? "" },
        { title: "Context", num: true, cell: (m) => (m.context_length ? number(m.context_length) : "") },
        { title: "Size GB", num: true, cell: (m) => (m.size ? (m.size / 1e9).toFixed(2) : "") },
        { title: `Price (${doc.currency})`, cell: priceCell },
      ],
      doc.models,
      "Ollama has no model this key may use: pull one (ollama pull llama3.2).",
    ),
  );
  if (isAdmin) view.append(...(await pricesSection()));
}

// A price's parts that cost something ("0.400000 /M out"); a price of nothing is "free".
export function priceText(p) {
  const parts = p
    ? [
        [p.per_request, "a request"],
        [p.per_million_input, "M in"],
        [p.per_million_output, "M out"],
        [p.per_second, "second"],
      ].filter(([amount]) => amount).map(([amount, unit]) => `${money(amount)} /${unit}`)
    : [];
  return parts.length ? parts.join(", ") : "free";
}

// Every price pattern (* prices what no other pattern matches), each removable after an
// inline "Remove? Yes / No" beside it.
export async function pricesSection() {
  const doc = await api("GET", `${PATHS.admin}/prices`);
  const removeButton = (p) => {
    const box = el("div", { class: "actions" });
    const ask = el("button", { type: "button", class: "danger", "data-action": "remove-price", "aria-label": `Remove the price ${p.pattern}` }, "Remove");
    const ready = () => box.replaceChildren(ask);
    ask.addEventListener("click", () => {
      const yes = el("button", { type: "button", class: "danger", "data-action": "confirm", "aria-label": `Yes, remove the price ${p.pattern}` }, "Yes");
      const no = el("button", { type: "button", class: "quiet", "data-action": "cancel", "aria-label": "No, keep it" }, "No");
      no.addEventListener("click", () => {
        ready();
        ask.focus();
      });
      yes.addEventListener("click", async () => {
        yes.disabled = true;
        try {
          await api("DELETE", `${PATHS.admin}/prices?pattern=${encodeURIComponent(p.pattern)}`);
          refresh();
        } catch (err) {
          openBelow(box.closest("tr"), el("p", { class: "error", role: "alert" }, err.message));
          ready();
        }
      });
      box.replaceChildren(el("span", { class: "keep" }, "Remove?"), yes, no);
      no.focus();
    });
    ready();
    return box;
  };
  return [
    el("h2", { id: "prices" }, `Prices (${doc.currency})`),
    table(
      [
        { title: "Pattern", cell: (p) => p.pattern },
        { title: "Price", wrap: true, cell: (p) => priceText(p) },
        { title: "Actions", act: true, cell: removeButton },
      ],
      doc.prices,
      "No prices: every model is free.",
    ),
  ];
}

export function priceForm(model, tr) {
  const p = model.price || {};
  const parts = [
    ["per_request", "Per request"],
    ["per_million_input", "Per million input tokens"],
    ["per_million_output", "Per million output tokens"],
    ["per_second", "Per second of model time"],
  ];
  const pattern = field("price-pattern", "Model or pattern", el("input", { value: p.pattern || model.name }), "Such as llama3*; * prices every model no other pattern matches");
  const amounts = parts.map(([name, title]) =>
    field(`price-${name}`, `${title} (${PATHS.currency})`, el("input", { inputmode: "decimal", value: money(p[name] || 0) })),
  );
  const formError = el("p", { class: "field-error", role: "alert" });
  const form = el(
    "form",
    { class: "card", id: "price-form", novalidate: true },
    el("h2", {}, "Price of ", named(model.name)),
    el("div", { class: "row fields" }, pattern.box),
    el("div", { class: "row fields" }, amounts.map((f) => f.box)),
    el("div", { class: "row" }, el("button", { type: "submit" }, "Save")),
    formError,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    [pattern, ...amounts].forEach((f) => f.clear());
    formError.textContent = "";
    const body = { pattern: pattern.input.value.trim() };
    let ok = true;
    parts.forEach(([name], i) => {
      try {
        body[name] = toMicro(amounts[i].input.value);
      } catch (err) {
        amounts[i].fail(err.message);
        ok = false;
      }
    });
    if (!ok) return;
    try {
      await api("POST", `${PATHS.admin}/prices`, body);
      refresh();
    } catch (err) {
      const i = parts.findIndex(([name]) => err.message.includes(name));
      if (i >= 0) amounts[i].fail(err.message.replace(parts[i][0], parts[i][1]));
      else if (/pattern/.test(err.message)) pattern.fail(err.message);
      else formError.textContent = err.message;
    }
  });
  openBelow(tr, form);
  pattern.input.focus();
}
