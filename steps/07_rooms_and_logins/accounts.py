"""Accounts: sign up, sign in and sign out, and the signed-in user (Flask-Login).

Passwords are stored as Werkzeug hashes. Each sign-in is a row of its own in `logins`, and the
session cookie holds that row's token: signing out deletes the row, so every copy of the cookie
stops working, and closes the sockets that login has open (chat.py).
"""

import secrets
import sqlite3

import chat
import db
from flask import Blueprint, current_app, redirect, render_template, request, url_for
from flask_login import UserMixin, current_user, login_required, login_user, logout_user
from forms import SignInForm, SignUpForm
from werkzeug.security import check_password_hash, generate_password_hash

blueprint = Blueprint("accounts", __name__)


class User(UserMixin):
    def __init__(self, user_id, name, token):
        self.id, self.name, self.token = user_id, name, token
        self.login = token  # the login's id: in the database, and for its sockets

    def get_id(self):
        return self.token  # what Flask-Login keeps in the session cookie


def load_user(token):
    """The user a session cookie's login belongs to; None once it signed out (app.py hands this
    to Flask-Login, which calls it on every request and socket handshake)."""
    found = db.query(
        "SELECT users.id, users.name FROM logins JOIN users ON users.id = logins.user_id"
        " WHERE logins.token = ?",
        token,
    )
    return User(found[0]["id"], found[0]["name"], token) if found else None


@blueprint.route("/signup", methods=["GET", "POST"])
def signup():
    form = SignUpForm()
    if form.validate_on_submit():
        try:
            user_id = db.change(
                "INSERT INTO users (name, password_hash) VALUES (?, ?)",
                form.username.data,
                generate_password_hash(form.password.data, current_app.config["PASSWORD_HASH"]),
            )
        except sqlite3.IntegrityError:
            form.username.errors.append("That username is taken.")
        else:
            return sign_in(user_id, form.username.data)
    return account_page(form, "Sign up")


@blueprint.route("/login", methods=["GET", "POST"])
def login():
    if current_user.is_authenticated:
        return redirect(url_for("rooms.index"))
    form = SignInForm()
    if form.validate_on_submit():
        found = db.query("SELECT * FROM users WHERE name = ?", form.username.data)
        if found and check_password_hash(found[0]["password_hash"], form.password.data):
            return sign_in(found[0]["id"], found[0]["name"])
        form.form_errors.append("Wrong username or password.")
    return account_page(form, "Sign in")


def sign_in(user_id, name):
    # A login of its own for this browser: signing out deletes it, and with it every copy of
    # the session cookie stops working (a signed cookie alone cannot be taken back).
    user = User(user_id, name, secrets.token_urlsafe(24))
    db.change("INSERT INTO logins (token, user_id) VALUES (?, ?)", user.login, user_id)
    login_user(user)
    return redirect(url_for("rooms.index"))


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
