// The customer's chat: each message goes to POST /v1/chat; the operator's answers arrive by
// polling GET /v1/chat/{conversation}. Every text is written with textContent, never as HTML.
"use strict";
(function () {
  const KEY = "perennial-chat-key";
  const CONVERSATION = "perennial-chat-conversation";
  const SEEN = "perennial-chat-seen";
  const TRANSCRIPT = "perennial-chat-transcript";
  const POLL_MS = 700;

  // A read key may come in the address (/chat#key=KEY); it is kept for this tab only.
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get("key")) {
    sessionStorage.setItem(KEY, fragment.get("key"));
    history.replaceState(null, "", location.pathname);
  }

  const list = document.getElementById("messages");
  const form = document.getElementById("send");
  const input = document.getElementById("text");
  const button = document.getElementById("send-button");
  const errorBox = document.getElementById("error");
  const statusBox = document.getElementById("status");
  let sending = false;

  function headers() {
    const h = { "Content-Type": "application/json" };
    const key = sessionStorage.getItem(KEY);
    if (key) h.Authorization = "Bearer " + key;
    return h;
  }

  function show(box, text) {
    box.textContent = text || "";
    box.hidden = !text;
  }

  function render(message) {
    const item = document.createElement("li");
    item.className = "msg " + message.from;
    item.dataset.seq = String(message.seq || "");
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = { customer: "You", bot: "Assistant", operator: "Colleague" }[message.from] || "";
    const body = document.createElement("span");
    body.className = "text";
    body.textContent = message.text;
    item.append(who, body);
    list.append(item);
    item.scrollIntoView({ block: "end" });
  }

  function keep(message) {
    const transcript = JSON.parse(sessionStorage.getItem(TRANSCRIPT) || "[]");
    transcript.push({ from: message.from, text: message.text, seq: message.seq });
    sessionStorage.setItem(TRANSCRIPT, JSON.stringify(transcript.slice(-200)));
  }

  function add(messages) {
    let seen = Number(sessionStorage.getItem(SEEN) || 0);
    for (const message of messages) {
      if (message.seq <= seen) continue; // already shown (a poll and a send may overlap)
      seen = message.seq;
      render(message);
      keep(message);
    }
    sessionStorage.setItem(SEEN, String(seen));
  }

  async function errorOf(response) {
    try {
      const body = await response.json();
      if (body && typeof body.error === "string") return body.error;
    } catch (ignored) { /* not JSON */ }
    return "the service answered " + response.status;
  }

  function lost(conversationGone) {
    // The service no longer knows the conversation (it restarted, or the conversation expired):
    // what was said stays on the screen; the next message starts a new conversation.
    sessionStorage.removeItem(CONVERSATION);
    sessionStorage.setItem(SEEN, "0");
    delete statusBox.dataset.offline; // the service answers again: this notice stays
    show(statusBox, conversationGone);
  }

  async function send(text) {
    const conversation = sessionStorage.getItem(CONVERSATION);
    let response;
    try {
      response = await fetch("/v1/chat", {
        method: "POST",
        headers: headers(),
        body: JSON.stringify({ conversation: conversation, text: text }),
      });
    } catch (problem) {
      show(errorBox, "Connection lost: your message was not sent. Try again in a moment.");
      return false;
    }
    if (response.status === 404 && conversation) {
      lost("The service restarted or the conversation expired; your message starts a new conversation.");
      return send(text);
    }
    if (!response.ok) {
      show(errorBox, await errorOf(response));
      return false;
    }
    const body = await response.json();
    if (body.conversation !== conversation) {
      sessionStorage.setItem(CONVERSATION, body.conversation);
      sessionStorage.setItem(SEEN, "0");
    }
    show(errorBox, "");
    add(body.messages);
    return true;
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    const text = input.value;
    if (!text.trim()) {
      show(errorBox, "Please type a message first.");
      return;
    }
    if (sending) return;
    sending = true;
    button.disabled = true;
    try {
      if (await send(text)) input.value = ""; // kept when it was not sent
    } finally {
      sending = false;
      button.disabled = false;
      input.focus();
    }
  });

  async function poll() {
    const conversation = sessionStorage.getItem(CONVERSATION);
    if (conversation && !sending) {
      const seen = sessionStorage.getItem(SEEN) || "0";
      try {
        const response = await fetch(
          "/v1/chat/" + encodeURIComponent(conversation) + "?after=" + encodeURIComponent(seen),
          { headers: headers() },
        );
        if (response.status === 404) {
          lost("The service restarted or the conversation expired; your next message starts a new conversation.");
        } else if (response.ok) {
          if (statusBox.dataset.offline) {
            delete statusBox.dataset.offline;
            show(statusBox, "");
          }
          const body = await response.json();
          if (sessionStorage.getItem(CONVERSATION) === conversation) add(body.messages);
        } else {
          show(errorBox, await errorOf(response));
        }
      } catch (problem) {
        statusBox.dataset.offline = "1";
        show(statusBox, "Connection lost: reconnecting...");
      }
    }
    setTimeout(poll, POLL_MS);
  }

  for (const message of JSON.parse(sessionStorage.getItem(TRANSCRIPT) || "[]")) render(message);
  poll();
})();
