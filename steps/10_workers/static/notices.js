// Every page of a signed-in user hears when one of their jobs ends: the worker that ran it says
// so through Redis (tasks.py), to the user's room, whichever web server holds the page's socket.
// The chat page shares its socket (chat.js); the jobs page opens one of its own.
"use strict";

{
  const notices = typeof socket === "undefined" ? io({ transports: ["websocket"] }) : socket;
  notices.on("job finished", ({ id, outcome }) => {
    document.getElementById("notice").textContent = `Job ${id} ended: ${outcome}.`;
  });
}
