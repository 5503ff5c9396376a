// movierec's page: hash routes (#/, #/search?q=, #/movie/1, #/who, #/user/5, #/visitor, #/admin) rendered
// with plain DOM calls. No framework, no build step, nothing fetched from outside the app.

import { ApiError, adminToken, api, itemsOf, movieId, onApiKeyNeeded, withMovies } from "./api.js";

const view = document.getElementById("view");
const statusRegion = document.getElementById("status");
const RECOMMENDATIONS = 12;
const PAGE = 20;

// ---------------------------------------------------------------- DOM and small utilities

/** Create an element: h("a", {href: "#/"}, "text", child...). Text is never parsed as HTML. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, value);
  }
  el.append(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

/** Tell screen-reader users what changed, without moving their focus. */
function announce(text) {
  statusRegion.textContent = "";
  setTimeout(() => (statusRegion.textContent = text), 50);
}

function errorBox(error) {
  const text = error instanceof ApiError ? error.message : `Unexpected error: ${error.message}`;
  return h("p", { class: "error", role: "alert" }, text);
}

function debounce(fn, ms) {
  let timer;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

const local = {
  get(key, fallback) {
    try {
      return JSON.parse(localStorage.getItem(key)) ?? fallback;
    } catch {
      return fallback;
    }
  },
  set: (key, value) => localStorage.setItem(key, JSON.stringify(value)),
  remove: (key) => localStorage.removeItem(key),
};

/** A modal form asking for the API key of user data; resolves to the key, or "" if cancelled. */
function askForApiKey(reason) {
  return new Promise((resolve) => {
    const input = h("input", { id: "api-key", name: "api-key", type: "password", autocomplete: "off", required: true });
    const dialog = h(
      "dialog",
      { class: "key-dialog", "data-testid": "api-key-dialog", "aria-labelledby": "api-key-title" },
      h(
        "form",
        { method: "dialog" },
        h("h2", { id: "api-key-title" }, "API key needed"),
        h("p", {}, `${reason}. This server keeps user data behind a key; its operator can give you one.`),
        h("label", { for: "api-key" }, "API key"),
        input,
        h(
          "p",
          { class: "actions" },
          h("button", { type: "submit", value: "cancel", class: "secondary", formnovalidate: true }, "Cancel"),
          h("button", { type: "submit", value: "ok" }, "Use this key"),
        ),
      ),
    );
    dialog.addEventListener("close", () => {
      const key = dialog.returnValue === "ok" ? input.value.trim() : "";
      dialog.remove();
      resolve(key);
    });
    document.body.append(dialog);
    dialog.showModal();
    input.focus();
  });
}
onApiKeyNeeded(askForApiKey);

/** Who is browsing: {kind: "user", id} or {kind: "visitor"}; null until they say. */
const identity = {
  get: () => local.get("movierec.identity", null),
  set(value) {
    local.set("movierec.identity", value);
    renderNav();
  },
};

/** A visitor's ratings, kept in this browser only: {movieId: {rating, title}}. */
const visitor = {
  ratings: () => local.get("movierec.visitor", {}),
  rate(movie, rating) {
    const all = visitor.ratings();
    all[movieId(movie)] = { rating, title: movie.title, year: movie.year };
    local.set("movierec.visitor", all);
  },
  forget(id) {
    const all = visitor.ratings();
    delete all[id];
    local.set("movierec.visitor", all);
  },
  clear: () => local.remove("movierec.visitor"),
  asRatings: () => Object.fromEntries(Object.entries(visitor.ratings()).map(([id, r]) => [id, r.rating])),
};

// ---------------------------------------------------------------- shared widgets

const year = (m) => (m.year ? ` (${m.year})` : "");

function genreChips(genres) {
  return h(
    "ul",
    { class: "chips", "aria-label": "Genres" },
    (genres || []).map((g) => h("li", {}, g)),
  );
}

function movieLink(m) {
  return h(
    "a",
    { href: `#/movie/${movieId(m)}`, class: "title" },
    m.title,
    h("span", { class: "year" }, year(m)),
  );
}

let starGroups = 0;

/**
 * Five stars as a radio group: arrow keys move between them, each has a label for screen
 * readers. `onRate(value)` runs once the choice settles, so arrowing across does not send a
 * request per step.
 */
function stars({ label, value = 0, onRate }) {
  const name = `stars-${++starGroups}`;
  const settle = debounce(onRate, 300);
  const group = h(
    "fieldset",
    { class: "stars", "data-value": String(Math.round(value)) },
    h("legend", { class: "sr-only" }, label),
  );
  for (let v = 1; v <= 5; v++) {
    const id = `${name}-${v}`;
    const words = `${v} star${v > 1 ? "s" : ""}`;
    const input = h("input", { type: "radio", name, id, value: String(v), checked: Math.round(value) === v });
    input.addEventListener("change", () => {
      group.dataset.value = String(v);
      settle(v);
    });
    group.append(
      input,
      h(
        "label",
        { for: id, title: words },
        h("span", { "aria-hidden": "true" }, "★"),
        h("span", { class: "sr-only" }, words),
      ),
    );
  }
  return group;
}

let genreList = null;

/** The catalogue's genres, gathered from its first page of films (the API has no list). */
async function loadGenres() {
  if (!genreList) {
    genreList = api
      .movies({ limit: 200 })
      .then((page) => [...new Set(itemsOf(page).flatMap((m) => m.genres || []))].sort());
    genreList.catch(() => (genreList = null));
  }
  return genreList;
}

/** Genres (multi-select) and a year range; `onChange(filters)` after each edit. */
function filtersForm(filters, onChange) {
  const summary = h("summary", {}, "Genres");
  const boxes = h(
    "fieldset",
    { class: "genre-boxes" },
    h("legend", { class: "sr-only" }, "Genres to include"),
  );
  const yearMin = h("input", {
    type: "number",
    id: "year-min",
    inputmode: "numeric",
    min: "1900",
    max: "2100",
    placeholder: "any",
    value: filters.year_min ?? "",
  });
  const yearMax = h("input", {
    type: "number",
    id: "year-max",
    inputmode: "numeric",
    min: "1900",
    max: "2100",
    placeholder: "any",
    value: filters.year_max ?? "",
  });
  const form = h(
    "form",
    { class: "filters", "aria-label": "Filter recommendations", onsubmit: (e) => e.preventDefault() },
    h("details", {}, summary, boxes),
    h("label", { for: "year-min" }, "From year"),
    yearMin,
    h("label", { for: "year-max" }, "to"),
    yearMax,
  );
  const emit = debounce(() => {
    const genres = [...boxes.querySelectorAll("input:checked")].map((b) => b.value);
    summary.textContent = genres.length ? `Genres (${genres.length})` : "Genres";
    const toYear = (input) => (input.value && input.checkValidity() ? Number(input.value) : undefined);
    onChange({ genres, year_min: toYear(yearMin), year_max: toYear(yearMax) });
  }, 250);
  form.addEventListener("input", emit);
  loadGenres()
    .then((genres) => {
      for (const g of genres) {
        const checked = (filters.genres || []).includes(g);
        boxes.append(h("label", { class: "check" }, h("input", { type: "checkbox", value: g, checked }), g));
      }
    })
    .catch((error) => boxes.append(errorBox(error)));
  return form;
}

/**
 * A recommendation response as a list: each film with its predicted rating, the model version
 * in the heading. `rate(movie, value)` adds stars to each row when given.
 */
function recommendationList(body, { rate, emptyText } = {}) {
  const items = itemsOf(body);
  const source = { popular: "popular films", model: "personalised" }[body.source] ?? "nearest in the model";
  const meta = h(
    "p",
    { class: "meta", "data-testid": "model-version" },
    `Model v${body.model_version} · ${source}`,
  );
  if (!items.length)
    return h("div", {}, meta, h("p", { class: "empty" }, emptyText || "Nothing matches these filters."));
  return h(
    "div",
    {},
    meta,
    h(
      "ol",
      { class: "cards", "data-testid": "recommendations" },
      items.map((m) =>
        h(
          "li",
          { class: "card", "data-movie-id": String(movieId(m)) },
          movieLink(m),
          genreChips(m.genres),
          m.predicted_rating != null
            ? h(
                "p",
                { class: "predicted" },
                h("span", { "aria-hidden": "true" }, "★ "),
                `${m.predicted_rating.toFixed(1)} predicted`,
              )
            : h("p", { class: "meta" }, `similarity ${Number(m.score).toFixed(2)}`),
          rate ? stars({ label: `Your rating for ${m.title}`, onRate: (v) => rate(m, v) }) : null,
        ),
      ),
    ),
  );
}

/**
 * A section that (re)loads its body: `load()` returns an element; errors are shown in place.
 * Returns {el, refresh}.
 */
function liveSection(title, load, { id, tools, footer } = {}) {
  const body = h(
    "div",
    { class: "section-body", "aria-busy": "true" },
    h("p", { class: "loading" }, "Loading…"),
  );
  const el = h(
    "section",
    { "aria-labelledby": `${id}-h` },
    h("h2", { id: `${id}-h` }, title),
    tools,
    body,
    footer,
  );
  let generation = 0;
  async function refresh() {
    const mine = ++generation;
    body.setAttribute("aria-busy", "true");
    try {
      const content = await load();
      if (mine === generation) body.replaceChildren(content);
    } catch (error) {
      if (mine === generation) body.replaceChildren(errorBox(error));
    } finally {
      if (mine === generation) body.setAttribute("aria-busy", "false");
    }
  }
  refresh();
  return { el, refresh };
}

function heading(text) {
  return h("h1", { tabindex: "-1" }, text);
}

// ---------------------------------------------------------------- views

/** The title search form of #/ and #/search: submitting it shows #/search?q=&genre=. */
function searchForm(q = "", genre = "") {
  const input = h("input", {
    type: "search",
    id: "q",
    name: "q",
    value: q,
    placeholder: "Title, e.g. Star Wars",
    autocomplete: "off",
  });
  const select = h("select", { id: "genre", name: "genre" }, h("option", { value: "" }, "Any genre"));
  loadGenres()
    .then((genres) =>
      select.append(...genres.map((g) => h("option", { value: g, selected: g === genre }, g))),
    )
    .catch(() => {});
  return h(
    "form",
    {
      class: "search",
      role: "search",
      onsubmit: (e) => {
        e.preventDefault();
        const next = new URLSearchParams({ q: input.value.trim(), genre: select.value });
        location.hash = `#/search?${next}`;
      },
    },
    h("label", { for: "q" }, "Search films"),
    input,
    h("label", { for: "genre", class: "sr-only" }, "Genre"),
    select,
    h("button", { type: "submit" }, "Search"),
  );
}

/**
 * #/ : the first view. Popular films to rate, and recommendations as soon as one is rated.
 * A newcomer rates as a visitor (ratings in this browser, POST /v1/recommendations); someone
 * who said they are a stored user rates as that user.
 */
function viewHome() {
  const who = identity.get();
  const asUser = who?.kind === "user";
  const rate = async (movie, value) => {
    try {
      if (asUser) await api.rate(who.id, movieId(movie), value);
      else {
        if (!identity.get()) identity.set({ kind: "visitor" });
        visitor.rate(movie, value);
      }
      recs.refresh();
    } catch (error) {
      recs.el.prepend(errorBox(error));
    }
  };
  const popular = liveSection(
    "Popular films",
    async () => {
      const body = await api.visitorRecommendations({}, RECOMMENDATIONS, {});
      const mine = asUser ? {} : visitor.asRatings();
      return h(
        "div",
        {},
        h("p", { class: "meta" }, "Rate the ones you have seen."),
        h(
          "ol",
          { class: "cards", "data-testid": "popular" },
          itemsOf(body).map((m) =>
            h(
              "li",
              { class: "card", "data-movie-id": String(movieId(m)) },
              movieLink(m),
              genreChips(m.genres),
              stars({
                label: `Your rating for ${m.title}`,
                value: mine[movieId(m)] ?? 0,
                onRate: (v) => rate(m, v),
              }),
            ),
          ),
        ),
      );
    },
    { id: "popular" },
  );
  const recs = liveSection(
    asUser ? `Recommended for user ${who.id}` : "Recommended for you",
    async () => {
      let body;
      if (asUser) body = await api.userRecommendations(who.id, RECOMMENDATIONS, {});
      else {
        const ratings = visitor.asRatings();
        if (!Object.keys(ratings).length)
          return h(
            "p",
            { class: "empty", "data-testid": "recommendations-hint" },
            "Rate a film you have seen: your recommendations appear here at once.",
          );
        body = await api.visitorRecommendations(ratings, RECOMMENDATIONS, {});
      }
      announce(`${itemsOf(body).length} recommendations from model v${body.model_version}`);
      return recommendationList(body, { rate });
    },
    {
      id: "recs",
      footer: h(
        "p",
        { class: "meta" },
        asUser
          ? h("a", { href: `#/user/${who.id}` }, "Your ratings and filters")
          : h("a", { href: "#/visitor" }, "Your ratings, filters, and saving them as a user"),
      ),
    },
  );
  view.replaceChildren(
    heading("Rate a few films, get recommendations"),
    searchForm(),
    h("div", { class: "columns" }, popular.el, recs.el),
  );
}

/** #/search?q=&genre= : the catalogue, best matches first. */
function viewSearch(params) {
  const q = params.get("q") || "";
  const genre = params.get("genre") || "";
  const form = searchForm(q, genre);
  const results = h("div", { "aria-busy": "true" });
  let offset = 0;
  const list = h("ul", { class: "cards", "data-testid": "search-results" });
  const more = h(
    "button",
    { type: "button", class: "secondary", hidden: true, onclick: () => loadPage() },
    "Show more",
  );
  const count = h("p", { class: "meta" });

  async function loadPage() {
    results.setAttribute("aria-busy", "true");
    try {
      const page = await api.movies({ q, genre, limit: PAGE, offset });
      const items = itemsOf(page);
      const total = page.total ?? items.length;
      offset += items.length;
      list.append(...items.map((m) => h("li", { class: "card" }, movieLink(m), genreChips(m.genres))));
      count.textContent = `${total} film${total === 1 ? "" : "s"}${q ? ` matching “${q}”` : ""}`;
      more.hidden = offset >= total || items.length === 0;
      results.replaceChildren(count, total ? list : h("p", { class: "empty" }, "No film matches."), more);
      announce(count.textContent);
    } catch (error) {
      results.replaceChildren(errorBox(error));
    } finally {
      results.setAttribute("aria-busy", "false");
    }
  }
  loadPage();
  view.replaceChildren(heading("Find a film"), form, results);
}

/** #/movie/ID : one film, its similar films, and a rating as the current identity. */
async function viewMovie(id) {
  const title = heading("Film");
  const details = h("div", { class: "movie" });
  view.replaceChildren(title, details);
  try {
    const m = await api.movie(id);
    title.textContent = m.title;
    document.title = `${m.title} · movierec`;
    details.append(
      h("p", { class: "meta" }, [m.year, (m.genres || []).join(", ")].filter(Boolean).join(" · ")),
    );
    details.append(rateAsCurrentIdentity(m));
  } catch (error) {
    details.replaceChildren(errorBox(error));
    return;
  }
  const similar = liveSection(
    "Similar films",
    async () => recommendationList(await api.similar(id), { emptyText: "The model knows no similar film." }),
    { id: "similar" },
  );
  view.append(similar.el);
}

function rateAsCurrentIdentity(movie) {
  const who = identity.get();
  if (!who) return h("p", {}, h("a", { href: "#/who" }, "Tell us who you are"), " to rate this film.");
  const status = h("span", { class: "meta", role: "status" });
  const current = who.kind === "visitor" ? (visitor.ratings()[movieId(movie)]?.rating ?? 0) : 0;
  const widget = stars({
    label: `Your rating for ${movie.title}`,
    value: current,
    onRate: async (v) => {
      try {
        if (who.kind === "visitor") visitor.rate(movie, v);
        else await api.rate(who.id, movieId(movie), v);
        status.textContent = `Saved: ${v} of 5.`;
      } catch (error) {
        status.replaceChildren(errorBox(error));
      }
    },
  });
  const as = who.kind === "visitor" ? "as a visitor" : `as user ${who.id}`;
  return h("div", { class: "rate-here" }, h("p", {}, `Rate it ${as}:`), widget, status);
}

/** #/who : pick an existing user or start as a visitor. */
function viewWho() {
  const input = h("input", { type: "number", id: "user-id", min: "1", required: true, inputmode: "numeric" });
  const who = identity.get();
  view.replaceChildren(
    heading("Who are you?"),
    who
      ? h(
          "p",
          { class: "meta" },
          who.kind === "visitor" ? "You are browsing as a visitor." : `You are user ${who.id}.`,
        )
      : null,
    h(
      "div",
      { class: "choices" },
      h(
        "form",
        {
          class: "panel",
          onsubmit: (e) => {
            e.preventDefault();
            location.hash = `#/user/${input.value}`;
          },
        },
        h("h2", {}, "I have a user id"),
        h("label", { for: "user-id" }, "User id"),
        input,
        h("button", { type: "submit" }, "Show my recommendations"),
      ),
      h(
        "div",
        { class: "panel" },
        h("h2", {}, "I'm new here"),
        h(
          "p",
          {},
          "Rate a few films and watch the recommendations follow. Your ratings stay in this browser unless you save them.",
        ),
        h("a", { class: "button", href: "#/visitor" }, "Start as a visitor"),
      ),
    ),
  );
}

/** #/user/ID : a stored user's recommendations (filterable) and ratings (editable). */
function viewUser(id) {
  identity.set({ kind: "user", id });
  let filters = {};
  const recs = liveSection(
    "Recommended for you",
    async () => {
      const body = await api.userRecommendations(id, RECOMMENDATIONS, filters);
      announce(`${itemsOf(body).length} recommendations from model v${body.model_version}`);
      return recommendationList(body, { rate: rateAndRefresh });
    },
    { id: "recs", tools: filtersForm(filters, (f) => ((filters = f), recs.refresh())) },
  );
  const ratings = liveSection(
    "Your ratings",
    async () => {
      const page = await api.userRatings(id, 30);
      const items = await withMovies(itemsOf(page));
      if (!items.length) return h("p", { class: "empty" }, "No ratings yet: rate a recommended film.");
      const total = page.total ?? items.length;
      return h(
        "div",
        {},
        total > items.length
          ? h("p", { class: "meta" }, `The ${items.length} most recent of ${total}.`)
          : null,
        h(
          "ul",
          { class: "cards", "data-testid": "ratings" },
          items.map((r) =>
            h(
              "li",
              { class: "card" },
              movieLink(r),
              stars({
                label: `Your rating for ${r.title}`,
                value: r.rating,
                onRate: (v) => rateAndRefresh(r, v),
              }),
            ),
          ),
        ),
      );
    },
    { id: "ratings" },
  );
  async function rateAndRefresh(movie, value) {
    try {
      await api.rate(id, movieId(movie), value);
      recs.refresh();
      ratings.refresh();
    } catch (error) {
      recs.el.prepend(errorBox(error));
    }
  }
  view.replaceChildren(heading(`User ${id}`), h("div", { class: "columns" }, recs.el, ratings.el));
}

/** #/visitor : rate films without an account; recommendations follow each rating. */
function viewVisitor() {
  identity.set({ kind: "visitor" });
  let filters = {};
  const rate = (movie, value) => {
    visitor.rate(movie, value);
    rated.refresh();
    recs.refresh();
  };
  const recs = liveSection(
    "Recommended for you",
    async () => {
      const body = await api.visitorRecommendations(visitor.asRatings(), RECOMMENDATIONS, filters);
      announce(`${itemsOf(body).length} recommendations from model v${body.model_version}`);
      return recommendationList(body, { rate });
    },
    { id: "recs", tools: filtersForm(filters, (f) => ((filters = f), recs.refresh())) },
  );
  const rated = liveSection(
    "Your ratings",
    async () => {
      const entries = Object.entries(visitor.ratings());
      if (!entries.length)
        return h("p", { class: "empty" }, "Nothing rated yet. Rate a film below or find one by title.");
      return h(
        "ul",
        { class: "cards", "data-testid": "visitor-ratings" },
        entries.map(([mid, r]) => {
          const movie = { movie_id: Number(mid), title: r.title, year: r.year };
          const forget = () => (visitor.forget(mid), rated.refresh(), recs.refresh());
          return h(
            "li",
            { class: "card" },
            movieLink(movie),
            stars({ label: `Your rating for ${r.title}`, value: r.rating, onRate: (v) => rate(movie, v) }),
            h(
              "button",
              { type: "button", class: "link", onclick: forget, "aria-label": `Remove ${r.title}` },
              "Remove",
            ),
          );
        }),
      );
    },
    { id: "rated", footer: saveAsUserForm() },
  );
  view.replaceChildren(
    heading("Visitor"),
    h(
      "p",
      { class: "lead" },
      "Rate films you have seen; the list adapts after every rating. Nothing leaves this browser until you save.",
    ),
    findToRate(rate),
    h("div", { class: "columns" }, recs.el, rated.el),
  );
}

/** A title search whose results carry stars, for visitors looking for a film they know. */
function findToRate(rate) {
  const input = h("input", {
    type: "search",
    id: "find",
    placeholder: "Find a film to rate",
    autocomplete: "off",
  });
  const results = h("ul", { class: "cards compact", "aria-live": "polite" });
  const search = debounce(async () => {
    const q = input.value.trim();
    if (q.length < 2) return results.replaceChildren();
    try {
      const page = itemsOf(await api.movies({ q, limit: 6 }));
      results.replaceChildren(
        ...page.map((m) =>
          h(
            "li",
            { class: "card" },
            movieLink(m),
            stars({ label: `Your rating for ${m.title}`, onRate: (v) => rate(m, v) }),
          ),
        ),
      );
    } catch (error) {
      results.replaceChildren(errorBox(error));
    }
  }, 300);
  input.addEventListener("input", search);
  return h(
    "section",
    { class: "find", "aria-label": "Find a film to rate" },
    h("label", { for: "find" }, "Find a film you have seen"),
    input,
    results,
  );
}

/** Store the visitor's ratings under a new user id (PUT each), then continue as that user. */
function saveAsUserForm() {
  const input = h("input", {
    type: "number",
    id: "new-user",
    min: "1",
    required: true,
    value: String(100000 + Math.floor(Math.random() * 900000)),
  });
  const out = h("div", { role: "status" });
  async function save(e) {
    e.preventDefault();
    const ratings = visitor.ratings();
    const id = Number(input.value);
    if (!Object.keys(ratings).length)
      return out.replaceChildren(errorBox(new ApiError("Rate at least one film first.", 0)));
    try {
      const existing = await api.userRatings(id).catch((error) => {
        if (error.status === 404) return null;
        throw error;
      });
      if (existing && itemsOf(existing).length)
        throw new ApiError(`User id ${id} is taken; pick another.`, 409);
      for (const [mid, r] of Object.entries(ratings)) await api.rate(id, Number(mid), r.rating);
      visitor.clear();
      location.hash = `#/user/${id}`;
    } catch (error) {
      out.replaceChildren(errorBox(error));
    }
  }
  return h(
    "form",
    { class: "save", onsubmit: save },
    h("label", { for: "new-user" }, "Save as user id"),
    input,
    h("button", { type: "submit", class: "secondary" }, "Save as user"),
    out,
  );
}

// ---------------------------------------------------------------- admin

const fmt = (v) => (typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toFixed(4)) : String(v));
const when = (s) => (s ? new Date(s).toLocaleString() : "—");

