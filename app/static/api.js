// The /v1 HTTP API as small functions. Errors become ApiError with the server's `detail`
// (application/problem+json), so every view can show what went wrong in plain words.

const BASE = "/v1";
const TOKEN_KEY = "movierec.adminToken";

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.name = "ApiError";
    this.status = status;
  }
}

export const adminToken = {
  get: () => sessionStorage.getItem(TOKEN_KEY) || "",
  set: (token) => sessionStorage.setItem(TOKEN_KEY, token),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

// The key of user data (MOVIEREC_API_KEYS), asked for when the server answers 401.
const API_KEY = "movierec.apiKey";
export const apiKey = {
  get: () => localStorage.getItem(API_KEY) || "",
  set: (key) => localStorage.setItem(API_KEY, key),
  clear: () => localStorage.removeItem(API_KEY),
};

let askForKey = null; // (reason) => Promise<key or "">, set by the page
let asking = null; // one question at a time, shared by the requests that wait for it

/** How the page asks for an API key; without it a 401 is shown as an error. */
export function onApiKeyNeeded(ask) {
  askForKey = ask;
}

function query(params) {
  const q = new URLSearchParams();
  for (const [key, value] of Object.entries(params || {})) {
    if (value === undefined || value === null || value === "") continue;
    if (Array.isArray(value)) value.forEach((v) => q.append(key, v));
    else q.append(key, value);
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

async function problem(response) {
  let detail = "";
  try {
    const body = await response.json();
    detail = typeof body.detail === "string" ? body.detail : body.title || "";
    if (!detail && Array.isArray(body.detail)) detail = body.detail.map((d) => d.msg).join("; ");
  } catch {
    /* not JSON: fall back to the status line */
  }
  return new ApiError(detail || `${response.status} ${response.statusText}`, response.status);
}

/** One request; JSON in and out, or a Blob when `blob` is set. */
export async function request(path, options = {}) {
  const { method = "GET", body, params, admin = false, blob, retried = false } = options;
  const headers = { Accept: blob ? "image/png" : "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (admin) headers.Authorization = `Bearer ${adminToken.get()}`;
  else if (apiKey.get()) headers.Authorization = `Bearer ${apiKey.get()}`;
  let response;
  try {
    response = await fetch(BASE + path + query(params), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError("The server cannot be reached. Check your connection and retry.", 0);
  }
  if (response.status === 401 && !admin && !retried && askForKey) {
    // User data behind a key: ask for one (once for all the requests refused meanwhile), retry.
    const refused = await problem(response);
    apiKey.clear();
    asking ??= askForKey(refused.message).finally(() => (asking = null));
    const key = await asking;
    if (!key) throw refused;
    apiKey.set(key);
    return request(path, { ...options, retried: true });
  }
  if (!response.ok) throw await problem(response);
  if (blob) return response.blob();
  return response.status === 204 ? null : response.json();
}

const titles = new Map();

/** Fill in `title`, `year` and `genres` of items that carry only a `movie_id` (ratings). */
export async function withMovies(items) {
  return Promise.all(
    items.map(async (item) => {
      if (item.title) return item;
      const id = item.movie_id;
      if (!titles.has(id))
        titles.set(
          id,
          request(`/movies/${id}`).catch(() => ({ title: `Movie ${id}` })),
        );
      const m = await titles.get(id);
      return { ...item, title: m.title, year: m.year, genres: m.genres };
    }),
  );
}

/** A movie's id whichever name the server gives it. */
export const movieId = (m) => m.movie_id ?? m.id;

/** Filters shared by every recommendation call: {genres: [], year_min, year_max}. */
const filterParams = (f = {}) => ({ genres: f.genres, year_min: f.year_min, year_max: f.year_max });

export const api = {
  movies: (params) => request("/movies", { params }),
  movie: (id) => request(`/movies/${id}`),
  similar: (id, n = 12) => request(`/movies/${id}/similar`, { params: { n } }),
  userRatings: (id, limit = 50) => request(`/users/${id}/ratings`, { params: { limit } }),
  // Query strings carry genres as one comma list; JSON bodies as an array.
  userRecommendations: (id, n, filters = {}) =>
    request(`/users/${id}/recommendations`, {
      params: { n, ...filterParams(filters), genres: (filters.genres || []).join(",") },
    }),
  rate: (userId, id, rating) =>
    request(`/users/${userId}/ratings/${id}`, { method: "PUT", body: { rating } }),
  visitorRecommendations: (ratings, n, filters) =>
    request("/recommendations", {
      method: "POST",
      body: {
        ratings: Object.entries(ratings).map(([id, r]) => ({ movie_id: Number(id), rating: r })),
        n,
        ...filterParams(filters),
      },
    }),
  models: () => request("/admin/models", { admin: true }),
  learningCurve: (v) => request(`/admin/models/${v}/learning-curve.png`, { admin: true, blob: true }),
  activate: (v) => request(`/admin/models/${v}/activate`, { method: "POST", admin: true }),
  retrain: (params = {}) => request("/admin/retrain", { method: "POST", admin: true, body: params }),
  jobs: () => request("/admin/jobs", { admin: true }),
  cancelJob: (id) => request(`/admin/jobs/${id}/cancel`, { method: "POST", admin: true }),
};

/** The list inside a response, whether the server sends `{items: [...]}` or a bare array. */
export const itemsOf = (body) => (Array.isArray(body) ? body : (body?.items ?? []));
