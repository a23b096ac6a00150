// Change forms shared by the pages: fields with their own errors, budgets, UTC times.
// A form shows each value as it is; Save sends only what the person changed (a budget's
// amount, period and alert go together, as the API takes a budget whole). Each field has
// its label in people's words, a hint, and its own error line right under it.
import { PATHS, api, el, money, named, number, refresh } from "./core.js";

export function budgetText(b, none = "none") {
  return b ? `${money(b.amount)} ${b.period}${b.alert_percent ? `, alert at ${b.alert_percent}%` : ""}` : none;
}

// The priority class a key or user queues in where upstreams are full. `unset`: the
// label of "none of its own" (a key: its user's), or null where there is no such choice.
export function prioritySpec(current, unset, more = false) {
  const choices = [...(unset ? [["", unset]] : []), ["high", "high"], ["normal", "normal"], ["low", "low"]];
  const now = current ?? (unset ? "" : "normal");
  return {
    key: "priority",
    label: "Priority",
    hint: "Who is served first when upstreams are busy",
    input: el("select", {}, choices.map(([value, text]) => el("option", { value, selected: value === now }, text))),
    parse: (text) => text || null,
    api: ["priority"],
    verbatim: true,
    more,
  };
}

// A class's mark in a list, where it is not the usual one: "high priority" ("(its
// user's)" when a key has none of its own), wrapped rather than cut; normal: none, so
// the usual rows stay short.
export function priorityMark(queueClass, inherited = false) {
  if (!queueClass || queueClass === "normal") return [];
  return [el("span", { class: "wrap muted" }, `${queueClass} priority${inherited ? " (its user's)" : ""}`)];
}

export function field(id, label, input, hint) {
  input.id = id;
  const hintLine = hint ? el("p", { class: "hint", id: `${id}-hint` }, hint) : null;
  const error = el("p", { class: "field-error", id: `${id}-error`, "aria-live": "polite" });
  input.setAttribute("aria-describedby", hintLine ? `${id}-hint ${id}-error` : `${id}-error`);
  const box = el("div", { class: "field" }, el("label", { for: id }, label), input, hintLine, error);
  return {
    box,
    input,
    fail(message) {
      input.closest("details")?.setAttribute("open", "");
      error.textContent = message;
      input.setAttribute("aria-invalid", "true");
    },
    clear() {
      error.textContent = "";
      input.removeAttribute("aria-invalid");
    },
  };
}

// specs: [{ key, label, hint, input, parse(text) -> value, api: [words naming it in the
// API's errors; verbatim: shown as the API says it), group, required, more (folded under
// "More")}]; groups: { name: { legend,
// build(values) -> value } }. A form that creates starts empty: what is filled in is sent.
export function changeForm(id, title, specs, groups, send, options = {}) {
  const { saveLabel = "Save", done = () => refresh(), cancel: cancellable = true, more = "More" } = options;
  const fields = specs.map((spec) => {
    const f = field(`${id}-${spec.key}`, spec.label, spec.input, spec.hint);
    return { ...spec, ...f, initial: spec.input.value };
  });
  const formError = el("p", { class: "field-error", id: `${id}-error`, role: "alert" });
  const save = el("button", { type: "submit" }, saveLabel);
  const cancel = cancellable ? el("button", { type: "button", class: "quiet" }, "Cancel") : null;
  const first = el("div", { class: "row fields" });
  const rest = el("div", { class: "row fields" });
  const sets = {};
  for (const f of fields) {
    if (f.group) (sets[f.group] ||= el("div", { class: "row fields" })).append(f.box);
    else (f.more ? rest : first).append(f.box);
  }
  const groupSets = Object.entries(sets).map(([name, row]) => el("fieldset", {}, el("legend", {}, groups[name].legend), row));
  const folded = fields.some((f) => f.more);
  const layout = folded
    ? [first, el("details", {}, el("summary", {}, more), rest, ...groupSets)]
    : [first, ...groupSets];
  const form = el(
    "form",
    { class: "card", id, novalidate: true },
    el("h2", {}, title),
    ...layout,
    el("div", { class: "row" }, save, cancel),
    formError,
  );
  if (cancel) {
    cancel.addEventListener("click", () => {
      // (back to the button that opened it, for a keyboard)
      const below = form.closest("tr.below");
      below?.previousElementSibling?.querySelector("[data-action=edit]")?.focus();
      below?.remove();
    });
  }
  const place = (message) => {
    // An error the API names a field in goes under that field, in the field's words.
    // (the longest name first: "a budget's alert" before "a budget")
    const names = fields.flatMap((f) => (f.api || []).map((word) => [word, f])).sort((a, b) => b[0].length - a[0].length);
    for (const [word, f] of names) {
      if (new RegExp(`(^|\\W)${word.replace(/[^\w ]/g, "\\$&")}(\\W|$)`).test(message)) {
        f.fail(f.verbatim ? message : message.replace(word, f.label));
        f.input.focus();
        return;
      }
    }
    formError.textContent = message;
  };
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    fields.forEach((f) => f.clear());
    formError.textContent = "";
    const missing = fields.filter((f) => f.required && !f.input.value.trim());
    missing.forEach((f) => f.fail(`${f.label}: required.`));
    if (missing.length) {
      missing[0].input.focus();
      return;
    }
    const changed = fields.filter((f) => f.input.value !== f.initial);
    if (!changed.length) {
      formError.textContent = "Nothing changed.";
      return;
    }
    const body = {};
    const failed = [];
    const values = {};
    for (const f of fields) {
      if (f.input.value === f.initial && !(f.group && changed.some((c) => c.group === f.group))) continue;
      try {
        values[f.key] = f.parse(f.input.value.trim());
        if (!f.group) body[f.key] = values[f.key];
      } catch (err) {
        f.fail(err.message);
        failed.push(f);
      }
    }
    if (failed.length) {
      failed[0].input.focus();
      return;
    }
    for (const [name, group] of Object.entries(groups)) {
      if (changed.some((c) => c.group === name)) body[name] = group.build(values);
    }
    save.disabled = true;
    try {
      done(await send(body), form);
    } catch (err) {
      place(err.message);
    } finally {
      save.disabled = false;
    }
  });
  return form;
}