/** A refused token sends the admin back to the token form, with the server's reason. */
function refusedToken(error) {
  if (error.status === 401 || error.status === 403) {
    adminToken.clear();
    adminLogin(error);
  }
  throw error;
}

/** Metrics as [name, value] pairs, nested groups flattened ("validation": {rmse} → "rmse"). */
function flatMetrics(metrics, prefix = "") {
  return Object.entries(metrics).flatMap(([key, value]) =>
    value && typeof value === "object" ? flatMetrics(value, prefix) : [[prefix + key, value]],
  );
}

/** #/admin : the token, model versions with metrics and curves, jobs with live progress. */
function viewAdmin() {
  if (!adminToken.get()) return adminLogin();
  const curve = h("figure", { id: "curve", class: "curve", "aria-live": "polite" });
  const models = liveSection(
    "Model versions",
    async () => {
      const rows = itemsOf(await api.models().catch(refusedToken));
      if (!rows.length) return h("p", { class: "empty" }, "No model yet: start a retrain.");
      return h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          { "data-testid": "models" },
          h(
            "thead",
            {},
            h(
              "tr",
              {},
              ["Version", "Created", "Status", "Metrics", ""].map((c) => h("th", { scope: "col" }, c)),
            ),
          ),
          h("tbody", {}, rows.map(modelRow)),
        ),
      );
    },
    { id: "models" },
  );
  function modelRow(m) {
    const version = m.version ?? m.id;
    const metrics = m.metrics || {};
    const activate = async () => {
      try {
        await api.activate(version);
        announce(`Model v${version} is now active`);
        models.refresh();
      } catch (error) {
        curve.replaceChildren(errorBox(error));
      }
    };
    const showCurve = async () => {
      try {
        const url = URL.createObjectURL(await api.learningCurve(version));
        curve.replaceChildren(
          h("figcaption", {}, `Learning curve of model v${version}`),
          h("img", {
            src: url,
            alt: `Learning curve of model v${version}: training loss and validation metrics per epoch`,
            onload: () => URL.revokeObjectURL(url),
          }),
        );
        curve.scrollIntoView({ block: "nearest" });
      } catch (error) {
        curve.replaceChildren(errorBox(error));
      }
    };
    return h(
      "tr",
      { class: m.is_active ? "active" : "" },
      h("th", { scope: "row" }, `v${version}`, m.is_active ? h("span", { class: "badge" }, "active") : null),
      h("td", {}, when(m.created_at)),
      h("td", {}, m.status || ""),
      h(
        "td",
        {},
        h(
          "dl",
          { class: "metrics" },
          flatMetrics(metrics).map(([k, v]) => [h("dt", {}, k), h("dd", {}, fmt(v))]),
        ),
      ),
      h(
        "td",
        {},
        h(
          "div",
          { class: "actions" },
          h(
            "button",
            {
              type: "button",
              class: "secondary",
              disabled: m.is_active,
              onclick: activate,
              "aria-label": `Activate model v${version}`,
            },
            "Activate",
          ),
          h(
            "button",
            { type: "button", class: "link", "aria-controls": "curve", onclick: showCurve },
            "Learning curve",
          ),
        ),
      ),
    );
  }
  // While a job is queued or running, the jobs list polls every 2 s; when the last one ends,
  // the model list is reloaded once (a finished job has registered a version).
  let timer = null;
  let wasBusy = false;
  const jobs = liveSection(
    "Training jobs",
    async () => {
      const rows = itemsOf(await api.jobs().catch(refusedToken));
      const busy = rows.some((j) => j.status === "queued" || j.status === "running");
      clearTimeout(timer);
      if (busy) timer = setTimeout(() => view.contains(jobs.el) && jobs.refresh(), 2000);
      if (wasBusy && !busy) models.refresh();
      wasBusy = busy;
      if (!rows.length) return h("p", { class: "empty" }, "No training job yet.");
      return h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          { "data-testid": "jobs" },
          h(
            "thead",
            {},
            h(
              "tr",
              {},
              ["Job", "Status", "Created", "Progress", "Model"].map((c) => h("th", { scope: "col" }, c)),
            ),
          ),
          h("tbody", {}, rows.map((j) => jobRow(j, () => jobs.refresh()))),
        ),
      );
    },
    {
      id: "jobs",
      tools: retrainForm(() => jobs.refresh()),
    },
  );
  onLeave(() => clearTimeout(timer));
  view.replaceChildren(
    heading("Admin"),
    h(
      "p",
      {},
      h(
        "button",
        { type: "button", class: "link", onclick: () => (adminToken.clear(), route()) },
        "Forget the token",
      ),
    ),
    models.el,
    curve,
    jobs.el,
  );
}

