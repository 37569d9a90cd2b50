// Nudge dashboard: keeps a campaign page's numbers live. The server sends the campaign's
// funnel (the JSON of GET /v1/campaigns/{id}/stats) over server-sent events whenever it
// changes; when those fail, the same JSON is polled. Every number on the page names where
// it comes from (data-metric, in a row marked data-scope, data-step, data-group or
// data-version), so one function updates them all. No build step, no dependencies.
"use strict";

(function () {
  const root = document.getElementById("campaign");
  if (!root) return;
  const status = document.getElementById("live-status");
  const POLL_MS = 2000;
  let source = null;
  let failures = 0;
  let stopped = false;

  // The same strings as api/routes/dashboard.py's fmt(), so an update does not jump.
  function fmt(value, kind) {
    if (value === null || value === undefined) return "–";
    switch (kind) {
      case "rate": return (value * 100).toFixed(1) + "%";
      case "money":
        return value.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
      case "points": return (value >= 0 ? "+" : "") + (value * 100).toFixed(1) + " pts";
      case "p": return value.toFixed(3);
      case "text": return String(value);
      default: return Math.trunc(value).toLocaleString("en-US");
    }
  }

  function find(list, test) {
    for (const item of list || []) if (test(item)) return item;
    return undefined;
  }

  // The object an element's number is read from: the funnel, a step's, a group's (or one
  // of its lifts), a version's.
  function sourceOf(el, data) {
    const row = el.closest("[data-scope],[data-step],[data-group],[data-version]");
    if (!row) return undefined;
    const d = row.dataset;
    if (d.scope) return data[d.scope];
    if (d.step !== undefined) return (find(data.steps, (s) => s.step_id === d.step) || {}).funnel;
    if (d.version !== undefined) return (data.versions || {})[d.version];
    const group = find(data.groups, (g) => g.group === d.group && (g.split || "") === d.split);
    if (!group) return undefined;
    const lift = el.closest("[data-lift]");
    if (!lift) return group.funnel;
    return find(group.lift, (l) => l.baseline === lift.dataset.lift);
  }

  function valueAt(obj, path) {
    return path.split(".").reduce((o, key) => (o === null || o === undefined ? o : o[key]), obj);
  }

  function updateNumbers(data) {
    root.querySelectorAll("[data-metric],[data-field]").forEach((el) => {
      const value = valueAt(sourceOf(el, data), el.dataset.metric || el.dataset.field);
      const text = fmt(value === undefined ? null : value, el.dataset.format);
      if (el.textContent !== text) el.textContent = text;
      if (el.dataset.value !== undefined) el.dataset.value = JSON.stringify(value ?? null);
      if (el.dataset.field === "verdict" && value) {
        el.className = "verdict verdict-" + value.replace(/ /g, "-");
      }
    });
  }

  // Bars are as wide as api/routes/dashboard.py's bar_width(): value / biggest * span.
  function drawBars(funnel) {
    const chart = document.getElementById("funnel-chart");
    if (!chart) return;
    const left = Number(chart.dataset.left);
    const span = Number(chart.dataset.span);
    const rects = Array.from(chart.querySelectorAll("rect[data-bar]"));
    const biggest = Math.max(1, ...rects.map((r) => funnel[r.dataset.bar] || 0));
    for (const rect of rects) {
      const value = funnel[rect.dataset.bar] || 0;
      const width = Math.round((value / biggest) * span * 10) / 10;
      rect.setAttribute("width", String(width));
      const label = chart.querySelector('[data-bar-label="' + rect.dataset.bar + '"]');
      if (label) {
        label.setAttribute("x", String(left + width + 6));
        label.textContent = fmt(value, "count");
      }
    }
  }

  // The parts drawn from more than the funnel (the chart over time, the latest
  // deliveries) and rows the page did not have (a new step, the holdout's first entrant)
  // come from the page itself, fetched again: one fetch at a time, the last change wins.
  let refreshing = false;
  let again = false;
  function refreshSections() {
    if (refreshing) {
      again = true;
      return;
    }
    refreshing = true;
    fetch(location.href, { credentials: "same-origin", cache: "no-store" })
      .then((response) => {
        if (response.redirected && new URL(response.url).pathname === "/dashboard/login") {
          loggedOut();
          return;
        }
        if (!response.ok) return;
        return response.text().then((html) => {
          const fresh = new DOMParser().parseFromString(html, "text/html");
          root.querySelectorAll("[data-refresh]").forEach((part) => {
            const next = fresh.getElementById(part.id);
            if (next) part.replaceWith(document.importNode(next, true));
          });
        });
      })
      .catch(() => {})
      .finally(() => {
        refreshing = false;
        if (again && !stopped) {
          again = false;
          refreshSections();
        }
      });
  }

  function show(state, text) {
    status.className = "live live-" + state;
    status.textContent = text;
  }

  // What the page shows now: the funnel it was drawn from, then each one applied.
  let last = JSON.stringify(JSON.parse(root.dataset.funnel));
  let updated = "";
  function apply(data) {
    const json = JSON.stringify(data);
    if (json !== last) {
      last = json;
      updateNumbers(data);
      drawBars(data.funnel);
      refreshSections();
      updated = " · updated " + new Date().toLocaleTimeString();
    }
    show("on", "live" + updated);
  }

  function loggedOut() {
    stopped = true;
    if (source) source.close();
    status.className = "live live-off";
    status.textContent = "logged out: ";
    const link = document.createElement("a");
    link.href = "/dashboard/login?next=" + encodeURIComponent(location.pathname + location.search);
    link.textContent = "log in again";
    status.appendChild(link);
  }

  function poll() {
    fetch(root.dataset.poll, { credentials: "same-origin", cache: "no-store" })
      .then((response) => {
        if (response.status === 401) {
          loggedOut();
          return null;
        }
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then((data) => data && apply(data))
      .catch(() => show("off", "offline, retrying…"))
      .finally(() => {
        if (!stopped) setTimeout(poll, POLL_MS);
      });
  }

  function listen() {
    if (!window.EventSource) {
      poll();
      return;
    }
    source = new EventSource(root.dataset.live);
    source.addEventListener("funnel", (event) => apply(JSON.parse(event.data)));
    let opened = false;
    source.addEventListener("open", () => {
      opened = true;
      failures = 0;
    });
    // The server ends each stream after a few seconds and the browser reconnects: an
    // error now and then is normal. A stream refused (401), never opened (blocked on
    // the way) or failing again and again means polling instead.
    source.addEventListener("error", () => {
      failures += 1;
      if (source.readyState === EventSource.CLOSED || !opened || failures >= 3) {
        source.close();
        show("off", "polling");
        poll();
      }
    });
  }

  listen();
})();
