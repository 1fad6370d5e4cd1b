"""Accounts: sign up, sign in and sign out, and the signed-in user (Flask-Login).

Passwords are stored as Werkzeug hashes. Each sign-in is a row of its own in `logins`, and the
session cookie holds that row's token: signing out deletes the row, so every copy of the cookie
stops working, and closes the sockets that login has open (chat.py); a login also ends by
itself after LOGIN_DAYS. Refused sign-ins and sign-ups are limited (Flask-Limiter): per
address, and sign-ins per username too.

Step 08's, with one change for gevent: a password hash (scrypt, about 100 ms of CPU) runs in
gevent's thread pool, not in the event loop, where it would stop every socket of this server.
"""

import functools
import hashlib
import secrets
import sqlite3

import chat
import db
import gevent
from flask import Blueprint, current_app, redirect, render_template, request, url_for
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import UserMixin, current_user, login_required, login_user, logout_user
from forms import SignInForm, SignUpForm
from werkzeug.security import check_password_hash, generate_password_hash

blueprint = Blueprint("accounts", __name__)
TOO_MANY = "Too many attempts: wait a minute, then try again."
limiter = Limiter(get_remote_address)  # app.py says where it counts (RATELIMIT_STORAGE_URI)
# A cookie copied off a shared computer, or a login forgotten on one, works this long at most.
LOGIN_DAYS = 30
EXPIRY = f"-{LOGIN_DAYS} days"  # a login whose `since` is before datetime('now', EXPIRY) expired


def attempts():
    """Refused attempts allowed per address (and per username, for sign-ins) before the answer
    is 429 until the window has passed: ACCOUNT_ATTEMPTS, in the app's config."""
    return current_app.config["ACCOUNT_ATTEMPTS"]


@functools.cache
def no_one_hash(method):
    """What a password is checked against when no one has that username: the same work as for a
    real user, so that the time of the answer does not tell who has an account. One for each
    hash method (PASSWORD_HASH), made when the app is created (app.py), not at a first refusal."""
    return generate_password_hash(secrets.token_urlsafe(), method)


def in_a_thread(function, *args):
    """function(*args) in gevent's thread pool: the event loop serves the others meanwhile
    (hashlib's scrypt lets go of the GIL while it works)."""
    return gevent.get_hub().threadpool.apply(function, args)


def refused(response):
    return response.status_code == 400  # only refused attempts count; signing in does not


def username_tried():
    return "username:" + request.form.get("username", "").strip().lower()


class User(UserMixin):
    def __init__(self, user_id, name, token):
        self.id, self.name, self.token = user_id, name, token
        self.login = token_hash(token)  # the login's id: in the database, and for its sockets

    def get_id(self):
        return self.token  # what Flask-Login keeps in the session cookie


def token_hash(token):
    # Only the hash is stored: whoever reads the database cannot sign in with what they read.
    return hashlib.sha256(token.encode()).hexdigest()


def load_user(token):
    """The user a session cookie's login belongs to; None once it signed out (app.py hands this
    to Flask-Login, which calls it on every request and socket handshake)."""
    found = db.query(
        "SELECT users.id, users.name FROM logins JOIN users ON users.id = logins.user_id"
        " WHERE logins.token = ? AND logins.since > datetime('now', ?)",
        token_hash(token),
        EXPIRY,
    )
    return User(found[0]["id"], found[0]["name"], token) if found else None


@blueprint.route("/signup", methods=["GET", "POST"])
@limiter.limit(attempts, methods=["POST"], deduct_when=refused)
def signup():
    form = SignUpForm()
    if form.validate_on_submit():
        try:
            user_id = db.change(
                "INSERT INTO users (name, password_hash) VALUES (?, ?)",
                form.username.data,
                in_a_thread(
                    generate_password_hash, form.password.data, current_app.config["PASSWORD_HASH"]
                ),
            )
        except sqlite3.IntegrityError:
            form.username.errors.append("That username is taken.")
        else:
            return sign_in(user_id, form.username.data)
    return account_page(form, "Sign up")


@blueprint.route("/login", methods=["GET", "POST"])
@limiter.limit(attempts, methods=["POST"], deduct_when=refused)
@limiter.limit(attempts, methods=["POST"], deduct_when=refused, key_func=username_tried)
def login():
    if current_user.is_authenticated:
        return redirect(url_for("rooms.index"))
    form = SignInForm()
    if form.validate_on_submit():
        found = db.query("SELECT * FROM users WHERE name = ?", form.username.data)
        method = current_app.config["PASSWORD_HASH"]
        password_hash = found[0]["password_hash"] if found else no_one_hash(method)
        if in_a_thread(check_password_hash, password_hash, form.password.data) and found:
            return sign_in(found[0]["id"], found[0]["name"])
        form.form_errors.append("Wrong username or password.")
    return account_page(form, "Sign in")


def sign_in(user_id, name):
    # A login of its own for this browser: signing out deletes it, and with it every copy of
    # the session cookie stops working (a signed cookie alone cannot be taken back).
    user = User(user_id, name, secrets.token_urlsafe(24))
    db.change("INSERT INTO logins (token, user_id) VALUES (?, ?)", user.login, user_id)
    db.change("DELETE FROM logins WHERE since <= datetime('now', ?)", EXPIRY)  # anyone's
    login_user(user)
    return redirect(url_for("rooms.index"))


@blueprint.app_errorhandler(429)
def too_many_attempts(error):
    return TOO_MANY, 429


def account_page(form, action):
    # A POST that gets here was refused: the form comes back with the reasons, as a 400.
    status = 400 if request.method == "POST" else 200
    return render_template("account.html", form=form, action=action), status


@blueprint.post("/logout")
@login_required
def logout():
    login = current_user.login
    db.change("DELETE FROM logins WHERE token = ?", login)
    # Open sockets read the cookie once, at their handshake, and would not notice: close this
    # login's sockets (each page then says "sign in again").
    chat.close_sockets(current_user.id, login)
    logout_user()
    return redirect(url_for("accounts.login"))