/** The training presets the page offers (the API accepts every name in `ml.fit.config.PRESETS`). */
const PRESETS = [
  ["default", "default: best ratings"],
  ["fast", "fast: cheaper to serve"],
];

/** "Retrain now", with a preset and optional epochs (the preset's when empty); `queued()` after
 * success. */
function retrainForm(queued) {
  const preset = h(
    "select",
    { id: "preset" },
    ...PRESETS.map(([value, label]) => h("option", { value }, label)),
  );
  const epochs = h("input", {
    type: "number",
    id: "epochs",
    min: "1",
    max: "10000",
    placeholder: "preset",
    inputmode: "numeric",
  });
  const out = h("div", { role: "status" });
  async function submit(e) {
    e.preventDefault();
    const button = e.currentTarget.querySelector("button");
    button.disabled = true;
    try {
      const body = epochs.value ? { epochs: Number(epochs.value) } : {};
      if (preset.value !== "default") body.preset = preset.value;
      const job = await api.retrain(body);
      out.replaceChildren();
      announce(`Retrain queued as job ${job.id}`);
      queued();
    } catch (error) {
      out.replaceChildren(errorBox(error));
    } finally {
      button.disabled = false;
    }
  }
  return h(
    "form",
    { class: "save", onsubmit: submit },
    h("label", { for: "preset" }, "Preset"),
    preset,
    h("label", { for: "epochs" }, "Epochs"),
    epochs,
    h("button", { type: "submit" }, "Retrain now"),
    out,
  );
}

