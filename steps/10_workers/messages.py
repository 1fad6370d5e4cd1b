"""What is said in the rooms, and who may hear it: the messages' SQL, and the one rule of entry.

A message comes from a socket's event (`read_message`), is stored before it is broadcast
(`store`), and is sent again to a page that missed it (`missed`: catch-up by id). Who may enter
a room is decided in one place, `rooms_open_to`: the chat page lists the rooms it returns
(rooms.py), and every `join` and `send message` asks it again (chat.py), since the page is not
what keeps a room private. This module imports no other module of the step but db.py.
"""

from datetime import datetime, timezone

import db

MAX_MESSAGE_CHARS = 500
HISTORY = 100  # a join sends at most this many of a room's messages: the newest


def rooms_open_to(user_id, room=None):
    """The rooms this user may enter (their name and owner_id), the public ones first, then by
    name. With `room`: that room alone if they may enter it, else none (a room that does not
    exist and a private one they are not a member of look the same)."""
    # Open to everyone if it is public, to its members if it is private. (Our own text in the
    # SQL; what the user gives goes in as parameters, the ?s.)
    rule = "(owner_id IS NULL OR name IN (SELECT room FROM members WHERE user_id = ?))"
    if room is None:
        order = "ORDER BY owner_id IS NOT NULL, name"
        return db.query(f"SELECT name, owner_id FROM rooms WHERE {rule} {order}", user_id)
    return db.query(f"SELECT name, owner_id FROM rooms WHERE name = ? AND {rule}", room, user_id)


def read_message(message):
    """Return (room, text, None) for a good message, or (None, None, what is wrong with it)."""
    if not (
        isinstance(message, dict)
        and isinstance(message.get("room"), str)
        and isinstance(message.get("text"), str)
    ):
        return None, None, "That was not a chat message (it needs a room and a text, as text)."
    text = message["text"].strip()
    if not text:
        return None, None, "Type a message before you send it."
    if len(text) > MAX_MESSAGE_CHARS:
        return (
            None,
            None,
            f"A message has at most {MAX_MESSAGE_CHARS} characters; yours has {len(text)}.",
        )
    return message["room"], text, None


def store(room, user_id, name, text):
    """Store a message; return it as the pages receive it, with its time and its id."""
    message = {"room": room, "name": name, "text": text}
    message["time"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    message["id"] = db.change(
        "INSERT INTO messages (room, user_id, time, text) VALUES (?, ?, ?, ?)",
        room,
        user_id,
        message["time"],
        text,
    )
    return message


def missed(room, last_id):
    """The room's messages after `last_id`, oldest first: at most the newest HISTORY."""
    newest_first = db.query(
        "SELECT messages.id, room, name, time, text FROM messages"
        " JOIN users ON users.id = messages.user_id"
        " WHERE room = ? AND messages.id > ? ORDER BY messages.id DESC LIMIT ?",
        room,
        last_id,
        HISTORY,
    )
    return [dict(row) for row in reversed(newest_first)]
