// The operator's console. Signs in with an API key kept in sessionStorage; polls the queue,
// the intents and the figures; shows every refusal of the API as the API words it. Every text
// from the service is written with textContent, never as HTML.
"use strict";
(function () {
  const KEY = "perennial-console-key";
  const POLL_MS = 1000;
  const $ = (id) => document.getElementById(id);
  const errorBox = $("error");
  const samples = []; // {time, predicted, unknown, learned, lag}, for the chart
  let timer = null;

  function el(tag, props, children) {
    const node = document.createElement(tag);
    Object.assign(node, props || {});
    for (const child of children || []) node.append(child);
    return node;
  }

  function show(box, text) {
    box.textContent = text || "";
    box.hidden = !text;
  }

  class ApiError extends Error {}

  // A lost connection is shown until the service answers again; a refusal stays until the next
  // action of the operator.
  function showError(problem) {
    show(errorBox, problem.message);
    if (problem.offline) errorBox.dataset.offline = "1";
    else delete errorBox.dataset.offline;
  }

  async function api(method, path, body) {
    const headers = { Authorization: "Bearer " + (sessionStorage.getItem(KEY) || "") };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method: method,
        headers: headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (problem) {
      const lost = new ApiError("Connection lost: the service did not answer (" + problem.message + "); retrying");
      lost.offline = true;
      throw lost;
    }
    let answer = null;
    try { answer = await response.json(); } catch (ignored) { /* not JSON */ }
    if (!response.ok) {
      throw new ApiError(answer && typeof answer.error === "string"
        ? answer.error : "the service answered " + response.status);
    }
    return answer;
  }

  // Runs an operator's action; a refusal is shown as the API words it.
  async function act(button, action) {
    if (button) button.disabled = true;
    try {
      await action();
      show(errorBox, "");
      await refresh();
    } catch (problem) {
      showError(problem);
    } finally {
      if (button) button.disabled = false;
    }
  }

  // --- sign in --------------------------------------------------------------------------------
  async function signIn(key) {
    sessionStorage.setItem(KEY, key);
    try {
      const model = await api("GET", "/v1/model");
      show(errorBox, "");
      $("sign-in-panel").hidden = true;
      $("desk").hidden = false;
      $("sign-out").hidden = false;
      $("who").textContent = "model version " + model.version;
      await refresh();
      if (timer === null) timer = setInterval(refresh, POLL_MS);
    } catch (problem) {
      sessionStorage.removeItem(KEY);
      show(errorBox, problem.message);
    }
  }

  $("sign-in").addEventListener("submit", function (event) {
    event.preventDefault();
    signIn($("key").value);
    $("key").value = "";
  });
  $("sign-out").addEventListener("click", function () {
    sessionStorage.removeItem(KEY);
    location.reload();
  });

  // --- the queue ------------------------------------------------------------------------------
  function messageList(messages) {
    return el("ol", { className: "messages" }, messages.map(function (m) {
      return el("li", { className: "msg " + m.from }, [
        el("span", { className: "who", textContent: m.from }),
        el("span", { className: "text", textContent: m.text }),
      ]);
    }));
  }

  function percent(x) { return x === null || x === undefined ? "-" : Number(x).toFixed(3); }

  function pendingForm(item) {
    const label = el("input", { name: "label", placeholder: "intent (existing or new)" });
    label.setAttribute("list", "intent-names");
    if (item.label) label.placeholder = "intent, e.g. " + item.label;
    const answer = el("input", { name: "answer", placeholder: "answer to the customer (optional)" });
    const teach = el("button", { type: "button", className: "primary teach", textContent: "Answer & teach" });
    const discard = el("button", { type: "button", className: "discard", textContent: "Discard" });
    teach.addEventListener("click", function () {
      act(teach, async function () {
        const body = { label: label.value };
        if (answer.value !== "") body.answer = answer.value;
        await api("POST", "/v1/desk/review/" + encodeURIComponent(item.id), body);
        label.value = answer.value = "";
      });
    });
    discard.addEventListener("click", function () {
      act(discard, () => api("DELETE", "/v1/review/" + encodeURIComponent(item.id)));
    });
    const guess = (item.top || []).map((t) => t.label + " " + percent(t.score)).join(", ");
    return el("div", { className: "pending" }, [
      el("div", { className: "quote", textContent: item.input }),
      el("div", { className: "top", textContent: "closest: " + guess + "; novelty " + percent(item.novelty) }),
      el("div", { className: "row" }, [label, answer, teach, discard]),
    ]);
  }

  // Each card is built once per item and kept while it stays in the queue, so that what the
  // operator types is never wiped by a refresh; only a conversation's messages are redrawn.
  const cards = new Map();

  function conversationCard(talk) {
    let card = cards.get("c:" + talk.id);
    if (!card) {
      const text = el("input", { name: "reply", placeholder: "write to the customer" });
      const send = el("button", { type: "button", className: "send-answer", textContent: "Send" });
      const close = el("button", { type: "button", className: "close", textContent: "Hand back to the bot" });
      send.addEventListener("click", function () {
        act(send, async function () {
          await api("POST", "/v1/desk/conversations/" + encodeURIComponent(talk.id) + "/answer", { text: text.value });
          text.value = "";
        });
      });
      close.addEventListener("click", function () {
        act(close, () => api("POST", "/v1/desk/conversations/" + encodeURIComponent(talk.id) + "/close"));
      });
      card = el("div", { className: "conversation" }, [
        el("div", { className: "log" }), el("div", { className: "items" }),
        el("div", { className: "row" }, [text, send, close]),
      ]);
      card.dataset.id = talk.id;
      cards.set("c:" + talk.id, card);
    }
    card.querySelector(".log").replaceChildren(messageList(talk.messages));
    syncItems(card.querySelector(".items"), talk.pending);
    return card;
  }

  // A card the operator has typed into stays when its item leaves the queue (another tab or
  // operator handled it, or it expired), marked as such: what was typed is not wiped, and sending
  // it anyway gets the API's refusal.
  function edited(card) {
    return Array.from(card.querySelectorAll("input")).some((input) => input.value !== "");
  }

  function syncItems(box, items) {
    const ids = new Set(items.map((item) => item.id));
    const wanted = items.map(function (item) {
      let card = cards.get("i:" + item.id);
      if (!card) {
        card = pendingForm(item);
        card.dataset.id = item.id;
        cards.set("i:" + item.id, card);
      }
      return card;
    });
    for (const card of Array.from(box.children)) {
      if (!ids.has(card.dataset.id) && edited(card)) {
        if (!card.querySelector(".gone")) {
          card.append(el("p", { className: "gone", textContent: "No longer in the queue: labelled or discarded elsewhere, or expired." }));
        }
        wanted.push(card);
      }
    }
    box.replaceChildren(...wanted);
  }

  function renderQueue(queue) {
    $("conversations").replaceChildren(...queue.conversations.map(conversationCard));
    syncItems($("items"), queue.items);
    const live = new Set(queue.conversations.map((t) => "c:" + t.id));
    for (const talk of queue.conversations) for (const i of talk.pending) live.add("i:" + i.id);
    for (const i of queue.items) live.add("i:" + i.id);
    for (const id of Array.from(cards.keys())) if (!live.has(id)) cards.delete(id);
    const pending = queue.items.length + queue.conversations.reduce((n, t) => n + t.pending.length, 0);
    $("queue-count").textContent = "(" + queue.conversations.length + " conversations, " + pending + " to label)";
  }

  // --- intents --------------------------------------------------------------------------------
  const intentRows = new Map();

  function renderIntents(intents) {
    $("intent-names").replaceChildren(...intents.map((i) => el("option", { value: i.label })));
    const rows = intents.map(function (intent) {
      let row = intentRows.get(intent.label);
      if (!row) {
        const reply = el("input", { name: "reply", value: intent.reply });
        const save = el("button", { type: "button", className: "save-reply", textContent: "Save reply" });
        const forget = el("button", { type: "button", className: "forget", textContent: "Forget" });
        save.addEventListener("click", function () {
          act(save, () => api("PUT", "/v1/desk/replies/" + encodeURIComponent(intent.label), { text: reply.value }));
        });
        forget.addEventListener("click", function () {
          if (!confirm("Forget the intent \u201c" + intent.label + "\u201d and all its examples? This cannot be undone.")) return;
          act(forget, () => api("DELETE", "/v1/desk/intents/" + encodeURIComponent(intent.label)));
        });
        row = el("tr", {}, [
          el("td", { className: "label", textContent: intent.label }),
          el("td", { className: "examples" }),
          el("td", {}, [reply]),
          el("td", {}, [save, forget]),
        ]);
        row.dataset.label = intent.label;
        intentRows.set(intent.label, row);
      }
      row.querySelector(".examples").textContent = String(intent.count);
      return row;
    });
    const live = new Set(intents.map((i) => i.label));
    for (const label of Array.from(intentRows.keys())) if (!live.has(label)) intentRows.delete(label);
    document.querySelector("#intents tbody").replaceChildren(...rows);
  }

  // --- try a message --------------------------------------------------------------------------
  $("try").addEventListener("submit", function (event) {
    event.preventDefault();
    act(event.submitter, async function () {
      const body = await api("POST", "/v1/desk/try", { text: $("try-text").value });
      const p = body.prediction;
      $("try-result").replaceChildren(
        el("p", { className: "verdict", textContent: p.unknown
          ? "unknown: would be handed over" : "intent " + p.label + " (score " + percent(p.score) + ")" }),
        el("p", { className: "novelty", textContent: "novelty " + percent(p.novelty) + ", version " + body.version }),
        el("ol", { className: "alternatives" }, p.top.map((t) => el("li", { textContent: t.label + " " + percent(t.score) }))),
        el("p", { className: "reply", textContent: "reply: " + body.reply }),
      );
    });
  });

  // --- figures and the chart ------------------------------------------------------------------
  function rateOver(seconds, field) {
    const last = samples[samples.length - 1];
    let first = samples[0];
    for (const s of samples) if (last.time - s.time <= seconds) { first = s; break; }
    const span = last.time - first.time;
    return span > 0 ? (last[field] - first[field]) / span * 60 : 0;
  }

  function figures() {
    const last = samples[samples.length - 1];
    const perMinute = rateOver(60, "predicted");
    const unknownPerMinute = rateOver(60, "unknown");
    return {
      "predictions per minute": perMinute,
      "unknown rate": perMinute > 0 ? unknownPerMinute / perMinute : 0,
      "examples learned": last.learned,
      "version lag": last.lag,
    };
  }

  function drawChart(series) {
    const canvas = $("chart");
    const g = canvas.getContext("2d");
    const names = Object.keys(series[0] || {});
    const w = canvas.width, h = canvas.height, band = h / Math.max(names.length, 1);
    g.clearRect(0, 0, w, h);
    g.font = "11px sans-serif";
    names.forEach(function (name, k) {
      const values = series.map((s) => s[name]);
      const top = k * band, max = Math.max(1e-9, ...values);
      g.strokeStyle = "#e3e6ec";
      g.beginPath(); g.moveTo(0, top + band - 0.5); g.lineTo(w, top + band - 0.5); g.stroke();
      g.strokeStyle = ["#23395d", "#c0392b", "#1e8449", "#b9770e"][k % 4];
      g.beginPath();
      values.forEach(function (v, i) {
        const x = values.length > 1 ? i / (values.length - 1) * (w - 4) + 2 : 2;
        const y = top + band - 4 - (v / max) * (band - 18);
        if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
      });
      g.stroke();
      g.fillStyle = "#1d2330";
      g.fillText(name + ": " + Number(values[values.length - 1]).toFixed(name === "unknown rate" ? 2 : 0), 4, top + 12);
    });
  }

  const history = [];

  function renderStats(stats) {
    const previous = samples[samples.length - 1];
    if (previous && stats.predicted < previous.predicted) samples.length = 0; // it restarted: counts anew
    samples.push({ time: stats.time, predicted: stats.predicted, unknown: stats.unknown,
      learned: stats.learned, lag: stats.version - stats.served_version });
    while (samples.length > 2 && samples[samples.length - 1].time - samples[0].time > 600) samples.shift();
    const now = figures();
    history.push(now);
    if (history.length > 300) history.shift();
    $("figures").replaceChildren(...Object.entries(now).flatMap(([name, value]) => [
      el("dt", { textContent: name }),
      el("dd", { className: name.replace(/ /g, "-"), textContent: Number(value).toFixed(name === "unknown rate" ? 2 : 0) }),
    ]));
    drawChart(history);
  }

  // --- polling --------------------------------------------------------------------------------
  let busy = false;

  async function refresh() {
    if (busy) return;
    busy = true;
    try {
      const [intents, stats] = await Promise.all([api("GET", "/v1/desk/intents"), api("GET", "/v1/desk/stats")]);
      if (errorBox.dataset.offline) { // the service answers again
        delete errorBox.dataset.offline;
        show(errorBox, "");
      }
      renderIntents(intents.intents);
      renderStats(stats);
      $("who").textContent = "model version " + stats.version;
      try {
        renderQueue(await api("GET", "/v1/desk/queue"));
        show($("queue-error"), "");
      } catch (problem) { // a read key may not see the queue: say why
        show($("queue-error"), problem.message);
      }
    } catch (problem) {
      showError(problem);
    } finally {
      busy = false;
    }
  }

  if (sessionStorage.getItem(KEY)) signIn(sessionStorage.getItem(KEY));
})();