/** What a job is doing: its phase (loading, tuning, item codes, epochs, finishing, writing,
 * registering) with its progress, or its elapsed seconds where the phase has no total. */
function jobProgress(j) {
  const p = j.progress || {};
  const loss = p.loss ?? p.train_loss;
  const ndcg = p.val?.["ndcg@10"];
  const epochs = p.epochs
    ? `epoch ${p.epoch ?? 0} of ${p.epochs}${loss != null ? `, loss ${fmt(loss)}` : ""}${ndcg != null ? `, val ndcg@10 ${fmt(ndcg)}` : ""}`
    : "";
  if (j.status === "succeeded") return { fraction: 1, label: epochs };
  if (!p.phase || p.phase === "epochs") {
    const fraction = p.epochs ? Math.min(1, (p.epoch || 0) / p.epochs) : 0;
    return { fraction, label: p.phase ? `epochs: ${epochs}` : epochs };
  }
  const elapsed = p.elapsed_s != null ? `${Number(p.elapsed_s).toFixed(1)} s` : "";
  const counted = p.total ? ` ${p.done ?? 0}/${p.total}` : "";
  const state = p.finished ? "done" : "";
  const label = [`${p.phase}${counted}`, state, elapsed].filter(Boolean).join(", ");
  // A phase without a total shows an indeterminate bar and its elapsed time.
  return { fraction: p.total ? Math.min(1, (p.done || 0) / p.total) : null, label };
}

