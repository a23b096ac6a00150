// The Models page: the models a key may use with their prices and its aliases of them;
// admins set and remove prices and aliases.
import { PATHS, api, el, money, named, number, openBelow, stacked, state, table, refresh } from "./core.js";
import { changeForm, field, toMicro, wholeNumber } from "./forms.js";

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
  if (isAdmin) view.append(...(await pricesSection()), ...(await aliasesSection()));
  else if (doc.aliases.length) view.append(...ownAliases(doc.aliases));
}

// The key's aliases of the models it may use: what it may ask for, and what runs.
function ownAliases(aliases) {
  return [
    el("h2", { id: "aliases" }, "Aliases"),
    el("p", { class: "muted" }, "Ask for the name; the model beside it runs."),
    table(
      [
        { title: "Name", wide: true, cell: (a) => a.name },
        { title: "Runs", wide: true, cell: (a) => a.target },
      ],
      aliases,
      "",
    ),
  ];
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
  const removeButton = (p) => removeAfterYes("price", p.pattern, `prices?pattern=${encodeURIComponent(p.pattern)}`);
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

// A Remove button that asks "Remove? Yes / No" in its place, then deletes `path` (under
// the admin API) and shows the page again; `what` names the kind in its data-action.
function removeAfterYes(what, name, path) {
  const box = el("div", { class: "actions" });
  const ask = el("button", { type: "button", class: "danger", "data-action": `remove-${what}`, "aria-label": `Remove the ${what} ${name}` }, "Remove");
  const ready = () => box.replaceChildren(ask);
  ask.addEventListener("click", () => {
    const yes = el("button", { type: "button", class: "danger", "data-action": "confirm", "aria-label": `Yes, remove the ${what} ${name}` }, "Yes");
    const no = el("button", { type: "button", class: "quiet", "data-action": "cancel", "aria-label": "No, keep it" }, "No");
    no.addEventListener("click", () => {
      ready();
      ask.focus();
    });
    yes.addEventListener("click", async () => {
      yes.disabled = true;
      try {
        await api("DELETE", `${PATHS.admin}/${path}`);
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
}

// Every alias (a name clients ask for that runs another model: for everyone, one user's
// keys or one key, the narrowest winning), removable; and a form that adds one.
export async function aliasesSection() {
  const doc = await api("GET", `${PATHS.admin}/aliases`);
  const whose = (a) => (a.scope === "global" ? "everyone" : a.scope === "user" ? named(`user ${a.user}`) : `key #${a.key_id}`);
  const owner = (a) => (a.scope === "user" ? `&user=${encodeURIComponent(a.user)}` : a.scope === "key" ? `&key_id=${a.key_id}` : "");
  const text = (t) => t;
  const form = changeForm(
    "alias-form",
    "Add an alias",
    [
      { key: "name", label: "Name clients ask for", hint: "Such as gpt-4o-mini; any case matches", input: el("input", { autocomplete: "off" }), parse: text, required: true, api: ["alias name", "alias", "a model the upstreams serve"], verbatim: true },
      { key: "target", label: "Model it runs", hint: "Such as llama3.2", input: el("input", { autocomplete: "off" }), parse: text, required: true, api: ["target", "is an alias"], verbatim: true },
      { key: "user", label: "Only for user", hint: "Empty: everyone", input: el("input", { autocomplete: "off" }), parse: text, api: ["user", "not both"], verbatim: true },
      { key: "key_id", label: "Only for key id", hint: "Empty: every key", input: el("input", { inputmode: "numeric" }), parse: wholeNumber("Key id", null), api: ["key_id", "key"], verbatim: true },
    ],
    {},
    (body) => api("POST", `${PATHS.admin}/aliases`, body),
    { saveLabel: "Add", cancel: false },
  );
  return [
    el("h2", { id: "aliases" }, "Aliases"),
    el("p", { class: "muted" }, "A name that runs another model (clients that only know OpenAI's or Anthropic's names). A key's alias wins over its user's, and a user's over everyone's."),
    table(
      [
        { title: "Name", wide: true, cell: (a) => a.name },
        { title: "Runs", wide: true, cell: (a) => a.target },
        { title: "For", cell: whose },
        { title: "Actions", act: true, cell: (a) => removeAfterYes("alias", a.name, `aliases?name=${encodeURIComponent(a.name)}${owner(a)}`) },
      ],
      doc.aliases,
      "No aliases: a model is asked for by its own name.",
    ),
    form,
  ];
}
