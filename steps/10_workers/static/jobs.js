// Step 06's inline hx-on handler, moved to a file: the Content-Security-Policy runs no inline code.
// A job's stream answered 404: the server that ran the job stopped, and the job is gone. Put the
// notice kept in the stream element's <template> in its place; an element no longer in the page
// also ends htmx's reconnects.
"use strict";

document.addEventListener("htmx:sse:error", (event) => {
  const stream = event.target;
  if (event.detail.status === 404 && stream.classList.contains("job-stream")) {
    stream.replaceWith(stream.querySelector("template").content);
  }
});