/** One job; a queued or running one has a Cancel button (`changed()` after it answers). */
function jobRow(j, changed) {
  const open = j.status === "queued" || j.status === "running";
  const cancel = async (event) => {
    const button = event.currentTarget;
    button.disabled = true;
    try {
      await api.cancelJob(j.id);
      announce(`Job ${j.id} cancelled`);
      changed();
    } catch (error) {
      button.replaceWith(errorBox(error));
    }
  };
  const { fraction, label } = jobProgress(j);
  const bar = { max: "1", "aria-label": `Job ${j.id} progress` };
  if (fraction != null) bar.value = String(fraction);
  return h(
    "tr",
    {},
    h("th", { scope: "row" }, `#${j.id}`),
    h(
      "td",
      {},
      h("span", { class: `state ${j.status}` }, j.status),
      j.params?.preset ? h("span", { class: "meta" }, ` ${j.params.preset} preset`) : null,
      j.error ? h("p", { class: "error" }, j.error) : null,
      j.message ? h("p", { class: "meta" }, j.message) : null,
      open
        ? h(
            "button",
            { type: "button", class: "secondary", onclick: cancel, "aria-label": `Cancel job ${j.id}` },
            "Cancel",
          )
        : null,
    ),
    h("td", {}, when(j.created_at)),
    h(
      "td",
      {},
      h("progress", bar),
      h("span", { class: "meta" }, ` ${label}`),
    ),
    h("td", {}, j.model_version_id ? `v${j.model_version_id}` : "—"),
  );
}