export function wholeNumber(what, empty) {
  return (text) => {
    if (text === "") return empty;
    if (!/^\d{1,15}$/.test(text)) throw new Error(`${what}: a whole number, 0 or more.`);
    if (Number(text) > 1e12) throw new Error(`${what}: at most 1,000,000,000,000.`);
    return Number(text);
  };
}

// An ISO time from the API ("2099-01-31T13:45:00Z") as a datetime-local value, in UTC,
// to the minute (left as it is, it is not sent, so its seconds stay).
export function utcInputValue(iso) {
  return iso ? iso.slice(0, 16) : "";
}

export function utcText(iso) {
  return iso ? `${iso.slice(0, 10)} ${iso.slice(11, 16)}` : "";
}

export function budgetFields(prefix, budget) {
  const periods = ["total", "daily", "weekly", "monthly"];
  return {
    specs: [
      {
        key: `${prefix}amount`,
        group: "budget",
        label: `Amount (${PATHS.currency})`,
        hint: "Empty: no budget",
        input: el("input", { inputmode: "decimal", value: budget ? money(budget.amount) : "" }),
        parse: (text) => (text === "" ? null : toMicro(text)),
        api: ["a budget"],
      },
      {
        key: `${prefix}period`,
        group: "budget",
        label: "Period",
        input: el("select", {}, periods.map((p) => el("option", { value: p, selected: budget ? budget.period === p : p === "monthly" }, p))),
        parse: (text) => text,
        api: ["a budget's period"],
      },
      {
        key: `${prefix}alert`,
        group: "budget",
        label: "Alert at (% spent)",
        hint: "Empty: no alert",
        input: el("input", { inputmode: "numeric", value: budget && budget.alert_percent ? budget.alert_percent : "" }),
        parse: (text) => {
          if (text === "") return null;
          if (!/^\d{1,3}$/.test(text) || Number(text) < 1 || Number(text) > 100) throw new Error("A whole percentage from 1 to 100.");
          return Number(text);
        },
        api: ["a budget's alert"],
      },
    ],
    group: {
      legend: "Budget",
      build: (v) => {
        const amount = v[`${prefix}amount`];
        if (amount === null) return null;
        const made = { amount, period: v[`${prefix}period`] };
        if (v[`${prefix}alert`] !== null) made.alert_percent = v[`${prefix}alert`];
        return made;
      },
    },
  };
}

// An amount typed as 0.15 -> 150000 micro-units, exactly (no floating point).
export function toMicro(text) {
  const match = /^\s*(\d{1,9})(?:\.(\d{0,6}))?\s*$/.exec(text);
  if (!match) throw new Error(`An amount such as 12.50 (at most six decimals), not "${text.trim()}".`);
  return Number(match[1]) * 1e6 + Number((match[2] || "").padEnd(6, "0"));
}

// A new key's secret in `box`, this once: to copy, and to put away when stored.
export function showSecret(box, made) {
  const secret = el("div", { class: "secret", id: "new-key-value" }, made.key);
  const copy = el("button", { type: "button", class: "quiet" }, "Copy");
  copy.addEventListener("click", async () => {
    await navigator.clipboard.writeText(made.key);
    copy.textContent = "Copied";
  });
  const done = el("button", { type: "button" }, "I have stored it");
  done.addEventListener("click", () => box.replaceChildren());
  box.replaceChildren(
    el(
      "div",
      { class: "card" },
      el("h2", {}, "New key for ", named(`${made.user}/${made.key_name}`)),
      el("p", {}, "Store it now: it is shown this once and can never be shown again."),
      secret,
      el("div", { class: "row" }, copy, done),
    ),
  );
}
