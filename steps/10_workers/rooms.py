"""Rooms: the chat page, creating a private room, and its members page.

"general" and "random" are public (schema.sql). Anyone signed in may create a few private rooms;
their owner adds and removes members, and a member who is not the owner may leave. Removing one
(or leaving) also takes their open sockets out of the room (chat.py), in the same locked step as
the database change. Which rooms a user may enter, messages.py says. The answers "That name is
taken" and "There is no user called ..." tell whether a room or an account exists: refused ones
are limited, as refused sign-ins are.
"""

import sqlite3

import chat
import db
from accounts import attempts, limiter, refused
from flask import Blueprint, abort, current_app, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from forms import MemberForm, RoomForm
from messages import rooms_open_to

blueprint = Blueprint("rooms", __name__)
# Caps, so that no one can fill the database, or someone else's page, with rooms: anyone may add
# anyone, and every page joins all of its rooms on every (re)connect. (A room's members: at most
# MAX_MEMBERS, in the app's config.)
MAX_OWNED_ROOMS = 20
# One count per user for both pages: ten names of rooms or people a minute to guess, not hundreds.
names_guessed = limiter.shared_limit(
    attempts, "names", methods=["POST"], deduct_when=refused, key_func=lambda: current_user.name
)


@blueprint.get("/")
@login_required
def index():
    return chat_page(RoomForm())


@blueprint.post("/rooms")
@login_required
@names_guessed
def create_room():
    form = RoomForm()
    if form.validate_on_submit():
        error = create(form.name.data)
        if not error:
            return redirect(url_for("rooms.index", room=form.name.data))
        form.name.errors.append(error)
    return chat_page(form), 400


def create(room):
    owned = db.query("SELECT count(*) FROM rooms WHERE owner_id = ?", current_user.id)[0][0]
    if owned >= MAX_OWNED_ROOMS:
        return f"You own {owned} rooms: that is the most."
    try:
        with db.connection() as database:
            database.execute(
                "INSERT INTO rooms (name, owner_id) VALUES (?, ?)", (room, current_user.id)
            )
            database.execute(
                "INSERT INTO members (room, user_id) VALUES (?, ?)", (room, current_user.id)
            )
    except sqlite3.IntegrityError:
        return "That name is taken."
    return None


def chat_page(room_form):
    rooms = rooms_open_to(current_user.id)
    names = [room["name"] for room in rooms]
    shown = request.args.get("room") if request.args.get("room") in names else names[0]
    return render_template("index.html", rooms=rooms, shown=shown, room_form=room_form)


@blueprint.route("/rooms/<room>/members", methods=["GET", "POST"])
@login_required
@names_guessed
def members(room):
    owner_id = private_room(room)
    form = MemberForm()
    if request.method == "POST":
        if owner_id != current_user.id:
            abort(403)
        if form.validate_on_submit():
            error = add_member(room, form.username.data)
            if not error:
                return redirect(url_for("rooms.members", room=room))
            form.username.errors.append(error)
    people = db.query(
        "SELECT users.id, users.name FROM members JOIN users ON users.id = members.user_id"
        " WHERE members.room = ? ORDER BY users.name",
        room,
    )
    page = render_template("members.html", room=room, owner_id=owner_id, people=people, form=form)
    return page, 400 if form.errors else 200


def add_member(room, name):
    found = db.query("SELECT id FROM users WHERE name = ?", name)
    if not found:
        return f"There is no user called {name}."
    most = current_app.config["MAX_MEMBERS"]
    if db.query("SELECT count(*) FROM members WHERE room = ?", room)[0][0] >= most:
        return f"A room has at most {most} members."
    try:
        db.change("INSERT INTO members (room, user_id) VALUES (?, ?)", room, found[0]["id"])
    except sqlite3.IntegrityError:
        return f"{name} is already a member."
    return None


@blueprint.post("/rooms/<room>/members/<int:user_id>/remove")
@login_required
def remove_member(room, user_id):
    if private_room(room) != current_user.id:
        abort(403)
    if user_id == current_user.id:
        abort(400, "The owner stays in the room.")
    take_out(room, user_id)
    return redirect(url_for("rooms.members", room=room))


@blueprint.post("/rooms/<room>/leave")
@login_required
def leave(room):
    if private_room(room) == current_user.id:
        abort(400, "The owner stays in the room.")
    take_out(room, current_user.id)
    return redirect(url_for("rooms.index"))


def take_out(room, user_id):
    def delete_member():
        db.change("DELETE FROM members WHERE room = ? AND user_id = ?", room, user_id)

    # Their sockets joined while they were a member: the next message must not reach them.
    chat.take_out_of_room(user_id, room, delete_member)


def private_room(room):
    """The owner of a private room the current user is a member of; 404 for any other room."""
    found = db.query(
        "SELECT owner_id FROM rooms JOIN members ON members.room = rooms.name"
        " WHERE rooms.name = ? AND members.user_id = ?",
        room,
        current_user.id,
    )
    if not found:
        abort(404)
    return found[0]["owner_id"]