function adminLogin(error) {
  const input = h("input", {
    type: "password",
    id: "token",
    required: true,
    autocomplete: "current-password",
  });
  view.replaceChildren(
    heading("Admin"),
    error ? errorBox(error) : null,
    h(
      "form",
      {
        class: "panel",
        onsubmit: async (e) => {
          e.preventDefault();
          adminToken.set(input.value);
          try {
            await api.models();
            viewAdmin();
          } catch (failure) {
            adminToken.clear();
            adminLogin(failure);
          }
        },
      },
      h("label", { for: "token" }, "Admin token"),
      input,
      h("p", { class: "meta" }, "Kept in this tab only (session storage)."),
      h("button", { type: "submit" }, "Sign in"),
    ),
  );
}

// ---------------------------------------------------------------- router

let leaving = [];

/** Run `fn` when the current view is replaced (stops polling, timers). */
function onLeave(fn) {
  leaving.push(fn);
}

const routes = [
  [/^\/movie\/(\d+)$/, (m) => viewMovie(Number(m[1])), "search"],
  [/^\/user\/(\d+)$/, (m) => viewUser(Number(m[1])), "who"],
  [/^\/visitor$/, () => viewVisitor(), "who"],
  [/^\/who$/, () => viewWho(), "who"],
  [/^\/admin$/, () => viewAdmin(), "admin"],
  [/^\/search$/, (_m, params) => viewSearch(params), "search"],
  [/^\/$/, (_m, params) => (params.has("q") ? viewSearch(params) : viewHome()), "search"],
];

