// The chat page: one socket follows every room the page lists, and shows one room at a time.
// A file of its own, loaded from this origin: from step 08 on, a Content-Security-Policy forbids
// inline script and inline event handlers.
"use strict";

const $ = (id) => document.getElementById(id);
const rooms = new Map(
  [...document.querySelectorAll("section.room")].map((section) => [section.dataset.room, section]),
);
let shown = document.querySelector("section.room:not([hidden])").dataset.room;

// The bookmark: every message up to this id is on the page. The auth callback runs on every
// (re)connect, so the server learns the current value and sends only what came after it.
let bookmark = 0;
let newest = 0; // the highest id on the page
let caughtUp = false; // has every room of this connection sent what the page missed?

const socket = io({ auth: (send) => send({ last_id: bookmark }) });

socket.on("connect", async () => {
  $("status").textContent = "connected";
  caughtUp = false;
  try {
    // One room at a time: each sends what the page missed, then answers. (All at once would
    // also put more than 16 packets in one long-polling request, more than the server takes.)
    for (const room of rooms.keys()) {
      const answer = await socket.emitWithAck("join", { room });
      if (answer.error) $("error").textContent = `${room}: ${answer.error}`;
    }
  } catch {
    return; // disconnected before every room answered: the next connect starts over
  }
  // Only now: a message seen in one room does not prove that another room's older ones came.
  caughtUp = true;
  bookmark = newest;
});

socket.on("disconnect", (reason) => {
  $("status").textContent = "disconnected";
  // The server hangs up on a page only when its login signs out (in this tab or another).
  if (reason === "io server disconnect") signInAgain();
});

socket.on("connect_error", () => {
  // Not active: the server refused the connection (no signed-in session), so no retries.
  if (!socket.active) signInAgain();
});

socket.on("new message", (message) => {
  // After a dropped connection a room may send again what the page already has: show it once.
  if ($(`message-${message.id}`)) return;
  const section = rooms.get(message.room);
  if (!section) return;
  section.querySelector(".messages").append(render(message));
  newest = Math.max(newest, message.id);
  if (caughtUp) bookmark = newest;
});

socket.on("presence", ({ room, names }) => {
  const output = rooms.get(room)?.querySelector(".presence");
  if (output) output.textContent = names.join(", ");
});

function render({ id, name, time, text }) {
  // Built with textContent: whatever people type shows as text, never parsed as HTML.
  const item = document.createElement("li");
  const who = document.createElement("b");
  const when = document.createElement("time");
  const what = document.createElement("span");
  item.id = `message-${id}`;
  item.dataset.id = id;
  who.textContent = name;
  when.dateTime = time;
  when.textContent = new Date(time).toTimeString().slice(0, 5); // HH:MM, the reader's time
  what.textContent = text;
  item.append(who, " ", when, " ", what);
  return item;
}

function signInAgain() {
  const link = document.createElement("a");
  link.href = "/login";
  link.textContent = "sign in again";
  $("status").textContent = "signed out";
  $("error").replaceChildren("You are signed out: ", link, ".");
}

// Entering a room only changes what is on screen: the socket is already in every room.
document.querySelector("nav").addEventListener("click", (event) => {
  const link = event.target.closest("a[data-room]");
  if (!link) return;
  event.preventDefault();
  shown = link.dataset.room;
  for (const [room, section] of rooms) section.hidden = room !== shown;
  for (const other of document.querySelectorAll("nav a[data-room]")) {
    if (other === link) other.setAttribute("aria-current", "page");
    else other.removeAttribute("aria-current");
  }
  $("error").textContent = "";
});

$("send").addEventListener("submit", (event) => {
  event.preventDefault(); // send over the socket instead of submitting the form
  const box = $("text");
  // The callback asks for an acknowledgement: the server's answer to this one message.
  socket.emit("send message", { room: shown, text: box.value }, (answer) => {
    $("error").textContent = answer.error || "";
    if (answer.ok) box.value = "";
  });
});
