-- The chat's database. Run at every start: it creates what is missing and changes nothing else.

CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE COLLATE NOCASE,  -- "Alice" and "alice" are one user
    password_hash TEXT NOT NULL
);

-- One row per signed-in browser. The session cookie holds a token, this table its SHA-256 (a
-- copy of the database signs no one in); signing out deletes the row, which ends that login
-- everywhere, even for a copy of the cookie. A login expires LOGIN_DAYS after `since`.
CREATE TABLE IF NOT EXISTS logins (
    token TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users (id),
    since TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE IF NOT EXISTS rooms (
    name TEXT PRIMARY KEY,
    owner_id INTEGER REFERENCES users (id)  -- NULL for a public room, which everyone may enter
);

-- Who may enter each private room (its owner included).
CREATE TABLE IF NOT EXISTS members (
    room TEXT NOT NULL REFERENCES rooms (name),
    user_id INTEGER NOT NULL REFERENCES users (id),
    PRIMARY KEY (room, user_id)
);

-- AUTOINCREMENT: ids only ever grow, across all rooms, so "the last id I have shown" is a
-- bookmark a page can send back after a reconnect.
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    room TEXT NOT NULL REFERENCES rooms (name),
    user_id INTEGER NOT NULL REFERENCES users (id),
    time TEXT NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_room ON messages (room, id);

INSERT OR IGNORE INTO rooms (name) VALUES ('general'), ('random');