function renderNav(active) {
  const who = identity.get();
  const link = document.getElementById("nav-who");
  link.textContent = !who ? "Who are you?" : who.kind === "visitor" ? "Visitor" : `User ${who.id}`;
  if (who) link.href = who.kind === "visitor" ? "#/visitor" : `#/user/${who.id}`;
  if (active) {
    document
      .querySelectorAll("[data-nav]")
      .forEach((a) => a.toggleAttribute("aria-current", a.dataset.nav === active));
    document.querySelectorAll("[aria-current]").forEach((a) => a.setAttribute("aria-current", "page"));
  }
}

/** Render the view of the current hash; after a navigation, focus moves to its heading. */
function route(event) {
  const hash = location.hash;
  // An in-page anchor (the skip link's #view) is not a route: keep the current view.
  if (hash && !hash.startsWith("#/") && view.querySelector("h1")) return;
  leaving.forEach((fn) => fn());
  leaving = [];
  const [path, search = ""] = (hash.startsWith("#/") ? hash.slice(1) : "/").split("?");
  document.title = "movierec";
  for (const [pattern, render, nav] of routes) {
    const match = pattern.exec(path);
    if (!match) continue;
    renderNav(nav);
    Promise.resolve(render(match, new URLSearchParams(search))).catch((error) =>
      view.replaceChildren(errorBox(error)),
    );
    if (event) view.querySelector("h1")?.focus({ preventScroll: true });
    return;
  }
  view.replaceChildren(
    heading("Not found"),
    h("p", {}, "No such page. ", h("a", { href: "#/" }, "Back to the search.")),
  );
}

document.querySelector(".skip").addEventListener("click", (event) => {
  event.preventDefault();
  view.focus();
});
window.addEventListener("hashchange", route);
route();
